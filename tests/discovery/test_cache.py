"""The per-model head cache: repeated attaches to an unchanged model skip the probe forward;
anything discovery depends on invalidates; the cache never keeps a model alive."""

from __future__ import annotations

import gc
import weakref

import pytest
import torch
from models import SUPPORTED, UNSUPPORTED, build, images
from torch import nn

import camplug
from camplug.captum.attribution import ClassActivationMap
from camplug.discovery import cache
from camplug.discovery.cache import HEAD_CACHE, _Plan, model_fingerprint, structure_of
from camplug.discovery.heads import probing

CASES = {case.name: case for case in SUPPORTED}


class ProbeCounter:
    """Counts the probe forwards of ``model`` (a user pre-hook, seen by the fingerprint as
    one constant hook)."""

    def __init__(self, model: nn.Module) -> None:
        self.probes = 0
        self.handle = model.register_forward_pre_hook(self._count)

    def _count(self, module: nn.Module, args: tuple) -> None:
        self.probes += probing()


def maps_of(model: nn.Module, x: torch.Tensor, **attach: object) -> torch.Tensor:
    with camplug.attach(model, **attach) as capture, torch.no_grad():
        model(x)
        return capture.maps(topk=2, normalize=False, size="features")


def no_forward_hooks(model: nn.Module) -> bool:
    return all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())


def test_second_attach_skips_the_probe():
    model = build(CASES["resnet"])
    counter = ProbeCounter(model)
    first = maps_of(model, images(2))
    assert counter.probes == 1 and model in HEAD_CACHE
    again = maps_of(model, images(5, seed=3))  # another batch size: same key
    assert counter.probes == 1
    assert again.shape == (5, 2, 8, 8) and first.shape == (2, 2, 8, 8)
    counter.handle.remove()
    assert no_forward_hooks(model)


def test_explain_and_class_activation_map_probe_once():
    model = build(CASES["densenet"])
    counter = ProbeCounter(model)
    x = images(3)
    results = [camplug.explain(model, x) for _ in range(3)]
    assert counter.probes == 1
    assert all(torch.equal(r.maps, results[0].maps) for r in results)
    cam = ClassActivationMap(model)
    attributions = [cam.attribute(x, target=t) for t in (0, 1, 2)]
    assert counter.probes == 1  # same model, same call signature as explain
    assert not torch.equal(attributions[0], attributions[1])


@pytest.mark.parametrize("case", SUPPORTED, ids=lambda c: c.name)
def test_cached_head_gives_the_same_maps_as_a_fresh_discovery(case):
    model, x = build(case), images(2, case.size)
    counter = ProbeCounter(model)
    fresh = maps_of(model, x)
    fresh_result = camplug.explain(model, x)  # cached when the model allows it
    HEAD_CACHE.clear()
    with camplug.attach(model) as capture, torch.no_grad():
        model(x)
        fresh_head = capture.head
    with camplug.attach(model) as capture, torch.no_grad():
        model(x)
        cached_head = capture.head
    cached = maps_of(model, x)
    cached_result = camplug.explain(model, x)
    self_mutating = case.name == "shared_pool"  # its forward writes self.last_aux: no cache
    assert counter.probes == (6 if self_mutating else 2)
    assert (cached_head is fresh_head) != self_mutating
    assert torch.equal(cached, fresh)
    assert torch.equal(cached_result.maps, fresh_result.maps)
    assert torch.equal(cached_result.logits, fresh_result.logits)


def test_replacing_a_submodule_rediscovers_and_uses_it():
    model, x = build(CASES["resnet"]), images(2)
    counter = ProbeCounter(model)
    before = maps_of(model, x)
    torch.manual_seed(5)
    model.fc = nn.Linear(16, 7)
    after = maps_of(model, x)
    assert counter.probes == 2
    HEAD_CACHE.clear()
    assert torch.equal(after, maps_of(model, x))
    assert not torch.equal(after, before)


def test_changed_layer_argument_rediscovers():
    model, x = build(CASES["resnet"]), images(2)
    counter = ProbeCounter(model)
    maps_of(model, x)
    with camplug.attach(model, "layer2") as capture, torch.no_grad():
        model(x)
        assert capture.head.capture.kind == "module_output"
    assert counter.probes == 2
    maps_of(model, x, layer=model.layer2)  # the same layer given as a module: cached
    assert counter.probes == 2


def test_token_model_input_size_is_part_of_the_key():
    model = build(CASES["token_mean"])
    counter = ProbeCounter(model)
    with camplug.attach(model) as capture, torch.no_grad():
        model(images(1))
        assert capture.head.token_grid == (4, 4)
    with camplug.attach(model) as capture, torch.no_grad():
        model(torch.randn(2, 3, 32, 48))
        assert capture.head.token_grid == (4, 6) and capture.head.probe_input_size == (32, 48)
        assert capture.features.shape == (2, 12, 4, 6)
    assert counter.probes == 2
    with camplug.attach(model) as capture, torch.no_grad():
        model(images(3))
        assert capture.head.token_grid == (4, 4)
    assert counter.probes == 2  # both sizes stay cached


def test_in_place_weight_update_and_dtype_change_rediscover():
    model, x = build(CASES["batchnorm_head"]), images(2)
    counter = ProbeCounter(model)
    maps_of(model, x)
    with torch.no_grad():
        model.fc.weight.mul_(-1.0)  # e.g. an optimizer step
    assert torch.equal(maps_of(model, x), _fresh(model, x))
    assert counter.probes == 3  # the update, then the fresh discovery after clear()
    model.double()
    with camplug.attach(model) as capture, torch.no_grad():
        model(x.double())
        assert capture.head.feature_dtype == torch.float64
    assert counter.probes == 4


def test_attribute_and_hook_changes_rediscover():
    model, x = build(CASES["vit"]), images(2)
    counter = ProbeCounter(model)
    maps_of(model, x)
    model.num_prefix_tokens = 1  # averages the register tokens too: now refused
    with camplug.attach(model) as capture, torch.no_grad():
        model(x)
        with pytest.raises(camplug.UnsupportedHeadError):
            capture.maps()
    model.num_prefix_tokens = 3
    maps_of(model, x)
    handle = model.head.register_forward_hook(lambda m, args, out: out * 2.0)
    doubled = maps_of(model, x)
    # start, the changed attribute (head refused, then the gradient layer found: 2 probes), the
    # attribute back (its first state is still cached), the hook
    assert counter.probes == 4
    with camplug.attach(model) as capture, torch.no_grad():
        model(x)
        assert any("scaling" in step for step in capture.head.folded)
    handle.remove()
    assert not torch.equal(doubled, maps_of(model, x))


def test_output_selector_is_part_of_the_key():
    model, x = build(CASES["resnet"]), images(2)
    counter = ProbeCounter(model)

    def select(out: torch.Tensor) -> torch.Tensor:
        return out

    maps_of(model, x, output=select)
    maps_of(model, x, output=select)
    assert counter.probes == 1
    maps_of(model, x, output=lambda out: out)  # another callable: not assumed equal
    assert counter.probes == 2


def test_the_entry_dies_with_the_model():
    gc.collect()  # models of earlier tests
    model = build(CASES["convnext"])
    camplug.explain(model, images(2))
    assert model in HEAD_CACHE
    count = len(HEAD_CACHE)
    model_ref, weight_ref = weakref.ref(model), weakref.ref(model.classifier[2].weight)
    del model
    gc.collect()
    assert model_ref() is None and weight_ref() is None
    assert len(HEAD_CACHE) == count - 1


def test_a_replaced_model_part_is_released_at_the_next_attach():
    model, x = build(CASES["resnet"]), images(2)
    maps_of(model, x)
    old_fc = weakref.ref(model.fc)
    model.fc = nn.Linear(16, 7)
    maps_of(model, x)
    gc.collect()
    assert old_fc() is None


def test_a_cached_attach_leaves_the_model_as_it_was():
    model, x = build(CASES["densenet"]), images(2)
    model.classifier.train()  # mixed flags, restored exactly
    maps_of(model, x)
    flags = [m.training for m in model.modules()]
    state = {k: v.clone() for k, v in model.state_dict().items()}
    with camplug.attach(model) as capture:
        model(x)
        capture.maps()
    assert no_forward_hooks(model)
    assert [m.training for m in model.modules()] == flags
    after = model.state_dict()
    assert all(torch.equal(after[k], v) for k, v in state.items())


def _fresh(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    HEAD_CACHE.clear()
    return maps_of(model, x)


def test_a_model_whose_mode_switch_changes_its_state_hits_the_cache():
    """LeViT clears its attention-bias cache in train() and fills it in eval forwards: the
    states with the cache empty and filled are both cached, so the cycle probes twice at most."""
    model, x = build(CASES["levit"]), images(2)
    counter = ProbeCounter(model)
    expected = maps_of(model, x)
    for _ in range(4):
        model.train()
        model.eval()
        assert torch.equal(maps_of(model, x), expected)
    maps_of(model, x)  # the cache filled by the last forward
    assert counter.probes <= 2


class Config:
    def __init__(self) -> None:
        self.scale = 1.0


def _mutations() -> list[tuple[str, object]]:
    def transpose(m):  # same storage, version and shape: only the strides change
        m.fc.weight.data = m.fc.weight.data.t()

    def nested(m):
        m.config.scale = 2.0

    def replace_buffer(m):
        m.bn1.running_mean = m.bn1.running_mean.clone()

    def monkeypatch(m):
        type(m.layer1[0]).forward = lambda self, x: x

    return [
        ("nothing", lambda m: None),
        ("mode flags", lambda m: m.train()),
        ("in-place weight", lambda m: m.fc.weight.detach().mul_(2.0)),  # shares the version
        ("weight .data transposed", transpose),
        ("int attribute", lambda m: setattr(m.conv1, "groups", 2)),
        ("nested object attribute", nested),
        ("list attribute in place", lambda m: m.names.append("x")),
        ("dict attribute in place", lambda m: m.table.update(b=2)),
        ("set attribute in place", lambda m: m.tags.add("x")),
        ("a buffer left out of the state dict", lambda m: m.bn1._non_persistent_buffers_set.add(
            "running_mean")),
        ("deleted parameter", lambda m: delattr(m.fc, "bias")),
        ("replaced submodule", lambda m: setattr(m, "fc", nn.Linear(16, 7))),
        ("replaced buffer", replace_buffer),
        ("new attribute", lambda m: setattr(m.layer2, "extra", 3)),
        ("attribute named like a hook", lambda m: setattr(m.conv1, "pre_hook_scale", 2.0)),
        ("to another dtype", lambda m: m.double()),
        ("user hook", lambda m: m.fc.register_forward_hook(lambda *a: None)),
        ("class forward", monkeypatch),
    ]


@pytest.mark.parametrize("torch_guards", [True, False], ids=["torch tensor check", "python"])
@pytest.mark.parametrize(("what", "change"), _mutations(), ids=[w for w, _ in _mutations()])
def test_the_fast_plan_matches_only_when_the_fingerprint_does(what, change, torch_guards,
                                                              monkeypatch):
    monkeypatch.setattr(cache, "USE_TORCH_GUARDS", torch_guards)
    class Bottleneck(type(build(CASES["resnet"]).layer1[0])):  # a class of its own to patch
        pass

    model = build(CASES["resnet"])
    model.layer1[0].__class__ = Bottleneck
    model.config, model.names, model.table, model.tags = Config(), ["a"], {"a": 1}, {"a"}
    before = model_fingerprint(model)
    plan = _Plan.build(model)
    assert plan is not None and plan.matches(model)
    assert (plan.tensor_guards is not None) == torch_guards
    assert plan.structure == structure_of(model)
    change(model)
    same = model_fingerprint(model).matches(before)
    # the probe runs in eval and never reads which buffers a state dict leaves out
    assert same == (what in ("nothing", "mode flags", "a buffer left out of the state dict"))
    assert plan.matches(model) == same


def test_the_feature_layer_of_a_model_without_exact_head_is_cached_too():
    """Gradient methods on VGG-like models re-probe once, not on every explain call."""
    case = next(c for c in UNSUPPORTED if c.name == "vgg")
    model = build(case).eval()
    x = images(2, case.size)
    counter = ProbeCounter(model)  # registered first: part of the cached fingerprint
    first = camplug.explain(model, x, method="gradcam")
    probes = counter.probes
    again = camplug.explain(model, x, method="gradcam")
    assert probes >= 1 and counter.probes == probes and again.method == "gradcam"
    assert torch.equal(first.maps, again.maps)
    counter.handle.remove()


def test_swapping_tensors_still_works_after_an_attach_and_is_seen():
    """The cache holds no weak reference to a tensor (torch.utils.swap_tensors, which
    Module.to uses in swap mode, refuses those): a cached model converts in swap mode, and the
    next attach discovers again (its fingerprint and fast plan both changed)."""
    model, x = build(CASES["resnet"]), images(2)
    counter = ProbeCounter(model)
    maps_of(model, x)
    plan = _Plan.build(model)
    before = model_fingerprint(model)
    swap = torch.__future__.get_swap_module_params_on_conversion()
    torch.__future__.set_swap_module_params_on_conversion(True)
    try:
        model.to(torch.float64)
    finally:
        torch.__future__.set_swap_module_params_on_conversion(swap)
    assert model.fc.weight.dtype == torch.float64
    assert not plan.matches(model) and not model_fingerprint(model).matches(before)
    maps_of(model, x.double())
    assert counter.probes == 2


@pytest.mark.parametrize("context", [torch.inference_mode, lambda: torch.autocast("cpu")],
                         ids=["inference mode", "autocast"])
def test_the_plan_holds_under_another_dispatch_state(context):
    """torch's tensor check compares the dispatch state it was made in: under another one the
    plan still matches (compared from Python) and still sees a change."""
    model = build(CASES["resnet"])
    plan = _Plan.build(model)
    with context():
        assert plan.matches(model)
    model.fc.weight.data = model.fc.weight.data.t()
    with context():
        assert not plan.matches(model)


def test_a_plan_takes_the_dict_versions_of_the_state_it_recognised():
    """With torch's dict version tags, a test whose dicts are untouched skips the attribute
    comparisons; train()/eval() touch every module's dict without changing the state: the plan
    still matches (compared in full) and keeps the new versions for the next test."""
    model = build(CASES["resnet"]).eval()
    plan = _Plan.build(model)
    if plan.versions is None:
        pytest.skip("this torch has no dict version tags")
    before = plan.versions
    assert plan.matches(model) and plan.versions == before
    model.train()
    model.eval()
    assert plan.matches(model) and plan.versions != before
    model.conv1.stride = (3, 3)  # a change
    assert not plan.matches(model)
