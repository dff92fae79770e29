"""CAM against Captum's attribution methods on one batch: cost, agreement and faithfulness.

``compare(model, images)`` runs CAM and the chosen Captum methods on the same batch and the same
targets, brings every map to the input resolution and reports, per method: wall time, peak
memory, Spearman rank correlation with CAM, IoU of the top-k% regions with CAM's, and the
deletion / insertion AUC of ``camplug.metrics``. The model's mode, hooks and gradients are left
as they were.

The pieces live in their own modules: ``attribution_methods`` (which methods, how they are
built), ``agreement`` (the statistics), ``profiling`` (time and memory) and
``comparison_table`` (the result); their public names are importable from here too.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import nn

from ..discovery.heads import LayerSpec, OutputSelector, select_output
from ..kernels.semantics import min_max_normalize
from .agreement import average_ranks, spearman, top_percent_iou, top_percent_mask
from .profiling import peak_memory_bytes, time_call
from .registry import (
    DEFAULT_METHODS,
    LAYER_METHODS,
    NT_TYPES,
    ChannelReduction,
    MethodContext,
    build_method,
    canonical_method,
    known_methods,
    method_context,
    to_input_maps,
)
from .table import ComparisonRow, ComparisonTable

__all__ = [
    "DEFAULT_METHODS",
    "NT_TYPES",
    "ChannelReduction",
    "ComparisonRow",
    "ComparisonTable",
    "average_ranks",
    "canonical_method",
    "compare",
    "known_methods",
    "peak_memory_bytes",
    "spearman",
    "time_call",
    "top_percent_iou",
    "top_percent_mask",
]

# progress(index, total, name): called before method ``index`` (0-based) of ``total`` runs.
MethodProgress = Callable[[int, int, str], None]

def compare(
    model: nn.Module,
    inputs: torch.Tensor,
    target: Any = None,
    methods: Sequence[str] | None = None,
    *,
    layer: LayerSpec = None,
    output: OutputSelector = None,
    top_percent: float = 10.0,
    channel_reduction: ChannelReduction = "sum",
    faithfulness: bool = True,
    faithfulness_steps: int = 20,
    warmup: int = 1,
    repeats: int = 1,
    measure_memory: bool = True,
    method_kwargs: Mapping[str, Mapping[str, Any]] | None = None,
    progress: MethodProgress | None = None,
) -> ComparisonTable:
    """Run CAM and ``methods`` on one batch and tabulate cost, agreement and faithfulness.

    model: a classifier with an exact CAM (GAP + affine head), in the mode to explain it in
    (eval, normally; a model in training mode gets a warning). inputs: images [N, C, H, W].
    target: any Captum TargetType, the same for every method; None = each predicted class.
    methods: names from ``known_methods()`` or "<nt_type>:<name>" NoiseTunnel variants
    (8 samples, noise std 0.15 x the batch's value range; like IntegratedGradients' 32 steps,
    run one batch of N images at a time to bound memory); CAM always comes first as the
    reference. None means ``DEFAULT_METHODS``, less LayerGradCam and GuidedGradCam (with a
    warning) when no module holds the pooled feature map; named explicitly, they raise then.
    layer / output: as ``camplug.attach`` (layer also serves LayerGradCam and GuidedGradCam).
    top_percent: k of the top-k% IoU. channel_reduction: how input-space maps [N, C, H, W]
    become [N, H, W] ("sum", signed, or "abs"); layer maps are upsampled bilinearly.
    faithfulness: compute deletion / insertion AUC (``camplug.metrics``, maps min-max scaled
    to [0, 1], ``faithfulness_steps`` steps). warmup / repeats: untimed and timed calls per
    method (the table shows their median and range). measure_memory: one more call records the
    peak memory (``peak_memory_bytes``). method_kwargs: extra ``attribute`` arguments per method
    name, e.g. {"IntegratedGradients": {"n_steps": 64}}. progress: called as
    ``progress(index, total, name)`` before each method runs (all its calls, then its
    faithfulness).

    The model's train/eval flags, hooks and parameter gradients are left unchanged.
    """
    from ..captum.attribution import to_class_indices

    _check_compare_args(model, inputs, top_percent, channel_reduction, faithfulness_steps,
                        warmup, repeats)
    names = _method_names(DEFAULT_METHODS if methods is None else methods)
    extra = _method_kwargs(method_kwargs, names)
    if model.training:
        warnings.warn(
            "compare() runs the model in training mode (dropout, batch statistics): call "
            "model.eval() first for inference behaviour",
            stacklevel=2,
        )
    inputs = inputs.detach()
    ctx = method_context(model, inputs, layer, output, names)
    if methods is None and ctx.layer is None and LAYER_METHODS & set(names):
        warnings.warn(
            f"LayerGradCam and GuidedGradCam left out: {ctx.layer_problem} (pass layer=)",
            stacklevel=2,
        )
        names = [n for n in names if n not in LAYER_METHODS]
    with torch.no_grad():
        targets = to_class_indices(target, select_output(model(inputs), output))
    size = (int(inputs.shape[-2]), int(inputs.shape[-1]))
    rows: list[ComparisonRow] = []
    for index, name in enumerate(names):
        if progress is not None:
            progress(index, len(names), name)
        maps, times, peak = _run(name, ctx, targets, extra.get(name, {}), size,
                                 channel_reduction, warmup, repeats, measure_memory)
        reference = rows[0].maps if rows else maps
        deletion = insertion = None
        if faithfulness:
            deletion, insertion = _faithfulness(ctx.logits_model, inputs, maps, targets,
                                                faithfulness_steps)
        rows.append(
            ComparisonRow(
                method=name,
                times=times,
                peak_memory_bytes=peak,
                spearman=spearman(maps, reference),
                top_iou=top_percent_iou(maps, reference, top_percent),
                deletion_auc=deletion,
                insertion_auc=insertion,
                maps=maps,
            )
        )
    return ComparisonTable(rows, targets, size, float(top_percent), _device_name(inputs.device),
                           warmup)


def _method_names(methods: Sequence[str]) -> list[str]:
    """Canonical names without repeats, CAM first."""
    if isinstance(methods, str):
        raise TypeError(f"methods must be a sequence of names, got the string {methods!r}")
    canonical = dict.fromkeys(canonical_method(m) for m in methods)
    return ["CAM", *(name for name in canonical if name != "CAM")]


def _method_kwargs(
    method_kwargs: Mapping[str, Mapping[str, Any]] | None, names: list[str]
) -> dict[str, dict[str, Any]]:
    extra = {canonical_method(k): dict(v) for k, v in (method_kwargs or {}).items()}
    if set(extra) - set(names):
        raise ValueError(
            f"method_kwargs names {sorted(set(extra) - set(names))}, which are not compared "
            f"(methods: {names})"
        )
    return extra


def _check_compare_args(
    model: nn.Module,
    inputs: torch.Tensor,
    top_percent: float,
    channel_reduction: str,
    faithfulness_steps: int,
    warmup: int,
    repeats: int,
) -> None:
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if not isinstance(inputs, torch.Tensor) or not inputs.is_floating_point():
        raise TypeError("inputs must be a floating-point image tensor [N, C, H, W]")
    if inputs.dim() != 4 or inputs.shape[0] == 0:
        raise ValueError(
            f"inputs must have shape [N, C, H, W] with N >= 1, got {tuple(inputs.shape)}"
        )
    if torch.is_inference_mode_enabled():
        raise RuntimeError(
            "compare() runs gradient-based Captum methods, which need autograd: call it outside "
            "torch.inference_mode()"
        )
    if not 0 < top_percent <= 100:
        raise ValueError(f"top_percent must lie in (0, 100], got {top_percent}")
    if channel_reduction not in ("sum", "abs"):
        raise ValueError(f"channel_reduction must be 'sum' or 'abs', got {channel_reduction!r}")
    if isinstance(faithfulness_steps, bool) or not isinstance(faithfulness_steps, int) or (
        faithfulness_steps < 1
    ):
        raise ValueError(f"faithfulness_steps must be a positive int, got {faithfulness_steps!r}")
    for name, value, least in (("warmup", warmup, 0), ("repeats", repeats, 1)):
        if isinstance(value, bool) or not isinstance(value, int) or value < least:
            raise ValueError(f"{name} must be an int >= {least}, got {value!r}")


# Captum's notices about what it does on purpose here (inputs it sets requires_grad on, ReLU
# hooks it removes again); silenced inside compare() only.
_CAPTUM_NOTICES = (
    r"Input Tensor \d+ did not already require gradients",
    r"Setting backward hooks on ReLU activations",
)


def _run(
    name: str,
    ctx: MethodContext,
    targets: torch.Tensor,
    extra_kwargs: dict[str, Any],
    size: tuple[int, int],
    channel_reduction: ChannelReduction,
    warmup: int,
    repeats: int,
    measure_memory: bool,
) -> tuple[torch.Tensor, tuple[float, ...], int | None]:
    """(maps fp32 [N, H, W], seconds of each timed call, peak bytes) of one method."""
    method, kwargs, space = build_method(name, ctx)
    kwargs = {**kwargs, **extra_kwargs, "target": targets}

    def call() -> Any:
        with warnings.catch_warnings():
            for message in _CAPTUM_NOTICES:
                warnings.filterwarnings("ignore", message=message, category=UserWarning)
            return method.attribute(ctx.inputs, **kwargs)

    result, times = time_call(call, ctx.inputs.device, warmup=warmup, repeats=repeats)
    peak = peak_memory_bytes(call, ctx.inputs.device) if measure_memory else None
    return to_input_maps(result, space, size, channel_reduction), times, peak


def _faithfulness(
    logits_model: nn.Module,
    inputs: torch.Tensor,
    maps: torch.Tensor,
    targets: torch.Tensor,
    steps: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Deletion and insertion AUC fp64 [N]; NaN for samples whose map is not finite."""
    from ..metrics import deletion_auc, insertion_auc

    finite = torch.isfinite(maps.flatten(1)).all(1)
    unit = min_max_normalize(maps.nan_to_num(0.0, 0.0, 0.0)).clamp(0, 1)
    deletion = deletion_auc(logits_model, inputs, unit, targets, steps=steps)
    insertion = insertion_auc(logits_model, inputs, unit, targets, steps=steps)
    nan = torch.tensor(float("nan"), dtype=torch.float64, device=deletion.device)
    finite = finite.to(deletion.device)
    return deletion.where(finite, nan), insertion.where(finite, nan)


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{device.type} ({torch.get_num_threads()} threads)"
