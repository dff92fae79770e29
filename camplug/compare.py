"""CAM against Captum's attribution methods on one batch: cost, agreement and faithfulness.

``compare(model, images)`` runs CAM and the chosen Captum methods on the same batch and the same
targets, brings every map to the input resolution and reports, per method: wall time, peak
memory, Spearman rank correlation with CAM, IoU of the top-k% regions with CAM's, and the
deletion / insertion AUC of ``camplug.metrics``. The model's mode, hooks and gradients are left
as they were.
"""

from __future__ import annotations

import html
import math
import statistics
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from .heads import LayerSpec, OutputSelector, find_head, layer_name, select_output

ChannelReduction = Literal["sum", "abs"]
Space = Literal["layer", "input"]  # layer maps [N, 1, h, w] or input maps [N, C, H, W]

DEFAULT_METHODS: tuple[str, ...] = (
    "CAM",
    "LayerGradCam",
    "GuidedGradCam",
    "Saliency",
    "IntegratedGradients",
    "InputXGradient",
    "smoothgrad:Saliency",
)


# --------------------------------------------------------------------------- agreement statistics
def average_ranks(values: torch.Tensor) -> torch.Tensor:
    """Ranks 1..P of each row of ``values`` [N, P]; tied values share their mean rank. fp64."""
    if values.dim() != 2:
        raise ValueError(f"values must have shape [N, P], got {tuple(values.shape)}")
    n, p = values.shape
    sorted_values, order = values.sort(dim=1, stable=True)
    starts_group = torch.ones_like(sorted_values, dtype=torch.bool)
    starts_group[:, 1:] = sorted_values[:, 1:] != sorted_values[:, :-1]
    row_offset = torch.arange(n, device=values.device).unsqueeze(1) * p
    group = (starts_group.long().cumsum(1) - 1 + row_offset).flatten()
    position = torch.arange(p, dtype=torch.float64, device=values.device).repeat(n)
    first = torch.full((n * p,), math.inf, dtype=torch.float64, device=values.device)
    first = first.scatter_reduce(0, group, position, reduce="amin")
    last = torch.full_like(first, -math.inf).scatter_reduce(0, group, position, reduce="amax")
    sorted_ranks = ((first[group] + last[group]) / 2 + 1).view(n, p)
    return torch.empty_like(sorted_ranks).scatter_(1, order, sorted_ranks)


def spearman(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Spearman rank correlation of each sample's maps; a, b [N, ...] -> fp64 [N].

    Ties get average ranks (as scipy.stats.spearmanr); a constant map gives NaN.
    """
    ra, rb = (average_ranks(m.flatten(1)) for m in _same_shape(a, b))
    ra = ra - ra.mean(1, keepdim=True)
    rb = rb - rb.mean(1, keepdim=True)
    denominator = (ra.square().sum(1) * rb.square().sum(1)).sqrt()
    return (ra * rb).sum(1) / denominator.where(denominator > 0, torch.nan)


def top_percent_mask(maps: torch.Tensor, percent: float) -> torch.Tensor:
    """bool [N, ...]: the pixels of each map at or above its k-th largest value.

    k = ceil(percent / 100 * pixels) (at least 1); pixels tied with the k-th value are kept, so a
    constant map selects everything.
    """
    if not 0 < percent <= 100:
        raise ValueError(f"percent must lie in (0, 100], got {percent}")
    flat = maps.flatten(1)
    k = max(1, math.ceil(percent / 100 * flat.shape[1]))
    kth_largest = flat.topk(k, dim=1).values[:, -1:]
    return (flat >= kth_largest).view(maps.shape)


def top_percent_iou(a: torch.Tensor, b: torch.Tensor, percent: float) -> torch.Tensor:
    """IoU of the top-``percent``% regions of each sample's two maps; [N, ...] -> fp64 [N]."""
    a, b = _same_shape(a, b)
    mask_a = top_percent_mask(a, percent).flatten(1)
    mask_b = top_percent_mask(b, percent).flatten(1)
    intersection = (mask_a & mask_b).sum(1).double()
    return intersection / (mask_a | mask_b).sum(1).double()


def _same_shape(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    if a.shape != b.shape or a.dim() < 2:
        raise ValueError(
            f"maps must have the same shape [N, ...], got {tuple(a.shape)} and {tuple(b.shape)}"
        )
    return a, b


# --------------------------------------------------------------------------------- measurement
def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_call(
    fn: Callable[[], Any], device: torch.device, *, warmup: int = 1, repeats: int = 1
) -> tuple[Any, float]:
    """Run ``fn`` ``warmup`` times untimed, then ``repeats`` times; (last result, median s)."""
    if warmup < 0 or repeats < 1:
        raise ValueError(f"need warmup >= 0 and repeats >= 1, got {warmup} and {repeats}")
    for _ in range(warmup):
        fn()
    seconds = []
    result = None
    for _ in range(repeats):
        _synchronize(device)
        start = time.perf_counter()
        result = fn()
        _synchronize(device)
        seconds.append(time.perf_counter() - start)
    return result, statistics.median(seconds)


def peak_memory_bytes(fn: Callable[[], Any], device: torch.device) -> int | None:
    """Peak bytes allocated by ``fn`` above what was allocated when it started.

    CUDA: the caching allocator's peak statistic. CPU: the running total of the allocation and
    free events recorded by ``torch.profiler`` (tracemalloc and ru_maxrss do not see tensor
    memory, or cannot be reset). None when this torch build records no such events.
    """
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        start = torch.cuda.memory_allocated(device)
        fn()
        torch.cuda.synchronize(device)
        return torch.cuda.max_memory_allocated(device) - start
    if device.type != "cpu":
        return None
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    results = getattr(prof.profiler, "kineto_results", None)
    if results is None:
        return None
    events = [e for e in results.events() if e.name() == "[memory]"]
    events.sort(key=lambda e: e.start_ns())
    running = peak = 0
    for event in events:
        running += event.nbytes()
        peak = max(peak, running)
    return peak


# ------------------------------------------------------------------------------------ the table
@dataclass(frozen=True)
class ComparisonRow:
    """One method's results. Per-sample values are fp64 [N]; ``maps`` fp32 [N, H, W].

    ``spearman`` and ``top_iou`` compare with CAM (1.0 for CAM itself unless its map is
    constant); ``deletion_auc`` (lower is better) and ``insertion_auc`` (higher is better)
    are None when faithfulness was not computed.
    """

    method: str
    seconds: float
    peak_memory_bytes: int | None
    spearman: torch.Tensor
    top_iou: torch.Tensor
    deletion_auc: torch.Tensor | None
    insertion_auc: torch.Tensor | None
    maps: torch.Tensor = field(repr=False)

    def summary(self) -> dict[str, float | str | None]:
        """Means over the batch (NaN samples ignored), seconds and MiB."""
        return {
            "method": self.method,
            "seconds": self.seconds,
            "peak_memory_mib": None
            if self.peak_memory_bytes is None
            else self.peak_memory_bytes / 2**20,
            "spearman": _nanmean(self.spearman),
            "top_iou": _nanmean(self.top_iou),
            "deletion_auc": None if self.deletion_auc is None else _nanmean(self.deletion_auc),
            "insertion_auc": None if self.insertion_auc is None else _nanmean(self.insertion_auc),
        }


def _nanmean(values: torch.Tensor) -> float:
    finite = values[~values.isnan()]
    return float("nan") if finite.numel() == 0 else float(finite.mean())


@dataclass(frozen=True)
class ComparisonTable:
    """The rows of ``compare`` (CAM first) and the settings they were computed with."""

    rows: list[ComparisonRow]
    targets: torch.Tensor
    resolution: tuple[int, int]
    top_percent: float
    device: str

    def _header(self) -> list[str]:
        k = f"{self.top_percent:g}"
        return [
            "method",
            "time (ms)",
            "peak mem (MiB)",
            "Spearman vs CAM",
            f"top-{k}% IoU vs CAM",
            "deletion AUC (lower better)",
            "insertion AUC (higher better)",
        ]

    def _cells(self) -> list[list[str]]:
        cells = []
        for row in self.rows:
            s = row.summary()
            cells.append(
                [
                    row.method,
                    f"{1000 * row.seconds:.1f}",
                    _fmt(s["peak_memory_mib"], ".1f"),
                    _fmt(s["spearman"], ".3f"),
                    _fmt(s["top_iou"], ".3f"),
                    _fmt(s["deletion_auc"], ".3f"),
                    _fmt(s["insertion_auc"], ".3f"),
                ]
            )
        return cells

    def _caption(self) -> str:
        h, w = self.resolution
        return (
            f"{self.targets.shape[0]} images at {h}x{w} on {self.device}; "
            "means over the batch; every map compared at the input resolution"
        )

    def to_markdown(self) -> str:
        """A GitHub-flavoured Markdown table, preceded by a one-line caption."""
        header = self._header()
        lines = [
            self._caption(),
            "",
            "| " + " | ".join(header) + " |",
            "| --- | " + " | ".join("---:" for _ in header[1:]) + " |",
        ]
        lines += ["| " + " | ".join(c.replace("|", "\\|") for c in r) + " |" for r in self._cells()]
        return "\n".join(lines) + "\n"

    def to_html(self) -> str:
        """A self-contained ``<table>`` with a caption (text HTML-escaped)."""
        head = "".join(f"<th>{html.escape(h)}</th>" for h in self._header())
        body = "".join(
            "<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>"
            for r in self._cells()
        )
        return (
            f"<table><caption>{html.escape(self._caption())}</caption>"
            f"<thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"
        )

    def _repr_html_(self) -> str:
        return self.to_html()

    def __str__(self) -> str:
        return self.to_markdown()


def _fmt(value: float | str | None, spec: str) -> str:
    if not isinstance(value, float):
        return "n/a"
    return "nan" if math.isnan(value) else format(value, spec)


# ----------------------------------------------------------------------------- method registry
NT_TYPES: tuple[str, ...] = ("smoothgrad", "smoothgrad_sq", "vargrad")


class _LogitsOnly(nn.Module):
    """Wraps a model whose output is a tuple/dict so that calling it returns the logits."""

    def __init__(self, model: nn.Module, output: OutputSelector) -> None:
        super().__init__()
        self.model = model
        self.output = output

    def forward(self, *args: Any) -> torch.Tensor:
        return select_output(self.model(*args), self.output)


@dataclass(frozen=True)
class _Context:
    """What every recipe may need. ``layer``/``layer_input``: the module (and whether its input
    rather than its output) holding the tensor that feeds the pooling, for Captum's layer
    methods; ``layer_problem`` says why there is none."""

    model: nn.Module
    logits_model: nn.Module
    inputs: torch.Tensor
    output: OutputSelector
    cam_layer: nn.Module | None
    layer: nn.Module | None
    layer_input: bool
    layer_problem: str | None


@dataclass(frozen=True)
class _Recipe:
    """How to build and call one method. ``captum_class``: its name in ``captum.attr`` (None
    for camplug's CAM); ``space``: "layer" maps [N, 1, h, w] or "input" maps [N, C, H, W]."""

    captum_class: str | None
    space: Space
    build: Callable[[_Context, Any], Any]
    kwargs: Callable[[_Context], dict[str, Any]]


def _no_kwargs(ctx: _Context) -> dict[str, Any]:
    return {}


def _layer_kwargs(ctx: _Context) -> dict[str, Any]:
    return {"attribute_to_layer_input": ctx.layer_input}


def _occlusion_kwargs(ctx: _Context) -> dict[str, Any]:
    channels, height, width = ctx.inputs.shape[1:]
    side = max(1, min(height, width) // 8)
    stride = max(1, side // 2)
    return {
        "sliding_window_shapes": (channels, side, side),
        "strides": (channels, stride, stride),
        "baselines": 0.0,
    }


def _layer_of(ctx: _Context, method: str) -> nn.Module:
    if ctx.layer is None:
        raise ValueError(
            f"{method} needs the module whose output (or input) is the tensor feeding the global "
            f"pooling, and there is none: {ctx.layer_problem}. Pass layer= to compare(), or "
            f"leave {method} out of methods"
        )
    return ctx.layer


def _build_cam(ctx: _Context, cls: Any) -> Any:
    from .captum_attr import ClassActivationMap

    return ClassActivationMap(ctx.model, ctx.cam_layer, output=ctx.output)


_RECIPES: dict[str, _Recipe] = {
    "CAM": _Recipe(None, "layer", _build_cam, _no_kwargs),
    "LayerGradCam": _Recipe(
        "LayerGradCam",
        "layer",
        lambda ctx, cls: cls(ctx.logits_model, _layer_of(ctx, "LayerGradCam")),
        _layer_kwargs,
    ),
    "GuidedGradCam": _Recipe(
        "GuidedGradCam",
        "input",
        lambda ctx, cls: cls(ctx.logits_model, _layer_of(ctx, "GuidedGradCam")),
        _layer_kwargs,
    ),
    "Saliency": _Recipe("Saliency", "input", lambda ctx, cls: cls(ctx.logits_model), _no_kwargs),
    "IntegratedGradients": _Recipe(
        "IntegratedGradients",
        "input",
        lambda ctx, cls: cls(ctx.logits_model),
        lambda ctx: {"n_steps": 32, "internal_batch_size": ctx.inputs.shape[0]},
    ),
    "InputXGradient": _Recipe(
        "InputXGradient", "input", lambda ctx, cls: cls(ctx.logits_model), _no_kwargs
    ),
    "GuidedBackprop": _Recipe(
        "GuidedBackprop", "input", lambda ctx, cls: cls(ctx.logits_model), _no_kwargs
    ),
    "Deconvolution": _Recipe(
        "Deconvolution", "input", lambda ctx, cls: cls(ctx.logits_model), _no_kwargs
    ),
    "Occlusion": _Recipe(
        "Occlusion", "input", lambda ctx, cls: cls(ctx.logits_model), _occlusion_kwargs
    ),
}


def _installed(recipe: _Recipe) -> bool:
    if recipe.captum_class is None:
        return True
    import captum.attr

    return hasattr(captum.attr, recipe.captum_class)


def known_methods() -> list[str]:
    """Method names ``compare`` accepts with the installed captum (NoiseTunnel variants are
    written ``"<nt_type>:<method>"``, nt_type one of ``NT_TYPES``, e.g. "smoothgrad:Saliency")."""
    return [name for name, recipe in _RECIPES.items() if _installed(recipe)]


def _unknown_method(name: str, why: str) -> ValueError:
    return ValueError(
        f"unknown method {name!r}: {why}. Known methods: {', '.join(known_methods())}; "
        f"prefix one with {', '.join(repr(t + ':') for t in NT_TYPES)} for its NoiseTunnel "
        "variant (e.g. 'smoothgrad:Saliency')"
    )


def canonical_method(name: str) -> str:
    """``name`` spelled as in ``known_methods`` (case-insensitive), NoiseTunnel prefix kept.

    Raises ValueError listing the known methods for a name the installed captum lacks.
    """
    if not isinstance(name, str):
        raise TypeError(f"method names must be str, got {type(name).__name__}")
    prefix, _, base = name.rpartition(":")
    if prefix and prefix.lower() not in NT_TYPES:
        raise _unknown_method(name, f"{prefix!r} is not a NoiseTunnel type")
    by_lower = {known.lower(): known for known in _RECIPES}
    canonical = by_lower.get(base.strip().lower())
    if canonical is None:
        import captum.attr

        why = (
            f"captum has {base}, but compare() has no recipe for it"
            if hasattr(captum.attr, base)
            else f"{base!r} is not a method compare() knows"
        )
        raise _unknown_method(name, why)
    if not _installed(_RECIPES[canonical]):
        import captum

        raise _unknown_method(
            name, f"the installed captum {captum.__version__} has no {canonical}"
        )
    return f"{prefix.lower()}:{canonical}" if prefix else canonical


def _captum_layer(
    model: nn.Module, inputs: torch.Tensor, layer: LayerSpec, output: OutputSelector
) -> tuple[nn.Module | None, bool, str | None]:
    """(module, use its input, why there is none) for Captum's layer methods."""
    modules = dict(model.named_modules())
    if layer is not None:
        return modules[layer_name(model, layer)], False, None
    info = find_head(model, inputs[:1], output=output)
    if info.layout != "nchw":
        return None, False, f"the features are {info.layout} tokens, not an [N, K, h, w] map"
    if info.feature_module is not None:
        return modules[info.feature_module], False, None
    if info.capture.kind == "module_input":
        return modules[info.capture.module], True, None
    return None, False, f"the pooled tensor is {info.feature_source}, not a module's output"


def _build_method(name: str, ctx: _Context) -> tuple[Any, dict[str, Any], Space]:
    """(attribution object, default attribute kwargs, space) of a canonical method name."""
    prefix, _, base = name.rpartition(":")
    recipe = _RECIPES[base]
    cls = None
    if recipe.captum_class is not None:
        import captum.attr

        cls = getattr(captum.attr, recipe.captum_class)
    method = recipe.build(ctx, cls)
    kwargs = recipe.kwargs(ctx)
    if prefix:
        from captum.attr import NoiseTunnel

        spread = float(ctx.inputs.max() - ctx.inputs.min())
        method = NoiseTunnel(method)
        kwargs = {**kwargs, "nt_type": prefix, "nt_samples": 8, "nt_samples_batch_size": 1,
                  "stdevs": 0.15 * spread}
    return method, kwargs, recipe.space


# ------------------------------------------------------------------------------------ compare
_LAYER_METHODS = frozenset({"LayerGradCam", "GuidedGradCam"})


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
    method (time is the median). measure_memory: one more call records the peak memory
    (``peak_memory_bytes``). method_kwargs: extra ``attribute`` arguments per method name,
    e.g. {"IntegratedGradients": {"n_steps": 64}}.

    The model's train/eval flags, hooks and parameter gradients are left unchanged.
    """
    from .captum_attr import to_class_indices

    _check_compare_args(model, inputs, top_percent, channel_reduction, faithfulness_steps)
    names = _method_names(DEFAULT_METHODS if methods is None else methods)
    extra = _method_kwargs(method_kwargs, names)
    if model.training:
        warnings.warn(
            "compare() runs the model in training mode (dropout, batch statistics): call "
            "model.eval() first for inference behaviour",
            stacklevel=2,
        )
    inputs = inputs.detach()
    ctx = _context(model, inputs, layer, output, names)
    if methods is None and ctx.layer is None and _LAYER_METHODS & set(names):
        warnings.warn(
            f"LayerGradCam and GuidedGradCam left out: {ctx.layer_problem} (pass layer=)",
            stacklevel=2,
        )
        names = [n for n in names if n not in _LAYER_METHODS]
    with torch.no_grad():
        targets = to_class_indices(target, select_output(model(inputs), output))
    size = (int(inputs.shape[-2]), int(inputs.shape[-1]))
    measured = [
        _run(name, ctx, targets, extra.get(name, {}), size, channel_reduction, warmup, repeats,
             measure_memory)
        for name in names
    ]
    reference = measured[0][1]
    rows = []
    for name, maps, seconds, peak in measured:
        deletion = insertion = None
        if faithfulness:
            deletion, insertion = _faithfulness(ctx.logits_model, inputs, maps, targets,
                                                faithfulness_steps)
        rows.append(
            ComparisonRow(
                method=name,
                seconds=seconds,
                peak_memory_bytes=peak,
                spearman=spearman(maps, reference),
                top_iou=top_percent_iou(maps, reference, top_percent),
                deletion_auc=deletion,
                insertion_auc=insertion,
                maps=maps,
            )
        )
    return ComparisonTable(rows, targets, size, float(top_percent), _device_name(inputs.device))


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


def _context(
    model: nn.Module,
    inputs: torch.Tensor,
    layer: LayerSpec,
    output: OutputSelector,
    names: list[str],
) -> _Context:
    needs_layer = any(n.rpartition(":")[2] in _LAYER_METHODS for n in names)
    captum_layer, layer_input, problem = (
        _captum_layer(model, inputs, layer, output) if needs_layer else (None, False, None)
    )
    return _Context(
        model=model,
        logits_model=model if output is None else _LogitsOnly(model, output),
        inputs=inputs,
        output=output,
        cam_layer=None if layer is None else dict(model.named_modules())[layer_name(model, layer)],
        layer=captum_layer,
        layer_input=layer_input,
        layer_problem=problem,
    )


def _check_compare_args(
    model: nn.Module,
    inputs: torch.Tensor,
    top_percent: float,
    channel_reduction: str,
    faithfulness_steps: int,
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


# Captum's notices about what it does on purpose here (inputs it sets requires_grad on, ReLU
# hooks it removes again); silenced inside compare() only.
_CAPTUM_NOTICES = (
    r"Input Tensor \d+ did not already require gradients",
    r"Setting backward hooks on ReLU activations",
)


def _run(
    name: str,
    ctx: _Context,
    targets: torch.Tensor,
    extra_kwargs: dict[str, Any],
    size: tuple[int, int],
    channel_reduction: ChannelReduction,
    warmup: int,
    repeats: int,
    measure_memory: bool,
) -> tuple[str, torch.Tensor, float, int | None]:
    """(name, maps fp32 [N, H, W], median seconds, peak bytes) of one method."""
    method, kwargs, space = _build_method(name, ctx)
    kwargs = {**kwargs, **extra_kwargs, "target": targets}

    def call() -> Any:
        with warnings.catch_warnings():
            for message in _CAPTUM_NOTICES:
                warnings.filterwarnings("ignore", message=message, category=UserWarning)
            return method.attribute(ctx.inputs, **kwargs)

    result, seconds = time_call(call, ctx.inputs.device, warmup=warmup, repeats=repeats)
    peak = peak_memory_bytes(call, ctx.inputs.device) if measure_memory else None
    return name, _to_common(result, space, size, channel_reduction), seconds, peak


def _to_common(
    result: Any, space: str, size: tuple[int, int], channel_reduction: ChannelReduction
) -> torch.Tensor:
    """A method's attribution as fp32 [N, H, W] at the input resolution."""
    attribution = (result[0] if isinstance(result, tuple) else result).detach().float()
    if space == "layer":
        maps = attribution.sum(1, keepdim=True)
        if tuple(maps.shape[-2:]) != size:
            maps = F.interpolate(maps, size=size, mode="bilinear", align_corners=False)
        return maps[:, 0]
    if channel_reduction == "abs":
        return attribution.abs().sum(1)
    return attribution.sum(1)


def _unit_range(maps: torch.Tensor) -> torch.Tensor:
    """Per-sample min-max scaling of [N, H, W] to [0, 1] (a constant map becomes 0)."""
    flat = maps.flatten(1)
    lo = flat.min(1, keepdim=True).values
    span = flat.max(1, keepdim=True).values - lo
    scaled = (flat - lo) / span.where(span > 0, torch.ones_like(span))
    return scaled.clamp(0, 1).view_as(maps)


def _faithfulness(
    logits_model: nn.Module,
    inputs: torch.Tensor,
    maps: torch.Tensor,
    targets: torch.Tensor,
    steps: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Deletion and insertion AUC fp64 [N]; NaN for samples whose map is not finite."""
    from .metrics import deletion_auc, insertion_auc

    finite = torch.isfinite(maps.flatten(1)).all(1)
    unit = _unit_range(maps.nan_to_num(0.0, 0.0, 0.0))
    deletion = deletion_auc(logits_model, inputs, unit, targets, steps=steps)
    insertion = insertion_auc(logits_model, inputs, unit, targets, steps=steps)
    nan = torch.tensor(float("nan"), dtype=torch.float64, device=deletion.device)
    finite = finite.to(deletion.device)
    return deletion.where(finite, nan), insertion.where(finite, nan)


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{device.type} ({torch.get_num_threads()} threads)"
