"""Static checks of the Triton kernel's machine code for an H100 (sm_90), without a GPU.

Runs benchmarks/kernel_static_report.py --quick in a subprocess (the kernels must be compiled
by the real compiler, not the interpreter that tests/conftest.py may enable) and checks the
three main variants at B=256, K=2048, 7x7 -> 224x224: no register spills in any launch, and
the output stores are full-width vectors with no shared-memory staging.
Skipped when triton or its bundled ptxas/cuobjdump are missing.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

triton = pytest.importorskip("triton")

ROOT = Path(__file__).resolve().parents[1]
BIN_DIR = Path(triton.__file__).parent / "backends" / "nvidia" / "bin"
if not all((BIN_DIR / tool).exists() for tool in ("ptxas", "cuobjdump")):
    pytest.skip(f"triton's ptxas/cuobjdump not found under {BIN_DIR}", allow_module_level=True)

# Output stores are 16-byte vectors for every output dtype (fp32: 4 pixels, fp16: 8 pixels,
# uint8: 16 pixels per store).
STORE_BITS = {"fp32": 128, "fp16": 128, "u8": 128}


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    out = tmp_path_factory.mktemp("static") / "report.json"
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["TRITON_DEFAULT_FP_FUSION"] = "1"
    done = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "kernel_static_report.py"), "--quick",
         "--out", str(out)],
        capture_output=True, text=True, env=env, cwd=ROOT, timeout=1800,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    return json.loads(out.read_text())


def test_three_main_variants_are_reported(report):
    labels = [case["case"] for case in report["cases"]]
    assert labels == [
        "B256-K2048-nchw-C1-to-fp32",
        "B256-K2048-channels_last-C1-to-fp16",
        "B256-K2048-nchw-C1-to-u8",
    ]
    assert report["target"].startswith("cuda sm_90")


def test_no_launch_spills_registers(report):
    for case in report["cases"]:
        for launch in case["launches"]:
            assert launch["spill_bytes"] == 0, (case["case"], launch["kernel"])
            assert launch["registers"] <= 128, (case["case"], launch["kernel"])


def test_output_stores_are_vectorized_without_shared_memory(report):
    for case in report["cases"]:
        output = case["launches"][2]
        assert output["kernel"] == "_output_kernel"
        want = STORE_BITS[case["case"].rsplit("-", 1)[1]]
        assert output["widest_global_store_bits"] == want, case["case"]
        assert output["shared_bytes"] == 0, case["case"]


def test_per_pixel_loop_is_short(report):
    """Two vector loads, a lerp and a vector store per pixel: no division, no gathers."""
    for case in report["cases"]:
        output = case["launches"][2]
        assert len(output["sass_loop_bodies"]) == 1
        assert output["sass_per_output_pixel_in_loop"] <= 14, case["case"]
