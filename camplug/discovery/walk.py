"""The modules of a model, quickly: attach runs this on every call, where
``nn.Module.modules()`` (built on ``named_modules``, which formats every name) costs twice as
much."""

from __future__ import annotations

from torch import nn


def submodules(model: nn.Module) -> list[nn.Module]:
    """``model`` and each of its submodules once (a module reachable twice is listed once),
    breadth first: the model first, then its children, then theirs."""
    found = [model]
    seen = {id(model)}
    index = 0
    while index < len(found):
        for child in found[index]._modules.values():
            if child is not None and id(child) not in seen:
                seen.add(id(child))
                found.append(child)
        index += 1
    return found
