"""Two-phase Triton verification (CONTRACT §2-6, docs/CONTRACT.md, docs/TRITON.md): TWO launches per ``ck.verify``.

**Phase 1** (``_phase1_kernel``, grid ``B·N`` target rows [+ ``B·N`` draft rows in sampled drafting]
[+ ``B·ceil(N/16)`` Gram blocks for CASCADE]): every program reduces ONE row to a few statistics, in
parallel across the whole tree. With ``next_pow2(V) <= MAX_TILE_V`` the row is loaded once and held in
registers: CFG combine and temperature, non-finite flags, the top-k threshold by **radix select** on the
float's order-preserving key (four 8-bit ``tl.histogram`` rounds), max and sum of exponentials, top-p by
bisection on the register-resident probabilities, the float64 sum of the final probabilities, the argmax
of ``q`` and the NaN-safe argmax of the guided logits. Larger vocabularies stream the row in
``MAX_BLOCK_V`` chunks (radix rounds and top-p re-read the row; see docs/TRITON.md). CASCADE's programs
compute the similarity sets' packed words from a per-tree Gram block (``similarity_sets.triton._gram_sets``).

**Phase 2** (``_walk_kernel``, grid ``(B,)``): a scalar walk per sequence that reads ``q(x)`` from the
statistics (``exp(l(x)/T - m) / s`` with the top-k / top-p masks: two scalar loads per token). In
deterministic drafting with Exact / CASCADE / COOL / LANTERN-standard ("lazy" methods) the residual is
kept symbolically — the list of zeroed tokens (registers) and the remaining mass (float64, recomputed by a
pass over the row whenever cancellation could cost precision) — so a rejection touches no row, and the
final inverse-CDF sample is one pass over the row. Sampled drafting, greedy decisions, GSD and
LANTERN-with-transport materialise the row into a per-sequence float32 scratch row the first time they
need it and continue there (the previous kernel's residual code).

No shared mutable scratch is read without a barrier: CASCADE's absorbed list lives in registers
(a power-of-two vector with a fill count); LANTERN / GSD write theirs to a scratch list that is read only
after ``tl.debug_barrier()``. No host synchronisation, fixed-size workspaces, CUDA-graph capturable.
Scalars the reference computes as Python floats are computed in float64 and rounded where it rounds.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from ...codes import METHODS, STATUS, STREAMS
from ...methods import cool_scale
from ...types import VerifyArgs, VerifyOutput
from ..similarity_sets.triton import _gram_sets, sim_blocks

__all__ = ["verify", "MAX_BLOCK_V", "MAX_TILE_V", "MAX_PHASE1_ROWS", "NSTAT", "launch_plan"]

MAX_BLOCK_V = 1024  # chunk width of the phase-2 passes and of phase 1 beyond MAX_TILE_V (tests lower it)
MAX_TILE_V = 16384  # phase 1 holds a whole row in registers up to this width
MAX_PHASE1_ROWS = 512  # above B*N rows, the walk reduces the rows it visits itself (phase 1 only for CASCADE)
NSTAT = 10  # float64 statistics per row (slots below)

# codes.py, as compile-time constants of the kernels
M_LANTERN = tl.constexpr(METHODS["lantern"])
M_GSD = tl.constexpr(METHODS["gsd"])
M_CASCADE = tl.constexpr(METHODS["cascade"])
M_COOL = tl.constexpr(METHODS["cool"])
ST_NONFINITE_TARGET = tl.constexpr(STATUS["NONFINITE_TARGET"])
ST_EMPTY_RESIDUAL = tl.constexpr(STATUS["EMPTY_RESIDUAL"])
ST_NONFINITE_DRAFT = tl.constexpr(STATUS["NONFINITE_DRAFT"])
ST_BAD_TOKEN = tl.constexpr(STATUS["BAD_TOKEN"])
STREAM_ACCEPT = tl.constexpr(STREAMS["ACCEPT"])
STREAM_SAMPLE = tl.constexpr(STREAMS["SAMPLE"])
BIG = tl.constexpr(2147483647)
# relative precision below which the symbolic residual's remaining mass is recomputed by a pass
REM_GUARD = tl.constexpr(1.0e9)
F64_EPS = tl.constexpr(2.220446049250313e-16)


# ----------------------------------------------------------------------------------------------
# CONTRACT §2: one row's processed probabilities, elementwise (vector or scalar columns)
# ----------------------------------------------------------------------------------------------
@triton.jit
def _guided(cond_ptr, uncond_ptr, cols, V, cfg_s, CFG: tl.constexpr):
    msk = cols < V
    x = tl.load(cond_ptr + cols, mask=msk, other=0.0).to(tl.float32)
    if CFG:
        xu = tl.load(uncond_ptr + cols, mask=msk, other=0.0).to(tl.float32)
        x = xu + cfg_s * (x - xu)
    return x


@triton.jit
def _okey(x):
    """Order-preserving int32 key of a float32 (NaN largest, -0 == +0), like torch.topk's order."""
    bits = x.to(tl.int32, bitcast=True)
    key = tl.where(bits >= 0, bits, bits ^ 0x7FFFFFFF)
    key = tl.where(x == 0.0, 0, key)
    key = tl.where(x != x, 0x7FFFFFFF, key)
    return key.to(tl.int64)


@triton.jit
def _kept(x, cols, V, kth, TOPK: tl.constexpr):
    ok = cols < V
    if TOPK:
        ok = ok & (_okey(x) >= kth) & (x == x)
    return ok


@triton.jit
def _probs(cond_ptr, uncond_ptr, cols, V, cfg_s, temp, gm, kth, m, inv_s, t, sp,
           CFG: tl.constexpr, TOPK: tl.constexpr, TOPP: tl.constexpr):
    """q_u at ``cols`` from the row statistics (the one formula phase 1 and phase 2 share)."""
    x = (_guided(cond_ptr, uncond_ptr, cols, V, cfg_s, CFG) - gm) / temp
    kept = _kept(x, cols, V, kth, TOPK)
    pr = tl.where(kept, tl.exp(x - m), 0.0) * inv_s
    if TOPP:
        pr = tl.where(pr >= t, pr, 0.0) / sp
    return pr


# ----------------------------------------------------------------------------------------------
# Phase 1: per-row statistics
# ----------------------------------------------------------------------------------------------
@triton.jit
def _radix_round(h, krem, hi, shift):
    """One 8-bit radix round: the largest digit d with count(digit >= d) >= krem among the matching keys."""
    bins = tl.arange(0, 256)
    ge = tl.sum(h) - tl.cumsum(h, 0) + h
    d = tl.max(tl.where(ge >= krem, bins, -1))
    above = tl.sum(tl.where(bins > d, h, 0)).to(tl.int64)
    return krem - above, hi | (d.to(tl.int64) << shift)


@triton.jit
def _radix_kth_tile(key, live, k):
    """k-th largest int32 key of a register tile (ties kept): 4 histogram rounds on 8-bit digits."""
    ukey = key + 2147483648  # unsigned order, int64 in [0, 2**32)
    hi = tl.full([], 0, tl.int64)
    krem = tl.full([], 0, tl.int64) + k
    for r in tl.static_range(4):
        shift: tl.constexpr = 24 - 8 * r
        match = live & ((ukey >> (shift + 8)) == (hi >> (shift + 8)))
        h = tl.histogram(((ukey >> shift) & 255).to(tl.int32), 256, mask=match)
        krem, hi = _radix_round(h, krem, hi, shift)
    return hi - 2147483648


@triton.jit
def _radix_kth_chunked(cond, uncond, V, cfg_s, temp, gm, k, CFG: tl.constexpr, BLOCK_V: tl.constexpr):
    """The same radix select streaming the row (one pass per round)."""
    offs = tl.arange(0, BLOCK_V)
    hi = tl.full([], 0, tl.int64)
    krem = tl.full([], 0, tl.int64) + k
    for r in tl.static_range(4):
        shift: tl.constexpr = 24 - 8 * r
        h = tl.zeros([256], dtype=tl.int32)
        for start in range(0, V, BLOCK_V):
            cols = start + offs
            ukey = _okey((_guided(cond, uncond, cols, V, cfg_s, CFG) - gm) / temp) + 2147483648
            match = (cols < V) & ((ukey >> (shift + 8)) == (hi >> (shift + 8)))
            h += tl.histogram(((ukey >> shift) & 255).to(tl.int32), 256, mask=match)
        krem, hi = _radix_round(h, krem, hi, shift)
    return hi - 2147483648


@triton.jit
def _top_p_threshold(pr, top_p):
    """Largest t (bisection on the bit pattern, in registers) with mass(pr >= t) >= top_p; kept mass."""
    lo = tl.full([], 0, tl.int32)
    hi = tl.full([], 0x3F800000, tl.int32)
    while lo < hi:
        mid = lo + (hi - lo + 1) // 2
        mass = tl.sum(tl.where(pr >= mid.to(tl.float32, bitcast=True), pr, 0.0))
        if mass >= top_p:
            lo = mid
        else:
            hi = mid - 1
    t = lo.to(tl.float32, bitcast=True)
    return t, tl.sum(tl.where(pr >= t, pr, 0.0))


@triton.jit
def _temperature_offset(gmax, valid, temp):
    """Temperature is applied as (g - max g) / T (CONTRACT §2: a tiny T tends to greedy instead of overflowing);
    T = 1 and rows that are not distributions keep g as it is (offset 0)."""
    return tl.where(valid & (temp != 1.0), gmax, 0.0)


@triton.jit
def _store_stats(out, kth, m, inv_s, t, sp, valid, psum, amax_q, amax_nan, gm):
    tl.store(out + 0, kth.to(tl.float64))
    tl.store(out + 1, m.to(tl.float64))
    tl.store(out + 2, inv_s.to(tl.float64))
    tl.store(out + 3, t.to(tl.float64))
    tl.store(out + 4, sp.to(tl.float64))
    tl.store(out + 5, valid.to(tl.float64))
    tl.store(out + 6, psum)
    tl.store(out + 7, amax_q.to(tl.float64))
    tl.store(out + 8, amax_nan.to(tl.float64))
    tl.store(out + 9, gm.to(tl.float64))


@triton.jit
def _row_stats_tile(cond, uncond, V, cfg_s, temp, top_k, top_p,
                    CFG: tl.constexpr, TOPK: tl.constexpr, TOPP: tl.constexpr, BLOCK_V: tl.constexpr):
    """All statistics of one row from ONE load of it (the row stays in registers)."""
    cols = tl.arange(0, BLOCK_V)
    live = cols < V
    g = _guided(cond, uncond, cols, V, cfg_s, CFG)
    # validity is judged on the whole guided row, before temperature and top-k touch anything
    bad = tl.max((live & ((g != g) | (g == float("inf")))).to(tl.int32))
    fin = tl.max((live & (tl.abs(g) < float("inf"))).to(tl.int32))
    valid = (bad == 0) & (fin != 0)
    gm = _temperature_offset(tl.max(tl.where(live & (g == g), g, -float("inf"))), valid, temp)
    x = (g - gm) / temp
    kth = tl.full([], -2147483648, tl.int64)
    if TOPK:
        kth = _radix_kth_tile(_okey(x), live, top_k)
    kept = _kept(x, cols, V, kth, TOPK)
    m = tl.max(tl.where(kept, x, -float("inf")))
    inv_s = 1.0 / tl.sum(tl.where(kept, tl.exp(x - m), 0.0))
    pr = tl.where(kept, tl.exp(x - m), 0.0) * inv_s
    t = 0.0
    sp = 1.0
    q = pr
    if TOPP:
        if valid:
            t, sp = _top_p_threshold(pr, top_p)
        q = tl.where(pr >= t, pr, 0.0) / sp
    psum = tl.sum(tl.where(live, q, 0.0).to(tl.float64))
    qm = tl.where(live, q, -1.0)
    amax_q = tl.min(tl.where(qm == tl.max(qm), cols, BIG))
    gn = tl.where((g != g) | (cols >= V), -float("inf"), g)
    amax_nan = tl.min(tl.where(gn == tl.max(gn), cols, BIG))
    return kth, m, inv_s, t, sp, valid.to(tl.int32), psum, amax_q.to(tl.int64), amax_nan.to(tl.int64), gm


@triton.jit
def _row_stats_chunked(cond, uncond, V, cfg_s, temp, top_k, top_p,
                       CFG: tl.constexpr, TOPK: tl.constexpr, TOPP: tl.constexpr, BLOCK_V: tl.constexpr):
    """The same statistics streaming the row in chunks (V > MAX_TILE_V)."""
    offs = tl.arange(0, BLOCK_V)
    bad = tl.full([], 0, tl.int32)
    fin = tl.full([], 0, tl.int32)
    gmax = tl.full([], -float("inf"), tl.float32)
    for start in range(0, V, BLOCK_V):  # validity and the row max, on the guided row
        cols = start + offs
        live = cols < V
        g = _guided(cond, uncond, cols, V, cfg_s, CFG)
        bad = bad | tl.max((live & ((g != g) | (g == float("inf")))).to(tl.int32))
        fin = fin | tl.max((live & (tl.abs(g) < float("inf"))).to(tl.int32))
        gmax = tl.maximum(gmax, tl.max(tl.where(live & (g == g), g, -float("inf"))))
    gm = _temperature_offset(gmax, (bad == 0) & (fin != 0), temp)
    kth = tl.full([], -2147483648, tl.int64)
    if TOPK:
        kth = _radix_kth_chunked(cond, uncond, V, cfg_s, temp, gm, top_k, CFG, BLOCK_V)
    m = tl.full([], -float("inf"), tl.float32)
    s = tl.full([], 0.0, tl.float32)
    for start in range(0, V, BLOCK_V):  # online max / sum of exponentials
        cols = start + offs
        x = (_guided(cond, uncond, cols, V, cfg_s, CFG) - gm) / temp
        kept = _kept(x, cols, V, kth, TOPK)
        xm = tl.where(kept, x, -float("inf"))
        m_new = tl.maximum(m, tl.max(xm))
        safe = m_new > -float("inf")
        alpha = tl.where(safe, tl.exp(m - m_new), 1.0)
        e = tl.where(kept, tl.exp(xm - m_new), 0.0)
        e = tl.where(safe, e, 0.0)
        s = s * alpha + tl.sum(e)
        m = m_new
    valid = (bad == 0) & (fin != 0)
    inv_s = 1.0 / s
    t = 0.0
    sp = 1.0
    if TOPP:
        if valid:
            lo2 = tl.full([], 0, tl.int32)
            hi2 = tl.full([], 0x3F800000, tl.int32)
            while lo2 < hi2:
                mid2 = lo2 + (hi2 - lo2 + 1) // 2
                midf = mid2.to(tl.float32, bitcast=True)
                mass = 0.0
                for start in range(0, V, BLOCK_V):
                    cols = start + offs
                    pr = _probs(cond, uncond, cols, V, cfg_s, temp, gm, kth, m, inv_s, 0.0, 1.0, CFG, TOPK, False)
                    mass += tl.sum(tl.where(pr >= midf, pr, 0.0))
                if mass >= top_p:
                    lo2 = mid2
                else:
                    hi2 = mid2 - 1
            t = lo2.to(tl.float32, bitcast=True)
            sp = 0.0
            for start in range(0, V, BLOCK_V):
                cols = start + offs
                pr = _probs(cond, uncond, cols, V, cfg_s, temp, gm, kth, m, inv_s, 0.0, 1.0, CFG, TOPK, False)
                sp += tl.sum(tl.where(pr >= t, pr, 0.0))
    psum = tl.full([], 0.0, tl.float64)
    best = -1.0
    amax_q = tl.full([], 0, tl.int32)
    bestg = -float("inf")
    amax_nan = tl.full([], 0, tl.int32)
    for start in range(0, V, BLOCK_V):
        cols = start + offs
        q = _probs(cond, uncond, cols, V, cfg_s, temp, gm, kth, m, inv_s, t, sp, CFG, TOPK, TOPP)
        psum += tl.sum(tl.where(cols < V, q, 0.0).to(tl.float64))
        qm = tl.where(cols < V, q, -1.0)
        cmax = tl.max(qm)
        cidx = tl.min(tl.where(qm == cmax, cols, BIG))
        if cmax > best:
            best = cmax
            amax_q = cidx
        g = _guided(cond, uncond, cols, V, cfg_s, CFG)
        g = tl.where((g != g) | (cols >= V), -float("inf"), g)
        gmax = tl.max(g)
        gidx = tl.min(tl.where(g == gmax, cols, BIG))
        if gmax > bestg:
            bestg = gmax
            amax_nan = gidx
    return kth, m, inv_s, t, sp, valid.to(tl.int32), psum, amax_q.to(tl.int64), amax_nan.to(tl.int64), gm


@triton.jit
def _row_stats(cond, uncond, V, cfg_s, temp, top_k, top_p, CFG: tl.constexpr, TOPK: tl.constexpr,
               TOPP: tl.constexpr, ONE_TILE: tl.constexpr, TILE_V: tl.constexpr, BLOCK_V: tl.constexpr):
    """(kth, m, 1/s, t, sp, valid, sum q, argmax q, NaN-safe argmax) of one row, returned in registers."""
    if ONE_TILE:
        res = _row_stats_tile(cond, uncond, V, cfg_s, temp, top_k, top_p, CFG, TOPK, TOPP, TILE_V)
    else:
        res = _row_stats_chunked(cond, uncond, V, cfg_s, temp, top_k, top_p, CFG, TOPK, TOPP, BLOCK_V)
    return res


@triton.jit
def _row_stats_to(out, cond, uncond, V, cfg_s, temp, top_k, top_p, CFG: tl.constexpr, TOPK: tl.constexpr,
                  TOPP: tl.constexpr, ONE_TILE: tl.constexpr, TILE_V: tl.constexpr, BLOCK_V: tl.constexpr):
    kth, m, inv_s, t, sp, valid, psum, amax_q, amax_nan, gm = _row_stats(cond, uncond, V, cfg_s, temp, top_k, top_p,
                                                                     CFG, TOPK, TOPP, ONE_TILE, TILE_V, BLOCK_V)
    _store_stats(out, kth, m, inv_s, t, sp, valid, psum, amax_q, amax_nan, gm)


@triton.jit
def _phase1_kernel(tgt_ptr, drf_ptr, st_ptr, h_ptr, par_ptr, inter_pk_ptr, conv_pk_ptr,
                   B, N, V, D, W, TREE_STRIDE, cfg_s, temp, top_k, top_p, tau_pos, tau_seq, N_ROWS,
                   CFG: tl.constexpr, TOPK: tl.constexpr, TOPP: tl.constexpr, ONE_TILE: tl.constexpr,
                   TILE_V: tl.constexpr, BLOCK_V: tl.constexpr, NST: tl.constexpr, BLOCK_N: tl.constexpr,
                   BLOCK_D: tl.constexpr, SIM_I: tl.constexpr):
    """Programs [0, B·N): target rows; [B·N, N_ROWS): draft rows; [N_ROWS, ...): CASCADE Gram blocks
    (N_ROWS = 0 when the walk reduces its rows itself)."""
    pid = tl.program_id(0).to(tl.int64)
    bn = B * N
    if pid >= N_ROWS:
        _gram_sets(h_ptr, par_ptr, inter_pk_ptr, conv_pk_ptr, inter_pk_ptr, conv_pk_ptr, pid - N_ROWS, N, D, W,
                   TREE_STRIDE, tau_pos, tau_seq, False, SIM_I, BLOCK_N, BLOCK_D)
    elif pid < bn:
        _row_stats_to(st_ptr + pid * NST, tgt_ptr + pid * V, tgt_ptr + (bn + pid) * V, V, cfg_s, temp, top_k,
                      top_p, CFG, TOPK, TOPP, ONE_TILE, TILE_V, BLOCK_V)
    else:
        dr = drf_ptr + (pid - bn) * V
        _row_stats_to(st_ptr + pid * NST, dr, dr, V, cfg_s, temp, top_k, top_p, False, TOPK, TOPP, ONE_TILE,
                      TILE_V, BLOCK_V)


# ----------------------------------------------------------------------------------------------
# Phase 2 helpers: reading the current residual, one helper per decision step
# ----------------------------------------------------------------------------------------------
@triton.jit
def _uniform(seed, offset):
    """tl.rand(seed, offset) for one int64 offset (computed on a 2-lane vector, lane 0 kept)."""
    lanes = tl.arange(0, 2)
    u = tl.rand(seed, offset + lanes.to(tl.int64))
    return tl.sum(tl.where(lanes == 0, u, 0.0))


@triton.jit
def _load_stats(sp):
    return (tl.load(sp + 0).to(tl.int64), tl.load(sp + 1).to(tl.float32), tl.load(sp + 2).to(tl.float32),
            tl.load(sp + 3).to(tl.float32), tl.load(sp + 4).to(tl.float32), tl.load(sp + 5).to(tl.int32),
            tl.load(sp + 6), tl.load(sp + 7).to(tl.int64), tl.load(sp + 8).to(tl.int64), tl.load(sp + 9).to(tl.float32))


@triton.jit
def _visit_stats(srow, cond, uncond, V, cfg_s, temp, top_k, top_p, CFG: tl.constexpr, TOPK: tl.constexpr,
                 TOPP: tl.constexpr, ON_DEMAND: tl.constexpr, ONE_TILE: tl.constexpr, TILE_V: tl.constexpr,
                 BLOCK_V: tl.constexpr):
    """A visited row's statistics: from phase 1, or (large batches) computed here and kept in registers."""
    if ON_DEMAND:
        res = _row_stats(cond, uncond, V, cfg_s, temp, top_k, top_p, CFG, TOPK, TOPP, ONE_TILE, TILE_V, BLOCK_V)
    else:
        res = _load_stats(srow)
    return res


@triton.jit
def _in_list(lst, n, y, LMAX: tl.constexpr):
    """y among the first n entries of a register list (a reduction: every thread gets the answer)."""
    idx = tl.arange(0, LMAX)
    return tl.sum(((lst == y) & (idx < n)).to(tl.int32))


@triton.jit
def _list_at(lst, k, LMAX: tl.constexpr):
    idx = tl.arange(0, LMAX)
    return tl.sum(tl.where(idx == k, lst, 0))


@triton.jit
def _list_push(lst, n, y, LMAX: tl.constexpr):
    idx = tl.arange(0, LMAX)
    return tl.where(idx == n, y, lst), n + 1


@triton.jit
def _q_at(y, mat, qrow, cond, uncond, V, cfg_s, temp, gm, kth, m, inv_s, t, sp, zl, nz, norm,
          CFG: tl.constexpr, TOPK: tl.constexpr, TOPP: tl.constexpr, LAZY: tl.constexpr, ZMAX: tl.constexpr):
    """The current (residual) q(y): the scratch row once materialised, else from the row statistics."""
    q = tl.full([], 0.0, tl.float32)
    if mat != 0:
        q = tl.load(qrow + y)
    else:
        q = _probs(cond, uncond, y, V, cfg_s, temp, gm, kth, m, inv_s, t, sp, CFG, TOPK, TOPP)
        if LAZY:
            q = tl.where(_in_list(zl, nz, y, ZMAX) > 0, 0.0, (q.to(tl.float64) / norm).to(tl.float32))
    return q


@triton.jit
def _zeroed_probs(cond, uncond, cols, V, cfg_s, temp, gm, kth, m, inv_s, t, sp, zl, nz,
                  CFG: tl.constexpr, TOPK: tl.constexpr, TOPP: tl.constexpr, ZMAX: tl.constexpr):
    """q_u on a chunk with the symbolic residual's zeroed tokens removed (unnormalised)."""
    w = _probs(cond, uncond, cols, V, cfg_s, temp, gm, kth, m, inv_s, t, sp, CFG, TOPK, TOPP)
    w = tl.where(cols < V, w, 0.0)
    k = nz * 0
    while k < nz:
        w = tl.where(cols == _list_at(zl, k, ZMAX), 0.0, w)
        k += 1
    return w


@triton.jit
def _materialize(dst, cond, uncond, V, cfg_s, temp, gm, kth, m, inv_s, t, sp,
                 CFG: tl.constexpr, TOPK: tl.constexpr, TOPP: tl.constexpr, BLOCK_V: tl.constexpr):
    """Write q_u (or p_u) into a scratch row; the barrier orders it before any scalar read."""
    offs = tl.arange(0, BLOCK_V)
    for start in range(0, V, BLOCK_V):
        cols = start + offs
        pr = _probs(cond, uncond, cols, V, cfg_s, temp, gm, kth, m, inv_s, t, sp, CFG, TOPK, TOPP)
        tl.store(dst + cols, pr, mask=cols < V)
    tl.debug_barrier()


@triton.jit
def _materialize_once(done, dst, cond, uncond, V, cfg_s, temp, gm, kth, m, inv_s, t, sp,
                      CFG: tl.constexpr, TOPK: tl.constexpr, TOPP: tl.constexpr, BLOCK_V: tl.constexpr):
    """``_materialize`` unless the scratch row already holds the row (``done``); returns the new flag (1)."""
    if done == 0:
        _materialize(dst, cond, uncond, V, cfg_s, temp, gm, kth, m, inv_s, t, sp, CFG, TOPK, TOPP, BLOCK_V)
    return tl.full([], 1, tl.int32)


# ---------------- CONTRACT §4: one relaxation helper per method ----------------
@triton.jit
def _relax_cool(qx, left, w_cool, TRANSPORT: tl.constexpr):
    qx64 = qx.to(tl.float64)
    r = tl.minimum(tl.minimum(1.0, w_cool * qx64), qx64 + left).to(tl.float32)
    # r < q(x) only where rounding left q(x) above 1: no negative charge (the reference's rule)
    d = r.to(tl.float64) - qx64
    if TRANSPORT:
        d = tl.maximum(d, 0.0)
    else:
        d = tl.abs(d)
    return r, d.to(tl.float32)


@triton.jit
def _relax_lantern(x, qx, left, lan_delta, lan_lam_m1, nb_ptr, n_nb, arow, mat, qrow, cond, uncond, V, cfg_s,
                   temp, gm, kth, m, inv_s, t, sp, zl, nz, norm, LANTERN_PP: tl.constexpr, CFG: tl.constexpr,
                   TOPK: tl.constexpr, TOPP: tl.constexpr, LAZY: tl.constexpr, ZMAX: tl.constexpr):
    """Neighbours in order while the float32 running mass fits min(cap, left); ids to the scratch list."""
    if LANTERN_PP:  # cap 0 when q(x) = 0, also for lam = inf
        cap = tl.where(qx > 0.0, lan_lam_m1 * qx.to(tl.float64), 0.0)
    else:
        cap = lan_delta
    cap32 = tl.minimum(cap, left).to(tl.float32)
    run = 0.0
    fits = tl.full([], 1, tl.int32)
    n_abs = tl.full([], 0, tl.int64)
    j = tl.full([], 0, tl.int64)
    while (j < n_nb) & (fits != 0):
        y = tl.load(nb_ptr + x * n_nb + j)
        if y >= 0:
            run2 = run + _q_at(y, mat, qrow, cond, uncond, V, cfg_s, temp, gm, kth, m, inv_s, t, sp, zl, nz, norm,
                               CFG, TOPK, TOPP, LAZY, ZMAX)
            if run2 <= cap32:
                tl.store(arow + n_abs, y)  # read only after the barrier that follows the relaxation
                n_abs += 1
                run = run2
            else:
                fits = 0
        j += 1
    return qx + run, run, n_abs


@triton.jit
def _relax_gsd(x, qx, left, gsd_G, gsd_dp, qrow, arow, V, BLOCK_V: tl.constexpr):
    """The G nearest tokens in |q(y) - q(x)| (ties by id), in order while they fit (scratch row needed)."""
    offs = tl.arange(0, BLOCK_V)
    left32 = left.to(tl.float32)
    run = 0.0
    fits = tl.full([], 1, tl.int32)
    prev_d = -1.0
    prev_id = tl.full([], -1, tl.int64)
    n_abs = tl.full([], 0, tl.int64)
    while (n_abs < gsd_G) & (fits != 0):
        dmin = float("inf")
        for start in range(0, V, BLOCK_V):
            cols = start + offs
            qv = tl.load(qrow + cols, mask=cols < V, other=0.0)
            dist = tl.abs(qv - qx)
            el = (cols < V) & (qv > 0.0) & (cols != x) & (dist < gsd_dp)
            el = el & ((dist > prev_d) | ((dist == prev_d) & (cols > prev_id)))
            dmin = tl.minimum(dmin, tl.min(tl.where(el, dist, float("inf"))))
        ymin = tl.full([], BIG, tl.int64)
        for start in range(0, V, BLOCK_V):
            cols = start + offs
            qv = tl.load(qrow + cols, mask=cols < V, other=0.0)
            dist = tl.abs(qv - qx)
            el = (cols < V) & (qv > 0.0) & (cols != x) & (dist < gsd_dp)
            el = el & ((dist > prev_d) | ((dist == prev_d) & (cols > prev_id))) & (dist == dmin)
            ymin = tl.minimum(ymin, tl.min(tl.where(el, cols, BIG)).to(tl.int64))
        if ymin >= V:
            fits = 0
        else:
            run2 = run + tl.load(qrow + ymin)
            if run2 <= left32:
                tl.store(arow + n_abs, ymin)
                n_abs += 1
                run = run2
                prev_d = dmin
                prev_id = ymin
            else:
                fits = 0
    return qx + run, run, n_abs


@triton.jit
def _cascade_block(sets, tok_row, b, c, x, N, V, W, al, n_abs, charge, tvd, eps32, mat, qrow, cond, uncond,
                   cfg_s, temp, gm, kth, m, inv_s, t, sp, zl, nz, norm, CFG: tl.constexpr, TOPK: tl.constexpr,
                   TOPP: tl.constexpr, LAZY: tl.constexpr, ZMAX: tl.constexpr, AMAX: tl.constexpr):
    """One CASCADE block of child ``c``: its deduplicated live tokens, absorbed all-or-nothing if it fits.

    The absorbed list ``al`` is a register vector (no scratch write/read pair, so no race): entries past
    the fill count are ignored, and a block that does not fit leaves the count unchanged."""
    n_blk = n_abs
    mass = 0.0
    for jj in range(0, N):
        word = tl.load(sets + (b * N + c) * W + jj // 32)
        if ((word >> (jj % 32)) & 1) != 0:
            y = tl.load(tok_row + jj)
            if (y >= 0) & (y < V):
                qy = _q_at(y, mat, qrow, cond, uncond, V, cfg_s, temp, gm, kth, m, inv_s, t, sp, zl, nz, norm,
                           CFG, TOPK, TOPP, LAZY, ZMAX)
                if (qy > 0.0) & (y != x) & (_in_list(al, n_blk, y, AMAX) == 0):
                    al, n_blk = _list_push(al, n_blk, y, AMAX)
                    mass += qy
    total64 = tvd.to(tl.float64) + charge.to(tl.float64) + mass.to(tl.float64)
    if total64.to(tl.float32) <= eps32:
        n_abs = n_blk
        charge = charge + mass
    return al, n_abs, charge


@triton.jit
def _absorbed_at(k, al, arow, METHOD: tl.constexpr, AMAX: tl.constexpr):
    y = tl.full([], 0, tl.int64)
    if METHOD == M_CASCADE:
        y = _list_at(al, k, AMAX)
    else:
        y = tl.load(arow + k)
    return y


# ---------------- CONTRACT §5: the accept tests ----------------
@triton.jit
def _accept_greedy(qrow, amrow, arow, al, n_abs, x, qx, r, V, METHOD: tl.constexpr, AMAX: tl.constexpr,
                   BLOCK_V: tl.constexpr):
    """x wins the relaxed argmax (ties to the candidate); absorbed entries zeroed in the scratch row, restored."""
    offs = tl.arange(0, BLOCK_V)
    k = tl.full([], 0, tl.int64)
    while k < n_abs:
        y = _absorbed_at(k, al, arow, METHOD, AMAX)
        tl.store(amrow + k, tl.load(qrow + y))
        tl.store(qrow + y, 0.0)
        k += 1
    tl.debug_barrier()
    best = 0.0
    for start in range(0, V, BLOCK_V):
        cols = start + offs
        qv = tl.load(qrow + cols, mask=(cols < V) & (cols != x), other=0.0)
        best = tl.maximum(best, tl.max(qv))
    tl.debug_barrier()
    k = 0
    while k < n_abs:
        tl.store(qrow + _absorbed_at(k, al, arow, METHOD, AMAX), tl.load(amrow + k))
        k += 1
    tl.debug_barrier()
    best64 = best.to(tl.float64)
    if METHOD == M_COOL:  # COOL takes its extra mass from every other token in proportion
        if qx < 1.0:
            best64 = best64 * ((1.0 - r.to(tl.float64)) / (1.0 - qx.to(tl.float64)))
        else:
            best64 = best64 * 0.0
    return r.to(tl.float64) >= best64


@triton.jit
def _accept_random(ua, r, px, SAMPLED: tl.constexpr):
    ok = ua < r
    if SAMPLED:
        ratio = tl.where(px == 0.0, tl.where(r > 0.0, 1.0, 0.0), r / px)
        ok = ua < tl.minimum(1.0, ratio)
    return ok


# ---------------- CONTRACT §3: residual after a rejection ----------------
@triton.jit
def _residual_scratch(qrow, prow, arow, al, n_abs, x, r, w_cool, V, METHOD: tl.constexpr, SAMPLED: tl.constexpr,
                      TRANSPORT: tl.constexpr, AMAX: tl.constexpr, BLOCK_V: tl.constexpr):
    """Residual in the scratch row (normalised in place); returns its float32 total (0 / inf: empty)."""
    offs = tl.arange(0, BLOCK_V)
    total = 0.0
    if SAMPLED:
        if METHOD != M_COOL:
            if TRANSPORT:
                tl.store(qrow + x, r)
                k = tl.full([], 0, tl.int64)
                while k < n_abs:
                    tl.store(qrow + _absorbed_at(k, al, arow, METHOD, AMAX), 0.0)
                    k += 1
        tl.debug_barrier()
        w32 = w_cool.to(tl.float32)
        for start in range(0, V, BLOCK_V):
            cols = start + offs
            qv = tl.load(qrow + cols, mask=cols < V, other=0.0)
            pv = tl.load(prow + cols, mask=cols < V, other=0.0)
            if METHOD == M_COOL:
                f = tl.where(pv > 0.0, tl.minimum(w32 * qv / pv, 1.0), 1.0)
                nq = tl.maximum(qv - pv * f, 0.0)
            else:
                nq = tl.maximum(qv - pv, 0.0)
            tl.store(qrow + cols, nq, mask=cols < V)
            total += tl.sum(tl.where(cols < V, nq, 0.0))
    else:
        tl.store(qrow + x, 0.0)
        if TRANSPORT:
            k = tl.full([], 0, tl.int64)
            while k < n_abs:
                tl.store(qrow + _absorbed_at(k, al, arow, METHOD, AMAX), 0.0)
                k += 1
        tl.debug_barrier()
        for start in range(0, V, BLOCK_V):
            cols = start + offs
            total += tl.sum(tl.load(qrow + cols, mask=cols < V, other=0.0))
    tl.debug_barrier()
    if (total > 0.0) & (total < float("inf")):
        for start in range(0, V, BLOCK_V):
            cols = start + offs
            qv = tl.load(qrow + cols, mask=cols < V, other=0.0)
            tl.store(qrow + cols, qv / total, mask=cols < V)
        tl.debug_barrier()
    return total


@triton.jit
def _zero_lazy(z, zl, nz, srem, cond, uncond, V, cfg_s, temp, gm, kth, m, inv_s, t, sp,
               CFG: tl.constexpr, TOPK: tl.constexpr, TOPP: tl.constexpr, ZMAX: tl.constexpr):
    """Symbolic residual: zero token z (once) and take its q_u off the remaining mass."""
    if _in_list(zl, nz, z, ZMAX) == 0:
        srem = srem - _probs(cond, uncond, z, V, cfg_s, temp, gm, kth, m, inv_s, t, sp, CFG, TOPK, TOPP).to(tl.float64)
        zl, nz = _list_push(zl, nz, z, ZMAX)
    return zl, nz, srem


@triton.jit
def _residual_lazy(x, al, n_abs, zl, nz, srem, serr, cond, uncond, V, cfg_s, temp, gm, kth, m, inv_s, t, sp,
                   CFG: tl.constexpr, TOPK: tl.constexpr, TOPP: tl.constexpr, TRANSPORT: tl.constexpr,
                   METHOD: tl.constexpr, ZMAX: tl.constexpr, AMAX: tl.constexpr, BLOCK_V: tl.constexpr):
    """Deterministic-drafting residual without touching the row: zero x (and A(x) with transport).

    The remaining mass is ``sum(q_u) - sum(q_u(zeroed))`` in float64; when that difference is within
    ``REM_GUARD`` of its rounding error it is recomputed exactly by one pass over the row."""
    zl, nz, srem = _zero_lazy(x, zl, nz, srem, cond, uncond, V, cfg_s, temp, gm, kth, m, inv_s, t, sp,
                              CFG, TOPK, TOPP, ZMAX)
    if TRANSPORT:
        if METHOD == M_CASCADE:
            k = tl.full([], 0, tl.int64)
            while k < n_abs:
                zl, nz, srem = _zero_lazy(_list_at(al, k, AMAX), zl, nz, srem, cond, uncond, V, cfg_s, temp, gm, kth, m,
                                          inv_s, t, sp, CFG, TOPK, TOPP, ZMAX)
                k += 1
    if srem < REM_GUARD * serr:
        offs = tl.arange(0, BLOCK_V)
        srem = tl.full([], 0.0, tl.float64)
        for start in range(0, V, BLOCK_V):
            cols = start + offs
            w = _zeroed_probs(cond, uncond, cols, V, cfg_s, temp, gm, kth, m, inv_s, t, sp, zl, nz, CFG, TOPK, TOPP,
                              ZMAX)
            srem += tl.sum(w.to(tl.float64))
        serr = V * F64_EPS * srem
    return zl, nz, srem, serr


# ---------------- CONTRACT §5-6: the bonus / correction token ----------------
@triton.jit
def _argmax_row(ptr, V, BLOCK_V: tl.constexpr):
    """argmax of a float32 scratch row of probabilities, lowest index on ties."""
    offs = tl.arange(0, BLOCK_V)
    best = -1.0
    idx = tl.full([], 0, tl.int64)
    for start in range(0, V, BLOCK_V):
        cols = start + offs
        w = tl.load(ptr + cols, mask=cols < V, other=-1.0)
        cmax = tl.max(w)
        cidx = tl.min(tl.where(w == cmax, cols, BIG)).to(tl.int64)
        if cmax > best:
            best = cmax
            idx = cidx
    return idx


@triton.jit
def _sample_row(ptr, V, u, BLOCK_V: tl.constexpr):
    """CONTRACT §6 inverse CDF over a float32 scratch row: smallest i with running > u*sum (never a 0 weight)."""
    offs = tl.arange(0, BLOCK_V)
    carry = 0.0
    for start in range(0, V, BLOCK_V):
        cols = start + offs
        w = tl.load(ptr + cols, mask=cols < V, other=0.0)
        run = carry + tl.cumsum(w, 0)
        carry = tl.max(tl.where(cols < V, run, -1.0))
    thr = u * carry
    cnt = tl.full([], 0, tl.int64)
    carry2 = 0.0
    for start in range(0, V, BLOCK_V):
        cols = start + offs
        w = tl.load(ptr + cols, mask=cols < V, other=0.0)
        run = carry2 + tl.cumsum(w, 0)
        cnt += tl.sum(((run <= thr) & (cols < V)).to(tl.int64))
        carry2 = tl.max(tl.where(cols < V, run, -1.0))
    i = tl.minimum(cnt, V - 1)
    res = i
    if tl.load(ptr + i) <= 0.0:
        nxt = tl.full([], BIG, tl.int64)
        last = tl.full([], -1, tl.int64)
        for start in range(0, V, BLOCK_V):
            cols = start + offs
            w = tl.load(ptr + cols, mask=cols < V, other=0.0)
            nz = (w > 0.0) & (cols < V)
            nxt = tl.minimum(nxt, tl.min(tl.where(nz & (cols > i), cols, BIG)).to(tl.int64))
            last = tl.maximum(last, tl.max(tl.where(nz, cols, -1)).to(tl.int64))
        res = tl.where(nxt < BIG, nxt, last)
    return tl.minimum(tl.maximum(res, 0), V - 1)


@triton.jit
def _sample_lazy(cond, uncond, V, u, srem, zl, nz, cfg_s, temp, gm, kth, m, inv_s, t, sp, CFG: tl.constexpr,
                 TOPK: tl.constexpr, TOPP: tl.constexpr, ZMAX: tl.constexpr, BLOCK_V: tl.constexpr):
    """Inverse CDF straight from the row statistics in ONE pass (the total, srem, is already known)."""
    offs = tl.arange(0, BLOCK_V)
    thr = u * srem.to(tl.float32)
    cnt = tl.full([], 0, tl.int64)
    carry = 0.0
    for start in range(0, V, BLOCK_V):
        cols = start + offs
        w = _zeroed_probs(cond, uncond, cols, V, cfg_s, temp, gm, kth, m, inv_s, t, sp, zl, nz, CFG, TOPK, TOPP, ZMAX)
        run = carry + tl.cumsum(w, 0)
        cnt += tl.sum(((run <= thr) & (cols < V)).to(tl.int64))
        carry = tl.max(tl.where(cols < V, run, -1.0))
    i = tl.minimum(cnt, V - 1)
    res = i
    wi = _probs(cond, uncond, i, V, cfg_s, temp, gm, kth, m, inv_s, t, sp, CFG, TOPK, TOPP)
    if (wi <= 0.0) | (_in_list(zl, nz, i, ZMAX) > 0):  # only when u * total reached the end of the running sum
        nxt = tl.full([], BIG, tl.int64)
        last = tl.full([], -1, tl.int64)
        for start in range(0, V, BLOCK_V):
            cols = start + offs
            w = _zeroed_probs(cond, uncond, cols, V, cfg_s, temp, gm, kth, m, inv_s, t, sp, zl, nz, CFG, TOPK, TOPP,
                              ZMAX)
            pos = (w > 0.0) & (cols < V)
            nxt = tl.minimum(nxt, tl.min(tl.where(pos & (cols > i), cols, BIG)).to(tl.int64))
            last = tl.maximum(last, tl.max(tl.where(pos, cols, -1)).to(tl.int64))
        res = tl.where(nxt < BIG, nxt, last)
    return tl.minimum(tl.maximum(res, 0), V - 1)


@triton.jit
def _final_token(mat, qrow, amax_q, u_sample, srem, zl, nz, cond, uncond, V, cfg_s, temp, gm, kth, m, inv_s, t, sp,
                 GREEDY: tl.constexpr, CFG: tl.constexpr, TOPK: tl.constexpr, TOPP: tl.constexpr,
                 ZMAX: tl.constexpr, BLOCK_V: tl.constexpr):
    """Bonus / correction token from the current residual: argmax (greedy) or inverse CDF."""
    tok = tl.full([], 0, tl.int64)
    if mat != 0:
        if GREEDY:
            tok = _argmax_row(qrow, V, BLOCK_V)
        else:
            tok = _sample_row(qrow, V, u_sample, BLOCK_V)
    else:
        if GREEDY:  # nothing was zeroed yet: the argmax of q_u from phase 1
            tok = amax_q
        else:
            tok = _sample_lazy(cond, uncond, V, u_sample, srem, zl, nz, cfg_s, temp, gm, kth, m, inv_s, t, sp,
                               CFG, TOPK, TOPP, ZMAX, BLOCK_V)
    return tok


# ----------------------------------------------------------------------------------------------
# Phase 2: the walk
# ----------------------------------------------------------------------------------------------
@triton.jit
def _walk_kernel(
    tok_ptr, fc_ptr, ns_ptr, cw_ptr, tgt_ptr, drf_ptr, st_ptr, nb_ptr, inter_ptr, conv_ptr, seed_ptr, fp_ptr,
    q_ptr, p_ptr, a_ptr, am_ptr,
    acc_len_ptr, nodes_ptr, next_ptr, tvd_ptr, status_ptr,
    B, N, V, L, W, MAXA, TREE_STRIDE, n_nb, gsd_G, gsd_dp, cfg_s, temp, top_k, top_p,
    METHOD: tl.constexpr, LANTERN_PP: tl.constexpr, USE_INTER: tl.constexpr, USE_CONV: tl.constexpr,
    SAMPLED: tl.constexpr, GREEDY: tl.constexpr, TRANSPORT: tl.constexpr, CFG: tl.constexpr,
    TOPK: tl.constexpr, TOPP: tl.constexpr, LAZY: tl.constexpr, NST: tl.constexpr, ZMAX: tl.constexpr,
    AMAX: tl.constexpr, BLOCK_V: tl.constexpr, ON_DEMAND: tl.constexpr, ONE_TILE: tl.constexpr,
    TILE_V: tl.constexpr,
):
    b = tl.program_id(0).to(tl.int64)
    seed = tl.load(seed_ptr + b)
    eps = tl.load(fp_ptr + 0)  # float64 budget (may be inf)
    lan_delta = tl.load(fp_ptr + 1)
    lan_lam_m1 = tl.load(fp_ptr + 2)
    eps32 = eps.to(tl.float32)
    qrow = q_ptr + b * V
    prow = p_ptr + b * V
    arow = a_ptr + b * MAXA
    amrow = am_ptr + b * MAXA
    tok_row = tok_ptr + b * N
    tree = b * TREE_STRIDE  # one tree may serve the whole batch
    u_sample = tl.maximum(_uniform(seed, tl.full([], STREAM_SAMPLE, tl.int64) << 32), 2.3283064365386963e-10)

    u = tl.full([], 0, tl.int64)
    n_acc = tl.full([], 0, tl.int64)
    tvd = 0.0
    status = tl.full([], 0, tl.int32)
    nxt_tok = tl.full([], 0, tl.int64)
    done = tl.full([], 0, tl.int32)
    tl.store(nodes_ptr + b * L, 0)
    for j in range(1, L):  # accepted_nodes is written whole: -1 after the path
        tl.store(nodes_ptr + b * L + j, -1)
    while done == 0:
        row = b * N + u
        cond = tgt_ptr + row * V
        uncond = tgt_ptr + (B * N + row) * V
        srow = st_ptr + row * NST
        kth, m, inv_s, t, sp, valid, psum, amax_q, amax_nan, gm = _visit_stats(
            srow, cond, uncond, V, cfg_s, temp, top_k, top_p, CFG, TOPK, TOPP, ON_DEMAND, ONE_TILE, TILE_V, BLOCK_V)
        # the current residual: scratch row (mat) or symbolic (zeroed list, remaining mass, normaliser)
        mat = tl.full([], 0, tl.int32)
        zl = tl.full([ZMAX], -1, tl.int64)
        nz = tl.full([], 0, tl.int64)
        srem = psum
        serr = V * F64_EPS * psum
        norm = tl.full([], 1.0, tl.float64)
        if valid == 0:
            nxt_tok = amax_nan
            status = status | ST_NONFINITE_TARGET
            done = 1
        else:
            # a drafted child outside [-1, V) stops the walk here (docs/CONTRACT.md §Status)
            bad = tl.full([], 0, tl.int32)
            c = tl.load(fc_ptr + tree + u).to(tl.int64)
            while c >= 0:
                y = tl.load(tok_row + c)
                bad = bad | ((y < -1) | (y >= V)).to(tl.int32)
                c = tl.load(ns_ptr + tree + c).to(tl.int64)
            c = tl.load(fc_ptr + tree + u).to(tl.int64)
            while (c >= 0) & (tl.load(tok_row + tl.maximum(c, 0)) < 0):
                c = tl.load(ns_ptr + tree + c).to(tl.int64)
            if bad != 0:
                status = status | ST_BAD_TOKEN
            if (bad != 0) | (c < 0):
                nxt_tok = _final_token(mat, qrow, amax_q, u_sample, srem, zl, nz, cond, uncond, V, cfg_s, temp, gm,
                                       kth, m, inv_s, t, sp, GREEDY, CFG, TOPK, TOPP, ZMAX, BLOCK_V)
                done = 1
            dcond = cond
            dkth, dm, dinv_s, dt, dsp, dgm = kth, m, inv_s, t, sp, gm
            if SAMPLED:
                dcond = drf_ptr + row * V
                dkth, dm, dinv_s, dt, dsp, dvalid, _dsum, _dq, _dn, dgm = _visit_stats(
                    st_ptr + (B * N + row) * NST, dcond, dcond, V, cfg_s, temp, top_k, top_p, False, TOPK, TOPP,
                    ON_DEMAND, ONE_TILE, TILE_V, BLOCK_V)
                if done == 0:
                    if dvalid == 0:
                        status = status | ST_NONFINITE_DRAFT
                        nxt_tok = _final_token(mat, qrow, amax_q, u_sample, srem, zl, nz, cond, uncond, V, cfg_s,
                                               temp, gm, kth, m, inv_s, t, sp, GREEDY, CFG, TOPK, TOPP, ZMAX, BLOCK_V)
                        done = 1
            if done == 0:
                pmat = tl.full([], 0, tl.int32)
                al = tl.full([AMAX], -1, tl.int64)
                accepted = tl.full([], -1, tl.int64)
                ended = tl.full([], 0, tl.int32)
                while (c >= 0) & (accepted < 0) & (ended == 0):
                    x = tl.load(tok_row + c)
                    skip = x < 0
                    if not SAMPLED:  # a repeated token among earlier siblings is not tried again
                        d = tl.load(fc_ptr + tree + u).to(tl.int64)
                        while d != c:
                            skip = skip | (tl.load(tok_row + d) == x)
                            d = tl.load(ns_ptr + tree + d).to(tl.int64)
                    if skip == 0:
                        if (METHOD == M_GSD) or GREEDY:  # they scan the whole row
                            mat = _materialize_once(mat, qrow, cond, uncond, V, cfg_s, temp, gm, kth, m, inv_s, t,
                                                    sp, CFG, TOPK, TOPP, BLOCK_V)
                        qx = _q_at(x, mat, qrow, cond, uncond, V, cfg_s, temp, gm, kth, m, inv_s, t, sp, zl, nz, norm,
                                   CFG, TOPK, TOPP, LAZY, ZMAX)
                        left = eps - tvd.to(tl.float64)
                        r = qx
                        charge = 0.0
                        n_abs = tl.full([], 0, tl.int64)
                        w_cool = tl.load(cw_ptr + tree + c)  # float64 (1.0 unless COOL)
                        # ---------------- method relaxation (CONTRACT §4) ----------------
                        if METHOD == M_COOL:
                            r, charge = _relax_cool(qx, left, w_cool, TRANSPORT)
                        if METHOD == M_LANTERN:
                            r, charge, n_abs = _relax_lantern(x, qx, left, lan_delta, lan_lam_m1, nb_ptr, n_nb, arow,
                                                              mat, qrow, cond, uncond, V, cfg_s, temp, gm, kth, m,
                                                              inv_s, t, sp, zl, nz, norm, LANTERN_PP, CFG, TOPK,
                                                              TOPP, LAZY, ZMAX)
                        if METHOD == M_GSD:
                            r, charge, n_abs = _relax_gsd(x, qx, left, gsd_G, gsd_dp, qrow, arow, V, BLOCK_V)
                        if METHOD == M_CASCADE:  # interchangeable block first, then convergence
                            if USE_INTER:
                                al, n_abs, charge = _cascade_block(inter_ptr, tok_row, b, c, x, N, V, W, al, n_abs,
                                                                   charge, tvd, eps32, mat, qrow, cond, uncond,
                                                                   cfg_s, temp, gm, kth, m, inv_s, t, sp, zl, nz, norm,
                                                                   CFG, TOPK, TOPP, LAZY, ZMAX, AMAX)
                            if USE_CONV:
                                al, n_abs, charge = _cascade_block(conv_ptr, tok_row, b, c, x, N, V, W, al, n_abs,
                                                                   charge, tvd, eps32, mat, qrow, cond, uncond,
                                                                   cfg_s, temp, gm, kth, m, inv_s, t, sp, zl, nz, norm,
                                                                   CFG, TOPK, TOPP, LAZY, ZMAX, AMAX)
                            r = qx + charge
                        tvd = tvd + charge
                        tl.debug_barrier()  # scratch absorbed lists (LANTERN / GSD) written above, read below
                        # ---------------- decision (CONTRACT §5) ----------------
                        if GREEDY:
                            ok = _accept_greedy(qrow, amrow, arow, al, n_abs, x, qx, r, V, METHOD, AMAX, BLOCK_V)
                        else:
                            ua = _uniform(seed, c + (tl.full([], STREAM_ACCEPT, tl.int64) << 32))
                            px = 0.0
                            if SAMPLED:
                                px = _probs(dcond, dcond, x, V, cfg_s, temp, dgm, dkth, dm, dinv_s, dt, dsp, False, TOPK,
                                            TOPP)
                            ok = _accept_random(ua, r, px, SAMPLED)
                        if ok:
                            accepted = c
                        else:
                            # ---------------- residual (CONTRACT §3) ----------------
                            empty = tl.full([], 0, tl.int32)
                            if LAZY:
                                zl, nz, srem, serr = _residual_lazy(x, al, n_abs, zl, nz, srem, serr, cond, uncond, V,
                                                                    cfg_s, temp, gm, kth, m, inv_s, t, sp, CFG, TOPK,
                                                                    TOPP, TRANSPORT, METHOD, ZMAX, AMAX, BLOCK_V)
                                norm = srem
                                empty = (srem <= 0.0).to(tl.int32)
                            else:
                                mat = _materialize_once(mat, qrow, cond, uncond, V, cfg_s, temp, gm, kth, m, inv_s,
                                                        t, sp, CFG, TOPK, TOPP, BLOCK_V)
                                if SAMPLED:
                                    pmat = _materialize_once(pmat, prow, dcond, dcond, V, cfg_s, temp, dgm, dkth, dm,
                                                             dinv_s, dt, dsp, False, TOPK, TOPP, BLOCK_V)
                                total = _residual_scratch(qrow, prow, arow, al, n_abs, x, r, w_cool, V, METHOD,
                                                          SAMPLED, TRANSPORT, AMAX, BLOCK_V)
                                empty = (((total > 0.0) & (total < float("inf"))) == 0).to(tl.int32)
                            if empty != 0:
                                status = status | ST_EMPTY_RESIDUAL
                                nxt_tok = amax_q  # argmax of the original q_u
                                ended = 1
                    if accepted < 0:
                        c = tl.load(ns_ptr + tree + c).to(tl.int64)
                if accepted >= 0:
                    u = accepted
                    n_acc += 1
                    tl.store(nodes_ptr + b * L + n_acc, u.to(tl.int32))
                else:
                    if ended == 0:
                        nxt_tok = _final_token(mat, qrow, amax_q, u_sample, srem, zl, nz, cond, uncond, V, cfg_s,
                                               temp, gm, kth, m, inv_s, t, sp, GREEDY, CFG, TOPK, TOPP, ZMAX, BLOCK_V)
                    done = 1
    nxt_tok = tl.minimum(tl.maximum(nxt_tok, 0), V - 1)  # never an id outside [0, V)
    tl.store(acc_len_ptr + b, n_acc.to(tl.int32))
    tl.store(next_ptr + b, nxt_tok)
    tl.store(tvd_ptr + b, tvd)
    tl.store(status_ptr + b, status)


# ----------------------------------------------------------------------------------------------
# Launcher
# ----------------------------------------------------------------------------------------------
def _block_v(V: int) -> int:
    return max(2, min(MAX_BLOCK_V, triton.next_power_of_2(V)))


def launch_plan(args: VerifyArgs) -> dict:
    """The compile-time switches and sizes of both launches (host-only arithmetic on shapes)."""
    tokens, m = args.tokens, args.method
    B, N = tokens.shape
    V = args.target_logits.shape[2]
    sampled = args.draft_logits is not None
    greedy = args.temperature == 0
    tile = max(2, triton.next_power_of_2(V))
    lazy = not sampled and not greedy and m.code != METHODS["gsd"] and not (
        m.code == METHODS["lantern"] and args.transport)
    cascade = m.code == METHODS["cascade"]
    # small batches: phase 1 reduces every row of the tree in parallel; large ones: the walk reduces only the
    # rows it visits (a row is read once either way), phase 1 then only holds CASCADE's Gram blocks
    on_demand = B * N > MAX_PHASE1_ROWS
    rows = 0 if on_demand else B * N * (2 if sampled else 1)
    sim = 0
    if cascade:
        D = args.hidden.shape[2]
        BLOCK_N, BLOCK_D, BLOCK_I, n_blk = sim_blocks(N, D)
        sim = B * n_blk
    else:
        D, BLOCK_N, BLOCK_D, BLOCK_I = 1, 16, 16, 16
    warps = 16 if tile >= 8192 else (8 if tile >= 2048 else 4)
    return dict(B=B, N=N, V=V, D=D, rows=rows, on_demand=on_demand, sim=sim, one_tile=tile <= MAX_TILE_V, tile=tile, lazy=lazy,
                sampled=sampled, greedy=greedy, cascade=cascade, BLOCK_N=BLOCK_N, BLOCK_D=BLOCK_D, BLOCK_I=BLOCK_I,
                ZMAX=max(2, triton.next_power_of_2(N)), AMAX=max(2, triton.next_power_of_2(N)),
                phase1_warps=warps if rows else (4 if BLOCK_I * BLOCK_N <= 4096 else 8), walk_warps=warps if on_demand else 4)


_constants = {}


def _constant(key, device, make):
    """Small host-made constant tensors, copied to the device once and reused, so that a call captured in a
    CUDA graph (after one warm-up call) performs no host-to-device copy of pageable memory."""
    k = key + (str(device),)
    hit = _constants.get(k)
    if hit is None:
        if len(_constants) > 256:
            _constants.clear()
        hit = _constants[k] = make().to(device)
    return hit


def verify(args: VerifyArgs, out: VerifyOutput) -> None:
    """Two launches: phase 1 (row statistics [+ CASCADE sets]) and the walk. No host synchronisation."""
    tokens, tree, m = args.tokens, args.tree, args.method
    device = args.target_logits.device
    plan = launch_plan(args)
    B, N, V = plan["B"], plan["N"], plan["V"]
    fparams = _constant(("fp", args.eps, m.f("lantern_delta"), m.f("lantern_lam_m1")), device,
                        lambda: torch.tensor([args.eps, m.f("lantern_delta"), m.f("lantern_lam_m1"), 0.0],
                                             dtype=torch.float64))
    W = (N + 31) // 32
    nb = _constant(("nb",), device, lambda: torch.full((1, 1), -1, dtype=torch.int64))
    maxa = 1
    if m.code == METHODS["cool"]:
        table = _constant(("cool", m.fparams, tree.max_depth), device, lambda: torch.tensor(
            [cool_scale(m.fparams, d) for d in range(tree.max_depth + 1)], dtype=torch.float64))
        cool_w = table[tree.depth]
    else:
        cool_w = _constant(("ones", tuple(tree.depth.shape)), device,
                           lambda: torch.ones(tree.depth.shape, dtype=torch.float64))  # w = 1 unless COOL
    if m.code == METHODS["lantern"]:
        if m.i("n_neighbors"):
            nb = m.neighbors
        maxa = max(1, m.i("n_neighbors"))
    elif m.code == METHODS["gsd"]:
        maxa = max(1, min(m.i("gsd_G"), V))
    if plan["cascade"]:
        maxa = max(1, N)  # greedy saves the absorbed entries' q (at most N distinct tree tokens)
        inter = torch.empty(B, N, W, dtype=torch.int32, device=device)
        conv = torch.empty(B, N, W, dtype=torch.int32, device=device)
        hidden = args.hidden.contiguous()
    else:
        inter = conv = hidden = _constant(("zero",), device, lambda: torch.zeros(1, dtype=torch.int32))
    stats = torch.empty(max(1, plan["rows"]), NSTAT, dtype=torch.float64, device=device)
    scratch = not plan["lazy"]
    q_ws = torch.empty(B if scratch else 1, V, dtype=torch.float32, device=device)
    p_ws = torch.empty(B, V, dtype=torch.float32, device=device) if plan["sampled"] else q_ws
    a_ws = torch.empty(B, maxa, dtype=torch.int64, device=device)
    am_ws = torch.empty(B, maxa, dtype=torch.float32, device=device)
    drf = args.draft_logits if plan["sampled"] else args.target_logits
    cfg = args.cfg_scale
    cfg_s = 1.0 if cfg is None else cfg
    temp = 1.0 if plan["greedy"] else args.temperature
    tree_stride = 0 if tree.batch == 1 else N
    tile = dict(ONE_TILE=plan["one_tile"], TILE_V=plan["tile"] if plan["one_tile"] else 2, BLOCK_V=_block_v(V))
    if plan["rows"] + plan["sim"]:  # no phase 1 at all for large non-CASCADE batches
        _phase1_kernel[(plan["rows"] + plan["sim"],)](
            args.target_logits, drf, stats, hidden, tree.parents, inter, conv,
            B, N, V, plan["D"], W, tree_stride, cfg_s, temp, args.top_k, args.top_p, m.f("tau_pos"),
            m.f("tau_seq"), plan["rows"], CFG=cfg is not None, TOPK=args.top_k > 0, TOPP=args.top_p < 1.0,
            NST=NSTAT, BLOCK_N=plan["BLOCK_N"], BLOCK_D=plan["BLOCK_D"], SIM_I=plan["BLOCK_I"],
            num_warps=plan["phase1_warps"], **tile,
        )
    _walk_kernel[(B,)](
        tokens, tree.first_child, tree.next_sibling, cool_w, args.target_logits, drf, stats, nb, inter, conv,
        args.seed, fparams, q_ws, p_ws, a_ws, am_ws, out.accept_len, out.accepted_nodes, out.next_token, out.tvd,
        out.status, B, N, V, tree.max_depth + 1, W, maxa, tree_stride, m.i("n_neighbors"), min(m.i("gsd_G"), V),
        m.f("gsd_dp"), cfg_s, temp, args.top_k, args.top_p,
        METHOD=m.code, LANTERN_PP=bool(m.i("lantern_pp")), USE_INTER=bool(m.i("use_interchange")),
        USE_CONV=bool(m.i("use_convergence")), SAMPLED=plan["sampled"], GREEDY=plan["greedy"],
        TRANSPORT=args.transport, CFG=cfg is not None, TOPK=args.top_k > 0, TOPP=args.top_p < 1.0,
        LAZY=plan["lazy"], NST=NSTAT, ZMAX=plan["ZMAX"], AMAX=plan["AMAX"], ON_DEMAND=plan["on_demand"],
        num_warps=plan["walk_warps"], **tile,
    )
