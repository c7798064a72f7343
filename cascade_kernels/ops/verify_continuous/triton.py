"""``backend="triton"``: one fused launch, one program per sequence (docs/CONTINUOUS.md).

Each program walks its chain (acceptance tests), then runs the residual sampler at the stopping
position, with the draws and float32 operations of reference.py / mixture.py. A mixture row lives
in registers as ``[BK, BD]`` tiles (``BK``, ``BD``: K and D rounded up to powers of two), so it
suits the small ``K * D`` of diffusion / GMM heads. Philox uniforms are ``tl.rand(seed, index +
(stream << 32))`` on 2-lane vectors (lane 0 kept) or on the ``D`` lanes of a token.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from ... import philox
from .mixture import HALF_LOG_2PI, TWO_PI, U_MIN, ContinuousVerifyOutput, GaussianMixture

__all__ = ["verify_continuous_triton"]


@triton.jit
def _lane0(v):
    lanes = tl.arange(0, 2)
    return tl.sum(tl.where(lanes == 0, v, 0.0))


@triton.jit
def _mix_tiles(lg_ptr, mu_ptr, ls_ptr, K, D, BK: tl.constexpr, BD: tl.constexpr):
    ks = tl.arange(0, BK)
    ds = tl.arange(0, BD)
    km = ks < K
    m2 = km[:, None] & (ds < D)[None, :]
    lg = tl.load(lg_ptr + ks, mask=km, other=-float("inf"))
    offs = ks[:, None] * D + ds[None, :]
    mu = tl.load(mu_ptr + offs, mask=m2, other=0.0)
    ls = tl.load(ls_ptr + offs, mask=m2, other=0.0)
    return lg, mu, ls, km, m2


@triton.jit
def _finite(lg_ptr, mu_ptr, ls_ptr, K, D, BK: tl.constexpr, BD: tl.constexpr):
    """1 when every parameter of the mixture is finite, else 0 (int32)."""
    lg, mu, ls, km, m2 = _mix_tiles(lg_ptr, mu_ptr, ls_ptr, K, D, BK, BD)
    bad = tl.sum(tl.where(km & ~(tl.abs(lg) < float("inf")), 1, 0), 0)
    bad += tl.sum(tl.sum(tl.where(m2 & ~((tl.abs(mu) < float("inf")) & (tl.abs(ls) < float("inf"))), 1, 0), 1), 0)
    return (bad == 0).to(tl.int32)


@triton.jit
def _log_prob(lg_ptr, mu_ptr, ls_ptr, K, D, y, inv_t, BK: tl.constexpr, BD: tl.constexpr):
    """mixture.mixture_log_prob at ``y [BD]`` (``inv_t``: its ``inv_temperature``)."""
    lg, mu, ls, km, m2 = _mix_tiles(lg_ptr, mu_ptr, ls_ptr, K, D, BK, BD)
    m = tl.max(lg, 0)
    lse = tl.log(tl.sum(tl.where(km, tl.exp(lg - m), 0.0), 0))
    z = (y[None, :] - mu) * tl.exp(-ls) * inv_t
    c = tl.sum(tl.where(m2, -0.5 * z * z - ls, 0.0), 1)
    t = tl.where(km, (lg - m - lse) + (c - D * HALF_LOG_2PI), -float("inf"))
    mt = tl.max(t, 0)
    s = tl.sum(tl.where(km, tl.exp(t - mt), 0.0), 0)
    return tl.where(mt == -float("inf"), -float("inf"), mt + tl.log(s))


@triton.jit
def _propose(lg_ptr, mu_ptr, ls_ptr, K, D, seed, n, BK: tl.constexpr, BD: tl.constexpr):
    """Proposal number ``n`` from the mixture (mixture.draw_uniforms / choose_component / box_muller);
    returns (y [BD], the residual uniform)."""
    ks = tl.arange(0, BK)
    ds = tl.arange(0, BD)
    km = ks < K
    dm = ds < D
    lanes = tl.arange(0, 2).to(tl.int64)
    u2l = tl.rand(seed, n + tl.where(lanes == 0, 4 << 32, 6 << 32))  # CONT_COMPONENT, CONT_RESIDUAL
    uc = _lane0(u2l)
    ur = tl.sum(tl.where(lanes == 1, u2l, 0.0))
    lg = tl.load(lg_ptr + ks, mask=km, other=-float("inf"))
    e = tl.where(km, tl.exp(lg - tl.max(lg, 0)), 0.0)
    c = tl.cumsum(e, 0)
    S = tl.max(tl.where(km, c, 0.0), 0)  # = c[K-1]: the cumulative sum does not decrease
    k = tl.minimum(tl.sum(tl.where(km & (c <= uc * S), 1, 0), 0), K - 1)
    base = (n * D + ds.to(tl.int64)) * 2 + (5 << 32)  # CONT_NORMAL
    u1 = tl.maximum(tl.rand(seed, base), U_MIN)
    u2 = tl.rand(seed, base + 1)
    z = tl.sqrt(-2.0 * tl.log(u1)) * tl.cos(TWO_PI * u2)
    mu = tl.load(mu_ptr + k * D + ds, mask=dm, other=0.0)
    ls = tl.load(ls_ptr + k * D + ds, mask=dm, other=0.0)
    return tl.where(dm, mu + tl.exp(ls) * z, 0.0), ur


@triton.jit
def _verify_continuous_kernel(x_ptr, pl_ptr, pm_ptr, ps_ptr, ql_ptr, qm_ptr, qs_ptr, seed_ptr,
                              acc_ptr, next_ptr, prop_ptr, status_ptr, L, D, M, KP, KQ, inv_t,
                              BKP: tl.constexpr, BKQ: tl.constexpr, BD: tl.constexpr):
    b = tl.program_id(0).to(tl.int64)
    seed = tl.load(seed_ptr + b)
    ds = tl.arange(0, BD)
    dm = ds < D
    lanes = tl.arange(0, 2).to(tl.int64)
    KPD = KP * D
    KQD = KQ * D
    # The walk: stop at the first position that is not finite or whose draft is rejected.
    s = tl.full([], 0, tl.int64)
    running = tl.full([], 1, tl.int32)
    tgt_ok = tl.full([], 1, tl.int32)
    drf_ok = tl.full([], 1, tl.int32)
    while (running == 1) & (s < L):
        qr = b * (L + 1) + s
        pr = b * L + s
        x = tl.load(x_ptr + pr * D + ds, mask=dm, other=0.0)
        x_ok = tl.sum(tl.where(dm & ~(tl.abs(x) < float("inf")), 1, 0), 0) == 0
        tgt_ok = _finite(ql_ptr + qr * KQ, qm_ptr + qr * KQD, qs_ptr + qr * KQD, KQ, D, BKQ, BD)
        drf_ok = _finite(pl_ptr + pr * KP, pm_ptr + pr * KPD, ps_ptr + pr * KPD, KP, D, BKP, BD) & x_ok.to(tl.int32)
        ratio = (_log_prob(ql_ptr + qr * KQ, qm_ptr + qr * KQD, qs_ptr + qr * KQD, KQ, D, x, inv_t, BKQ, BD)
                 - _log_prob(pl_ptr + pr * KP, pm_ptr + pr * KPD, ps_ptr + pr * KPD, KP, D, x, inv_t, BKP, BD))
        u = _lane0(tl.rand(seed, s + (3 << 32) + lanes))  # CONT_ACCEPT
        acc = (tgt_ok == 1) & (drf_ok == 1) & ((ratio >= 0.0) | (u < tl.exp(ratio)))  # NaN: rejected
        running = acc.to(tl.int32)
        s += running.to(tl.int64)
    if s == L:  # every draft accepted: the bonus position
        qr = b * (L + 1) + L
        tgt_ok = _finite(ql_ptr + qr * KQ, qm_ptr + qr * KQD, qs_ptr + qr * KQD, KQ, D, BKQ, BD)
        drf_ok = tl.full([], 1, tl.int32)
    status = 1 - (tgt_ok & drf_ok)
    direct = (drf_ok == 0) | (s == L)
    # Residual sampler at s (or the first draw from q when direct); at most M proposals.
    qr = b * (L + 1) + s
    pr = b * L + tl.minimum(s, L - 1)
    out = tl.zeros([BD], dtype=tl.float32)
    best = tl.zeros([BD], dtype=tl.float32)
    best_r = -1.0
    done = 1 - tgt_ok
    j = tl.full([], 0, tl.int64)
    while (done == 0) & (j < M):
        y, ur = _propose(ql_ptr + qr * KQ, qm_ptr + qr * KQD, qs_ptr + qr * KQD, KQ, D, seed, s * M + j, BKQ, BD)
        d = (_log_prob(pl_ptr + pr * KP, pm_ptr + pr * KPD, ps_ptr + pr * KPD, KP, D, y, 1.0, BKP, BD)
             - _log_prob(ql_ptr + qr * KQ, qm_ptr + qr * KQD, qs_ptr + qr * KQD, KQ, D, y, 1.0, BKQ, BD))
        r = tl.where(d < 0.0, 1.0 - tl.exp(d), 0.0)
        better = r > best_r
        best = tl.where(better, y, best)
        best_r = tl.where(better, r, best_r)
        take = direct | ((d < 0.0) & (ur < r))
        out = tl.where(take, y, out)
        done = take.to(tl.int32)
        j += 1
    exhausted = done == 0  # fallback: the proposal with the largest residual ratio (the first on ties)
    out = tl.where(exhausted, best, out)
    status = status | tl.where(exhausted, 2, 0)
    bad = tl.sum(tl.where(dm & ~(tl.abs(out) < float("inf")), 1, 0), 0) > 0
    out = tl.where(bad, 0.0, out)
    status = status | tl.where(bad, 1, 0)
    tl.store(acc_ptr + b, s.to(tl.int32))
    tl.store(next_ptr + b * D + ds, out, mask=dm)
    tl.store(prop_ptr + b, j.to(tl.int32))
    tl.store(status_ptr + b, status.to(tl.int32))


assert (philox.CONT_ACCEPT, philox.CONT_COMPONENT, philox.CONT_NORMAL, philox.CONT_RESIDUAL) == (3, 4, 5, 6)


def verify_continuous_triton(draft: torch.Tensor, draft_dist: GaussianMixture, target_dist: GaussianMixture,
                             seed: torch.Tensor, max_proposals: int,
                             inv_temperature: float = 1.0) -> ContinuousVerifyOutput:
    """Validated inputs (float32 contiguous tensors on one device, see api.py) -> ContinuousVerifyOutput."""
    B, L, D = draft.shape
    p, q = draft_dist, target_dist
    dev = draft.device
    out = ContinuousVerifyOutput(torch.empty(B, dtype=torch.int32, device=dev),
                                 torch.empty(B, D, dtype=torch.float32, device=dev),
                                 torch.empty(B, dtype=torch.int32, device=dev),
                                 torch.empty(B, dtype=torch.int32, device=dev))
    _verify_continuous_kernel[(B,)](
        draft, p.logits, p.means, p.log_scales, q.logits, q.means, q.log_scales, seed.contiguous(), *out,
        L, D, max_proposals, p.K, q.K, inv_temperature,
        BKP=triton.next_power_of_2(p.K), BKQ=triton.next_power_of_2(q.K), BD=triton.next_power_of_2(D),
        num_warps=1,
    )
    return out
