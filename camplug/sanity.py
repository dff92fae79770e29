"""Sanity checks for saliency maps (Adebayo et al., NeurIPS 2018): do the maps depend on the
model at all?

Model randomization (:func:`model_randomization`): the model's parameterized layers (modules
that own parameters, in the order the forward first calls them) are re-drawn at random from
the logits downwards, one more at each step (``"cascading"``), or one at a time with the others
trained (``"independent"``). At every step each method's maps of the same samples and classes
are compared with the trained model's: Spearman rank correlation and SSIM (:func:`ssim`), per
sample, then averaged with their spread. A map that explains the model must change when the
model's top layers become random; an "explanation" that survives randomization (an edge
detector, say) does not depend on what the model learned. Data randomization
(:func:`data_randomization`): the same comparison between the model and one trained on
permuted labels.

Passing is necessary, not sufficient (Binder et al., CVPR 2023, "Shortcomings of top-down
randomization-based sanity checks for evaluations of deep neural network explanations"):
randomized networks can keep input-dependent structure, and a method can pass while still
being unfaithful. A failing method is disqualified; a passing one is not thereby validated.

Conventions:
- The user's model is never touched: one ``copy.deepcopy`` is made and randomized in place
  (cascading) or per layer with its trained values put back (independent), in eval mode.
- Randomization: each parameter of the layer is replaced by i.i.d. Gaussian values with the
  mean and standard deviation of its trained values (a constant tensor: standard deviation
  ``|mean|``, or 1 when the tensor is all zeros), drawn from a generator seeded by ``seed``
  and the layer's position; buffers (e.g. BatchNorm running statistics) are kept.
- Classes: each sample's map is of the class the trained model predicts, for every step.
- Maps are compared at the size the method returns (camplug methods: the input size), each
  min-max normalized to [0, 1] (a constant map becomes 0). Samples whose trained map is
  constant are left out for that method. A randomized map that is constant has no ranking: its
  Spearman correlation is taken as 0 (counted in ``Step.constant``).
- One forward per step for all samples and all camplug methods (the gradient methods of a
  model without an exact CAM head record autograd in it); a method given as a callable
  ``fn(model, images, classes) -> maps [N, H, W]`` is called once per step.
"""

from __future__ import annotations

import copy
import io
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Union

import numpy as np
import torch
from torch import nn

from . import methods as method_registry
from .api import attach
from .comparison.agreement import spearman
from .discovery.heads import LayerSpec, OutputSelector
from .kernels.semantics import min_max_normalize

MapFunction = Callable[[nn.Module, torch.Tensor, torch.Tensor], torch.Tensor]
MethodSpec = Union[str, method_registry.Method, MapFunction]  # noqa: UP007 (runtime alias)
VARIANTS = ("cascading", "independent")
DATA_VARIANT = "data"
DEFAULT_THRESHOLD = 0.5
DEFAULT_TOP_FRACTION = 0.25
SSIM_WINDOW = 11
SSIM_SIGMA = 1.5
SSIM_K1, SSIM_K2 = 0.01, 0.03
CAVEAT = (
    "Passing is necessary, not sufficient (Binder et al., CVPR 2023): a map that does not "
    "change when the model is randomized cannot explain the model, but a map that changes is "
    "not thereby faithful (randomized networks keep input-dependent structure, and the check "
    "says nothing about which of the model's evidence a map shows)."
)


# similarity -------------------------------------------------------------------------------
def normalize_maps(maps: torch.Tensor) -> torch.Tensor:
    """Min-max normalize each map of ``maps`` [N, H, W] to [0, 1] in fp64 with the kernel's rule
    (``camplug.kernels.semantics.min_max_normalize``); a constant map (or one holding NaN/inf)
    becomes 0."""
    if maps.dim() != 3:
        raise ValueError(f"maps must have shape [N, H, W], got {tuple(maps.shape)}")
    return min_max_normalize(maps.detach().double()).nan_to_num(0.0)


def constant_maps(maps: torch.Tensor) -> torch.Tensor:
    """bool [N]: which maps of ``maps`` [N, H, W] are constant (or not finite)."""
    flat = maps.detach().double().flatten(1)
    span = flat.amax(dim=1) - flat.amin(dim=1)
    return ~(torch.isfinite(span) & (span > 0))


def gaussian_window(size: int, sigma: float) -> torch.Tensor:
    """The 1-D Gaussian window fp64 [size] (sums to 1), centred on the middle element."""
    offsets = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    weights = torch.exp(-offsets.square() / (2 * sigma * sigma))
    return weights / weights.sum()


def _window_matrix(length: int, size: int, sigma: float, device: torch.device) -> torch.Tensor:
    """fp64 [length - size + 1, length]: row i holds the Gaussian window at positions i ..
    i + size - 1, so ``matrix @ x`` is the valid 1-D correlation of x with the window."""
    window = gaussian_window(size, sigma)
    out = torch.zeros(length - size + 1, length, dtype=torch.float64)
    for i in range(length - size + 1):
        out[i, i:i + size] = window
    return out.to(device)


def ssim(a: torch.Tensor, b: torch.Tensor, *, window: int = SSIM_WINDOW,
         sigma: float = SSIM_SIGMA) -> torch.Tensor:
    """Mean structural similarity (Wang et al. 2004) of each pair of maps; a, b [N, H, W] with
    values in [0, 1] (dynamic range L = 1) -> fp64 [N].

    Local means, variances and covariance are weighted by a Gaussian window (``window`` x
    ``window``, standard deviation ``sigma``; shrunk to the largest odd size that fits a map
    smaller than the window) over the positions where it lies entirely inside the map (no
    padding); ``SSIM = (2 mu_a mu_b + C1)(2 cov + C2) / ((mu_a^2 + mu_b^2 + C1)(var_a + var_b
    + C2))`` with ``C1 = (0.01 L)^2``, ``C2 = (0.03 L)^2``, averaged over those positions.
    Identical maps give 1. Variances are the window-weighted (biased) ones.
    """
    if a.shape != b.shape or a.dim() != 3:
        raise ValueError(f"maps must both have shape [N, H, W], got {tuple(a.shape)} and "
                         f"{tuple(b.shape)}")
    size = min(window, a.shape[1], a.shape[2])
    size -= 1 - size % 2  # odd
    if size < 1:
        raise ValueError(f"maps of shape {tuple(a.shape)} are empty")
    rows = _window_matrix(a.shape[1], size, sigma, a.device)  # [H - size + 1, H]
    cols = _window_matrix(a.shape[2], size, sigma, a.device)  # [W - size + 1, W]

    def blur(x: torch.Tensor) -> torch.Tensor:  # [N, H, W] -> [N, H', W'] (valid positions)
        return rows @ x @ cols.T

    x, y = a.detach().double(), b.detach().double()
    mu_x, mu_y = blur(x), blur(y)
    var_x = blur(x * x) - mu_x.square()
    var_y = blur(y * y) - mu_y.square()
    cov = blur(x * y) - mu_x * mu_y
    c1, c2 = SSIM_K1 ** 2, SSIM_K2 ** 2
    index = ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / (
        (mu_x.square() + mu_y.square() + c1) * (var_x + var_y + c2))
    return index.flatten(1).mean(dim=1)


def rank_correlation(original: torch.Tensor, randomized: torch.Tensor) -> torch.Tensor:
    """Spearman correlation fp64 [N] of maps [N, H, W]; 0 where the randomized map is
    constant (it has no ranking). The original maps must not be constant."""
    rho = spearman(original, randomized)
    return torch.where(constant_maps(randomized).to(rho.device), 0.0, rho)


# results ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Step:
    """One comparison of a method's maps: the trained model against a randomized one.

    ``variant``: ``"cascading"``, ``"independent"`` or ``"data"``; ``layer``: the layer
    randomized at this step (``"retrained model"`` for data randomization); ``randomized``:
    every layer random in the compared model; ``spearman`` / ``ssim``: fp64 [N] per sample;
    ``constant``: randomized maps that came out constant (Spearman taken as 0)."""

    variant: str
    method: str
    layer: str
    randomized: tuple[str, ...]
    spearman: np.ndarray
    ssim: np.ndarray
    constant: int = 0

    @property
    def mean_abs_spearman(self) -> float:
        """The mean over samples of |Spearman|: what the verdict compares with its threshold
        (an inverted map keeps the original's structure, so its correlation counts as
        similarity as much as a positive one)."""
        values = np.abs(np.asarray(self.spearman, dtype=np.float64))
        return float(values.mean()) if values.size else math.nan

    def stats(self, metric: str) -> dict[str, float]:
        """mean, std, q25, median, q75 of ``"spearman"`` or ``"ssim"`` over the samples."""
        values = np.asarray(getattr(self, metric), dtype=np.float64)
        if values.size == 0:
            return dict.fromkeys(("mean", "std", "q25", "median", "q75"), math.nan)
        q25, median, q75 = np.quantile(values, [0.25, 0.5, 0.75])
        return {"mean": float(values.mean()), "std": float(values.std()), "q25": float(q25),
                "median": float(median), "q75": float(q75)}


@dataclass(frozen=True)
class Verdict:
    """Whether ``method`` passes: ``passed`` is None when it could not be judged."""

    method: str
    passed: bool | None
    reason: str


@dataclass
class SanityResult:
    """All steps of a sanity check. ``layers``: the parameterized layers in forward order
    (bottom first); ``steps``: every comparison, by variant, then step (top layer first), then
    method; ``excluded``: per method, samples left out because their
    trained map is constant; ``verdicts``: one per method."""

    methods: list[str]
    layers: list[str]
    n_samples: int
    threshold: float
    steps: list[Step] = field(default_factory=list)
    excluded: dict[str, int] = field(default_factory=dict)
    verdicts: list[Verdict] = field(default_factory=list)

    def curve(self, variant: str, method: str) -> list[Step]:
        """The steps of one variant and method, in order."""
        return [s for s in self.steps if s.variant == variant and s.method == method]

    @property
    def variants(self) -> list[str]:
        return list(dict.fromkeys(s.variant for s in self.steps))

    def table(self) -> list[tuple[str, str, str, str, str, str, str]]:
        """(variant, method, layer, Spearman mean +- std [IQR], mean |Spearman| (what the
        verdict reads), SSIM mean +- std [IQR], constant maps) per step."""
        def cell(step: Step, metric: str) -> str:
            s = step.stats(metric)
            return f"{s['mean']:.3f} ± {s['std']:.3f} [{s['q25']:.2f}, {s['q75']:.2f}]"

        return [(s.variant, s.method, s.layer, cell(s, "spearman"),
                 f"{s.mean_abs_spearman:.3f}", cell(s, "ssim"), str(s.constant))
                for s in self.steps]

    def to_markdown(self) -> str:
        """The step table and the verdicts as GitHub Markdown."""
        lines = ["| variant | method | randomized | Spearman mean ± std [IQR] | "
                 "mean abs. Spearman | SSIM mean ± std [IQR] | constant maps |",
                 "| --- | --- | --- | --- | ---: | --- | ---: |"]
        lines += ["| " + " | ".join(row) + " |" for row in self.table()]
        lines.append("")
        lines += [f"- {v.method}: {verdict_word(v)}: {v.reason}" for v in self.verdicts]
        lines.append(f"- {CAVEAT}")
        return "\n".join(lines)


def curve_plot(result: SanityResult, variant: str) -> bytes:
    """PNG of one variant: mean Spearman correlation (left) and SSIM (right) with the trained
    model's maps per step (x: the layer randomized at the step; cascading: cumulative, from
    the top), starting from the trained model itself (1), one colour per method, +- one
    standard deviation as a band (cascading) or error bars (independent), the verdict
    threshold dashed at +- threshold."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(10.0, 3.8))
    axes = fig.subplots(1, 2, sharex=True)
    labels: list[str] = []
    for k, method in enumerate(result.methods):
        steps = result.curve(variant, method)
        if not steps:
            continue
        labels = ["none (trained)", *(s.layer for s in steps)]
        x = np.arange(len(labels))
        for ax, metric in zip(axes, ("spearman", "ssim"), strict=True):
            stats = [s.stats(metric) for s in steps]
            mean = np.array([1.0, *(st["mean"] for st in stats)])
            std = np.array([0.0, *(st["std"] for st in stats)])
            if variant == "cascading":  # a sequence: a line and a band
                ax.plot(x, mean, marker="o", markersize=3, color=f"C{k}", label=method)
                ax.fill_between(x, mean - std, mean + std, color=f"C{k}", alpha=0.15)
            else:  # separate experiments: points with error bars
                ax.errorbar(x + 0.1 * k, mean, yerr=std, fmt="o", markersize=3, capsize=2,
                            color=f"C{k}", label=method)
    for ax, title in zip(axes, ("Spearman rank correlation", "SSIM"), strict=True):
        ax.set_xticks(np.arange(len(labels)), labels, rotation=60, ha="right", fontsize=7)
        ax.set_ylim(-1.05, 1.05)
        ax.axhline(0.0, color="#999", linewidth=0.8)
        ax.grid(alpha=0.3)
        ax.set_title(f"{title} with the trained model's maps", fontsize=9)
    for sign in (1, -1):
        axes[0].axhline(sign * result.threshold, color="#c44", linestyle="--", linewidth=1,
                        label=f"threshold ±{result.threshold:g}" if sign > 0 else None)
    axes[0].legend(fontsize=7)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100, bbox_inches="tight")
    return buffer.getvalue()


def verdict_word(verdict: Verdict) -> str:
    return {True: "PASS", False: "FAIL", None: "NOT JUDGED"}[verdict.passed]


# the model --------------------------------------------------------------------------------
def parameterized_layers(model: nn.Module, example: torch.Tensor) -> list[str]:
    """Names of the modules that own parameters (directly) in the order one forward of
    ``example`` first calls them (bottom first); modules the forward never calls are left out.
    Hooks are added to ``model`` for that forward and removed after it."""
    owners = {module: name for name, module in model.named_modules()
              if next(module.parameters(recurse=False), None) is not None}
    order: list[str] = []

    def record(module: nn.Module, args: Any) -> None:
        name = owners.get(module)
        if name is not None and name not in order:
            order.append(name)

    handles = [module.register_forward_pre_hook(record) for module in owners]
    try:
        with torch.no_grad():
            model(example)
    finally:
        for handle in handles:
            handle.remove()
    return order


def randomize_layer(module: nn.Module, generator: torch.Generator) -> None:
    """Replace each parameter ``module`` owns directly by Gaussian values with that
    parameter's mean and standard deviation (see the module docstring), in place."""
    with torch.no_grad():
        for parameter in module.parameters(recurse=False):
            values = parameter.detach().double()
            mean = float(values.mean()) if values.numel() else 0.0
            std = float(values.std()) if values.numel() > 1 else 0.0
            if not std > 0:
                std = abs(mean) or 1.0
            noise = torch.randn(parameter.shape, generator=generator, dtype=torch.float64)
            parameter.copy_((mean + std * noise).to(parameter.device, parameter.dtype))


def _generator(seed: int, position: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed * 1_000_003 + position)


# maps ---------------------------------------------------------------------------------------
def method_name(method: MethodSpec) -> str:
    """A display name: the registry name, or a callable's ``__name__``."""
    if isinstance(method, str):
        return method.lower()
    if isinstance(method, method_registry.Method):
        return method.name
    return getattr(method, "__name__", type(method).__name__)


def _check_methods(methods: Sequence[MethodSpec]) -> list[MethodSpec]:
    if isinstance(methods, (str, method_registry.Method)) or callable(methods):
        methods = [methods]  # type: ignore[list-item]
    methods = list(methods)
    if not methods:
        raise ValueError("give at least one method")
    for method in methods:
        if isinstance(method, str) and method.lower() != method_registry.AUTO:
            method_registry.get(method)  # raises, listing the names
        elif not isinstance(method, (str, method_registry.Method)) and not callable(method):
            raise TypeError(
                f"a method is a name from camplug.methods.available(), a "
                f"camplug.methods.Method or a callable fn(model, images, classes) -> maps "
                f"[N, H, W]; got {type(method).__name__}")
    names = [method_name(m) for m in methods]
    if len(set(names)) != len(names):
        raise ValueError(f"method names must be distinct, got {names}")
    return methods


def _maps(model: nn.Module, images: torch.Tensor, classes: torch.Tensor | None,
          methods: Sequence[MethodSpec], layer: LayerSpec,
          output: OutputSelector) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """One forward of ``images`` [N, ...] through ``model``: (predicted classes int64 [N], each
    method's maps fp64 [N, H, W] normalized to [0, 1], by display name: ``method_name``, and
    for ``"auto"`` the method it chose, e.g. ``"auto (cam)"``) of ``classes`` (None: the
    predictions). Callables run after the forward, once each."""
    out: dict[int, tuple[str, torch.Tensor]] = {}  # by position in ``methods``
    with attach(model, layer, output=output) as capture:
        capture.discover(images)
        chosen = {k: capture.resolve_method(m) for k, m in enumerate(methods)
                  if isinstance(m, (str, method_registry.Method))}
        if any(c.uses_gradients for c in chosen.values()) and not capture.exact_head:
            with torch.inference_mode(False), torch.enable_grad(), capture.tracking_gradients():
                model(images)
        else:
            with torch.no_grad():
                model(images)
        predictions = capture.logits.argmax(dim=1)
        targets = (predictions if classes is None else classes).to(predictions.device)
        for k, method in chosen.items():
            maps = capture.maps(targets[:, None], method=method, size="input")
            name = method_name(methods[k])
            if name == method_registry.AUTO:
                name = f"{name} ({method.name})"
            out[k] = name, normalize_maps(maps[:, 0])
    for k, method in enumerate(methods):
        if k not in chosen:
            name = method_name(method)
            maps = method(model, images, targets)
            if not isinstance(maps, torch.Tensor) or maps.dim() != 3 or (
                maps.shape[0] != images.shape[0]
            ):
                got = tuple(maps.shape) if isinstance(maps, torch.Tensor) else type(maps).__name__
                raise ValueError(f"method {name!r} must return maps [N, H, W] with N = "
                                 f"{images.shape[0]}, got {got}")
            out[k] = name, normalize_maps(maps)
    return targets, dict(out[k] for k in range(len(methods)))


# inputs -------------------------------------------------------------------------------------
def sample_images(data: Any, samples: int) -> torch.Tensor:
    """The first ``samples`` images of ``data`` as one batch: ``data`` is an image tensor
    [N, C, H, W] or a dataset whose items are tensors or dicts with an ``"image"`` tensor."""
    if isinstance(samples, bool) or not isinstance(samples, int) or samples < 1:
        raise ValueError(f"samples must be a positive int, got {samples!r}")
    if isinstance(data, torch.Tensor):
        if data.dim() < 3 or data.shape[0] == 0:
            raise ValueError(f"images must be a batch [N, C, H, W], got {tuple(data.shape)}")
        return data[:samples]
    try:
        n = len(data)
    except TypeError:
        raise TypeError(f"data must be an image tensor [N, C, H, W] or a dataset with len(), "
                        f"got {type(data).__name__}") from None
    if n == 0:
        raise ValueError("the dataset is empty")
    images = []
    for index in range(min(samples, n)):
        item = data[index]
        image = item.get("image") if isinstance(item, dict) else item
        if not isinstance(image, torch.Tensor):
            raise TypeError(f"item {index} of the dataset is not an image tensor nor a dict with "
                            f"an 'image' tensor (got {type(image).__name__})")
        images.append(image)
    shapes = {tuple(image.shape) for image in images}
    if len(shapes) > 1:
        raise ValueError(f"the images have different shapes {sorted(shapes)[:4]}: one batch "
                         "needs one size (resize them, e.g. --image-size)")
    return torch.stack(images)


def _working_copy(model: nn.Module, device: str | torch.device | None) -> nn.Module:
    """A deep copy of ``model`` in eval mode on ``device``; made outside inference mode (under
    ``torch.inference_mode`` its tensors would be inference tensors, which cannot be
    randomized in place nor record autograd for the gradient methods)."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    try:
        with torch.inference_mode(False):
            work = copy.deepcopy(model)
    except Exception as error:
        raise ValueError(
            f"the sanity check works on a copy of the model and copy.deepcopy failed "
            f"({type(error).__name__}: {error}); a model decorated with camplug.decorate must "
            "be undecorated first") from None
    work.eval()
    return work.to(torch.device(device)) if device is not None else work


def _usable(images: torch.Tensor, model: nn.Module) -> torch.Tensor:
    """``images`` on the model's device, as a normal tensor (not an inference tensor)."""
    where = _device(model)
    with torch.inference_mode(False):
        moved = images.to(where) if where is not None else images
        return moved.clone() if moved.is_inference() else moved


def _device(model: nn.Module) -> torch.device | None:
    first = next(model.parameters(), None)
    return first.device if first is not None else None


# the checks -----------------------------------------------------------------------------------
class _Reference:
    """The trained model's maps, and the comparisons against them."""

    def __init__(self, names: list[str], classes: torch.Tensor,
                 maps: dict[str, torch.Tensor]) -> None:
        self.names, self.classes = names, classes
        self.keep = {name: ~constant_maps(maps[name]) for name in names}
        self.maps = {name: maps[name][self.keep[name].to(maps[name].device)] for name in names}

    def steps(self, variant: str, layer: str, randomized: tuple[str, ...],
              maps: dict[str, torch.Tensor]) -> list[Step]:
        out = []
        for name in self.names:
            other = maps[name][self.keep[name].to(maps[name].device)]
            if other.shape != self.maps[name].shape:
                raise ValueError(f"method {name!r}: the randomized model's maps have shape "
                                 f"{tuple(other.shape)}, the trained model's "
                                 f"{tuple(self.maps[name].shape)}")
            out.append(Step(
                variant, name, layer, randomized,
                rank_correlation(self.maps[name], other).cpu().numpy(),
                ssim(self.maps[name], other).cpu().numpy(),
                int(constant_maps(other).sum())))
        return out


def model_randomization(
    model: nn.Module,
    data: Any,
    *,
    methods: Sequence[MethodSpec] | MethodSpec = ("auto",),
    samples: int = 64,
    variants: Sequence[str] = VARIANTS,
    threshold: float = DEFAULT_THRESHOLD,
    top_fraction: float = DEFAULT_TOP_FRACTION,
    seed: int = 0,
    device: str | torch.device | None = None,
    layer: LayerSpec = None,
    output: OutputSelector = None,
) -> SanityResult:
    """Adebayo et al.'s model parameter randomization test (see the module docstring).

    model: the trained classifier (left untouched: the check runs on a deep copy, in eval
    mode). data: an image tensor [N, C, H, W] or a dataset (items: image tensors or dicts with
    ``"image"``); its first ``samples`` images are used. methods: names from
    ``camplug.methods.available()`` or ``"auto"``, ``Method`` instances, or callables
    ``fn(model, images, classes) -> maps [N, H, W]``. variants: any of ``"cascading"`` (top
    layer first, one more each step) and ``"independent"`` (one layer at a time). threshold,
    top_fraction: the verdict (:func:`judge`). seed: the randomization's seed. device: where
    the copy runs (default: the model's). layer, output: as ``camplug.attach``.

    Returns a :class:`SanityResult` with one :class:`Step` per (variant, method, layer).
    """
    methods = _check_methods(methods)
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown or not variants:
        raise ValueError(f"variants must be a non-empty subset of {VARIANTS}, got {variants}")
    _check_verdict_options(threshold, top_fraction)
    images = sample_images(data, samples)
    work = _working_copy(model, device)
    images = _usable(images, work)
    layers = parameterized_layers(work, images[:1])
    if not layers:
        raise ValueError("the model owns no parameters: there is nothing to randomize")
    classes, maps = _maps(work, images, None, methods, layer, output)
    names = list(maps)
    reference = _Reference(names, classes, maps)
    result = SanityResult(names, layers, images.shape[0], threshold,
                          excluded={n: int((~reference.keep[n]).sum()) for n in names})
    modules = dict(work.named_modules())
    top_down = list(reversed(layers))
    independent: list[Step] = []
    if "independent" in variants:
        for name in top_down:
            module = modules[name]
            trained = [p.detach().clone() for p in module.parameters(recurse=False)]
            randomize_layer(module, _generator(seed, layers.index(name)))
            try:
                _, maps = _maps(work, images, classes, methods, layer, output)
            finally:
                with torch.no_grad():
                    for parameter, value in zip(module.parameters(recurse=False), trained,
                                                strict=True):
                        parameter.copy_(value)
            independent += reference.steps("independent", name, (name,), maps)
    if "cascading" in variants:  # last: it randomizes the working copy for good
        for k, name in enumerate(top_down):
            randomize_layer(modules[name], _generator(seed, layers.index(name)))
            _, maps = _maps(work, images, classes, methods, layer, output)
            result.steps += reference.steps("cascading", name, tuple(top_down[:k + 1]), maps)
    result.steps += independent
    result.verdicts = [judge(result, n, threshold=threshold, top_fraction=top_fraction)
                       for n in names]
    return result


def data_randomization(
    model: nn.Module,
    retrained: nn.Module,
    data: Any,
    *,
    methods: Sequence[MethodSpec] | MethodSpec = ("auto",),
    samples: int = 64,
    threshold: float = DEFAULT_THRESHOLD,
    device: str | torch.device | None = None,
    layer: LayerSpec = None,
    output: OutputSelector = None,
) -> SanityResult:
    """Adebayo et al.'s data randomization test: the maps of ``model`` against those of
    ``retrained`` (the same architecture trained on permuted labels), for the classes ``model``
    predicts; both models are left untouched (deep copies, eval mode). Arguments as
    :func:`model_randomization`; one ``"data"`` step per method, and a verdict: pass when the
    mean Spearman correlation is below ``threshold``."""
    methods = _check_methods(methods)
    _check_verdict_options(threshold, DEFAULT_TOP_FRACTION)
    images = sample_images(data, samples)
    work = _working_copy(model, device)
    other = _working_copy(retrained, _device(work))
    images = _usable(images, work)
    classes, maps = _maps(work, images, None, methods, layer, output)
    names = list(maps)
    reference = _Reference(names, classes, maps)
    _, other_maps = _maps(other, images, classes, methods, layer, output)
    result = SanityResult(names, [], images.shape[0], threshold,
                          excluded={n: int((~reference.keep[n]).sum()) for n in names})
    result.steps = reference.steps(DATA_VARIANT, "retrained model", ("all (permuted labels)",),
                                   other_maps)
    result.verdicts = [judge(result, n, threshold=threshold) for n in names]
    return result


# the verdict ----------------------------------------------------------------------------------
def _check_verdict_options(threshold: float, top_fraction: float) -> None:
    if not -1.0 <= threshold <= 1.0:
        raise ValueError(f"threshold (a Spearman correlation) must lie in [-1, 1], got "
                         f"{threshold}")
    if not 0.0 < top_fraction <= 1.0:
        raise ValueError(f"top_fraction must lie in (0, 1], got {top_fraction}")


def judge(result: SanityResult, method: str, *, threshold: float = DEFAULT_THRESHOLD,
          top_fraction: float = DEFAULT_TOP_FRACTION) -> Verdict:
    """The verdict for ``method``, on the mean over samples of the absolute Spearman
    correlation with the trained model's maps (``Step.mean_abs_spearman``). Cascading: passes
    when it is below ``threshold`` once the top ``ceil(top_fraction * L)`` of the L
    parameterized layers are random, and stays below it at every later step. Data
    randomization (without a cascade): passes when it is below ``threshold``. Not judged when
    neither ran or every sample's trained map is constant."""
    cascade = result.curve("cascading", method)
    data = result.curve(DATA_VARIANT, method)
    if not cascade and not data:
        return Verdict(method, None, "no cascading or data randomization step ran")
    if (cascade or data)[0].spearman.size == 0:
        return Verdict(method, None, "every trained map is constant: nothing to compare")
    if cascade:
        top = max(1, math.ceil(top_fraction * len(cascade)))
        means = [s.mean_abs_spearman for s in cascade]
        judged = means[top - 1:]
        worst = int(np.argmax(judged)) + top - 1
        layers = ", ".join(cascade[top - 1].randomized)
        where = f"with the top {top} of {len(cascade)} layers random ({layers})"
        if max(judged) < threshold:
            return Verdict(method, True, f"mean |Spearman| {means[top - 1]:.3f} {where}, at "
                           f"most {max(judged):.3f} from there down: under {threshold:g}")
        return Verdict(method, False, f"mean |Spearman| {judged[0]:.3f} {where}; "
                       f"{means[worst]:.3f} with {len(cascade[worst].randomized)} layers "
                       f"random: not under {threshold:g}, so the maps do not depend enough on "
                       "the learned parameters")
    mean = data[0].mean_abs_spearman
    passed = mean < threshold
    return Verdict(method, passed, f"mean |Spearman| {mean:.3f} against the model trained on "
                   f"permuted labels: {'under' if passed else 'not under'} {threshold:g}")


__all__ = [
    "CAVEAT", "DATA_VARIANT", "DEFAULT_THRESHOLD", "DEFAULT_TOP_FRACTION", "VARIANTS",
    "MapFunction", "curve_plot", "MethodSpec", "SanityResult", "Step", "Verdict", "constant_maps",
    "data_randomization", "gaussian_window", "judge", "method_name", "model_randomization",
    "normalize_maps", "parameterized_layers", "randomize_layer", "rank_correlation",
    "sample_images", "ssim", "verdict_word",
]
