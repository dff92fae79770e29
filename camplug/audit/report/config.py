"""The run's configuration as readable table rows: (setting, value, what it means), values
written for people (a threshold grid as its range and step, long lists shortened, nested
settings one per row), not as JSON."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

MAX_LIST_ITEMS = 8  # longer lists show their first items and their length

MEANINGS = {
    "model": "the model, as named on the command line",
    "model_fingerprint": "hash of the model's weights and code (part of the run id)",
    "dataset": "the dataset's description",
    "dataset_fingerprint": "hash of the dataset's content (part of the run id)",
    "n_samples": "samples in the dataset",
    "layer": "module whose output feeds the pooling (none: found by camplug)",
    "output": "which model output holds the logits (none: the output itself)",
    "thresholds": "CAM thresholds of MaxBoxAcc and PxAP",
    "iou_thresholds": "IoU thresholds of MaxBoxAcc (delta)",
    "flags": "when a sample is flagged",
    "flags.min_mass_inside": "mass_outside: share of the map's mass inside the boxes below",
    "flags.min_lift": "mass_outside: and below this times the boxes' share of the image",
    "flags.low_confidence": "low_confidence: predicted-class probability below",
    "flags.max_border_mass": "border_focus: share of the map's mass in the border band from",
    "flags.high_confidence": "confident_wrong: wrong class predicted with probability from",
    "faithfulness": "deletion / insertion AUC computed",
    "faithfulness_steps": "deletion / insertion steps",
    "method": "the attribution method audited",
    "protocol": "box protocol of MaxBoxAcc: 'camplug' (tight boxes of the components) or "
    "'wsolevaluation' (Choe et al.'s code exactly)",
    "border_fraction": "border band of border_mass, as a share of each side",
    "class_names": "class index -> name",
    "data_warnings": "what loading the dataset corrected or skipped",
    "data_source": "where the samples came from (folder, annotation file)",
}


def format_value(value: Any) -> str:
    """A configuration value for people: none/yes/no, numbers with ``%g``, a long evenly
    spaced grid as 'N values, a to b, step s', other long lists shortened."""
    if value is None:
        return "none"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, Mapping):
        return "; ".join(f"{k}: {format_value(v)}" for k, v in value.items()) or "none"
    if isinstance(value, list | tuple):
        return _format_list(list(value))
    return str(value)


def _format_list(values: list[Any]) -> str:
    if not values:
        return "none"
    numeric = all(isinstance(v, int | float) and not isinstance(v, bool) for v in values)
    if numeric and len(values) > MAX_LIST_ITEMS:
        steps = np.diff(np.asarray(values, dtype=np.float64))
        if np.allclose(steps, steps[0], rtol=1e-6, atol=1e-9) and steps[0] > 0:
            return (f"{len(values)} values, {values[0]:g} to {values[-1]:g}, "
                    f"step {float(steps[0]):g}")
    shown = [format_value(v) for v in values[:MAX_LIST_ITEMS]]
    more = f", ... ({len(values)} in all)" if len(values) > MAX_LIST_ITEMS else ""
    return ", ".join(shown) + more


def config_rows(config: Mapping[str, Any]) -> list[tuple[str, str, str]]:
    """(setting, value, meaning) rows of a run configuration (``RunConfig.to_dict()``); a
    nested mapping whose keys have meanings (``flags``) gives one row per entry."""
    rows = []
    for key, value in config.items():
        nested = isinstance(value, Mapping) and value and all(
            f"{key}.{k}" in MEANINGS for k in value)
        if nested:
            rows += [(f"{key}.{k}", format_value(v), MEANINGS[f"{key}.{k}"])
                     for k, v in value.items()]
        else:
            rows.append((key, format_value(value), MEANINGS.get(key, "")))
    return rows
