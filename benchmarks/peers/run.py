"""One model of the peer benchmark: every method at every batch size, its failures, timings,
peak memory and agreement with camplug."""

from __future__ import annotations

import sys
import traceback

import torch

from .measure import interleaved_rounds, max_abs_diff, minmax
from .methods import METHODS, NotAvailable, Setup, camplug_maps
from .zoo import ModelSpec

ERROR_CHARS = 400


def describe_error(error: BaseException) -> str:
    """``Type: message`` of an exception, cut to a readable length, plus where it was raised."""
    text = f"{type(error).__name__}: {error}".strip()
    if len(text) > ERROR_CHARS:
        text = text[:ERROR_CHARS] + " ..."
    frame = traceback.extract_tb(error.__traceback__)[-1] if error.__traceback__ else None
    if frame is not None:
        text += f" (at {frame.filename.split('site-packages/')[-1]}:{frame.lineno})"
    return text


def model_entry(spec: ModelSpec, model: torch.nn.Module) -> dict:
    """The JSON description of a benchmarked model (its cases are added as they run)."""
    return {"model": spec.name, "torchvision_builder": spec.builder, "layer": spec.layer,
            "torchcam_fc_layer": spec.fc or "(torchcam finds it)", "exact_cam": spec.exact_cam,
            "parameters": sum(p.numel() for p in model.parameters()), "cases": []}


def run_case(spec: ModelSpec, model: torch.nn.Module, batch: int, size: int, rounds: int) -> dict:
    """Every method on ``model`` for one batch of ``batch`` seeded random images of ``size``
    pixels: JSON-ready timings, peak memory, failures and agreement with camplug."""
    x = torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(batch))
    with torch.no_grad():
        targets = model(x).argmax(1)
    setup = Setup(model, spec, x, targets)
    print(f"{spec.name} batch {batch}: warm-up", file=sys.stderr, flush=True)
    runnable, outputs, failures = _warm_up(setup)
    agreement = _agreement(setup, outputs)
    del outputs
    print(f"{spec.name} batch {batch}: {rounds} rounds of {len(runnable)} methods",
          file=sys.stderr, flush=True)
    return {"batch": batch, "classes": [int(c) for c in targets],
            "results": interleaved_rounds(runnable, rounds),
            "failures": failures, "agreement": agreement}


def _warm_up(setup: Setup) -> tuple[dict, dict, dict]:
    """Build and call every method once (the warm-up): the callables that ran, their maps, and
    the failures (status and error message) of the others."""
    runnable, outputs, failures = {}, {}, {}
    for method in METHODS:
        try:
            fn = method.make(setup)
            outputs[method.name] = fn()
            runnable[method.name] = fn
        except NotAvailable as error:
            failures[method.name] = {"status": "not available", "error": str(error)}
        except Exception as error:  # noqa: BLE001 - a peer's failure is a result, recorded
            failures[method.name] = {"status": "failed", "error": describe_error(error)}
            setup.model.zero_grad(set_to_none=True)
    return runnable, outputs, failures


def _agreement(setup: Setup, outputs: dict[str, torch.Tensor | None]) -> dict:
    """Max |peer - camplug| of each peer's maps, like for like: camplug's map of the same
    family, with the peer's ReLU and (pytorch-grad-cam) its second min-max after upsampling
    ("aligned"); and against camplug's default map of that family (no ReLU, "default")."""
    references: dict[tuple[str, bool], tuple[str, torch.Tensor] | str] = {}
    agreement = {}
    for method in METHODS:
        maps = outputs.get(method.name)
        if method.family == "forward" or method.name.startswith("camplug") or maps is None:
            continue
        aligned = _reference(setup, method.family, method.relu, references)
        default = _reference(setup, method.family, False, references)
        if isinstance(aligned, str) or isinstance(default, str):
            agreement[method.name] = {"reference": None,
                                      "note": aligned if isinstance(aligned, str) else default}
            continue
        reference = minmax(aligned[1]) if method.renormalize else aligned[1]
        agreement[method.name] = {
            "reference": aligned[0] + (", relu=True" if method.relu else "")
            + (", min-max again after upsampling" if method.renormalize else ""),
            "max_abs_diff_aligned": max_abs_diff(maps, reference),
            "max_abs_diff_default": max_abs_diff(maps, default[1]),
        }
    return agreement


def _reference(
    setup: Setup, family: str, relu: bool, cache: dict
) -> tuple[str, torch.Tensor] | str:
    """camplug's maps for ``family`` with ``relu``: (label, maps), or why there are none.
    Without a camplug Grad-CAM, its CAM stands in (equal to Grad-CAM after normalization on
    a GAP + linear head, where the Grad-CAM weights are the Linear weights over h*w)."""
    key = (family, relu)
    if key not in cache:
        try:
            cache[key] = (f"camplug {family}", camplug_maps(setup, family, relu))
        except NotAvailable:
            fallback = _reference(setup, "CAM", relu, cache)
            cache[key] = fallback if isinstance(fallback, str) else (
                "camplug CAM (no camplug Grad-CAM in this version)", fallback[1])
        except Exception as error:  # noqa: BLE001 - no reference is a result too
            cache[key] = f"no camplug {family} map: {describe_error(error)}"
    return cache[key]

