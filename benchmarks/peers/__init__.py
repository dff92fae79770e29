"""Helpers of ``benchmarks/bench_peers.py``: camplug against Captum, pytorch-grad-cam and
torchcam on torchvision models (needs the ``.venv-peers`` environment of ``make bench-peers``)."""
