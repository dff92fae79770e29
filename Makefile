# Two commands for a fresh machine:  `make demo` (the main job)  and  `make test`.
# Both create or reuse .venv and install torch 2.13.0 first when torch is missing, so pip
# never resolves an unpinned torch (which would pull a multi-GB CUDA build).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
TORCH_VERSION ?= 2.13.0
STAMP := $(VENV)/.camplug-installed

.PHONY: demo test lint bench env clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install "torch==$(TORCH_VERSION)"
	$(PY) -m pip install --no-build-isolation -e ".[dev]" || $(PY) -m pip install -e ".[dev]"
	touch $(STAMP)

env: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/camplug demo

test: $(STAMP)
	$(PY) -m pytest -q tests

lint: $(STAMP)
	$(VENV)/bin/ruff check camplug kernels tests benchmarks

bench: $(STAMP)
	$(PY) -m pytest -q benchmarks --benchmark-only

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .hypothesis
