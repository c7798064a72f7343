"""Fused CASCADE similarity sets (SPEC §4): one launch for a batch, grid ``(B * N,)``.

Program ``(b, i)`` streams ``H[b, i, :]`` and the ``[N, D]`` tile of the whole tree in ``BLOCK_D``
chunks (any float dtype, odd ``D``), accumulating float32 dots and squared norms; cosines are
``dot / max(|a||b|, 1e-12)`` (NaN => not similar). Row ``i`` of both sets is written as bools and as
packed int32 words (bit ``j % 32`` of word ``j // 32``).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from ...types import SimilaritySets

__all__ = ["similarity_sets"]


@triton.jit
def _pack_row(bits, offs_n, out_ptr, W, BLOCK_N: tl.constexpr):
    for w in range(0, W):
        sel = bits & ((offs_n // 32) == w)
        word = tl.sum(tl.where(sel, tl.full([BLOCK_N], 1, tl.int64) << (offs_n % 32).to(tl.int64), 0))
        word = tl.where(word >= 2147483648, word - 4294967296, word)
        tl.store(out_ptr + w, word.to(tl.int32))


@triton.jit
def _similarity_kernel(h_ptr, par_ptr, inter_ptr, conv_ptr, inter_pk_ptr, conv_pk_ptr,
                       N, D, W, tau_pos, tau_seq, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr):
    pid = tl.program_id(0).to(tl.int64)
    b = pid // N
    i = pid % N
    offs_n = tl.arange(0, BLOCK_N).to(tl.int64)
    offs_d = tl.arange(0, BLOCK_D).to(tl.int64)
    in_n = offs_n < N
    dots = tl.zeros([BLOCK_N], dtype=tl.float32)
    sq = tl.zeros([BLOCK_N], dtype=tl.float32)
    base = h_ptr + b * N * D
    for d0 in range(0, D, BLOCK_D):
        cols = d0 + offs_d
        in_d = cols < D
        hi = tl.load(base + i * D + cols, mask=in_d, other=0.0).to(tl.float32)
        hj = tl.load(base + offs_n[:, None] * D + cols[None, :], mask=in_n[:, None] & in_d[None, :],
                     other=0.0).to(tl.float32)
        dots += tl.sum(hj * hi[None, :], axis=1)
        sq += tl.sum(hj * hj, axis=1)
    norms = tl.sqrt_rn(sq)
    norm_i = tl.sum(tl.where(offs_n == i, norms, 0.0))
    cos = dots / tl.maximum(norm_i * norms, 1e-12)
    p = tl.load(par_ptr + b * N + offs_n, mask=in_n, other=-2).to(tl.int64)
    p_i = tl.load(par_ptr + b * N + i).to(tl.int64)
    real_j = (p >= 0) & in_n
    inter = (p == p_i) & real_j & (p_i >= 0) & (offs_n != i) & (cos >= tau_pos)
    conv = (p == i) & real_j & (cos >= tau_seq)
    row = (b * N + i) * N
    tl.store(inter_ptr + row + offs_n, inter.to(tl.int8), mask=in_n)
    tl.store(conv_ptr + row + offs_n, conv.to(tl.int8), mask=in_n)
    _pack_row(inter, offs_n, inter_pk_ptr + (b * N + i) * W, W, BLOCK_N)
    _pack_row(conv, offs_n, conv_pk_ptr + (b * N + i) * W, W, BLOCK_N)


def similarity_sets(parents: torch.Tensor, hidden: torch.Tensor, tau_pos: float, tau_seq: float,
                           block_d: int = 128) -> SimilaritySets:
    """``ck.similarity_sets`` on validated ``parents [B,N] int32`` and ``hidden [B,N,D]``."""
    B, N = parents.shape
    D = hidden.shape[2]
    W = (N + 31) // 32
    dev = hidden.device
    hidden = hidden.contiguous()
    parents = parents.to(torch.int32).contiguous()
    inter = torch.empty(B, N, N, dtype=torch.int8, device=dev)
    conv = torch.empty(B, N, N, dtype=torch.int8, device=dev)
    inter_pk = torch.empty(B, N, W, dtype=torch.int32, device=dev)
    conv_pk = torch.empty(B, N, W, dtype=torch.int32, device=dev)
    BLOCK_N = max(2, triton.next_power_of_2(N))
    BLOCK_D = max(2, min(triton.next_power_of_2(D), block_d, max(2, 8192 // BLOCK_N)))
    _similarity_kernel[(B * N,)](hidden, parents, inter, conv, inter_pk, conv_pk, N, D, W,
                                 float(tau_pos), float(tau_seq), BLOCK_N=BLOCK_N, BLOCK_D=BLOCK_D)
    return SimilaritySets(inter.view(torch.bool), conv.view(torch.bool), inter_pk, conv_pk)
