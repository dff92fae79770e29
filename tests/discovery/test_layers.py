"""find_feature_layer / to_grid: the layer gradient methods read when there is no exact CAM."""

from __future__ import annotations

import pytest
import torch
from models import (
    SUPPORTED,
    UNSUPPORTED,
    AttentionTokenNet,
    Case,
    ClassTokenViT,
    CollapsingHeadNet,
    build,
    images,
    tokens_to_map,
)
from tolerances import assert_close
from torch import nn

from camplug.discovery.layers import FeatureLayer, find_feature_layer, to_grid
from camplug.errors import UnsupportedHeadError

MARKED = [case for case in SUPPORTED + UNSUPPORTED if case.feature_layer is not None]


def _output_of(model: nn.Module, name: str, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(output of module ``name`` in the forward, logits), with gradients."""
    seen = []
    handle = model.get_submodule(name).register_forward_hook(lambda m, a, out: seen.append(out))
    try:
        logits = model(x)
    finally:
        handle.remove()
    return seen[-1], logits


@pytest.mark.parametrize("case", MARKED, ids=lambda c: c.name)
def test_the_layer_marked_in_the_case_table_is_chosen(case):
    found = find_feature_layer(build(case), images(1, case.size))
    assert (found.module, found.call, found.layout, found.prefix_tokens) == case.feature_layer
    assert f"`{found.module}`" in found.description
    if case in UNSUPPORTED:
        with pytest.raises(UnsupportedHeadError) as refusal:
            from camplug.discovery.heads import find_head
            find_head(build(case), images(1, case.size))
        assert found.reason == str(refusal.value)


@pytest.mark.parametrize("case", [c for c in SUPPORTED if c.feature_module is not None],
                         ids=lambda c: c.name)
def test_with_an_exact_head_the_layer_is_usually_the_cam_feature_module(case):
    found = find_feature_layer(build(case), images(1, case.size))
    expected = "classifier" if case.name == "conv_classifier" else case.feature_module
    assert found.module == expected and found.layout == "nchw" and found.reason == ""


def test_class_token_vit_layer_is_the_last_blocks_norm1_and_gets_gradients():
    """The class token reads the patch tokens only through the last block's attention: at the
    final norm their gradient is zero, at blocks[-1].norm1 it is not."""
    model = build(Case("cls", ClassTokenViT))
    found = find_feature_layer(model, images(1))
    assert found.grid == (4, 4) and found.feature_shape == (12, 4, 4)
    assert "last token-mixing block" in found.description
    x = images(2)
    for name, expect_gradient in (("blocks.1.norm1", True), ("norm", False)):
        tokens, logits = _output_of(model, name, x)
        tokens.retain_grad()
        logits[:, 3].sum().backward()
        patch_grad = to_grid(found, tokens.grad, (32, 32))
        assert patch_grad.shape == (2, 12, 4, 4)
        assert bool(patch_grad.abs().amax() > 1e-6) == expect_gradient, name
        model.zero_grad()


def test_to_grid_drops_prefix_tokens_and_is_a_differentiable_view():
    model = build(Case("cls", ClassTokenViT))
    found = find_feature_layer(model, images(1))
    x = images(3)
    tokens, _ = _output_of(model, found.module, x)
    with torch.no_grad():  # independent: the first block and the last block's norm by hand
        t = model.patch_embed(x) + model.pos_embed
        t = torch.cat([model.cls_token.expand(3, -1, -1), model.reg_token.expand(3, -1, -1), t], 1)
        expected = tokens_to_map(model.blocks[1].norm1(model.blocks[0](t))[:, 3:], (4, 4))
    grid = to_grid(found, tokens, (32, 32))
    assert_close(grid, expected, torch.float32, "class-token ViT grid")
    assert grid.requires_grad and grid.data_ptr() == tokens[:, 3:].data_ptr()


def test_token_grid_follows_the_input_size():
    model = build(Case("wide", lambda: AttentionTokenNet(dim=24)))
    found = find_feature_layer(model, torch.randn(1, 3, 32, 48))
    assert (found.module, found.layout, found.grid) == ("norm", "tokens", (4, 6))
    for size in ((32, 48), (32, 32), (16, 40)):
        x = torch.randn(2, 3, *size)
        tokens, _ = _output_of(model, "norm", x)
        expected, _, _ = model.cam_reference(x)
        assert_close(to_grid(found, tokens, size), expected, torch.float32, f"grid at {size}")


def test_nhwc_maps_are_recognised():
    class NHWCNet(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.stem = nn.Conv2d(3, 6, 3, stride=2, padding=1)
            self.norm = nn.LayerNorm(6)
            self.head = nn.Sequential(nn.Linear(6, 6), nn.Tanh(), nn.Linear(6, 4))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.head(self.norm(self.stem(x).permute(0, 2, 3, 1)).mean((1, 2)))

    model = NHWCNet().eval()
    found = find_feature_layer(model, torch.randn(1, 3, 16, 24))
    assert (found.module, found.layout, found.feature_shape) == ("norm", "nhwc", (6, 8, 12))
    out, _ = _output_of(model, "norm", torch.randn(2, 3, 16, 24))
    assert torch.equal(to_grid(found, out, (16, 24)), out.permute(0, 3, 1, 2))


def test_one_by_one_maps_are_skipped():
    found = find_feature_layer(build(Case("c", CollapsingHeadNet)), images(1))
    assert (found.module, found.feature_shape) == ("features", (8, 8, 8))


def test_layer_override_and_its_errors():
    model = build(next(c for c in UNSUPPORTED if c.name == "vgg"))
    found = find_feature_layer(model, images(1), layer=model.features[1])
    assert (found.module, found.layout, found.feature_shape) == ("features.1", "nchw", (8, 32, 32))
    assert "chosen with layer=" in found.description
    with pytest.raises(ValueError, match="not a spatial feature map"):
        find_feature_layer(model, images(1), layer="classifier.0")
    class WithSpare(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                                     nn.Flatten(), nn.Linear(4, 2))
            self.spare = nn.Conv2d(3, 3, 1)  # never called

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.net(x)

    unused = WithSpare()
    with pytest.raises(ValueError, match="do not depend on any output of layer `spare`"):
        find_feature_layer(unused, torch.randn(1, 3, 8, 8), layer="spare")


def test_no_spatial_map_asks_for_a_layer():
    mlp = nn.Sequential(nn.Flatten(), nn.Linear(3 * 4 * 4, 5), nn.ReLU(), nn.Linear(5, 2))
    with pytest.raises(ValueError, match="pass layer="):
        find_feature_layer(mlp, torch.randn(1, 3, 4, 4))


def test_feature_layer_is_a_frozen_record():
    found = find_feature_layer(build(UNSUPPORTED[0]), images(1))
    assert isinstance(found, FeatureLayer)
    with pytest.raises(AttributeError):
        found.module = "x"  # type: ignore[misc]
