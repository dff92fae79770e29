"""The audit under bad conditions: a sample that breaks the forward, two audits on one folder,
results files that are not the audit's, an output path that is a file, SIGTERM, hostile names
in the report and in SQL."""

from __future__ import annotations

import os
import signal
import sqlite3

import pytest
import torch
from test_audit import GRID, TinyNet
from torch.utils.data import Dataset

from camplug.audit import run_audit
from camplug.audit.errors import AuditError, AuditInterrupted
from camplug.audit.lock import OutputBusyError, OutputLock
from camplug.audit.store import ResultStore, StoreError
from camplug.data.synthetic import SyntheticLocalization


class HugeSample(Dataset):
    """Synthetic samples; sample ``huge`` has enormous pixel values, which ``Fragile`` cannot
    take (as a model runs out of memory on one huge image)."""

    def __init__(self, n: int = 8, huge: int = 2) -> None:
        self.inner = SyntheticLocalization(n=n, image_size=32, seed=3)
        self.huge = huge

    def __len__(self) -> int:
        return len(self.inner)

    def __getitem__(self, index):
        item = dict(self.inner[index])
        if index == self.huge:
            item["image"] = item["image"] * 1e6
        return item


class Fragile(TinyNet):
    def forward(self, x):
        if (x.abs().flatten(1).amax(1) > 1e4).any():
            raise RuntimeError("CUDA out of memory. Tried to allocate 80.00 GiB (simulated)")
        return super().forward(x)


def test_a_sample_that_breaks_the_forward_becomes_an_error_row(tmp_path):
    summary = run_audit(Fragile(), HugeSample(), out_dir=tmp_path, batch_size=4,
                        thresholds=GRID, report=False)
    clean = run_audit(TinyNet(), HugeSample(huge=-1), out_dir=tmp_path / "clean", batch_size=4,
                      thresholds=GRID, report=False)
    with ResultStore(summary.db_path) as store:
        rows = store.rows(summary.run_id)
        assert store.get_run(summary.run_id).status == "complete"
    with ResultStore(clean.db_path) as store:
        reference = store.rows(clean.run_id)
    assert rows[2].error == "RuntimeError: CUDA out of memory. Tried to allocate 80.00 GiB " \
                           "(simulated)"
    assert summary.n_errors == 1 and summary.n_stored == 8
    for row, expected in zip(rows, reference, strict=True):  # the others as in a clean run
        if row.sample_index != 2:
            assert row.error is None and row.prediction == expected.prediction
            assert row.score == pytest.approx(expected.score, abs=1e-6)


def test_a_model_that_always_fails_fails_the_run(tmp_path):
    class Broken(TinyNet):
        def forward(self, x):
            raise RuntimeError("broken model")

    with pytest.raises(RuntimeError, match="broken model"):
        run_audit(Broken(), SyntheticLocalization(n=4, image_size=32), out_dir=tmp_path,
                  batch_size=2, thresholds=GRID, report=False)
    with ResultStore(tmp_path / "audit.sqlite") as store:
        (run,) = store.runs()
        assert run.status == "failed" and store.count(run.run_id) == 0


def test_an_output_folder_in_use_is_refused_with_the_owners_pid(tmp_path):
    data = SyntheticLocalization(n=2, image_size=32)
    with OutputLock(tmp_path), pytest.raises(OutputBusyError) as refused:
        run_audit(TinyNet(), data, out_dir=tmp_path, thresholds=GRID, report=False)
    assert f"output folder {tmp_path} is in use by pid {os.getpid()}" in str(refused.value)
    assert isinstance(refused.value, ValueError)  # the CLI reports it without a traceback
    summary = run_audit(TinyNet(), data, out_dir=tmp_path, thresholds=GRID, report=False)
    assert summary.complete  # released: the next audit runs


def test_each_run_keeps_its_own_report(tmp_path):
    data = SyntheticLocalization(n=3, image_size=32)
    first = run_audit(TinyNet(seed=0), data, out_dir=tmp_path, thresholds=GRID, gallery_size=1)
    second = run_audit(TinyNet(seed=1), data, out_dir=tmp_path, thresholds=GRID,
                       gallery_size=1)
    own = [tmp_path / f"report-{s.run_id}.html" for s in (first, second)]
    assert first.run_id != second.run_id and all(p.is_file() for p in own)
    assert first.run_id in own[0].read_text() and second.run_id not in own[0].read_text()
    assert second.report_path == tmp_path / "report.html"
    assert second.report_path.read_text() == own[1].read_text()  # the latest run's


@pytest.mark.parametrize("content", ["garbage", "foreign"])
def test_a_results_file_that_is_not_the_audits_is_refused_untouched(tmp_path, content):
    db = tmp_path / "audit.sqlite"
    if content == "garbage":
        db.write_bytes(b"this is not a database at all" * 100)
    else:
        conn = sqlite3.connect(db)
        conn.execute("CREATE TABLE invoices (id INTEGER, amount REAL)")
        conn.commit()
        conn.close()
    before = db.read_bytes()
    with pytest.raises(StoreError, match="not a camplug results file"):
        run_audit(TinyNet(), SyntheticLocalization(n=2, image_size=32), out_dir=tmp_path,
                  thresholds=GRID, report=False)
    assert db.read_bytes() == before


def test_an_old_results_file_gains_the_new_columns(tmp_path):
    db = tmp_path / "audit.sqlite"
    with ResultStore(db):
        pass
    conn = sqlite3.connect(db)
    conn.execute("ALTER TABLE runs DROP COLUMN images_per_second")
    conn.execute("ALTER TABLE runs DROP COLUMN summary")
    conn.commit()
    conn.close()
    summary = run_audit(TinyNet(), SyntheticLocalization(n=2, image_size=32), out_dir=tmp_path,
                        thresholds=GRID, report=False)
    with ResultStore(db) as store:
        assert store.get_run(summary.run_id).images_per_second is not None


def test_an_output_path_that_is_a_file_is_refused(tmp_path):
    path = tmp_path / "out"
    path.write_text("a file")
    data = SyntheticLocalization(n=2, image_size=32)
    for out in (path, path / "below"):
        with pytest.raises(AuditError, match="output folder .* (is not a folder|is a file)"):
            run_audit(TinyNet(), data, out_dir=out, thresholds=GRID, report=False)
    assert path.read_text() == "a file"


class SigtermAt(Dataset):
    """Sends this process SIGTERM while reading sample ``at`` (as torchrun or a scheduler)."""

    def __init__(self, at: int) -> None:
        self.inner = SyntheticLocalization(n=8, image_size=32)
        self.at = at

    def __len__(self) -> int:
        return 8

    def __getitem__(self, index):
        if index == self.at:
            os.kill(os.getpid(), signal.SIGTERM)
        return self.inner[index]


def test_sigterm_marks_the_run_interrupted_and_restores_the_handler(tmp_path):
    def outer_handler(signum, frame):  # the caller's own handler (the default would kill pytest)
        raise RuntimeError("the caller's SIGTERM handler ran, not the audit's")

    previous = signal.signal(signal.SIGTERM, outer_handler)
    try:
        with pytest.raises(AuditInterrupted, match="SIGTERM"):
            run_audit(TinyNet(), SigtermAt(5), out_dir=tmp_path, batch_size=2,
                      thresholds=GRID, report=False)
        assert signal.getsignal(signal.SIGTERM) is outer_handler
    finally:
        signal.signal(signal.SIGTERM, previous)
    with ResultStore(tmp_path / "audit.sqlite") as store:
        (run,) = store.runs()
        assert run.status == "interrupted" and store.count(run.run_id) == 4
    # the lock is released and the same call resumes
    summary = run_audit(TinyNet(), SigtermAt(-1), out_dir=tmp_path, batch_size=2,
                        thresholds=GRID, report=False)
    assert summary.run_id == run.run_id and summary.complete


HOSTILE = "<img src=x onerror=alert(1)>'); DROP TABLE samples; --"


class Hostile(Dataset):
    class_names = [f"<script>alert({k})</script>" for k in range(8)]

    def __init__(self) -> None:
        self.inner = SyntheticLocalization(n=4, image_size=32)

    def __len__(self) -> int:
        return 4

    def __getitem__(self, index):
        if index == 3:
            raise OSError(f"cannot read {HOSTILE}")
        return {**self.inner[index], "id": f"{HOSTILE}{index}"}

    def describe(self) -> str:
        return f"dataset {HOSTILE}"


def test_hostile_names_are_escaped_in_the_report_and_stored_verbatim(tmp_path):
    summary = run_audit(TinyNet(), Hostile(), out_dir=tmp_path, thresholds=GRID, gallery_size=2,
                        model_name=f"model {HOSTILE}")
    page = summary.report_path.read_text()
    # the report's own script is allowed; no name may bring one or an element of its own
    assert "<script>alert(" not in page and "<img src=x" not in page
    assert "&lt;img src=x onerror=alert(1)&gt;" in page
    assert "&lt;script&gt;alert(" in page  # class names in the gallery captions
    with ResultStore(summary.db_path) as store:  # SQL with parameters: stored as given
        run = store.get_run(summary.run_id)
        rows = store.rows(summary.run_id)
    assert run.model == f"model {HOSTILE}" and run.dataset == f"dataset {HOSTILE}"
    assert [r.sample_id for r in rows[:3]] == [f"{HOSTILE}{i}" for i in range(3)]
    assert rows[3].error == f"OSError: cannot read {HOSTILE}"


def test_a_scripted_model_is_refused_as_a_value_error(tmp_path):
    scripted = torch.jit.script(TinyNet().eval())
    with pytest.raises(ValueError, match="TorchScript.*forward hooks.*Workaround"):
        run_audit(scripted, SyntheticLocalization(n=2, image_size=32), out_dir=tmp_path)
