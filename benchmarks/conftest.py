"""Benchmark settings: importable package from the repo root; Triton through its interpreter only when
there is no GPU (the benchmarks then skip Triton rows: the interpreter is not a speed measure)."""
import os
import sys

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
