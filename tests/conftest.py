"""Shared test settings.

Without a CUDA GPU, Triton kernels run through the interpreter: TRITON_INTERPRET=1 must be set
before triton is first imported, so it is set here, at collection time.
"""
import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

# One intra-op thread: the suite's tensors are tiny, and on a loaded 2-core machine torch's thread
# pool turns a 5 µs op into milliseconds. Tests that measure threading pass thread counts explicitly.
torch.set_num_threads(1)

try:
    import triton  # noqa: F401

    HAS_TRITON = True
except Exception:  # pragma: no cover - triton is optional
    HAS_TRITON = False

HAS_CUDA = torch.cuda.is_available()

requires_triton = pytest.mark.skipif(not HAS_TRITON, reason="triton is not installed")
requires_cuda = pytest.mark.skipif(not HAS_CUDA, reason="no CUDA GPU on this machine")

# (dtype, atol, rtol) rows shared by the parity tests.
DTYPE_TOL = {
    torch.float32: (1e-5, 1e-5),
    torch.bfloat16: (1e-2, 1e-2),
    torch.float16: (1e-3, 1e-3),
}


def pytest_collection_modifyitems(config, items):
    """`slow` tests run only with -m slow or CK_SLOW=1 (their smaller defaults run otherwise)."""
    if os.environ.get("CK_SLOW") == "1" or "slow" in (config.getoption("-m") or ""):
        return
    skip = pytest.mark.skip(reason="slow: run with CK_SLOW=1 or -m slow")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)
