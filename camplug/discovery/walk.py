"""The modules of a model, quickly: attach runs this on every call, where
``nn.Module.modules()`` (built on ``named_modules``, which formats every name) costs three times
as much."""

from __future__ import annotations

from torch import nn

_FAST_LIMIT = 100_000  # a longer list may be a cycle (a module its own descendant): memo walk


def submodules(model: nn.Module) -> list[nn.Module]:
    """``model`` and each of its submodules once (a module reachable twice is listed once),
    breadth first: the model first, then its children, then theirs.

    A tree (no module reachable twice, no empty slot) is listed by one C-level extend per
    module; anything else is walked again with a memo."""
    found = [model]
    try:
        for module in found:  # the list grows while it is read: breadth first
            found += module._modules.values()
            if len(found) > _FAST_LIMIT:
                return _walk_with_memo(model)
    except AttributeError:  # an empty slot (None) was reached
        return _walk_with_memo(model)
    return found if len(set(map(id, found))) == len(found) else _walk_with_memo(model)


def _walk_with_memo(model: nn.Module) -> list[nn.Module]:
    """:func:`submodules` of a model with shared or missing children (or a cycle)."""
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
