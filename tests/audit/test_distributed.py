"""Scale-out: sharding without duplicates, and a real 2-process gloo run under
torch.distributed.run whose merged results equal a single-process run."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from camplug.audit.distributed import DistContext, setup, shard

MODEL_SOURCE = textwrap.dedent("""
    import torch
    from torch import nn

    def make():
        generator = torch.Generator().manual_seed(0)
        model = nn.Sequential(
            nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.ReLU(),
            nn.Conv2d(8, 8, 3, stride=2, padding=1), nn.ReLU(),
            nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 8))
        with torch.no_grad():
            for p in model.parameters():
                p.copy_(torch.randn(p.shape, generator=generator) * 0.5)
        return model
""")


@pytest.mark.parametrize("world_size", [1, 2, 3, 4])
def test_shards_partition_the_indices(world_size):
    for n in range(0, 13):
        indices = [3 * i + 1 for i in range(n)]  # arbitrary pending indices
        shares = [shard(indices, rank, world_size) for rank in range(world_size)]
        flat = [i for share in shares for i in share]
        assert sorted(flat) == indices  # every index exactly once: no padding duplicates
        for rank, share in enumerate(shares):
            assert share == indices[rank::world_size]  # DistributedSampler's assignment


def test_plain_process_is_rank_zero_of_one(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    ctx = setup()
    assert ctx == DistContext() and ctx.is_main and not ctx.is_distributed
    ctx.barrier()  # a no-op without a process group
    ctx.close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_cli(args: list[str], *, distributed: int = 0, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CAMPLUG_NO_PROGRESS": "1"}
    env.pop("PYTEST_CURRENT_TEST", None)
    launcher = [sys.executable]
    if distributed:
        launcher += ["-m", "torch.distributed.run", f"--nproc-per-node={distributed}",
                     "--nnodes=1", "--master-addr=127.0.0.1", f"--master-port={free_port()}"]
        launcher += ["-m", "camplug"]
    else:
        launcher += ["-m", "camplug"]
    return subprocess.run(launcher + args, capture_output=True, text=True, timeout=240,
                          env=env, cwd=cwd, check=False)


@pytest.mark.slow
def test_torchrun_two_gloo_ranks_match_a_single_process(tmp_path):
    from camplug.audit.store import ResultStore

    model_file = tmp_path / "tiny_dist_models.py"
    model_file.write_text(MODEL_SOURCE)
    common = ["audit", "--model", f"{model_file}:make", "--data", "synthetic", "--num-images", "21",
              "--image-size", "32", "--batch-size", "4", "--gallery-size", "2",
              "--thresholds-step", "0.05"]
    single = run_cli(common + ["--out", str(tmp_path / "single"), "--no-report"], cwd=tmp_path)
    assert single.returncode == 0, single.stderr[-3000:]
    dist = run_cli(common + ["--out", str(tmp_path / "dist")], distributed=2, cwd=tmp_path)
    assert dist.returncode == 0, dist.stderr[-3000:]
    # rank 0 alone prints the table and writes the report; the shards are merged away
    assert dist.stdout.count("| MaxBoxAccV2 (%) |") == 1
    assert (tmp_path / "dist" / "report.html").is_file()
    assert not list((tmp_path / "dist" / "shards").glob("*.sqlite"))
    with ResultStore(tmp_path / "single" / "audit.sqlite") as a, \
            ResultStore(tmp_path / "dist" / "audit.sqlite") as b:
        (run_a,), (run_b,) = a.runs(), b.runs()
        assert run_a.run_id == run_b.run_id  # same configuration, same identity
        assert run_b.status == "complete"
        rows_a, rows_b = a.rows(run_a.run_id), b.rows(run_b.run_id)
    assert [r.sample_index for r in rows_b] == list(range(21))  # all, once each
    for x, y in zip(rows_a, rows_b, strict=True):
        assert (x.sample_id, x.label, x.prediction, x.flags) == (
            y.sample_id, y.label, y.prediction, y.flags)
        assert x.score == pytest.approx(y.score, abs=1e-5)
        # different batch composition may move a map value by float rounding: allow one
        # threshold column to differ in the IoU rows
        assert np.sum(np.abs(x.box_ious - y.box_ious) > 1e-6) <= 1
