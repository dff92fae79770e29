"""``camplug.run_audit(model, data, out_dir=...)``: audit a classifier's CAMs on a localization set.

A run is identified by its configuration (model fingerprint, dataset, thresholds, flag rules,
options that change results); its rows go to ``<out_dir>/audit.sqlite``. Calling ``audit``
again with the same configuration and output folder resumes the run: samples already stored
are skipped, so a killed run loses at most the batch in flight and stores nothing twice.
Under ``torchrun`` every rank audits its share of the pending samples into its own shard file
and rank 0 merges them (see ``distributed``).
"""

from __future__ import annotations

import platform
import signal
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from ..data.specs import TORCHSCRIPT_REFUSAL
from ..version import __version__
from . import distributed
from .batches import Batch, GuardedDataset, collate
from .errors import AuditError, AuditInterrupted, UnsupportedModelError
from .lock import OutputLock
from .metric_table import scalar_summary
from .progress import Progress
from .report.gallery import build_report
from .run import DB_NAME, REPORT_NAME, AuditRun, RunConfig, RunOptions
from .scoring import error_rows, score_batch
from .store import ResultStore, RunRecord, SampleRow, utc_now
from .summary import AuditSummary, FlagThresholds, summarize

__all__ = ["DB_NAME", "REPORT_NAME", "load_summary", "run_audit"]


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
        raise UnsupportedModelError(TORCHSCRIPT_REFUSAL)


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
    method: str = "cam",
    border_fraction: float = 0.1,
    protocol: str = "camplug",
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
    when present, else the CPU. ``method``: the map method (``camplug.methods.available()`` or
    ``"auto"``; part of the run's identity). ``border_fraction``: the border band of the
    ``border_mass`` statistic and the ``border_focus`` flag, as a share of each side.
    ``protocol``: the MaxBoxAcc box protocol, ``"camplug"`` (tight boxes of the 8-connected
    components) or ``"wsolevaluation"`` (Choe et al.'s reference code, exactly);
    ``camplug.metrics.PROTOCOLS``.
    ``data[i]`` may leave out the boxes (labels-only audit): such samples get every metric
    that needs no boxes (prediction, confidence, map statistics, faithfulness).
    Writes ``audit.sqlite`` and (``report``) ``report.html`` under ``out_dir``. The model's
    modes, device and hooks are restored.

    Resuming: a run's identity is a hash of the model's weights, the dataset's
    ``fingerprint()`` (or its description: class, length and ``n``/``split``/``image_size``/
    ``seed`` attributes when present) and every option that changes results; calling again with
    the same identity and ``out_dir`` audits only the samples not stored yet.
    """
    _check_model(model)
    options = RunOptions(batch_size=batch_size, num_workers=num_workers, report=report,
                         gallery_size=gallery_size, fresh=fresh, progress=progress)
    config = RunConfig.create(
        model, data, model_name=model_name or type(model).__name__, layer=layer, output=output,
        thresholds=thresholds, iou_thresholds=iou_thresholds, flags=flags or FlagThresholds(),
        faithfulness=faithfulness, faithfulness_steps=faithfulness_steps, method=method,
        border_fraction=border_fraction, protocol=protocol,
    )
    ctx = distributed.setup()
    try:
        run = AuditRun(config, options, model, data, Path(out_dir), ctx,
                       _pick_device(device, ctx, ModelState(model).device))
        return execute(run)
    finally:
        ctx.close()


@contextmanager
def sigterm_raises() -> Iterator[None]:
    """While inside, SIGTERM raises ``AuditInterrupted`` (main thread only; the previous
    handler is restored afterwards), so a stopped run is marked ``interrupted``."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: object) -> None:
        raise AuditInterrupted(f"stopped by {signal.Signals(signum).name}")

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous if previous is not None else signal.SIG_DFL)


def execute(run: AuditRun) -> AuditSummary:
    """Lock the output folder, open (or resume) the run, score its pending samples, and on
    rank 0 merge, summarize and write the report. The run ends ``complete``, ``interrupted``
    (SIGTERM, Ctrl-C) or ``failed``."""
    with ExitStack() as stack, sigterm_raises():
        error = None
        if run.ctx.is_main:
            try:
                stack.enter_context(OutputLock(run.out_dir))
                open_run(run)
            except Exception as failure:  # every rank must hear of it before raising
                error = failure
        message = run.ctx.broadcast(None if error is None else str(error))
        if error is not None:
            raise error
        if message is not None:
            raise AuditError(f"rank 0 could not start the run: {message}")
        return _execute_open_run(run)


def _execute_open_run(run: AuditRun) -> AuditSummary:
    from ..api import attach

    ctx = run.ctx
    with ResultStore(run.db_path) as store:
        done = store.done_indices(run.run_id)
    state = ModelState(run.model)
    status = "failed"
    try:
        run.model.eval()
        if state.device is not None:
            run.model.to(run.device)
        with attach(run.model, layer=run.config.layer, output=run.config.output) as capture:
            started = time.monotonic()
            score_pending(run, capture, done)
            ctx.barrier()
            summary = None
            if ctx.is_main:
                seconds = time.monotonic() - started
                audited = run.n_samples - len(done)
                speed = audited / seconds if audited and seconds > 0 else None
                summary = finish(run, capture, speed)
            status = "complete"
        ctx.barrier()
        return summary if summary is not None else load_summary(run.db_path, run.run_id)
    except KeyboardInterrupt:
        status = "interrupted"
        raise
    finally:
        state.restore()
        if ctx.is_main and status != "complete":
            with ResultStore(run.db_path) as store:
                store.finish_run(run.run_id, status)


def open_run(run: AuditRun) -> None:
    """Create or resume the run (rank 0 only); fold in shards a killed distributed run left."""
    with ResultStore(run.db_path) as store:
        shards = run.leftover_shards()
        if run.options.fresh:
            store.delete_run(run.run_id)
        elif shards:
            store.merge_from(shards, run.run_id)
        for shard in shards:
            shard.unlink()
        store.start_run(RunRecord(
            run_id=run.run_id, model=run.config.model, dataset=run.config.dataset,
            config=run.config.to_dict(), n_samples=run.n_samples, camplug_version=__version__,
            torch_version=torch.__version__, python_version=platform.python_version(),
            started_at=utc_now(), finished_at=None, status="running", attempts=1,
        ))


def score_pending(run: AuditRun, capture, done: set[int]) -> None:
    """Score this rank's share of the samples not stored yet, one transaction per batch."""
    ctx = run.ctx
    pending = distributed.shard(sorted(set(range(run.n_samples)) - done), ctx.rank,
                                ctx.world_size)
    loader = DataLoader(
        GuardedDataset(run.data), batch_sampler=_batches(pending, run.options.batch_size),
        collate_fn=collate, num_workers=run.options.num_workers,
        pin_memory=run.device.type == "cuda",
    )
    total = len(pending) if ctx.is_distributed else run.n_samples
    bar = Progress(total, done=0 if ctx.is_distributed else len(done),
                   enabled=run.options.progress if ctx.is_main else False)
    scored_any = False
    with ResultStore(run.writer_path) as writer, bar:
        for batch in loader:
            rows, scored = score_isolating(run, capture, batch, scored_any)
            scored_any = scored_any or scored
            writer.write_rows(rows)
            bar.update(len(batch))


def score_isolating(run: AuditRun, capture, batch: Batch,
                    scored_before: bool) -> tuple[list[SampleRow], bool]:
    """``score_batch``; when it raises (e.g. out of memory on one huge image), each sample is
    scored alone and those failing alone become error rows. The error is raised instead when
    no sample of the batch succeeds alone and none succeeded before (``scored_before``): then
    the model or the settings are at fault, not a sample. Returns the rows and whether any
    sample was scored."""
    try:
        return score_batch(run, capture, batch), bool(batch.indices)
    except Exception as batch_error:
        _release_memory(run.device)
        rows = error_rows(run.run_id, batch)
        failures = []
        for single in batch.singles() if batch.indices else []:
            try:
                rows += score_batch(run, capture, single)
            except Exception as error:
                _release_memory(run.device)
                failures.append(SampleRow(
                    run.run_id, single.indices[0], single.sample_ids[0],
                    label=int(single.labels[0]), error=_one_line(error)))
        if len(failures) == len(batch.indices) and not scored_before:
            raise batch_error
        return rows + failures, len(failures) < len(batch.indices)


def _one_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0] if text else ''}".rstrip(": ")


def _release_memory(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()


def finish(run: AuditRun, capture, images_per_second: float | None) -> AuditSummary:
    """Rank 0: merge the shards, check completeness, summarize, write the report."""
    with ResultStore(run.db_path) as store:
        if run.ctx.is_distributed:
            shards = [run.shard_path(r) for r in range(run.ctx.world_size)]
            store.merge_from(shards, run.run_id)
            for shard in shards:
                shard.unlink()
        stored = store.count(run.run_id)
        if stored != run.n_samples:
            raise RuntimeError(
                f"run {run.run_id}: {stored} of {run.n_samples} samples stored after the audit")
        rows = store.rows(run.run_id)
        if images_per_second is None:  # nothing left to audit: keep the stored throughput
            stored_run = store.get_run(run.run_id)
            images_per_second = stored_run.images_per_second if stored_run else None
        summary = _summarize(rows, run.config, run.run_id, run.db_path, images_per_second)
        store.finish_run(run.run_id, "complete", images_per_second=images_per_second,
                         summary=scalar_summary(summary.metrics))
    if run.options.report:
        summary.report_path = build_report(run, capture, summary, rows)
    return summary


def _summarize(rows, config: RunConfig, run_id: str, db_path: Path,
               images_per_second: float | None) -> AuditSummary:
    return summarize(
        rows, run_id=run_id, db_path=db_path, model=config.model, dataset=config.dataset,
        n_samples=config.n_samples, thresholds=np.asarray(config.thresholds),
        iou_thresholds=config.iou_thresholds, flag_thresholds=config.flags,
        images_per_second=images_per_second, class_names=config.class_names,
        data_warnings=config.data_warnings, method=config.method, protocol=config.protocol,
    )


def load_summary(db_path: str | Path, run_id: str | None = None) -> AuditSummary:
    """The summary of a stored run (the latest run in the file when ``run_id`` is None)."""
    db_path = Path(db_path)
    with ResultStore(db_path, read_only=True) as store:
        run = store.get_run(run_id) if run_id else (store.runs() or [None])[-1]
        if run is None:
            raise ValueError(f"{db_path} holds no run {run_id or ''}".strip())
        rows = store.rows(run.run_id)
    config = RunConfig.from_dict(run.config)
    return _summarize(rows, config, run.run_id, db_path, run.images_per_second)
