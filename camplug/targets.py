"""Turn a user's ``target``/``topk`` into class indices [B, C], with clear errors."""

from __future__ import annotations

import numbers
from collections.abc import Sequence
from typing import Any

import torch


def _check_range(targets: torch.Tensor, num_classes: int) -> torch.Tensor:
    if targets.numel() and (targets.min() < 0 or targets.max() >= num_classes):
        bad = targets[(targets < 0) | (targets >= num_classes)][0].item()
        raise ValueError(
            f"class index {bad} is out of range: the model has {num_classes} classes "
            f"(valid indices 0..{num_classes - 1})"
        )
    return targets


def _from_tensor(target: torch.Tensor, batch: int) -> torch.Tensor:
    if target.is_floating_point() or target.is_complex() or target.dtype == torch.bool:
        raise TypeError(f"target tensor must hold integer class indices, got {target.dtype}")
    if target.dim() == 0:
        return target.long().reshape(1, 1).expand(batch, 1)
    if target.dim() == 1:
        if target.shape[0] != batch:
            raise ValueError(
                f"target has {target.shape[0]} entries but the batch has {batch} samples: "
                "give one class per sample (or an int for all)"
            )
        return target.long()[:, None]
    if target.dim() == 2:
        if target.shape[0] != batch or target.shape[1] == 0:
            raise ValueError(
                f"a 2-D target must have shape [B, C] = [{batch}, C>=1], got "
                f"{list(target.shape)}"
            )
        return target.long()
    raise ValueError(f"target must be 0-D, 1-D or 2-D, got shape {list(target.shape)}")


def _is_index(value: Any) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _from_sequence(target: Sequence[Any], batch: int) -> torch.Tensor:
    if all(_is_index(t) for t in target):
        return _from_tensor(torch.tensor([int(t) for t in target], dtype=torch.long), batch)
    if all(isinstance(t, Sequence) and not isinstance(t, str) for t in target):
        lengths = {len(t) for t in target}
        if len(lengths) > 1:
            raise ValueError(f"per-sample target lists have different lengths {sorted(lengths)}")
        if not all(_is_index(c) for row in target for c in row):
            raise TypeError("target lists must hold int class indices")
        rows = [[int(c) for c in row] for row in target]
        return _from_tensor(torch.tensor(rows, dtype=torch.long).reshape(len(rows), -1), batch)
    raise TypeError(
        "target must be None, an int, a sequence of ints (one per sample), a list of lists of "
        f"ints, or an integer tensor; got {type(target).__name__} {target!r}"
    )


def resolve_targets(
    logits: torch.Tensor, target: Any = None, topk: int | None = None
) -> torch.Tensor:
    """Class indices int64 [B, C] on the logits' device.

    target None: each sample's predicted class (C = 1), or its ``topk`` best classes.
    int: that class for every sample. Sequence / 1-D tensor of length B: one class per sample.
    2-D tensor [B, C] or list of B equal-length lists: several classes per sample.
    """
    batch, num_classes = logits.shape
    if batch == 0:
        raise ValueError("the last forward had an empty batch (B = 0): there are no maps")
    if topk is not None:
        if target is not None:
            raise ValueError("give either target or topk, not both")
        if not _is_index(topk) or not 1 <= topk <= num_classes:
            raise ValueError(f"topk must be an int in 1..{num_classes}, got {topk!r}")
        return logits.detach().topk(int(topk), dim=1).indices
    if target is None:
        return logits.detach().argmax(dim=1, keepdim=True)
    if _is_index(target):
        indices = torch.full((batch, 1), int(target), dtype=torch.long)
    elif isinstance(target, torch.Tensor):
        indices = _from_tensor(target, batch)
    elif isinstance(target, Sequence) and not isinstance(target, str):
        indices = _from_sequence(target, batch)
    else:
        raise TypeError(
            "target must be None, an int, a sequence of ints (one per sample), a list of lists "
            f"of ints, or an integer tensor; got {type(target).__name__}"
        )
    return _check_range(indices.to(logits.device), num_classes)


def check_targets(targets: torch.Tensor, batch: int, num_classes: int) -> torch.Tensor:
    """Validate resolved class indices int64 [B, C] (as given to ``class_weights``)."""
    if not isinstance(targets, torch.Tensor) or targets.dim() != 2 or targets.shape[0] != batch:
        shape = list(targets.shape) if isinstance(targets, torch.Tensor) else type(targets)
        raise ValueError(f"targets must be an int64 tensor [B={batch}, C], got {shape}")
    if targets.is_floating_point() or targets.dtype == torch.bool:
        raise TypeError(f"targets must hold integer class indices, got {targets.dtype}")
    return _check_range(targets.long(), num_classes)
