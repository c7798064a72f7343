"""Plain-PyTorch reference of ``verify_continuous`` (docs/CONTINUOUS.md): the executable contract.

Vectorised over the batch: the acceptance tests of all L drafts at once, then the residual
sampler's proposals ``CHUNK`` at a time for the sequences still drawing.
"""
from __future__ import annotations

import torch

from ... import philox
from .mixture import (STATUS_NONFINITE, STATUS_PROPOSALS_EXHAUSTED, ContinuousVerifyOutput, GaussianMixture,
                      box_muller, choose_component, draw_uniforms, mixture_log_prob, params_finite)

__all__ = ["verify_continuous_reference"]

CHUNK = 8  # proposals drawn and evaluated together per sequence


def _at(g: GaussianMixture, rows, pos):
    """The mixture parameters of sequence ``rows[b]`` at position ``pos[b]``: [B, K], [B, K, D], [B, K, D]."""
    return g.logits[rows, pos], g.means[rows, pos], g.log_scales[rows, pos]


def verify_continuous_reference(draft: torch.Tensor, draft_dist: GaussianMixture, target_dist: GaussianMixture,
                                seed: torch.Tensor, max_proposals: int,
                                inv_temperature: float = 1.0) -> ContinuousVerifyOutput:
    """Validated inputs: ``draft [B, L, D]`` float32, float32 mixtures with batch shapes [B, L] and
    [B, L+1], ``seed [B]`` int64, ``max_proposals >= 1``, ``inv_temperature`` the float32 value of
    ``1 / accept_temperature`` (the acceptance test only)."""
    B, L, D = draft.shape
    M = max_proposals
    dev = draft.device
    rows = torch.arange(B, device=dev)
    p, q = draft_dist, target_dist

    # The walk: draft i is accepted iff its position is valid and u_i < exp(min(0, log q - log p)),
    # both densities tempered by accept_temperature.
    ok_t = params_finite(q.logits, q.means, q.log_scales)  # [B, L+1]
    ok_d = params_finite(p.logits, p.means, p.log_scales) & torch.isfinite(draft).all(-1)  # [B, L]
    ratio = (mixture_log_prob(q.logits[:, :L], q.means[:, :L], q.log_scales[:, :L], draft, inv_temperature)
             - mixture_log_prob(p.logits, p.means, p.log_scales, draft, inv_temperature))
    u = philox.uniform(seed.unsqueeze(1), philox.CONT_ACCEPT, torch.arange(L, device=dev))
    accept = ok_t[:, :L] & ok_d & ((ratio >= 0) | (u < torch.exp(ratio)))  # NaN ratio: rejected
    s = accept.to(torch.int64).cumprod(1).sum(1)  # stopping position, 0..L

    tgt_ok = ok_t[rows, s]
    drf_ok = torch.where(s < L, ok_d[rows, s.clamp(max=L - 1)], torch.ones_like(tgt_ok))
    direct = tgt_ok & (~drf_ok | (s == L))  # bonus or broken draft: the first draw from q is kept
    status = torch.where(tgt_ok & drf_ok, 0, STATUS_NONFINITE).to(torch.int32)

    # Residual sampler at s: y ~ q, kept with prob max(0, 1 - p(y)/q(y)); at most M proposals, drawn
    # CHUNK at a time (the decisions are those of one-at-a-time proposals: the first kept one wins).
    ql, qm, qs = (t.unsqueeze(1) for t in _at(q, rows, s))  # [B, 1, K(, D)]: broadcast over the chunk
    pl, pm, ps = (t.unsqueeze(1) for t in _at(p, rows, s.clamp(max=L - 1)))
    out = torch.zeros(B, D, dtype=torch.float32, device=dev)
    best_y = torch.zeros_like(out)
    best_r = torch.full((B,), -1.0, device=dev)
    done = ~tgt_ok  # no target at s: nothing to draw, next = 0
    proposals = torch.zeros(B, dtype=torch.int64, device=dev)
    for j0 in range(0, M, CHUNK):
        active = ~done
        if not bool(active.any()):
            break
        j = torch.arange(j0, min(M, j0 + CHUNK), device=dev)
        uc, u1, u2, ur = draw_uniforms(seed, s.unsqueeze(1) * M + j, D)
        k = choose_component(ql, uc)  # [B, C]
        y = qm[rows.unsqueeze(1), 0, k] + torch.exp(qs[rows.unsqueeze(1), 0, k]) * box_muller(u1, u2)  # [B, C, D]
        d = mixture_log_prob(pl, pm, ps, y) - mixture_log_prob(ql, qm, qs, y)  # log p(y) - log q(y)
        r = torch.where(d < 0, 1.0 - torch.exp(d), torch.zeros_like(d))
        keep = direct.unsqueeze(1) | (d < 0) & (ur < r)
        kept = keep.any(1)
        first = torch.where(kept, keep.to(torch.int8).argmax(1), j.numel() - 1)  # first kept proposal
        take = active & kept
        out = torch.where(take.unsqueeze(1), y[rows, first], out)
        r_max, r_arg = r.max(1)  # first maximum
        better = active & ~kept & (r_max > best_r)
        best_y = torch.where(better.unsqueeze(1), y[rows, r_arg], best_y)
        best_r = torch.where(better, r_max, best_r)
        proposals = torch.where(active, j0 + first + 1, proposals)
        done = done | take
    exhausted = ~done  # fallback: the proposal with the largest residual ratio r (the first on ties)
    out = torch.where(exhausted.unsqueeze(1), best_y, out)
    status = status | torch.where(exhausted, STATUS_PROPOSALS_EXHAUSTED, 0).to(torch.int32)
    bad = ~torch.isfinite(out).all(1)
    out = torch.where(bad.unsqueeze(1), torch.zeros_like(out), out)
    status = status | torch.where(bad, STATUS_NONFINITE, 0).to(torch.int32)
    return ContinuousVerifyOutput(s.to(torch.int32), out, proposals.to(torch.int32), status)
