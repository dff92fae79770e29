"""Test-wide set-up. Triton's CPU interpreter must be enabled before triton is imported."""

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
