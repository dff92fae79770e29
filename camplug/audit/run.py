"""One audit run as one object: ``RunConfig`` (what determines the results; its hash is the run
id), ``RunOptions`` (how to run it) and ``AuditRun`` (both, plus the live objects: model, data,
output folder, process group context, device, scoring settings), created once by
``run_audit`` and passed down the pipeline."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset

from .. import metrics
from ..data.specs import model_fingerprint
from . import map_stats
from .distributed import DistContext
from .scoring import ScoringSettings
from .summary import FlagThresholds

DB_NAME = "audit.sqlite"
REPORT_NAME = "report.html"
SHARD_DIR = "shards"
DEFAULT_THRESHOLDS = tuple(float(t) for t in np.round(np.arange(0.0, 1.0, 0.01), 2))  # Choe
# names as the user gave them and what the dataset reported: not part of the identity (the
# dataset's fingerprint covers its content)
DISPLAY_ONLY = ("model", "dataset", "class_names", "data_warnings", "data_source")


def describe_dataset(data: Dataset) -> str:
    """A one-line description of a dataset for the runs table."""
    describe = getattr(data, "describe", None)
    if callable(describe):
        return str(describe())
    fields = [f"{k}={getattr(data, k)!r}" for k in ("n", "split", "image_size", "seed")
              if hasattr(data, k)]
    return f"{type(data).__name__}({', '.join(fields)})" if fields else (
        f"{type(data).__name__} of {len(data)} samples")  # type: ignore[arg-type]


def dataset_fingerprint(data: Dataset) -> str:
    fingerprint = getattr(data, "fingerprint", None)
    return str(fingerprint()) if callable(fingerprint) else describe_dataset(data)


def dataset_class_names(data: Dataset) -> tuple[str, ...] | None:
    """The dataset's ``class_names`` (label -> name), when it has them."""
    names = getattr(data, "class_names", None)
    return tuple(str(n) for n in names) if names else None


def dataset_warnings(data: Dataset) -> dict[str, int]:
    """The dataset's own warning counts (``warnings``: kind -> count, e.g. skipped crowd
    annotations), when it has them."""
    return {str(k): int(v) for k, v in (getattr(data, "warnings", None) or {}).items()}


def dataset_source(data: Dataset) -> dict[str, Any] | None:
    """How to open the dataset again (``source()``: ``open_dataset`` keyword arguments), for
    exporting overlays without the caller's objects; None when it cannot say."""
    source = getattr(data, "source", None)
    return source() if callable(source) else None


def _output_name(output: int | str | Callable | None) -> Any:
    if output is None or isinstance(output, int | str):
        return output
    return getattr(output, "__qualname__", type(output).__name__)


@dataclass(frozen=True)
class RunConfig:
    """Everything that determines a run's results. ``model`` / ``dataset``: display names;
    the identity (``run_id``) uses the fingerprints instead (model: weights and code; dataset:
    its ``fingerprint()``, or its description). ``method``: the map method, a
    ``camplug.methods`` name or ``"auto"`` (CAM on exact heads, else Grad-CAM).
    ``border_fraction``: the border band of ``border_mass`` (share of each side).
    ``class_names`` / ``data_warnings`` / ``data_source``: the dataset's class names, warning
    counts and ``open_dataset`` arguments, for display and export (not the identity)."""

    model: str
    model_fingerprint: str
    dataset: str
    dataset_fingerprint: str
    n_samples: int
    layer: str | None
    output: Any
    thresholds: tuple[float, ...]
    iou_thresholds: tuple[float, ...]
    flags: FlagThresholds
    faithfulness: bool
    faithfulness_steps: int | None
    method: str = "cam"
    border_fraction: float = 0.1
    protocol: str = "camplug"
    class_names: tuple[str, ...] | None = None
    data_warnings: dict[str, int] = field(default_factory=dict)
    data_source: dict[str, Any] | None = None

    @classmethod
    def create(
        cls, model: nn.Module, data: Dataset, *, model_name: str, layer: str | None,
        output: Any, thresholds: Sequence[float] | None, iou_thresholds: Sequence[float],
        flags: FlagThresholds, faithfulness: bool, faithfulness_steps: int, method: str,
        border_fraction: float = 0.1, protocol: str = metrics.DEFAULT_PROTOCOL,
    ) -> RunConfig:
        """Validate the options and fingerprint the model and the data."""
        grid = np.asarray(DEFAULT_THRESHOLDS if thresholds is None else thresholds,
                          dtype=np.float64)
        if grid.ndim != 1 or grid.size == 0 or grid.min() < 0 or grid.max() >= 1 or np.any(
            np.diff(grid) <= 0
        ):
            raise ValueError("thresholds must be a non-empty increasing sequence in [0, 1)")
        if not iou_thresholds or any(not 0 < d <= 1 for d in iou_thresholds):
            raise ValueError(f"iou_thresholds must be values in (0, 1], got {iou_thresholds}")
        if faithfulness and faithfulness_steps < 1:
            raise ValueError(f"faithfulness_steps must be >= 1, got {faithfulness_steps}")
        from camplug import methods

        methods.resolve(method, exact_head=True)  # an unknown name raises, listing the names
        if protocol not in metrics.PROTOCOLS:
            raise ValueError(f"protocol must be one of {list(metrics.PROTOCOLS)}, got "
                             f"{protocol!r}")
        return cls(
            model=model_name, model_fingerprint=model_fingerprint(model),
            dataset=describe_dataset(data), dataset_fingerprint=dataset_fingerprint(data),
            n_samples=len(data),  # type: ignore[arg-type]
            layer=layer, output=_output_name(output),
            thresholds=tuple(float(t) for t in grid),
            iou_thresholds=tuple(float(d) for d in iou_thresholds), flags=flags,
            faithfulness=faithfulness,
            faithfulness_steps=faithfulness_steps if faithfulness else None,
            method=method.lower(),
            border_fraction=map_stats.check_border_fraction(border_fraction),
            protocol=protocol, class_names=dataset_class_names(data),
            data_warnings=dataset_warnings(data),
            data_source=dataset_source(data),
        )

    def to_dict(self) -> dict[str, Any]:
        """The JSON-ready form stored in the runs table."""
        values = dataclasses.asdict(self)
        values["thresholds"] = list(self.thresholds)
        values["iou_thresholds"] = list(self.iou_thresholds)
        values["class_names"] = None if self.class_names is None else list(self.class_names)
        return values

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> RunConfig:
        """The inverse of ``to_dict`` (fields added later take their defaults: a stored run from
        before ``method`` existed ran CAM)."""
        names = values.get("class_names")
        values = {**values, "flags": FlagThresholds(**values["flags"]),
                  "thresholds": tuple(values["thresholds"]),
                  "iou_thresholds": tuple(values["iou_thresholds"]),
                  "class_names": None if names is None else tuple(names)}
        return cls(**values)

    @property
    def run_id(self) -> str:
        """The run's identity: a hash of everything that determines the results (the model's
        and dataset's fingerprints, not the names they were given)."""
        identity = {k: v for k, v in self.to_dict().items() if k not in DISPLAY_ONLY}
        return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:16]

    def scoring_settings(self) -> ScoringSettings:
        return ScoringSettings(torch.tensor(self.thresholds, dtype=torch.float64), self.flags,
                               self.faithfulness, self.faithfulness_steps or 0, self.method,
                               self.border_fraction, self.protocol)


@dataclass(frozen=True)
class RunOptions:
    """How a run is executed; none of it changes the results. ``progress``: None draws the
    bar only on a terminal. ``fresh``: discard a stored run of the same identity."""

    batch_size: int = 64
    num_workers: int = 0
    report: bool = True
    gallery_size: int = 8
    fresh: bool = False
    progress: bool | None = None

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        if self.num_workers < 0:
            raise ValueError(f"num_workers must be >= 0, got {self.num_workers}")


@dataclass(frozen=True)
class AuditRun:
    """A run being executed: its configuration and options, the live model and data, the
    output folder, this process's place in the job (``ctx``) and the device it scores on."""

    config: RunConfig
    options: RunOptions
    model: nn.Module
    data: Dataset
    out_dir: Path
    ctx: DistContext
    device: torch.device
    settings: ScoringSettings = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "settings", self.config.scoring_settings())

    @property
    def run_id(self) -> str:
        return self.config.run_id

    @property
    def n_samples(self) -> int:
        return self.config.n_samples

    @property
    def db_path(self) -> Path:
        return self.out_dir / DB_NAME

    def shard_path(self, rank: int) -> Path:
        return self.out_dir / SHARD_DIR / f"{self.run_id}.rank{rank}.sqlite"

    @property
    def writer_path(self) -> Path:
        """Where this rank writes its rows: its shard under torchrun, else the results file."""
        return self.shard_path(self.ctx.rank) if self.ctx.is_distributed else self.db_path

    def leftover_shards(self) -> list[Path]:
        """Shard files of this run that a killed distributed run left behind."""
        return sorted((self.out_dir / SHARD_DIR).glob(f"{self.run_id}.rank*.sqlite"))

    @property
    def run_report_path(self) -> Path:
        """This run's report; ``report.html`` is a copy of the latest run's."""
        return self.out_dir / f"report-{self.run_id}.html"

    @property
    def latest_report_path(self) -> Path:
        return self.out_dir / REPORT_NAME
