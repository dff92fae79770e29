"""Resumability: SIGKILL a real ``python -m camplug audit`` process mid-run, start it again,
and get every sample exactly once, with the results of an uninterrupted run."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from camplug.audit.store import ResultStore

N = 192
BATCH = 8
MODEL_SOURCE = textwrap.dedent("""
    import torch
    from torch import nn

    def make():
        generator = torch.Generator().manual_seed(0)
        model = nn.Sequential(
            nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.ReLU(),
            nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.ReLU(),
            nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 8))
        with torch.no_grad():
            for p in model.parameters():
                p.copy_(torch.randn(p.shape, generator=generator) * 0.5)
        return model
""")


def command(model_file: Path, out: Path) -> list[str]:
    return [sys.executable, "-m", "camplug", "audit", "--model", f"{model_file}:make",
            "--data", "synthetic", "--num-images", str(N), "--image-size", "48",
            "--batch-size", str(BATCH), "--out", str(out), "--no-report", "--no-progress"]


def environment() -> dict[str, str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CAMPLUG_NO_PROGRESS": "1"}
    env.pop("PYTEST_CURRENT_TEST", None)
    return env


def stored_count(db: Path) -> int:
    """Rows committed so far, read without disturbing the writer (0 before the table exists)."""
    if not db.exists():
        return 0
    try:
        conn = sqlite3.connect(f"{db.as_uri()}?mode=ro", uri=True, timeout=1.0)
        try:
            return conn.execute("SELECT COUNT(*) FROM samples").fetchone()[0]
        finally:
            conn.close()
    except sqlite3.OperationalError:  # table not created yet, or the file is being set up
        return 0


def run_to_completion(cmd: list[str]) -> None:
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=environment(),
                          check=False)
    assert done.returncode == 0, done.stderr[-3000:]


@pytest.mark.slow
def test_killed_run_resumes_without_loss_or_duplicates(tmp_path):
    model_file = tmp_path / "tiny_models.py"
    model_file.write_text(MODEL_SOURCE)
    out = tmp_path / "killed"
    db = out / "audit.sqlite"

    process = subprocess.Popen(command(model_file, out), env=environment(),
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 240
    try:
        while stored_count(db) < 3 * BATCH:
            if process.poll() is not None:
                pytest.fail("the audit ended before it could be killed (rc "
                            f"{process.returncode}): {process.stderr.read().decode()[-2000:]}")
            assert time.monotonic() < deadline, "no rows appeared in time"
            time.sleep(0.02)
        process.send_signal(signal.SIGKILL)
    finally:
        process.wait(timeout=60)
        process.stderr.close()
    assert process.returncode == -signal.SIGKILL

    with ResultStore(db) as store:
        (run,) = store.runs()
        assert run.status == "running"  # killed: never marked complete
        before = {r.sample_index: r for r in store.rows(run.run_id)}
    assert 3 * BATCH <= len(before) < N, "the kill should land mid-run"
    assert len(before) % BATCH == 0  # whole batches only: each is one transaction

    run_to_completion(command(model_file, out))  # the same command again resumes
    reference_out = tmp_path / "uninterrupted"
    run_to_completion(command(model_file, reference_out))

    with ResultStore(db) as store:
        (resumed,) = store.runs()
        rows = store.rows(resumed.run_id)
        conn = sqlite3.connect(db)
        distinct = conn.execute(
            "SELECT COUNT(*), COUNT(DISTINCT sample_index) FROM samples").fetchone()
        conn.close()
    assert resumed.run_id == run.run_id and resumed.status == "complete"
    assert resumed.attempts == 2 and resumed.started_at == run.started_at
    assert distinct == (N, N)
    assert [r.sample_index for r in rows] == list(range(N))
    for index, row in before.items():  # rows stored before the kill are kept as they were
        assert rows[index].to_db() == row.to_db()

    with ResultStore(reference_out / "audit.sqlite") as store:
        (reference_run,) = store.runs()
        reference = store.rows(reference_run.run_id)
    assert reference_run.run_id == resumed.run_id
    for a, b in zip(rows, reference, strict=True):  # bit-identical to the uninterrupted run
        assert a.to_db() == b.to_db(), a.sample_index
    assert sum(r.error is not None for r in rows) == 0
    assert np.isfinite([r.score for r in rows]).all()
