"""What every benchmark script shares: the device's name and where its JSON report goes."""

from __future__ import annotations

import datetime
import json
import platform
from pathlib import Path

import torch

RESULTS_DIR = Path(__file__).resolve().parent / "results"


def device_name(device: torch.device) -> str:
    """The GPU's name, or ``CPU: <model name>`` from /proc/cpuinfo."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    name = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                name = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"CPU: {name}"


def write_report(report: dict, prefix: str, now: datetime.datetime, out: Path | None) -> Path:
    """Write ``report`` as JSON to ``out``, or to results/<prefix>_<device>_<UTC time>.json."""
    slug = "".join(c if c.isalnum() else "-" for c in report["device"].lower()).strip("-")
    path = out or RESULTS_DIR / f"{prefix}_{slug}_{now:%Y%m%dT%H%M%SZ}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2) + "\n")
    return path
