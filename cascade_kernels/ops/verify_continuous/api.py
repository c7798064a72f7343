"""Public entry point: exact speculative verification of chains of continuous tokens (docs/CONTINUOUS.md)."""
from __future__ import annotations

import math

import numpy as np
import torch

from ... import _backend
from ...validation import check_number, check_seed
from .mixture import ContinuousVerifyOutput, GaussianMixture

__all__ = ["verify_continuous"]
_FLOAT_DTYPES = (torch.float32, torch.float64, torch.bfloat16, torch.float16)
_INT32_MAX = 2**31 - 1


def _check_mixture(g, name: str, batch, D: int, device) -> GaussianMixture:
    if not isinstance(g, GaussianMixture):
        raise TypeError(f"{name} must be a GaussianMixture, got {type(g).__name__}")
    if g.batch_shape != tuple(batch):
        raise ValueError(f"{name} must have batch shape {tuple(batch)}, got {g.batch_shape}")
    if g.D != D:
        raise ValueError(f"{name} has D = {g.D} but draft has D = {D}")
    if g.logits.device != device:
        raise ValueError(f"{name} is on {g.logits.device} but draft on {device}")
    return g.float32()


def verify_continuous(draft: torch.Tensor, draft_dist: GaussianMixture, target_dist: GaussianMixture, *,
                      seed=0, max_proposals: int = 64, accept_temperature: float = 1.0,
                      backend: str = "auto") -> ContinuousVerifyOutput:
    """Verify ``B`` chains of ``L`` drafted continuous tokens exactly (docs/CONTINUOUS.md).

    Args:
        draft: ``[B, L, D]`` drafted tokens (any float dtype), ``draft[b, i]`` drawn from
            ``draft_dist[b, i]``. ``B >= 1``, ``L >= 1``.
        draft_dist: ``GaussianMixture`` with batch shape ``[B, L]``: the drafter's densities ``p``.
        target_dist: ``GaussianMixture`` with batch shape ``[B, L + 1]``: the target's densities ``q``
            at every draft position plus the bonus position ``L``. The two mixtures may have
            different numbers of components; ``D`` must agree.
        seed: int (the same Philox key for every sequence) or int64 tensor ``[B]``. Sequences that
            share a seed share their uniforms: give independent sequences different seeds.
        max_proposals: bound on the residual sampler's proposals (``>= 1``).
        accept_temperature: ``T > 0``; the acceptance test compares the two densities with every
            component's scales multiplied by ``T`` (the residual sampler and the bonus draw do not).
            ``1`` (default) is exact speculative sampling; any other value is approximate: the
            CSpD criterion for diffusion heads (``verify_cspd``, docs/CONTINUOUS.md).
        backend: ``"auto"`` (CPU tensors: ``"cpu"`` when ``cascade_kernels._C`` imports, else
            ``"reference"``; CUDA tensors: ``"triton"``), ``"reference"``, ``"cpu"``, ``"triton"``.

    Returns ``ContinuousVerifyOutput(accept_len [B] int32, next [B, D] float32, proposals [B] int32,
    status [B] int32)``: the emitted tokens are ``draft[b, :accept_len[b]]`` then ``next[b]``.
    """
    if not isinstance(draft, torch.Tensor):
        raise TypeError(f"draft must be a torch.Tensor, got {type(draft).__name__}")
    if draft.dtype not in _FLOAT_DTYPES:
        raise TypeError(f"draft must have a float dtype, got {draft.dtype}")
    if draft.dim() != 3:
        raise ValueError(f"draft must have shape [B, L, D], got {tuple(draft.shape)}")
    B, L, D = draft.shape
    if B == 0 or L == 0 or D == 0:
        raise ValueError(f"draft must have B >= 1, L >= 1 and D >= 1, got shape {tuple(draft.shape)}")
    p = _check_mixture(draft_dist, "draft_dist", (B, L), D, draft.device)
    q = _check_mixture(target_dist, "target_dist", (B, L + 1), D, draft.device)
    check_number(max_proposals, "max_proposals", lo=1, integer=True)
    check_number(accept_temperature, "accept_temperature", lo=0.0, lo_open=True)
    # float32 1/T, the same value on every backend; a T whose inverse is not a positive finite float32 is refused.
    with np.errstate(over="ignore"):
        inv_temperature = float(np.float32(1.0 / accept_temperature))
    if not 0.0 < inv_temperature < math.inf:
        raise ValueError(f"accept_temperature = {accept_temperature!r}: 1 / accept_temperature is not a "
                         f"positive finite float32")
    # Philox indices (docs/CONTINUOUS.md) reach 2 ((L + 1) M D) - 1: keep them, and K * D offsets, in int32.
    if 2 * (L + 1) * max_proposals * D > _INT32_MAX:
        raise ValueError(f"max_proposals = {max_proposals} with L = {L}, D = {D} overflows the int32 "
                         f"Philox index 2 (L + 1) max_proposals D")
    if max(p.K, q.K) * D > _INT32_MAX:
        raise ValueError(f"K * D = {max(p.K, q.K) * D} overflows int32")
    seed = check_seed(seed, B, draft.device)
    _, impl = _backend.resolve("verify_continuous", backend, draft.device)
    return impl(draft.detach().to(torch.float32).contiguous(), p, q, seed, max_proposals, inv_temperature)
