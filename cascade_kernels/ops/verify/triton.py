"""Fused Triton verification walk (SPEC §2-6, docs/SEMANTICS.md): ONE launch per ``ck.verify`` call.

Grid ``(B,)``: one program per sequence walks its draft tree. Everything the reference does per visited
node happens inside the program, chunked over the vocabulary by ``BLOCK_V``:

- CFG combine, temperature, top-k (the k-th largest logit by bisection over the float's order-preserving
  int32 key with count passes; ties kept), online max / sum-of-exponentials, top-p (bisection over the
  probability's bit pattern with mass passes), float32 probabilities;
- the visited row's ``q`` (and ``p`` in sampled drafting) is written to a per-sequence float32 scratch row
  (``workspace [B, V]``, allocated by the launcher) and residual updates happen there;
- the method's relaxation (constexpr ``METHOD``), TVD accounting, the Philox draws (``tl.rand`` with
  the int64 offset ``index + (stream << 32)``), and the inverse-CDF sample (blocked float32 cumsum with a
  running carry).

CASCADE's sets are read from the packed bit words produced by :mod:`similarity_triton` (one extra launch
before the walk, only for ``ck.Cascade``). Children lists come as first-child / next-sibling arrays made
by a tiny torch precompute in the launcher. Scalar arithmetic that the reference performs on Python
floats (budgets, COOL's scale) is done in float64 and rounded to float32 where the reference rounds.
"""
from __future__ import annotations

import math
from typing import Optional

import torch
import triton
import triton.language as tl

from ...codes import METHODS, STATUS, STREAMS
from ...methods import cool_scale
from ...types import VerifyArgs, VerifyOutput
from ..similarity_sets.triton import similarity_sets

__all__ = ["verify", "MAX_BLOCK_V"]

MAX_BLOCK_V = 1024  # tests lower this so the chunk loop runs several times on tiny vocabularies

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


# ----------------------------------------------------------------------------------------------
# Row processing helpers (SPEC §2)
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
def _row_stats(cond_ptr, uncond_ptr, V, cfg_s, temp, top_k, top_p,
               CFG: tl.constexpr, TOPK: tl.constexpr, TOPP: tl.constexpr, BLOCK_V: tl.constexpr):
    """(kth key, max, 1/sum, top-p threshold, top-p kept sum, valid) of one processed row."""
    offs = tl.arange(0, BLOCK_V)
    kth = tl.full([], -2147483648, tl.int64)
    if TOPK:
        lo = tl.full([], -2147483648, tl.int64)
        hi = tl.full([], 2147483647, tl.int64)
        while lo < hi:
            mid = lo + (hi - lo + 1) // 2
            cnt = tl.full([], 0, tl.int64)
            for start in range(0, V, BLOCK_V):
                cols = start + offs
                x = _guided(cond_ptr, uncond_ptr, cols, V, cfg_s, CFG) / temp
                cnt += tl.sum(((_okey(x) >= mid) & (cols < V)).to(tl.int64))
            if cnt >= top_k:
                lo = mid
            else:
                hi = mid - 1
        kth = lo
    m = tl.full([], -float("inf"), tl.float32)
    s = tl.full([], 0.0, tl.float32)
    bad = tl.full([], 0, tl.int32)
    fin = tl.full([], 0, tl.int32)
    for start in range(0, V, BLOCK_V):
        cols = start + offs
        x = _guided(cond_ptr, uncond_ptr, cols, V, cfg_s, CFG) / temp
        kept = _kept(x, cols, V, kth, TOPK)
        live = cols < V  # validity is judged on the whole row, before top-k masks anything
        bad = bad | tl.max((live & ((x != x) | (x == float("inf")))).to(tl.int32))
        fin = fin | tl.max((live & (tl.abs(x) < float("inf"))).to(tl.int32))
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
                    x = _guided(cond_ptr, uncond_ptr, cols, V, cfg_s, CFG) / temp
                    kept = _kept(x, cols, V, kth, TOPK)
                    pr = tl.where(kept, tl.exp(x - m), 0.0) * inv_s
                    mass += tl.sum(tl.where(pr >= midf, pr, 0.0))
                if mass >= top_p:
                    lo2 = mid2
                else:
                    hi2 = mid2 - 1
            t = lo2.to(tl.float32, bitcast=True)
            sp = 0.0
            for start in range(0, V, BLOCK_V):
                cols = start + offs
                x = _guided(cond_ptr, uncond_ptr, cols, V, cfg_s, CFG) / temp
                kept = _kept(x, cols, V, kth, TOPK)
                pr = tl.where(kept, tl.exp(x - m), 0.0) * inv_s
                sp += tl.sum(tl.where(pr >= t, pr, 0.0))
    return kth, m, inv_s, t, sp, valid


@triton.jit
def _probs(cond_ptr, uncond_ptr, cols, V, cfg_s, temp, kth, m, inv_s, t, sp,
           CFG: tl.constexpr, TOPK: tl.constexpr, TOPP: tl.constexpr):
    x = _guided(cond_ptr, uncond_ptr, cols, V, cfg_s, CFG) / temp
    kept = _kept(x, cols, V, kth, TOPK)
    pr = tl.where(kept, tl.exp(x - m), 0.0) * inv_s
    if TOPP:
        pr = tl.where(pr >= t, pr, 0.0) / sp
    return pr


@triton.jit
def _argmax_probs(cond_ptr, uncond_ptr, V, cfg_s, temp, kth, m, inv_s, t, sp,
                  CFG: tl.constexpr, TOPK: tl.constexpr, TOPP: tl.constexpr, BLOCK_V: tl.constexpr):
    """argmax of the (recomputed) original row probabilities, lowest index on ties."""
    offs = tl.arange(0, BLOCK_V)
    best = -1.0
    idx = tl.full([], 0, tl.int64)
    for start in range(0, V, BLOCK_V):
        cols = start + offs
        pr = _probs(cond_ptr, uncond_ptr, cols, V, cfg_s, temp, kth, m, inv_s, t, sp, CFG, TOPK, TOPP)
        pr = tl.where(cols < V, pr, -1.0)
        cmax = tl.max(pr)
        cidx = tl.min(tl.where(pr == cmax, cols, 2147483647)).to(tl.int64)
        if cmax > best:
            best = cmax
            idx = cidx
    return idx


@triton.jit
def _argmax_row(ptr, V, BLOCK_V: tl.constexpr):
    """argmax of a float32 row of probabilities (scratch), lowest index on ties."""
    offs = tl.arange(0, BLOCK_V)
    best = -1.0
    idx = tl.full([], 0, tl.int64)
    for start in range(0, V, BLOCK_V):
        cols = start + offs
        w = tl.load(ptr + cols, mask=cols < V, other=-1.0)
        cmax = tl.max(w)
        cidx = tl.min(tl.where(w == cmax, cols, 2147483647)).to(tl.int64)
        if cmax > best:
            best = cmax
            idx = cidx
    return idx


@triton.jit
def _nan_safe_argmax(cond_ptr, uncond_ptr, V, cfg_s, CFG: tl.constexpr, BLOCK_V: tl.constexpr):
    """argmax of the guided logits with NaN read as -inf, lowest index on ties, 0 if nothing is finite."""
    offs = tl.arange(0, BLOCK_V)
    best = -float("inf")
    idx = tl.full([], 0, tl.int64)
    for start in range(0, V, BLOCK_V):
        cols = start + offs
        x = _guided(cond_ptr, uncond_ptr, cols, V, cfg_s, CFG)
        x = tl.where((x != x) | (cols >= V), -float("inf"), x)
        cmax = tl.max(x)
        cidx = tl.min(tl.where(x == cmax, cols, 2147483647)).to(tl.int64)
        if cmax > best:
            best = cmax
            idx = cidx
    return idx


@triton.jit
def _sample_row(ptr, V, u, BLOCK_V: tl.constexpr):
    """SPEC §6 inverse CDF over the float32 weights of a scratch row: smallest i with running > u*sum."""
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
    wi = tl.load(ptr + i)
    res = i
    if wi <= 0.0:
        nxt = tl.full([], 2147483647, tl.int64)
        last = tl.full([], -1, tl.int64)
        for start in range(0, V, BLOCK_V):
            cols = start + offs
            w = tl.load(ptr + cols, mask=cols < V, other=0.0)
            nz = (w > 0.0) & (cols < V)
            nxt = tl.minimum(nxt, tl.min(tl.where(nz & (cols > i), cols, 2147483647)).to(tl.int64))
            last = tl.maximum(last, tl.max(tl.where(nz, cols, -1)).to(tl.int64))
        res = tl.where(nxt < 2147483647, nxt, last)
    return tl.minimum(tl.maximum(res, 0), V - 1)


@triton.jit
def _uniform(seed, offset):
    """tl.rand(seed, offset) for one int64 offset (computed on a 2-lane vector, lane 0 kept)."""
    lanes = tl.arange(0, 2)
    u = tl.rand(seed, offset + lanes.to(tl.int64))
    return tl.sum(tl.where(lanes == 0, u, 0.0))


@triton.jit
def _cascade_block(sets, tok_row, qrow, arow, b, c, x, N, V, W, n_abs, charge, tvd, eps32):
    """One CASCADE block of child ``c``: deduplicated live tokens, absorbed all-or-nothing if it fits."""
    n_blk = n_abs
    mass = 0.0
    for jj in range(0, N):
        word = tl.load(sets + (b * N + c) * W + jj // 32)
        if ((word >> (jj % 32)) & 1) != 0:
            y = tl.load(tok_row + jj)
            if (y >= 0) & (y < V):
                qy = tl.load(qrow + y)
                new = (qy > 0.0) & (y != x)
                k = n_blk * 0
                while k < n_blk:
                    new = new & (tl.load(arow + k) != y)
                    k += 1
                if new:
                    tl.store(arow + n_blk, y)
                    n_blk += 1
                    mass += qy
    total64 = tvd.to(tl.float64) + charge.to(tl.float64) + mass.to(tl.float64)
    if total64.to(tl.float32) <= eps32:
        n_abs = n_blk
        charge = charge + mass
    return n_abs, charge


# ----------------------------------------------------------------------------------------------
# The walk
# ----------------------------------------------------------------------------------------------
@triton.jit
def _verify_kernel(
    tok_ptr, fc_ptr, ns_ptr, cw_ptr, tgt_ptr, drf_ptr, nb_ptr, inter_ptr, conv_ptr, seed_ptr, fp_ptr,
    q_ptr, p_ptr, a_ptr, am_ptr,
    acc_len_ptr, nodes_ptr, next_ptr, tvd_ptr, status_ptr,
    B, N, V, L, W, MAXA, TREE_STRIDE, n_nb, gsd_G, gsd_dp, cfg_s, temp, top_k, top_p,
    METHOD: tl.constexpr, LANTERN_PP: tl.constexpr, USE_INTER: tl.constexpr, USE_CONV: tl.constexpr,
    SAMPLED: tl.constexpr, GREEDY: tl.constexpr, TRANSPORT: tl.constexpr, CFG: tl.constexpr,
    TOPK: tl.constexpr, TOPP: tl.constexpr, BLOCK_V: tl.constexpr,
):
    b = tl.program_id(0).to(tl.int64)
    offs = tl.arange(0, BLOCK_V)
    seed = tl.load(seed_ptr + b)
    eps = tl.load(fp_ptr + 0)  # float64 budget (may be inf)
    lan_delta = tl.load(fp_ptr + 1)  # float64
    lan_lam_m1 = tl.load(fp_ptr + 2)  # float64, LANTERN++ (lam - 1)
    eps32 = eps.to(tl.float32)
    qrow = q_ptr + b * V
    prow = p_ptr + b * V
    arow = a_ptr + b * MAXA
    amrow = am_ptr + b * MAXA
    tok_row = tok_ptr + b * N
    u_sample = tl.maximum(_uniform(seed, tl.full([], STREAM_SAMPLE, tl.int64) << 32), 2.3283064365386963e-10)

    u = tl.full([], 0, tl.int64)
    n_acc = tl.full([], 0, tl.int64)
    tvd = 0.0
    status = tl.full([], 0, tl.int32)
    nxt_tok = tl.full([], 0, tl.int64)
    done = tl.full([], 0, tl.int32)
    tl.store(nodes_ptr + b * L, 0)
    while done == 0:
        row = b * N + u
        cond = tgt_ptr + row * V
        uncond = tgt_ptr + (B * N + row) * V
        kth, m, inv_s, t, sp, valid = _row_stats(cond, uncond, V, cfg_s, temp, top_k, top_p,
                                                 CFG, TOPK, TOPP, BLOCK_V)
        if valid == 0:
            nxt_tok = _nan_safe_argmax(cond, uncond, V, cfg_s, CFG, BLOCK_V)
            status = status | ST_NONFINITE_TARGET
            done = 1
        else:
            # q_u into the scratch row
            for start in range(0, V, BLOCK_V):
                cols = start + offs
                pr = _probs(cond, uncond, cols, V, cfg_s, temp, kth, m, inv_s, t, sp, CFG, TOPK, TOPP)
                tl.store(qrow + cols, pr, mask=cols < V)
            tl.debug_barrier()
            trow = b * TREE_STRIDE + u  # the tree's row (one tree may serve the whole batch)
            # a drafted child outside [-1, V) stops the walk here (docs/CONTRACT.md §Status)
            bad = tl.full([], 0, tl.int32)
            c = tl.load(fc_ptr + trow).to(tl.int64)
            while c >= 0:
                y = tl.load(tok_row + c)
                bad = bad | ((y < -1) | (y >= V)).to(tl.int32)
                c = tl.load(ns_ptr + b * TREE_STRIDE + c).to(tl.int64)
            c = tl.load(fc_ptr + trow).to(tl.int64)
            while (c >= 0) & (tl.load(tok_row + tl.maximum(c, 0)) < 0):
                c = tl.load(ns_ptr + b * TREE_STRIDE + c).to(tl.int64)
            if bad != 0:
                status = status | ST_BAD_TOKEN
                if GREEDY:
                    nxt_tok = _argmax_row(qrow, V, BLOCK_V)
                else:
                    nxt_tok = _sample_row(qrow, V, u_sample, BLOCK_V)
                done = 1
            elif c < 0:
                if GREEDY:
                    nxt_tok = _argmax_row(qrow, V, BLOCK_V)
                else:
                    nxt_tok = _sample_row(qrow, V, u_sample, BLOCK_V)
                done = 1
            if SAMPLED:
                if done == 0:
                    dcond = drf_ptr + row * V
                    dkth, dm, dinv_s, dt, dsp, dvalid = _row_stats(dcond, dcond, V, cfg_s, temp, top_k, top_p,
                                                                   False, TOPK, TOPP, BLOCK_V)
                    if dvalid == 0:
                        status = status | ST_NONFINITE_DRAFT
                        nxt_tok = _sample_row(qrow, V, u_sample, BLOCK_V)
                        done = 1
                    else:
                        for start in range(0, V, BLOCK_V):
                            cols = start + offs
                            pr = _probs(dcond, dcond, cols, V, cfg_s, temp, dkth, dm, dinv_s, dt, dsp,
                                        False, TOPK, TOPP)
                            tl.store(prow + cols, pr, mask=cols < V)
                        tl.debug_barrier()
            if done == 0:
                accepted = tl.full([], -1, tl.int64)
                ended = tl.full([], 0, tl.int32)
                while (c >= 0) & (accepted < 0) & (ended == 0):
                    x = tl.load(tok_row + c)
                    skip = x < 0
                    if not SAMPLED:
                        d = tl.load(fc_ptr + trow).to(tl.int64)
                        while d != c:
                            skip = skip | (tl.load(tok_row + d) == x)
                            d = tl.load(ns_ptr + b * TREE_STRIDE + d).to(tl.int64)
                    if skip == 0:
                        qx = tl.load(qrow + x)
                        left = eps - tvd.to(tl.float64)
                        r = qx
                        charge = 0.0
                        n_abs = tl.full([], 0, tl.int64)
                        w_cool = tl.load(cw_ptr + b * TREE_STRIDE + c)  # float64 (1.0 unless COOL)
                        # ---------------- method relaxation (SPEC §4) ----------------
                        if METHOD == M_COOL:
                            qx64 = qx.to(tl.float64)
                            r64 = tl.minimum(tl.minimum(1.0, w_cool * qx64), qx64 + left)
                            r = r64.to(tl.float32)
                            charge = (r.to(tl.float64) - qx64).to(tl.float32)
                        if METHOD == M_LANTERN:  # LANTERN / LANTERN++ (cap 0 when q(x) = 0, also for lam = inf)
                            if LANTERN_PP:
                                cap = tl.where(qx > 0.0, lan_lam_m1 * qx.to(tl.float64), 0.0)
                            else:
                                cap = lan_delta
                            cap32 = tl.minimum(cap, left).to(tl.float32)
                            run = 0.0
                            fits = tl.full([], 1, tl.int32)
                            j = tl.full([], 0, tl.int64)
                            while (j < n_nb) & (fits != 0):
                                y = tl.load(nb_ptr + x * n_nb + j)
                                if y >= 0:
                                    run2 = run + tl.load(qrow + y)
                                    if run2 <= cap32:
                                        tl.store(arow + n_abs, y)
                                        n_abs += 1
                                        run = run2
                                    else:
                                        fits = 0
                                j += 1
                            charge = run
                            r = qx + run
                        if METHOD == M_GSD:
                            left32 = left.to(tl.float32)
                            run = 0.0
                            fits = tl.full([], 1, tl.int32)
                            prev_d = -1.0
                            prev_id = tl.full([], -1, tl.int64)
                            while (n_abs < gsd_G) & (fits != 0):
                                dmin = float("inf")
                                for start in range(0, V, BLOCK_V):
                                    cols = start + offs
                                    qv = tl.load(qrow + cols, mask=cols < V, other=0.0)
                                    dist = tl.abs(qv - qx)
                                    el = (cols < V) & (qv > 0.0) & (cols != x) & (dist < gsd_dp)
                                    el = el & ((dist > prev_d) | ((dist == prev_d) & (cols > prev_id)))
                                    dmin = tl.minimum(dmin, tl.min(tl.where(el, dist, float("inf"))))
                                ymin = tl.full([], 2147483647, tl.int64)
                                for start in range(0, V, BLOCK_V):
                                    cols = start + offs
                                    qv = tl.load(qrow + cols, mask=cols < V, other=0.0)
                                    dist = tl.abs(qv - qx)
                                    el = (cols < V) & (qv > 0.0) & (cols != x) & (dist < gsd_dp)
                                    el = el & ((dist > prev_d) | ((dist == prev_d) & (cols > prev_id)))
                                    el = el & (dist == dmin)
                                    ymin = tl.minimum(ymin, tl.min(tl.where(el, cols, 2147483647)).to(tl.int64))
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
                            charge = run
                            r = qx + run
                        if METHOD == M_CASCADE:  # interchangeable block first, then convergence
                            if USE_INTER:
                                n_abs, charge = _cascade_block(inter_ptr, tok_row, qrow, arow, b, c, x, N, V, W,
                                                               n_abs, charge, tvd, eps32)
                            if USE_CONV:
                                n_abs, charge = _cascade_block(conv_ptr, tok_row, qrow, arow, b, c, x, N, V, W,
                                                               n_abs, charge, tvd, eps32)
                            r = qx + charge
                        tvd = tvd + charge
                        tl.debug_barrier()
                        # ---------------- decision ----------------
                        if GREEDY:
                            k = tl.full([], 0, tl.int64)
                            while k < n_abs:
                                y = tl.load(arow + k)
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
                                tl.store(qrow + tl.load(arow + k), tl.load(amrow + k))
                                k += 1
                            tl.debug_barrier()
                            best64 = best.to(tl.float64)
                            if METHOD == M_COOL:
                                if qx < 1.0:
                                    best64 = best64 * ((1.0 - r.to(tl.float64)) / (1.0 - qx.to(tl.float64)))
                                else:
                                    best64 = best64 * 0.0
                            ok = r.to(tl.float64) >= best64
                        else:
                            ua = _uniform(seed, c + (tl.full([], STREAM_ACCEPT, tl.int64) << 32))
                            if SAMPLED:
                                px = tl.load(prow + x)
                                ratio = tl.where(px == 0.0, tl.where(r > 0.0, 1.0, 0.0), r / px)
                                ok = ua < tl.minimum(1.0, ratio)
                            else:
                                ok = ua < r
                        if ok:
                            accepted = c
                        else:
                            # ---------------- residual (SPEC §3) ----------------
                            if SAMPLED:
                                if METHOD != M_COOL:
                                    if TRANSPORT:
                                        tl.store(qrow + x, r)
                                        k = 0
                                        while k < n_abs:
                                            tl.store(qrow + tl.load(arow + k), 0.0)
                                            k += 1
                                tl.debug_barrier()
                                w32 = w_cool.to(tl.float32)
                                total = 0.0
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
                                    k = 0
                                    while k < n_abs:
                                        tl.store(qrow + tl.load(arow + k), 0.0)
                                        k += 1
                                tl.debug_barrier()
                                total = 0.0
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
                            else:
                                status = status | ST_EMPTY_RESIDUAL
                                nxt_tok = _argmax_probs(cond, uncond, V, cfg_s, temp, kth, m, inv_s, t, sp,
                                                        CFG, TOPK, TOPP, BLOCK_V)
                                ended = 1
                    if accepted < 0:
                        c = tl.load(ns_ptr + b * TREE_STRIDE + c).to(tl.int64)
                if accepted >= 0:
                    u = accepted
                    n_acc += 1
                    tl.store(nodes_ptr + b * L + n_acc, u.to(tl.int32))
                else:
                    if ended == 0:
                        if GREEDY:
                            nxt_tok = _argmax_row(qrow, V, BLOCK_V)
                        else:
                            nxt_tok = _sample_row(qrow, V, u_sample, BLOCK_V)
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


def verify(args: VerifyArgs, out: VerifyOutput) -> None:
    """Fused ``ck.verify``: one verification launch for the batch (plus one similarity launch for CASCADE)."""
    tokens, tree, m = args.tokens, args.tree, args.method
    device = args.target_logits.device
    out.accepted_nodes.fill_(-1)  # the kernel writes the accepted path only
    B, N = tokens.shape
    V = args.target_logits.shape[2]
    greedy = args.temperature == 0
    sampled = args.draft_logits is not None
    fparams = torch.tensor([args.eps, m.f("lantern_delta"), m.f("lantern_lam_m1"), 0.0], dtype=torch.float64)
    fparams = fparams.to(device, non_blocking=True)
    words = (N + 31) // 32
    nb = torch.full((1, 1), -1, dtype=torch.int64, device=device)
    inter = conv = torch.zeros(1, dtype=torch.int32, device=device)
    maxa = 1
    cool_w = torch.ones(tree.depth.shape, dtype=torch.float64, device=device)  # w = 1 unless COOL
    if m.code == METHODS["cool"]:
        table = torch.tensor([cool_scale(m.fparams, d) for d in range(tree.max_depth + 1)], dtype=torch.float64)
        cool_w = table.to(device)[tree.depth]
    elif m.code == METHODS["lantern"]:
        if m.i("n_neighbors"):
            nb = m.neighbors
        maxa = max(1, m.i("n_neighbors"))
    elif m.code == METHODS["gsd"]:
        maxa = max(1, min(m.i("gsd_G"), V))
    elif m.code == METHODS["cascade"]:
        sets = similarity_sets(tree.expand(B).contiguous(), args.hidden, m.f("tau_pos"), m.f("tau_seq"))
        inter, conv = sets.interchange_packed.contiguous(), sets.convergence_packed.contiguous()
        maxa = 2 * N
    q_ws = torch.empty(B, V, dtype=torch.float32, device=device)
    p_ws = torch.empty(B, V, dtype=torch.float32, device=device) if sampled else q_ws
    a_ws = torch.empty(B, maxa, dtype=torch.int64, device=device)
    am_ws = torch.empty(B, maxa, dtype=torch.float32, device=device)
    drf = args.draft_logits if sampled else args.target_logits
    cfg = args.cfg_scale
    _verify_kernel[(B,)](
        tokens, tree.first_child, tree.next_sibling, cool_w, args.target_logits, drf, nb, inter, conv, args.seed,
        fparams, q_ws, p_ws, a_ws, am_ws, out.accept_len, out.accepted_nodes, out.next_token, out.tvd, out.status,
        B, N, V, tree.max_depth + 1, words, maxa, 0 if tree.batch == 1 else N, m.i("n_neighbors"),
        min(m.i("gsd_G"), V), m.f("gsd_dp"), 1.0 if cfg is None else cfg, 1.0 if greedy else args.temperature,
        args.top_k, args.top_p,
        METHOD=m.code, LANTERN_PP=bool(m.i("lantern_pp")), USE_INTER=bool(m.i("use_interchange")),
        USE_CONV=bool(m.i("use_convergence")), SAMPLED=sampled, GREEDY=greedy, TRANSPORT=args.transport,
        CFG=cfg is not None, TOPK=args.top_k > 0, TOPP=args.top_p < 1.0, BLOCK_V=_block_v(V),
    )
