"""Exact speculative verification for chains of continuous tokens (Gaussian-mixture heads).

Backends: ``reference`` (PyTorch), ``cpu`` (``cascade_kernels._C``), ``triton`` (one fused launch).
Contract: docs/CONTINUOUS.md.
"""
from .api import verify_continuous
from .mixture import STATUS_NONFINITE, STATUS_PROPOSALS_EXHAUSTED, ContinuousVerifyOutput, GaussianMixture
from .reference import verify_continuous_reference

__all__ = ["GaussianMixture", "verify_continuous", "ContinuousVerifyOutput", "verify_continuous_reference",
           "STATUS_NONFINITE", "STATUS_PROPOSALS_EXHAUSTED"]
