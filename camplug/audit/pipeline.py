"""``camplug.run_audit(model, data, out_dir=...)``: audit a classifier's CAMs on a localization set.

A run is identified by its configuration (model fingerprint, dataset, thresholds, flag rules,
options that change results); its rows go to ``<out_dir>/audit.sqlite``. Calling ``audit``
again with the same configuration and output folder resumes the run: samples already stored
are skipped, so a killed run loses at most the batch in flight and stores nothing twice.
Under ``torchrun`` every rank audits its share of the pending samples into its own shard file
and rank 0 merges them (see ``distributed``).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import platform
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from ..data.specs import model_fingerprint
from ..version import __version__
from . import distributed
from .batches import GuardedDataset, collate
from .progress import Progress
from .report.gallery import build_report
from .scoring import ScoringSettings, score_batch
from .store import ResultStore, RunRecord, utc_now
from .summary import AuditSummary, FlagThresholds, summarize

DB_NAME = "audit.sqlite"
REPORT_NAME = "report.html"
SHARD_DIR = "shards"
DEFAULT_THRESHOLDS = np.round(np.arange(0.0, 1.0, 0.01), 2)  # Choe et al.'s 0.01 grid


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


def _output_name(output: int | str | Callable | None) -> Any:
    if output is None or isinstance(output, int | str):
        return output
    return getattr(output, "__qualname__", type(output).__name__)


def run_config(
    model: nn.Module, data: Dataset, *, model_name: str, layer: str | None, output: Any,
    thresholds: np.ndarray, iou_thresholds: Sequence[float], flags: FlagThresholds,
    faithfulness: bool, faithfulness_steps: int,
) -> dict[str, Any]:
    """Everything that determines a run's results; its hash is the run id."""
    return {
        "model": model_name,
        "model_fingerprint": model_fingerprint(model),
        "dataset": describe_dataset(data),
        "dataset_fingerprint": dataset_fingerprint(data),
        "n_samples": len(data),  # type: ignore[arg-type]
        "layer": layer,
        "output": _output_name(output),
        "thresholds": [float(t) for t in thresholds],
        "iou_thresholds": [float(d) for d in iou_thresholds],
        "flags": dataclasses.asdict(flags),
        "faithfulness": faithfulness,
        "faithfulness_steps": faithfulness_steps if faithfulness else None,
    }


DISPLAY_ONLY = ("model", "dataset")  # names as the user gave them: not part of the identity


def run_id_of(config: dict[str, Any]) -> str:
    """The run's identity: a hash of everything in ``config`` that determines the results
    (the model's and dataset's fingerprints, not the names they were given)."""
    identity = {k: v for k, v in config.items() if k not in DISPLAY_ONLY}
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:16]


def _check_arguments(batch_size: int, thresholds: np.ndarray,
                     iou_thresholds: Sequence[float]) -> None:
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if thresholds.ndim != 1 or thresholds.size == 0 or thresholds.min() < 0 or (
        thresholds.max() >= 1
    ) or np.any(np.diff(thresholds) <= 0):
        raise ValueError("thresholds must be a non-empty increasing sequence in [0, 1)")
    if not iou_thresholds or any(not 0 < d <= 1 for d in iou_thresholds):
        raise ValueError(f"iou_thresholds must be values in (0, 1], got {iou_thresholds}")


def _pick_device(device: str | torch.device | None, ctx: distributed.DistContext,
                 model_device: torch.device | None) -> torch.device:
    """``device``; else the model's own GPU; else this rank's GPU when there is one; else CPU."""
    if device is not None:
        return torch.device(device)
    if model_device is not None and model_device.type != "cpu":
        return model_device
    if torch.cuda.is_available():
        return torch.device("cuda", ctx.local_rank if ctx.is_distributed else 0)
    return torch.device("cpu")


class ModelState:
    """The model's training flags and device, restored after the audit."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self.training = {name: m.training for name, m in model.named_modules()}
        devices = {p.device for p in model.parameters()} | {b.device for b in model.buffers()}
        self.device = devices.pop() if len(devices) == 1 else None

    def restore(self) -> None:
        if self.device is not None:
            self.model.to(self.device)
        for name, module in self.model.named_modules():
            module.train(self.training.get(name, module.training))


def _batches(indices: list[int], batch_size: int) -> list[list[int]]:
    """Group indices by ``index // batch_size``: a resumed run (which skips whole committed
    batches) rebuilds exactly the batches of an uninterrupted run."""
    groups: dict[int, list[int]] = {}
    for index in indices:
        groups.setdefault(index // batch_size, []).append(index)
    out = []
    for group in groups.values():
        out += [group[i:i + batch_size] for i in range(0, len(group), batch_size)]
    return out


def _check_model(model: nn.Module) -> None:
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if isinstance(model, torch.jit.ScriptModule):
        raise TypeError(
            "TorchScript modules cannot be audited: PyTorch does not run Python forward hooks "
            "on ScriptModules ('register_forward_hook is not supported on ScriptModules'), and "
            "CAM needs the features that feed global pooling. Workaround: audit the Python "
            "model with its weights, e.g. save them with "
            "torch.save(torch.jit.load('model.pt').state_dict(), 'weights.pt') and run "
            "`camplug audit --model package.module:factory --checkpoint weights.pt ...`"
        )


def run_audit(
    model: nn.Module,
    data: Dataset,
    *,
    out_dir: str | Path,
    batch_size: int = 64,
    num_workers: int = 0,
    device: str | torch.device | None = None,
    layer: str | None = None,
    output: int | str | Callable | None = None,
    thresholds: Sequence[float] | None = None,
    iou_thresholds: Sequence[float] = (0.3, 0.5, 0.7),
    flags: FlagThresholds | None = None,
    faithfulness: bool = False,
    faithfulness_steps: int = 20,
    report: bool = True,
    gallery_size: int = 8,
    model_name: str | None = None,
    fresh: bool = False,
    progress: bool | None = None,
) -> AuditSummary:
    """Audit ``model``'s CAMs on ``data`` and return the run's summary.

    ``data[i]``: a dict with ``image`` float [3, H, W] (as the model expects it), ``label`` int,
    ``box`` [4] or ``boxes`` [M, 4] (x0, y0, x1, y1 inclusive pixels), optional ``mask`` bool
    [H, W] and ``id``. Items that fail to load are stored as error rows. ``layer`` / ``output``
    are passed to ``camplug.attach``. ``thresholds``: the CAM threshold grid (default 0.00,
    0.01, ..., 0.99). ``flags``: when samples are flagged (``FlagThresholds``). ``faithfulness``
    adds deletion / insertion AUC (``faithfulness_steps`` forwards each per batch). ``fresh``
    discards a stored run with the same configuration instead of resuming it. ``progress``:
    None draws the bar only on a terminal. ``device``: default the model's GPU, else a GPU
    when present, else the CPU. Writes ``audit.sqlite`` and (``report``) ``report.html``
    under ``out_dir``. The model's modes, device and hooks are restored.

    Resuming: a run's identity is a hash of the model's weights, the dataset's
    ``fingerprint()`` (or its description: class, length and ``n``/``split``/``image_size``/
    ``seed`` attributes when present) and every option that changes results; calling again with
    the same identity and ``out_dir`` audits only the samples not stored yet.
    """
    _check_model(model)
    grid = np.asarray(DEFAULT_THRESHOLDS if thresholds is None else thresholds, dtype=np.float64)
    _check_arguments(batch_size, grid, iou_thresholds)
    flags = flags or FlagThresholds()
    out_dir = Path(out_dir)
    model_name = model_name or type(model).__name__
    config = run_config(
        model, data, model_name=model_name, layer=layer, output=output, thresholds=grid,
        iou_thresholds=iou_thresholds, flags=flags, faithfulness=faithfulness,
        faithfulness_steps=faithfulness_steps,
    )
    run_id = run_id_of(config)
    n = len(data)  # type: ignore[arg-type]
    db_path = out_dir / DB_NAME
    ctx = distributed.setup()
    try:
        if ctx.is_main:
            _open_run(db_path, run_id, config, n, fresh)
        ctx.barrier()
        with ResultStore(db_path) as store:
            done = store.done_indices(run_id)
        pending = distributed.shard(sorted(set(range(n)) - done), ctx.rank, ctx.world_size)
        shard_path = (out_dir / SHARD_DIR / f"{run_id}.rank{ctx.rank}.sqlite"
                      if ctx.is_distributed else db_path)
        summary = _run(
            model, data, ctx=ctx, run_id=run_id, config=config, n=n, done=len(done),
            pending=pending, db_path=db_path, shard_path=shard_path, batch_size=batch_size,
            num_workers=num_workers, device=_pick_device(device, ctx, ModelState(model).device),
            layer=layer,
            output=output, settings=ScoringSettings(
                torch.from_numpy(grid), flags, faithfulness, faithfulness_steps),
            iou_thresholds=iou_thresholds, report=report, gallery_size=gallery_size,
            progress=progress,
        )
    finally:
        ctx.close()
    return summary


def _open_run(db_path: Path, run_id: str, config: dict[str, Any], n: int, fresh: bool) -> None:
    """Create or resume the run (rank 0 only); fold in shards a killed distributed run left."""
    with ResultStore(db_path) as store:
        shards = sorted((db_path.parent / SHARD_DIR).glob(f"{run_id}.rank*.sqlite"))
        if fresh:
            store.delete_run(run_id)
        elif shards:
            store.merge_from(shards, run_id)
        for shard in shards:
            shard.unlink()
        store.start_run(RunRecord(
            run_id=run_id, model=config["model"], dataset=config["dataset"], config=config,
            n_samples=n, camplug_version=__version__, torch_version=torch.__version__,
            python_version=platform.python_version(), started_at=utc_now(), finished_at=None,
            status="running", attempts=1,
        ))


def _run(model, data, *, ctx, run_id, config, n, done, pending, db_path, shard_path,
         batch_size, num_workers, device, layer, output, settings, iou_thresholds, report,
         gallery_size, progress) -> AuditSummary:
    from ..api import attach

    state = ModelState(model)
    status = "failed"
    try:
        model.eval()
        if state.device is not None:
            model.to(device)
        capture = attach(model, layer=layer, output=output)
        with capture:
            loader = DataLoader(
                GuardedDataset(data), batch_sampler=_batches(pending, batch_size),
                collate_fn=collate, num_workers=num_workers,
                pin_memory=device.type == "cuda",
            )
            total = n if not ctx.is_distributed else len(pending)
            bar = Progress(total, done=done if not ctx.is_distributed else 0,
                           enabled=progress if ctx.is_main else False)
            started = time.monotonic()
            with ResultStore(shard_path) as writer, bar:
                for batch in loader:
                    writer.write_rows(score_batch(model, capture, batch, settings, device,
                                                  run_id))
                    bar.update(len(batch))
            ctx.barrier()
            summary = None
            if ctx.is_main:
                summary = _finish(model, capture, data, ctx, run_id, config, n, db_path,
                                  iou_thresholds, settings, device, report, gallery_size,
                                  time.monotonic() - started)
            status = "complete"
        ctx.barrier()
        if summary is None:
            summary = load_summary(db_path, run_id)
        return summary
    finally:
        state.restore()
        if ctx.is_main and status != "complete":
            with ResultStore(db_path) as store:
                store.finish_run(run_id, "failed")


def _finish(model, capture, data, ctx, run_id, config, n, db_path, iou_thresholds, settings,
            device, report, gallery_size, seconds) -> AuditSummary:
    """Rank 0: merge the shards, check completeness, summarize, write the report."""
    with ResultStore(db_path) as store:
        if ctx.is_distributed:
            shards = [db_path.parent / SHARD_DIR / f"{run_id}.rank{r}.sqlite"
                      for r in range(ctx.world_size)]
            store.merge_from(shards, run_id)
            for shard in shards:
                shard.unlink()
        stored = store.count(run_id)
        if stored != n:
            raise RuntimeError(f"run {run_id}: {stored} of {n} samples stored after the audit")
        store.finish_run(run_id, "complete")
        rows = store.rows(run_id)
    summary = summarize(
        rows, run_id=run_id, db_path=db_path, model=config["model"],
        dataset=config["dataset"], n_samples=n, thresholds=settings.thresholds.numpy(),
        iou_thresholds=iou_thresholds, flag_thresholds=settings.flags,
    )
    if report:
        summary.report_path = build_report(
            db_path.parent / REPORT_NAME, summary, rows, model=model, capture=capture,
            data=data, device=device, gallery_size=gallery_size, config=config,
            seconds=seconds,
        )
    return summary


def load_summary(db_path: str | Path, run_id: str | None = None) -> AuditSummary:
    """The summary of a stored run (the latest run in the file when ``run_id`` is None)."""
    db_path = Path(db_path)
    with ResultStore(db_path) as store:
        run = store.get_run(run_id) if run_id else (store.runs() or [None])[-1]
        if run is None:
            raise ValueError(f"{db_path} holds no run {run_id or ''}".strip())
        rows = store.rows(run.run_id)
    config = run.config
    return summarize(
        rows, run_id=run.run_id, db_path=db_path, model=run.model, dataset=run.dataset,
        n_samples=run.n_samples, thresholds=np.asarray(config["thresholds"]),
        iou_thresholds=config["iou_thresholds"],
        flag_thresholds=FlagThresholds(**config["flags"]),
    )
