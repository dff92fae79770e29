"""Let ``pytest benchmarks`` collect the ``bench_*.py`` scripts (pytest-benchmark tests)."""

from __future__ import annotations

import pytest


def pytest_collect_file(file_path, parent):
    is_bench = file_path.suffix == ".py" and file_path.name.startswith("bench_")
    # Files named on the command line are collected by pytest itself.
    if is_bench and not parent.session.isinitpath(file_path):
        return pytest.Module.from_parent(parent, path=file_path)
    return None
