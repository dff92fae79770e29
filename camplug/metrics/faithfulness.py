"""Faithfulness metrics that query the model: deletion and insertion AUC (Petsiuk et al.,
RISE, BMVC 2018) and Average Drop / Increase in Confidence (Chattopadhyay et al.,
Grad-CAM++, WACV 2018).

Shared rules:

- The model is called under ``torch.no_grad()`` in batches of at most ``batch_size`` images,
  on the device of its first parameter (or buffer; the images' device when it has neither),
  with images cast to that tensor's floating dtype. Its train/eval mode is left as it is:
  put it in eval mode first. It must return logits [B, classes].
- A score is the softmax probability of the sample's target class, computed in float64.
  NaN or infinite logits make it undefined: a ValueError names the samples.
- Maps [N, h, w] with values in [0, 1] are upsampled to the images' [H, W] bilinearly
  (align_corners=False, float32).
- Results are float64 (bool for increase) on the images' device.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .validation import check_cams

Model = Callable[[torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class PerturbationCurves:
    """Deletion or insertion curves: ``auc`` float64 [N]; ``fractions`` float64 [S + 1], the
    share of pixels deleted (or inserted) at each step, from 0 to 1; ``probabilities``
    float64 [N, S + 1], the target's softmax probability at each step."""

    auc: torch.Tensor
    fractions: torch.Tensor
    probabilities: torch.Tensor


def _model_placement(model: Model, images: torch.Tensor) -> tuple[torch.device, torch.dtype]:
    """Device and floating dtype the model expects its input on."""
    tensors = [*model.parameters(), *model.buffers()] if isinstance(model, torch.nn.Module) else []
    if not tensors:
        return images.device, images.dtype
    dtype = next((t.dtype for t in tensors if t.is_floating_point()), images.dtype)
    return tensors[0].device, dtype


def _check_inputs(images: torch.Tensor, cams: torch.Tensor, targets):
    """Validate shapes and ranges; return (cams, int64 targets [N]) on the images' device."""
    if not isinstance(images, torch.Tensor) or not images.is_floating_point():
        got = images.dtype if isinstance(images, torch.Tensor) else type(images).__name__
        raise TypeError(f"images must be a floating-point tensor [N, C, H, W], got {got}")
    if images.dim() != 4 or images.shape[0] == 0:
        raise ValueError(f"images must have shape [N, C, H, W], got {tuple(images.shape)}")
    check_cams(cams)
    n = images.shape[0]
    if cams.shape[0] != n:
        raise ValueError(f"got {n} images but {cams.shape[0]} maps")
    targets = torch.as_tensor(targets, device=images.device)
    if targets.dtype.is_floating_point or targets.dtype == torch.bool or targets.dim() != 1:
        raise ValueError(
            f"targets must be integer class indices [N], got dtype {targets.dtype} and "
            f"shape {tuple(targets.shape)}"
        )
    if targets.shape[0] != n:
        raise ValueError(f"got {n} images but {targets.shape[0]} targets")
    if bool((targets < 0).any()):
        raise ValueError("targets must be non-negative class indices")
    return cams.to(images.device), targets.to(torch.int64)


def _check_positive_int(value: int, name: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")


def _upsampled(cams: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Maps [N, h, w] -> float32 [N, H, W] (bilinear, align_corners=False)."""
    maps = cams.float().unsqueeze(1)
    if tuple(maps.shape[-2:]) != size:
        maps = F.interpolate(maps, size=size, mode="bilinear", align_corners=False)
    return maps.squeeze(1)


def _target_probabilities(
    model: Model, batch: torch.Tensor, targets: torch.Tensor, samples: torch.Tensor
) -> torch.Tensor:
    """Softmax probability of each target -> float64 [B]; ``samples`` [B] are the images'
    indices in the caller's batch, for error messages."""
    logits = model(batch)
    if not isinstance(logits, torch.Tensor) or logits.dim() != 2 or logits.shape[0] != len(batch):
        got = tuple(logits.shape) if isinstance(logits, torch.Tensor) else type(logits).__name__
        raise ValueError(f"the model must return logits [B, classes] for B={len(batch)}, got {got}")
    if bool((targets >= logits.shape[1]).any()):
        raise ValueError(
            f"targets must be < {logits.shape[1]} (the model's number of classes), got "
            f"{int(targets.max())}"
        )
    bad = ~torch.isfinite(logits).all(dim=1)
    if bool(bad.any()):
        which = sorted({int(i) for i in samples[bad.to(samples.device)].tolist()})
        raise ValueError(
            f"the model returned NaN or infinite logits for sample(s) {which[:10]}"
            f"{' ...' if len(which) > 10 else ''}: the target's probability is undefined"
        )
    probabilities = torch.softmax(logits.double(), dim=1)
    return probabilities.gather(1, targets[:, None].to(logits.device)).squeeze(1)


def _scores(model: Model, images: torch.Tensor, targets: torch.Tensor, batch_size: int):
    """Target probabilities of ``images`` [N, C, H, W] -> float64 [N] on the images' device."""
    device, dtype = _model_placement(model, images)
    out = []
    with torch.no_grad():
        for begin in range(0, images.shape[0], batch_size):
            batch = images[begin : begin + batch_size].to(device=device, dtype=dtype)
            samples = torch.arange(begin, begin + len(batch))
            out.append(_target_probabilities(model, batch, targets[begin : begin + len(batch)],
                                             samples))
    return torch.cat(out).to(images.device)


def gaussian_blur(images: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of ``images`` [N, C, H, W] (same shape and dtype).

    Kernel exp(-x^2 / (2 sigma^2)) normalized to sum 1 over |x| <= round(3 sigma), borders
    extended by replication (scipy.ndimage.gaussian_filter with mode="nearest",
    truncate=3.0).
    """
    if not sigma > 0:
        raise ValueError(f"sigma must be > 0, got {sigma}")
    radius = int(3.0 * sigma + 0.5)
    channels = images.shape[1]
    work = images if images.dtype == torch.float64 else images.float()
    offsets = torch.arange(-radius, radius + 1, dtype=torch.float64)
    kernel = torch.exp(-0.5 * (offsets / sigma) ** 2)
    kernel = (kernel / kernel.sum()).to(device=images.device, dtype=work.dtype)
    across = kernel.view(1, 1, 1, -1).expand(channels, 1, 1, -1)
    down = kernel.view(1, 1, -1, 1).expand(channels, 1, -1, 1)
    work = F.conv2d(F.pad(work, (radius, radius, 0, 0), mode="replicate"), across, groups=channels)
    work = F.conv2d(F.pad(work, (0, 0, radius, radius), mode="replicate"), down, groups=channels)
    return work.to(images.dtype)


def _perturbation_curves(
    model: Model,
    images: torch.Tensor,
    cams: torch.Tensor,
    targets: torch.Tensor,
    *,
    revealed: torch.Tensor,
    hidden: torch.Tensor,
    steps: int,
    batch_size: int,
) -> PerturbationCurves:
    """At step k the n_k = floor(k * H * W / steps) most salient pixels (all channels) come
    from ``revealed``, the rest from ``hidden`` (both broadcastable to [N, C, H, W])."""
    n, c, h, w = images.shape
    saliency = _upsampled(cams, (h, w)).reshape(n, h * w)
    order = torch.argsort(saliency, dim=1, descending=True, stable=True)  # ties: raster order
    positions = torch.arange(h * w, device=images.device).expand(n, -1)
    rank = torch.empty_like(order).scatter_(1, order, positions).reshape(n, 1, h, w)
    counts = torch.arange(steps + 1, device=images.device) * (h * w) // steps
    revealed = revealed.expand(n, c, h, w)
    hidden = hidden.expand(n, c, h, w)
    device, dtype = _model_placement(model, images)
    pairs = n * (steps + 1)
    curve = []
    with torch.no_grad():
        for begin in range(0, pairs, batch_size):
            pair = torch.arange(begin, min(begin + batch_size, pairs), device=images.device)
            sample, step = pair // (steps + 1), pair % (steps + 1)
            take = rank[sample] < counts[step].view(-1, 1, 1, 1)
            batch = torch.where(take, revealed[sample], hidden[sample])
            curve.append(
                _target_probabilities(
                    model, batch.to(device=device, dtype=dtype), targets[sample], sample
                )
            )
    probabilities = torch.cat(curve).to(images.device).reshape(n, steps + 1)
    fractions = counts.double() / (h * w)
    auc = torch.trapezoid(probabilities, x=fractions, dim=1)
    return PerturbationCurves(auc=auc, fractions=fractions, probabilities=probabilities)


def deletion_auc(
    model: Model,
    images: torch.Tensor,
    cams: torch.Tensor,
    targets: torch.Tensor | Sequence[int],
    *,
    steps: int = 50,
    baseline: float | torch.Tensor = 0.0,
    batch_size: int = 64,
    return_curves: bool = False,
) -> torch.Tensor | PerturbationCurves:
    """Deletion AUC per image (lower is better) -> float64 [N].

    Pixels are ranked by the upsampled map, most salient first (ties in raster order); at
    step k = 0..steps the first floor(k * H * W / steps) of them are replaced in every channel
    by ``baseline`` (a float, or a tensor broadcastable to [C, H, W]; 0 is the dataset mean
    for normalized images). The target's probability at every step, both ends included, is
    integrated with the trapezoid rule over the deleted fraction in [0, 1].
    ``return_curves=True`` returns ``PerturbationCurves`` instead.
    """
    cams, targets = _check_inputs(images, cams, targets)
    _check_positive_int(steps, "steps")
    _check_positive_int(batch_size, "batch_size")
    fill = torch.as_tensor(baseline, dtype=images.dtype, device=images.device)
    try:
        fill = fill.expand(images.shape[1:])
    except RuntimeError as error:
        raise ValueError(
            f"baseline of shape {tuple(fill.shape)} does not broadcast to the images' "
            f"[C, H, W] = {tuple(images.shape[1:])}"
        ) from error
    result = _perturbation_curves(
        model, images, cams, targets, revealed=fill, hidden=images, steps=steps,
        batch_size=batch_size,
    )
    return result if return_curves else result.auc


def insertion_auc(
    model: Model,
    images: torch.Tensor,
    cams: torch.Tensor,
    targets: torch.Tensor | Sequence[int],
    *,
    steps: int = 50,
    blur: float = 5.0,
    batch_size: int = 64,
    return_curves: bool = False,
) -> torch.Tensor | PerturbationCurves:
    """Insertion AUC per image (higher is better) -> float64 [N].

    Starts from ``gaussian_blur(images, blur)`` (sigma in pixels) and, at step k = 0..steps,
    restores the floor(k * H * W / steps) most salient pixels (ranked as in
    ``deletion_auc``) from the original; trapezoid AUC of the target's probability over the
    inserted fraction in [0, 1]. ``return_curves=True`` returns ``PerturbationCurves``.
    """
    cams, targets = _check_inputs(images, cams, targets)
    _check_positive_int(steps, "steps")
    _check_positive_int(batch_size, "batch_size")
    result = _perturbation_curves(
        model, images, cams, targets, revealed=images, hidden=gaussian_blur(images, blur),
        steps=steps, batch_size=batch_size,
    )
    return result if return_curves else result.auc


def average_drop_increase(
    model: Model,
    images: torch.Tensor,
    cams: torch.Tensor,
    targets: torch.Tensor | Sequence[int],
    *,
    batch_size: int = 64,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-image drop and increase in confidence -> (float64 [N], bool [N]).

    With Y the target's probability on the image and O on E = map * image (the map upsampled
    to the image and applied to every channel): drop = max(0, Y - O) / Y (0 when Y
    underflows to 0) and increase = Y < O. Aggregate with ``summarize_drop_increase``.
    """
    cams, targets = _check_inputs(images, cams, targets)
    _check_positive_int(batch_size, "batch_size")
    explanation = _upsampled(cams, tuple(images.shape[-2:])).unsqueeze(1).to(images.dtype) * images
    original = _scores(model, images, targets, batch_size)
    masked = _scores(model, explanation, targets, batch_size)
    drop = torch.where(
        original > 0, (original - masked).clamp_min(0) / original.clamp_min(1e-300), 0.0
    )
    return drop, original < masked


def summarize_drop_increase(drop: torch.Tensor, increase: torch.Tensor) -> tuple[float, float]:
    """(Average Drop, Increase in Confidence) in percent: mean(drop) * 100,
    mean(increase) * 100."""
    if drop.shape != increase.shape or drop.dim() != 1 or drop.numel() == 0:
        raise ValueError(
            f"drop and increase must be non-empty [N] tensors of one shape, got "
            f"{tuple(drop.shape)} and {tuple(increase.shape)}"
        )
    return float(drop.double().mean()) * 100.0, float(increase.double().mean()) * 100.0
