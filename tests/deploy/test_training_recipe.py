"""The training-loop recipe: decorate once, and every N steps read ``model.cam.maps()`` after
``loss.backward()`` but BEFORE ``optimizer.step()``: the maps of that step's own forward, with
no extra forward. After the step the head's weights changed in place, and maps() raises."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from kernel_oracle import oracle_cam
from models import SUPPORTED, build, images
from tolerances import assert_close
from torch_threads import single_intra_op_thread

import camplug
from camplug.discovery.heads import probing

one_thread = pytest.fixture(autouse=True, scope="module")(single_intra_op_thread)
EVERY = 2


def test_maps_before_the_optimizer_step():
    model = build(next(c for c in SUPPORTED if c.name == "resnet")).train()
    forwards, features = [0], {}

    def count(_module, _args):
        forwards[0] += not probing()

    def keep(_module, _args, output):  # the reference's own copy of the features
        features["a"] = output.detach().clone()

    handles = [model.register_forward_pre_hook(count),
               model.layer2.register_forward_hook(keep)]
    camplug.decorate(model)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5, momentum=0.9)
    generator = torch.Generator().manual_seed(0)
    checked = 0
    try:
        for step in range(5):
            x = images(4, 32, seed=step)
            labels = torch.randint(0, 7, (4,), generator=generator)
            logits = model(x)
            loss = F.cross_entropy(logits, labels)
            optimizer.zero_grad()
            loss.backward()
            if step % EVERY == 0:
                seen = forwards[0]
                maps = model.cam.maps()
                assert forwards[0] == seen == step + 1, "maps() ran a forward"
                weights = model.fc.weight.detach()[logits.argmax(dim=1)][:, None]  # [B, 1, K]
                expected = oracle_cam(features["a"], weights, (32, 32), relu=False,
                                      normalize=True)
                assert_close(maps, expected, torch.float32, f"step {step} maps")
                checked += 1
            optimizer.step()
            if step % EVERY == 0:
                with pytest.raises(RuntimeError, match="changed in place since the forward"):
                    model.cam.maps()
    finally:
        camplug.undecorate(model)
        for handle in handles:
            handle.remove()
    assert checked == 3
