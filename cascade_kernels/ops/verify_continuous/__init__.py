"""Exact speculative verification for chains of continuous tokens (Gaussian-mixture heads).

Backends: ``reference`` (PyTorch), ``cpu`` (``cascade_kernels._C``), ``triton`` (one fused launch).
Contract: docs/CONTINUOUS.md. ``verify_cspd``: the approximate CSpD criterion for diffusion heads;
``diffusion_toy``: a closed-form diffusion head to exercise it.
"""
from .api import verify_continuous
from .cspd import INNER_TEMPERATURE, PREFILL_FRACTION, cspd_prefill_len, verify_cspd
from .mixture import STATUS_NONFINITE, STATUS_PROPOSALS_EXHAUSTED, ContinuousVerifyOutput, GaussianMixture
from .reference import verify_continuous_reference

__all__ = ["GaussianMixture", "verify_continuous", "ContinuousVerifyOutput", "verify_continuous_reference",
           "STATUS_NONFINITE", "STATUS_PROPOSALS_EXHAUSTED", "verify_cspd", "cspd_prefill_len",
           "INNER_TEMPERATURE", "PREFILL_FRACTION"]
