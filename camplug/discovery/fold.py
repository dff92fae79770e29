"""Affine head operations and their folding into per-sample effective class weights.

A head maps the pooled feature vector ``p`` [B, K] to the logits [B, N] through a chain of
steps. Each step is affine in its input once the per-sample (or, for BatchNorm in training
mode, per-batch) normalization statistics are frozen at the values of the forward pass, so
``logits[i, n] == (W_eff[i, n] * p[i]).sum() + b_eff[i, n]`` holds exactly and the CAM of
class ``n`` is ``sum_k W_eff[i, n, k] * A[i, k]``.

All arithmetic is fp32. ``fold`` maps effective weights ``w`` [B, C, K_out] and biases ``b``
[B, C] on a step's output side to its input side; ``x`` is the step's input [B, K_in] (only
computed for steps with ``needs_input``) and ``state`` what ``state()`` returned at forward time.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn


class HeadStep:
    """Base class: one affine operation of the head."""

    needs_input = False
    description = ""

    def state(self) -> object:
        """Per-forward state read when the forward finishes (default: none)."""
        return None

    def apply(self, x: torch.Tensor, state: object) -> torch.Tensor:
        raise NotImplementedError

    def fold(
        self, w: torch.Tensor, b: torch.Tensor, x: torch.Tensor | None, state: object
    ) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def select(
        self, targets: torch.Tensor, x: torch.Tensor | None, state: object, num_out: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Fold starting from the logits rows ``targets`` [B, C] (this step makes the logits)."""
        w = F.one_hot(targets, num_out).float()
        return self.fold(w, w.new_zeros(targets.shape), x, state)


class LinearStep(HeadStep):
    """``y = x @ weight.T + bias`` (nn.Linear, a 1x1 conv on a 1x1 map, ``x @ M``)."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None, description: str) -> None:
        self.weight = weight
        self.bias = bias
        self.description = description

    def apply(self, x: torch.Tensor, state: object) -> torch.Tensor:
        bias = None if self.bias is None else self.bias.float()
        return F.linear(x, self.weight.float(), bias)

    def fold(self, w, b, x, state):  # noqa: ANN001
        if self.bias is not None:
            b = b + w @ self.bias.float()
        return w @ self.weight.float(), b

    def select(self, targets, x, state, num_out):  # noqa: ANN001
        rows = targets.reshape(-1)
        w = self.weight.index_select(0, rows).float().reshape(*targets.shape, -1)
        if self.bias is None:
            return w, w.new_zeros(targets.shape)
        return w, self.bias.index_select(0, rows).float().reshape(targets.shape)


class ScaleShiftStep(HeadStep):
    """``y = x * scale + shift`` with per-feature or scalar constants (BatchNorm in eval mode,
    multiplication or addition by constants)."""

    def __init__(
        self, scale: torch.Tensor | float, shift: torch.Tensor | float, description: str
    ) -> None:
        self.scale = scale
        self.shift = shift
        self.description = description

    def _constants(self, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        scale = torch.as_tensor(self.scale, device=like.device).float()
        shift = torch.as_tensor(self.shift, device=like.device).float()
        return scale, shift

    def apply(self, x: torch.Tensor, state: object) -> torch.Tensor:
        scale, shift = self._constants(x)
        return x * scale + shift

    def fold(self, w, b, x, state):  # noqa: ANN001
        scale, shift = self._constants(w)
        shift = shift.expand(w.shape[-1])
        return w * scale, b + w @ shift


class BatchNormStep(HeadStep):
    """Batch normalization over the feature vector (BatchNorm1d, or BatchNorm2d on a 1x1 map).

    In eval mode it is the constant affine map of the running statistics. When the forward used
    batch statistics (training mode, or no running statistics), those of the captured batch
    are recomputed and frozen: the map is then affine per batch, as in that forward.
    """

    needs_input = True

    def __init__(
        self,
        module: nn.Module | None,
        running_mean: torch.Tensor | None,
        running_var: torch.Tensor | None,
        weight: torch.Tensor | None,
        bias: torch.Tensor | None,
        eps: float,
        recorded_training: bool,
        channels: int,
        description: str,
    ) -> None:
        self.module = module
        self.running_mean = running_mean
        self.running_var = running_var
        self.weight = weight
        self.bias = bias
        self.eps = eps
        self.recorded_training = recorded_training
        self.channels = channels
        self.description = description

    def state(self) -> bool:
        """Whether the forward normalized with batch statistics."""
        if self.running_mean is None:
            return True
        if self.module is not None:
            return bool(self.module.training)
        return self.recorded_training

    def _scale_shift(self, x: torch.Tensor, batch_stats: object) -> tuple[torch.Tensor, ...]:
        repeat = x.shape[-1] // self.channels
        if batch_stats:
            grouped = x.reshape(x.shape[0], self.channels, repeat)
            mean = grouped.mean(dim=(0, 2))
            var = grouped.var(dim=(0, 2), unbiased=False)
        else:
            mean, var = self.running_mean.float(), self.running_var.float()
        scale = torch.rsqrt(var + self.eps)
        if self.weight is not None:
            scale = scale * self.weight.float()
        shift = -mean * scale
        if self.bias is not None:
            shift = shift + self.bias.float()
        return scale.repeat_interleave(repeat), shift.repeat_interleave(repeat)

    def apply(self, x: torch.Tensor, state: object) -> torch.Tensor:
        scale, shift = self._scale_shift(x, state)
        return x * scale + shift

    def fold(self, w, b, x, state):  # noqa: ANN001
        scale, shift = self._scale_shift(x, state)
        return w * scale, b + w @ shift


class LayerNormStep(HeadStep):
    """Layer normalization over the whole feature vector (nn.LayerNorm, ConvNeXt's LayerNorm2d
    on the pooled map, GroupNorm with one group).

    With sample i's mean ``mu_i`` and ``sigma_i = sqrt(var_i + eps)`` frozen,
    ``y = diag(gamma / sigma_i) (I - 11^T / K) x + beta``: the effective weights are
    ``V - mean_k(V)`` with ``V = w * gamma / sigma_i``, and ``beta`` joins the bias.
    """

    needs_input = True

    def __init__(
        self, weight: torch.Tensor | None, bias: torch.Tensor | None, eps: float, description: str
    ) -> None:
        self.weight = weight
        self.bias = bias
        self.eps = eps
        self.description = description

    def _inv_sigma(self, x: torch.Tensor) -> torch.Tensor:
        return torch.rsqrt(x.var(dim=-1, unbiased=False) + self.eps)

    def apply(self, x: torch.Tensor, state: object) -> torch.Tensor:
        y = (x - x.mean(dim=-1, keepdim=True)) * self._inv_sigma(x)[:, None]
        if self.weight is not None:
            y = y * self.weight.float()
        return y + self.bias.float() if self.bias is not None else y

    def fold(self, w, b, x, state):  # noqa: ANN001
        if self.bias is not None:
            b = b + w @ self.bias.float()
        v = w * self._inv_sigma(x)[:, None, None]
        if self.weight is not None:
            v = v * self.weight.float()
        return v - v.mean(dim=-1, keepdim=True), b


class RMSNormStep(HeadStep):
    """RMS normalization over the feature vector: ``y = x * gamma / sqrt(mean(x^2) + eps)``,
    with sample i's root mean square frozen."""

    needs_input = True

    def __init__(self, weight: torch.Tensor | None, eps: float, description: str) -> None:
        self.weight = weight
        self.eps = eps
        self.description = description

    def _scale(self, x: torch.Tensor) -> torch.Tensor:
        scale = torch.rsqrt(x.square().mean(dim=-1, keepdim=True) + self.eps)  # [B, 1]
        return scale * self.weight.float() if self.weight is not None else scale

    def apply(self, x: torch.Tensor, state: object) -> torch.Tensor:
        return x * self._scale(x)

    def fold(self, w, b, x, state):  # noqa: ANN001
        return w * self._scale(x)[:, None, :], b


class SampleScaleStep(HeadStep):
    """``y = x * s(x)`` (or ``x / s(x)``) with ``s`` one value per sample computed from the same
    vector (an RMS or L2 norm written functionally): ``s`` is frozen per sample, as a
    LayerNorm's statistics. ``scale`` maps the vector, reshaped to ``shape`` per sample, to a
    tensor with one element per sample."""

    needs_input = True

    def __init__(
        self, scale: Callable[[torch.Tensor], torch.Tensor], shape: tuple[int, ...],
        divide: bool, description: str,
    ) -> None:
        self.scale = scale
        self.shape = shape
        self.divide = divide
        self.description = description

    def _multiplier(self, x: torch.Tensor) -> torch.Tensor:
        """[B, 1]: the factor each sample's vector is multiplied by."""
        factor = self.scale(x.reshape(x.shape[0], *self.shape)).float().reshape(x.shape[0], 1)
        return 1.0 / factor if self.divide else factor

    def apply(self, x: torch.Tensor, state: object) -> torch.Tensor:
        return x * self._multiplier(x)

    def fold(self, w, b, x, state):  # noqa: ANN001
        return w * self._multiplier(x)[:, :, None], b


class BranchSumStep(HeadStep):
    """``y = sum_j sign_j * branch_j(x)``: chains of affine steps applied to the same vector and
    added (a distillation head ``(head(x) + head_dist(x)) / 2``). Folded as the sum of the
    branches' folds; ``state`` holds each branch's step states."""

    def __init__(
        self, branches: tuple[tuple[HeadStep, ...], ...], signs: tuple[float, ...],
        description: str,
    ) -> None:
        self.branches = branches
        self.signs = signs
        self.description = description
        self.needs_input = any(step.needs_input for branch in branches for step in branch)

    def state(self) -> tuple[tuple[object, ...], ...]:
        return tuple(tuple(step.state() for step in branch) for branch in self.branches)

    def apply(self, x: torch.Tensor, state: object) -> torch.Tensor:
        outputs = [sign * apply_chain(branch, states, x) for branch, sign, states
                   in zip(self.branches, self.signs, state, strict=True)]
        return torch.stack(outputs).sum(dim=0)

    def fold(self, w, b, x, state):  # noqa: ANN001
        total_w, total_b = None, b
        for branch, sign, states in zip(self.branches, self.signs, state, strict=True):
            w_j, b_j = fold_chain(branch, states, w * sign, torch.zeros_like(b), x)
            total_w = w_j if total_w is None else total_w + w_j
            total_b = total_b + b_j
        return total_w, total_b


def apply_chain(
    steps: tuple[HeadStep, ...], states: tuple[object, ...], x: torch.Tensor
) -> torch.Tensor:
    """The steps applied in order to ``x`` [B, K] (differentiable)."""
    for step, state in zip(steps, states, strict=True):
        x = step.apply(x, state)
    return x


def chain_inputs(
    steps: tuple[HeadStep, ...], states: tuple[object, ...], x: torch.Tensor | None
) -> list[torch.Tensor | None]:
    """Each step's input, computed up to the last step that needs it (None after)."""
    inputs: list[torch.Tensor | None] = [None] * len(steps)
    last_needed = -1  # a plain loop: torch.compile cannot trace max(..., default=)
    for i, step in enumerate(steps):
        if step.needs_input:
            last_needed = i
    for i in range(last_needed + 1):
        inputs[i] = x
        if i < last_needed:
            x = steps[i].apply(x, states[i])
    return inputs


def fold_chain(
    steps: tuple[HeadStep, ...], states: tuple[object, ...], w: torch.Tensor, b: torch.Tensor,
    x: torch.Tensor | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Fold weights ``w`` [B, C, K_out] and biases ``b`` [B, C] on the chain's output side to its
    input side; ``x`` [B, K_in] is the chain's input (None if no step needs it)."""
    return _fold_back(steps, chain_inputs(steps, states, x), states, w, b)


def fold_head(
    steps: tuple[HeadStep, ...],
    states: tuple[object, ...],
    targets: torch.Tensor,
    pooled: torch.Tensor | None,
    num_classes: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Effective weights fp32 [B, C, K] and biases fp32 [B, C] of the classes ``targets`` [B, C].

    ``pooled`` [B, K] (fp32) is the pooled feature vector; it is needed only when a step
    uses its input (normalizations), and may be None otherwise.
    """
    if not steps:
        w = F.one_hot(targets, num_classes).float()
        return w, w.new_zeros(targets.shape)
    inputs = chain_inputs(steps, states, pooled)
    w, b = steps[-1].select(targets, inputs[-1], states[-1], num_classes)
    return _fold_back(steps[:-1], inputs[:-1], states[:-1], w, b)


def _fold_back(
    steps: tuple[HeadStep, ...], inputs: list[torch.Tensor | None], states: tuple[object, ...],
    w: torch.Tensor, b: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    for step, x_in, state in zip(steps[::-1], inputs[::-1], states[::-1], strict=True):
        w, b = step.fold(w, b, x_in, state)
    return w, b
