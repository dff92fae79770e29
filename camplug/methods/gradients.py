"""Gradients of class scores with respect to a feature map, for the gradient methods.

Two ways, chosen by the capture:
- ``head_jacobian``: on an exact (GAP + affine) head, ``d logit / d A(i, j) = J / (h * w)`` with
  ``J = d logit / d pooled`` the head's Jacobian at the pooled vector: no backward through the
  model. For heads folded per sample (LayerNorm, RMSNorm after the pooling) the Jacobian is
  not the folded weight, so it is taken by autograd through the small head alone.
- ``batched_gradients``: one backward through the recorded graph for all C classes of every
  sample at once (``is_grads_batched``), for models without an exact head.
"""

from __future__ import annotations

import warnings

import torch
import torch.nn.functional as F

from ..discovery.fold import HeadStep, fold_head


def head_jacobian(
    steps: tuple[HeadStep, ...],
    states: tuple[object, ...],
    pooled: torch.Tensor,
    targets: torch.Tensor,
    num_classes: int,
) -> torch.Tensor:
    """``d logit[b, targets[b, c]] / d pooled[b]`` as fp32 [B, C, K].

    pooled: fp32 [B, K], the global average of the features; targets: int64 [B, C].
    Works under ``torch.inference_mode`` (the head is differentiated outside it).
    """
    if not any(step.needs_input for step in steps):
        weights, _ = fold_head(steps, states, targets, None, num_classes)
        return weights  # an affine head with fixed coefficients: its Jacobian is its weight
    with torch.inference_mode(False), torch.enable_grad():
        x = pooled.detach().clone().requires_grad_(True)
        out = x
        for step, state in zip(steps, states, strict=True):
            out = step.apply(out, state)
        onehots = F.one_hot(targets.to(out.device), num_classes).to(out.dtype)  # [B, C, N]
        (jacobian,) = torch.autograd.grad(
            out, x, grad_outputs=onehots.permute(1, 0, 2), is_grads_batched=True
        )
    return jacobian.permute(1, 0, 2).detach().float()  # [C, B, K] -> [B, C, K]


def batched_gradients(
    logits: torch.Tensor, activation: torch.Tensor, targets: torch.Tensor
) -> torch.Tensor:
    """``d logits[b, targets[b, c]] / d activation[b]`` for all classes in one backward.

    logits: [B, N] and activation: [B, ...] of one recorded forward (the graph is kept);
    targets: int64 [B, C]. Returns fp32 [B, C, ...]. Falls back to one backward per class
    when an operation of the model has no batched (vmap) backward rule.
    """
    onehots = F.one_hot(targets.to(logits.device), logits.shape[1]).to(logits.dtype)
    grad_outputs = onehots.permute(1, 0, 2).contiguous()  # [C, B, N]
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # vmap fallback performance notes
            (grads,) = torch.autograd.grad(
                logits, activation, grad_outputs=grad_outputs, retain_graph=True,
                is_grads_batched=True,
            )
    except RuntimeError as error:
        if "vmap" not in str(error).lower() and "batched" not in str(error).lower():
            raise
        grads = torch.stack([
            torch.autograd.grad(logits, activation, grad_outputs=g, retain_graph=True)[0]
            for g in grad_outputs
        ])
    return grads.movedim(0, 1).float()
