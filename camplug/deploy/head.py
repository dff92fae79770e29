"""The gradient methods' closed form for a deployable model, in tensor code that every tracer
follows. ``jacobian_rows`` is ``camplug.methods.gradients.head_jacobian`` without autograd:
``torch.autograd.grad`` breaks Dynamo's graph and fails ``torch.export``, and
``torch.func.vjp`` fails the exporter too (a functorch-wrapped view of a parameter), so the
pullback of each step is written out: affine steps with fixed coefficients pull back like they
fold; per-sample normalizations add the derivative of their statistics (formulas at
:func:`_pullback`). The CAM weights need nothing of the kind: ``fold_head`` traces as it is.

Shapes: steps map ``x`` fp32 [B, K_in] to [B, K_out]; weights ``w`` fp32 [B, C, K].
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..discovery.fold import (
    BatchNormStep,
    BranchSumStep,
    HeadStep,
    LayerNormStep,
    LinearStep,
    RMSNormStep,
    ScaleShiftStep,
    chain_inputs,
)

_FIXED = (LinearStep, ScaleShiftStep)  # coefficients that do not depend on the input


def check_differentiable(steps: tuple[HeadStep, ...]) -> None:
    """Raise ValueError naming the first step whose Jacobian :func:`jacobian_rows` cannot write
    out (a per-sample scale computed by arbitrary code, e.g. a functional RMS norm)."""
    for step in steps:
        if isinstance(step, BranchSumStep):
            for branch in step.branches:
                check_differentiable(branch)
        elif not isinstance(step, (*_FIXED, BatchNormStep, LayerNormStep, RMSNormStep)):
            raise ValueError(
                f"the gradient methods cannot be deployed on this head: its step "
                f"'{step.description}' ({type(step).__name__}) has no closed-form Jacobian "
                "here; use method='cam', or camplug.explain"
            )


def jacobian_rows(steps: tuple[HeadStep, ...], states: tuple[object, ...], targets: torch.Tensor,
                  pooled: torch.Tensor, num_classes: int) -> torch.Tensor:
    """``d logit[b, targets[b, c]] / d pooled[b]`` fp32 [B, C, K] at ``pooled`` fp32 [B, K]."""
    if steps and isinstance(steps[-1], LinearStep):
        rows = steps[-1].select(targets, None, None, num_classes)[0]
        return _pullback_chain(steps[:-1], states[:-1], rows, pooled)
    return _pullback_chain(steps, states, F.one_hot(targets, num_classes).float(), pooled)


def _pullback_chain(steps: tuple[HeadStep, ...], states: tuple[object, ...], w: torch.Tensor,
                    x: torch.Tensor) -> torch.Tensor:
    inputs = chain_inputs(steps, states, x)
    for step, x_in, state in zip(steps[::-1], inputs[::-1], states[::-1], strict=True):
        w = _pullback(step, w, x_in, state)
    return w


def _pullback(step: HeadStep, w: torch.Tensor, x: torch.Tensor | None,
              state: object) -> torch.Tensor:
    """``w @ d step(x) / d x``: [B, C, K_out] -> [B, C, K_in].

    LayerNorm, ``y = gamma * (x - mu) / sigma + beta``: with ``W = fold(w)`` (the weights with
    the statistics frozen) and ``x_hat = (x - mu) / sigma``, ``W - x_hat (W . x_hat) / K``.
    RMS norm, ``y = gamma * x * r`` with ``r = (mean(x^2) + eps)^(-1/2)``:
    ``W - x (W . x) r^2 / K``.
    """
    zeros = w.new_zeros(w.shape[:2])
    if isinstance(step, BranchSumStep):
        total = None
        for branch, sign, branch_states in zip(step.branches, step.signs, state, strict=True):
            part = _pullback_chain(branch, branch_states, w * sign, x)
            total = part if total is None else total + part
        return total
    if isinstance(step, BatchNormStep) and state:
        raise RuntimeError(
            f"the head's BatchNorm ('{step.description}') normalizes with batch statistics "
            "(training mode): its Jacobian couples the samples; call model.eval(), or use "
            "method='cam'"
        )
    folded, _ = step.fold(w, zeros, x, state)
    if isinstance(step, LayerNormStep):
        centred = x - x.mean(dim=-1, keepdim=True)
        x_hat = (centred * torch.rsqrt(x.var(dim=-1, unbiased=False) + step.eps)[:, None])[:, None]
        return folded - x_hat * (folded * x_hat).sum(dim=-1, keepdim=True) / x.shape[-1]
    if isinstance(step, RMSNormStep):
        r_squared = 1.0 / (x.square().mean(dim=-1) + step.eps)  # [B]
        x3 = x[:, None]
        scale = (folded * x3).sum(dim=-1, keepdim=True) * r_squared[:, None, None]
        return folded - x3 * scale / x.shape[-1]
    return folded  # fixed coefficients (Linear, constant scale, eval BatchNorm): as they fold
