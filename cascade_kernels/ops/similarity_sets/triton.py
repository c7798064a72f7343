"""Fused CASCADE similarity sets (CONTRACT §4): one Gram block per tree, grid ``(B * ceil(N/64),)``.

Program ``(b, ib)`` computes the cosines of rows ``64·ib …`` (all rows when N <= 64) of sequence ``b``
against every node of its tree with ``tl.dot`` over ``BLOCK_D`` chunks of ``D`` (fp32 inputs, IEEE fp32
accumulation: no TF32), so ``H[b]`` ([N, D]) is read once per tree for N <= 64 (``ceil(N/64) + 1`` times
beyond) instead of ``N`` times (the previous kernel re-read it in each of ``B·N`` programs). Cosines are ``dot / max(|a||b|, 1e-12)`` (NaN ⇒ not
similar). The sets' rows are written as bools (optional) and as packed int32 words (bit ``j % 32`` of
word ``j // 32``). :func:`_gram_sets` is also called from the verify kernel's phase 1, so CASCADE's
sets cost no launch of their own there.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from ...types import SimilaritySets

__all__ = ["similarity_sets", "sim_blocks"]

SIM_MAX_BLOCK_I = 64  # rows per program: the whole tree up to N = 64 (then [N, D] is read once per tree)


@triton.jit
def _pack_row(bits, offs_n, out_ptr, W, BLOCK_N: tl.constexpr):
    for w in range(0, W):
        sel = bits & ((offs_n // 32) == w)
        word = tl.sum(tl.where(sel, tl.full([BLOCK_N], 1, tl.int64) << (offs_n % 32).to(tl.int64), 0))
        word = tl.where(word >= 2147483648, word - 4294967296, word)
        tl.store(out_ptr + w, word.to(tl.int32))


@triton.jit
def _gram_sets(h_ptr, par_ptr, inter_ptr, conv_ptr, inter_pk_ptr, conv_pk_ptr, s, N, D, W, TREE_STRIDE,
               tau_pos, tau_seq, WRITE_BOOL: tl.constexpr, BLOCK_I: tl.constexpr, BLOCK_N: tl.constexpr,
               BLOCK_D: tl.constexpr):
    """Rows ``[BLOCK_I·ib, BLOCK_I·(ib + 1))`` of both sets of sequence ``b`` (``s = b · n_blocks + ib``)."""
    n_blk = (N + BLOCK_I - 1) // BLOCK_I
    b = s // n_blk
    i0 = (s % n_blk) * BLOCK_I
    offs_i = i0 + tl.arange(0, BLOCK_I).to(tl.int64)
    offs_n = tl.arange(0, BLOCK_N).to(tl.int64)
    offs_d = tl.arange(0, BLOCK_D).to(tl.int64)
    in_i = offs_i < N
    in_n = offs_n < N
    base = h_ptr + b * N * D
    acc = tl.zeros([BLOCK_I, BLOCK_N], dtype=tl.float32)
    sq_i = tl.zeros([BLOCK_I], dtype=tl.float32)
    sq_n = tl.zeros([BLOCK_N], dtype=tl.float32)
    for d0 in range(0, D, BLOCK_D):
        cols = d0 + offs_d
        in_d = cols < D
        hn = tl.load(base + offs_n[:, None] * D + cols[None, :], mask=in_n[:, None] & in_d[None, :],
                     other=0.0).to(tl.float32)
        if BLOCK_I == BLOCK_N:  # the whole tree in one block: [N, D] is read exactly once
            hi = hn
        else:
            hi = tl.load(base + offs_i[:, None] * D + cols[None, :], mask=in_i[:, None] & in_d[None, :],
                         other=0.0).to(tl.float32)
        acc += tl.dot(hi, tl.trans(hn), input_precision="ieee")
        sq_i += tl.sum(hi * hi, axis=1)
        sq_n += tl.sum(hn * hn, axis=1)
    cos = acc / tl.maximum(tl.sqrt_rn(sq_i)[:, None] * tl.sqrt_rn(sq_n)[None, :], 1e-12)
    prow = par_ptr + b * TREE_STRIDE
    p_n = tl.load(prow + offs_n, mask=in_n, other=-2).to(tl.int64)
    p_i = tl.load(prow + offs_i, mask=in_i, other=-2).to(tl.int64)
    real_n = (p_n >= 0) & in_n
    inter = (p_n[None, :] == p_i[:, None]) & real_n[None, :] & (p_i[:, None] >= 0) & \
        (offs_n[None, :] != offs_i[:, None]) & (cos >= tau_pos)
    conv = (p_n[None, :] == offs_i[:, None]) & real_n[None, :] & (cos >= tau_seq)
    inter = inter & in_i[:, None]
    conv = conv & in_i[:, None]
    if WRITE_BOOL:
        off = (b * N + offs_i[:, None]) * N + offs_n[None, :]
        msk = in_i[:, None] & in_n[None, :]
        tl.store(inter_ptr + off, inter.to(tl.int8), mask=msk)
        tl.store(conv_ptr + off, conv.to(tl.int8), mask=msk)
    shift = tl.full([BLOCK_N], 1, tl.int64) << (offs_n % 32)
    for w in range(0, W):
        sel = ((offs_n // 32) == w)[None, :]
        wi = tl.sum(tl.where(inter & sel, shift[None, :], 0), axis=1)
        wc = tl.sum(tl.where(conv & sel, shift[None, :], 0), axis=1)
        wi = tl.where(wi >= 2147483648, wi - 4294967296, wi)
        wc = tl.where(wc >= 2147483648, wc - 4294967296, wc)
        tl.store(inter_pk_ptr + (b * N + offs_i) * W + w, wi.to(tl.int32), mask=in_i)
        tl.store(conv_pk_ptr + (b * N + offs_i) * W + w, wc.to(tl.int32), mask=in_i)


@triton.jit
def _similarity_kernel(h_ptr, par_ptr, inter_ptr, conv_ptr, inter_pk_ptr, conv_pk_ptr,
                       N, D, W, TREE_STRIDE, tau_pos, tau_seq, BLOCK_I: tl.constexpr, BLOCK_N: tl.constexpr,
                       BLOCK_D: tl.constexpr):
    s = tl.program_id(0).to(tl.int64)
    _gram_sets(h_ptr, par_ptr, inter_ptr, conv_ptr, inter_pk_ptr, conv_pk_ptr, s, N, D, W, TREE_STRIDE,
               tau_pos, tau_seq, True, BLOCK_I, BLOCK_N, BLOCK_D)


def sim_blocks(N: int, D: int):
    """(BLOCK_N, BLOCK_D, BLOCK_I, programs per sequence) for the Gram-block kernel."""
    BLOCK_N = max(16, triton.next_power_of_2(N))
    BLOCK_I = min(BLOCK_N, SIM_MAX_BLOCK_I)
    BLOCK_D = max(16, min(triton.next_power_of_2(D), 64, max(16, 4096 // BLOCK_N)))
    return BLOCK_N, BLOCK_D, BLOCK_I, triton.cdiv(N, BLOCK_I)


def similarity_sets(parents: torch.Tensor, hidden: torch.Tensor, tau_pos: float, tau_seq: float) -> SimilaritySets:
    """``ck.similarity_sets`` on validated ``parents [B,N] int32`` (or [1, N]) and ``hidden [B,N,D]``."""
    B, N, D = hidden.shape
    W = (N + 31) // 32
    dev = hidden.device
    hidden = hidden.contiguous()
    parents = parents.to(torch.int32).contiguous()
    inter = torch.empty(B, N, N, dtype=torch.int8, device=dev)
    conv = torch.empty(B, N, N, dtype=torch.int8, device=dev)
    inter_pk = torch.empty(B, N, W, dtype=torch.int32, device=dev)
    conv_pk = torch.empty(B, N, W, dtype=torch.int32, device=dev)
    BLOCK_N, BLOCK_D, BLOCK_I, n_blk = sim_blocks(N, D)
    _similarity_kernel[(B * n_blk,)](hidden, parents, inter, conv, inter_pk, conv_pk, N, D, W,
                                     0 if parents.shape[0] == 1 else N, float(tau_pos), float(tau_seq),
                                     BLOCK_I=BLOCK_I, BLOCK_N=BLOCK_N, BLOCK_D=BLOCK_D,
                                     num_warps=4 if BLOCK_I * BLOCK_N <= 4096 else 8)
    return SimilaritySets(inter.view(torch.bool), conv.view(torch.bool), inter_pk, conv_pk)
