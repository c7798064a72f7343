"""The CSpD criterion for diffusion heads (docs/CONTINUOUS.md, "The CSpD criterion"): approximate.

A diffusion head has no tractable density. CSpD (arXiv 2411.11925, github MarkXCloud/CSpD) runs the
drafter's and the target's denoisers on the same noise and compares the Gaussians of their last
denoising step, with the acceptance test tempered by an inner temperature; the target alone
generates the first tokens (pre-filling). ``verify_cspd`` turns the last-step Gaussians into
``K = 1`` mixtures and runs ``verify_continuous`` with ``accept_temperature = inner_temperature``.
"""
from __future__ import annotations

import math

import torch

from ...validation import check_number
from .api import verify_continuous
from .mixture import ContinuousVerifyOutput, GaussianMixture

__all__ = ["verify_cspd", "cspd_prefill_len", "INNER_TEMPERATURE", "PREFILL_FRACTION"]

# Defaults of the released code, spec_decode/spec_decode_runner.py (commit d91f721), line 72:
# SpecDecodeRunner(..., inner_temperature=42., ratio=0.15).
INNER_TEMPERATURE = 42.0
PREFILL_FRACTION = 0.15


def cspd_prefill_len(num_tokens: int, fraction: float = PREFILL_FRACTION) -> int:
    """How many leading tokens of a ``num_tokens``-token sequence the target generates alone before
    speculation starts: ``ceil(fraction * num_tokens)`` (``fraction`` in ``[0, 1]``)."""
    check_number(num_tokens, "num_tokens", lo=0, integer=True)
    check_number(fraction, "fraction", lo=0.0, hi=1.0)
    return min(num_tokens, math.ceil(round(fraction * num_tokens, 9)))  # round: 0.15 * 100 is 15.000000000000002


def _check_param(t, name: str, shape) -> None:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if not t.is_floating_point():
        raise TypeError(f"{name} must have a float dtype, got {t.dtype}")
    if tuple(t.shape) != shape:
        raise ValueError(f"{name} must have shape {shape}, got {tuple(t.shape)}")
    if not bool(torch.isfinite(t).all()):
        raise ValueError(f"{name} must be finite")


def verify_cspd(draft: torch.Tensor, draft_mean: torch.Tensor, draft_log_std: torch.Tensor,
                target_mean: torch.Tensor, target_log_std: torch.Tensor, *,
                inner_temperature: float = INNER_TEMPERATURE, seed=0, max_proposals: int = 64,
                backend: str = "auto") -> ContinuousVerifyOutput:
    """Verify drafted tokens of diffusion heads with the CSpD criterion (approximate, docs/CONTINUOUS.md).

    Args:
        draft: ``[B, L, D]`` the drafter's tokens (its sampler's outputs).
        draft_mean, draft_log_std: ``[B, L, D]`` the Gaussian of the drafter's last denoising step at
            each drafted token (mean, log standard deviation).
        target_mean, target_log_std: ``[B, L + 1, D]`` the target's last-step Gaussians at the same
            positions plus the bonus position, from the target's denoiser run on the noise the
            drafter used at that position (aligned trajectories).
        inner_temperature: ``T > 0``, the acceptance test's temperature (``verify_continuous``'s
            ``accept_temperature``); 42 in the released code. ``T = 1`` with drafts drawn from the
            drafter's last-step Gaussians would be exact speculative sampling of the last step.
        seed, max_proposals, backend: as ``verify_continuous``.

    Returns ``verify_continuous``'s ``ContinuousVerifyOutput``: the emitted tokens are
    ``draft[b, :accept_len[b]]`` then ``next[b]``, ``next`` drawn from the target's (untempered)
    last-step Gaussian at the bonus position, or from the residual of the two (untempered) last-step
    Gaussians after a rejection.
    """
    if not isinstance(draft, torch.Tensor):
        raise TypeError(f"draft must be a torch.Tensor, got {type(draft).__name__}")
    if draft.dim() != 3:
        raise ValueError(f"draft must have shape [B, L, D], got {tuple(draft.shape)}")
    B, L, D = draft.shape
    for name, t, P in (("draft_mean", draft_mean, L), ("draft_log_std", draft_log_std, L),
                       ("target_mean", target_mean, L + 1), ("target_log_std", target_log_std, L + 1)):
        _check_param(t, name, (B, P, D))
    p = GaussianMixture.gaussians(draft_mean, draft_log_std, check_finite=False)
    q = GaussianMixture.gaussians(target_mean, target_log_std, check_finite=False)
    return verify_continuous(draft, p, q, seed=seed, max_proposals=max_proposals,
                             accept_temperature=inner_temperature, backend=backend)
