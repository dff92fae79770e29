"""discovery.walk.submodules against nn.Module.modules()."""

from __future__ import annotations

from models import SUPPORTED, build
from torch import nn

from camplug.discovery.walk import submodules


def test_the_same_modules_as_torch_once_each_model_first():
    for case in SUPPORTED:
        model = build(case)
        found = submodules(model)
        assert found[0] is model
        assert len(found) == len({id(m) for m in found})
        assert {id(m) for m in found} == {id(m) for m in model.modules()}, case.name


def test_shared_and_missing_children():
    shared = nn.Linear(2, 2)
    model = nn.Sequential(shared, nn.Sequential(shared, nn.ReLU()))
    model.register_module("absent", None)
    found = submodules(model)
    assert [type(m).__name__ for m in found] == ["Sequential", "Linear", "Sequential", "ReLU"]
    assert sum(m is shared for m in found) == 1


def test_a_module_that_is_its_own_descendant_is_listed_once():
    outer = nn.Sequential(nn.Linear(2, 2))
    outer[0].loop = outer  # a cycle: registered as a child of its own child
    found = submodules(outer)
    assert found == [outer, outer[0]]
