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

# Peer benchmark (issue 15): camplug vs Captum, pytorch-grad-cam and torchcam on torchvision
# models, in its own environment .venv-peers (never the test environment .venv). torch and
# torchvision are installed first and pinned by a constraints file in every install, so pip
# never re-resolves them. `make bench-peers PEERS_ARGS="--batches 1 8 --rounds 2"` for a quick run.
PEERS_VENV ?= .venv-peers
PEERS_PY := $(PEERS_VENV)/bin/python
PEERS_CONSTRAINTS := benchmarks/peers/constraints.txt
PEERS_STAMP := $(PEERS_VENV)/.peers-installed
PEERS_ARGS ?= --threads 1

$(PEERS_STAMP): $(PEERS_CONSTRAINTS) pyproject.toml
	test -x $(PEERS_PY) || $(PYTHON) -m venv $(PEERS_VENV)
	echo '*' > $(PEERS_VENV)/.gitignore
	$(PEERS_PY) -m pip install -c $(PEERS_CONSTRAINTS) torch==2.14.1 torchvision==0.29.1
	$(PEERS_PY) -m pip install -c $(PEERS_CONSTRAINTS) timm grad-cam torchcam captum \
		numpy tqdm pillow matplotlib
	$(PEERS_PY) -m pip install --no-deps -e . || \
		$(PEERS_PY) -m pip install --no-deps --no-build-isolation -e .
	touch $@

.PHONY: bench-peers
bench-peers: $(PEERS_STAMP)
	$(PEERS_PY) benchmarks/bench_peers.py $(PEERS_ARGS)
