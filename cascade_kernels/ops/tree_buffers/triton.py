"""Fused tree buffers (docs/CONTRACT.md §1) for a batch of different trees: one launch, grid ``(B * N,)``.

Program ``(b, i)`` walks node ``i``'s ancestor chain once and writes its mask row (bool and packed
int32 words), its ``position_ids`` entry and, when ``i`` is a leaf, its root->leaf path into
``retrieve``. The leaf slot is the number of leaves before ``i`` (computed in-kernel from an
``[N, N]`` parent comparison). Only ``retrieve``'s shape (leaf count, max depth) is computed on the
host, because it must be allocated before the launch.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from ...trees import depths
from ...types import TreeBuffers
from ..similarity_sets.triton import _pack_row

__all__ = ["tree_buffers"]


@triton.jit
def _tree_buffers_kernel(par_ptr, prefix_ptr, mask_ptr, packed_ptr, pos_ptr, ret_ptr, N, W, NL, L,
                         BLOCK_N: tl.constexpr):
    pid = tl.program_id(0).to(tl.int64)
    b = pid // N
    i = pid % N
    offs = tl.arange(0, BLOCK_N).to(tl.int64)
    in_n = offs < N
    prow = par_ptr + b * N
    # ancestors of i (i itself included); a padding node sees only itself
    row = offs == i
    depth = tl.full([], 0, tl.int64)
    j = tl.load(prow + i).to(tl.int64)
    while j >= 0:
        row = row | (offs == j)
        depth += 1
        j = tl.load(prow + j).to(tl.int64)
    out = (b * N + i) * N
    tl.store(mask_ptr + out + offs, row.to(tl.int8), mask=in_n)
    _pack_row(row & in_n, offs, packed_ptr + (b * N + i) * W, W, BLOCK_N)
    tl.store(pos_ptr + b * N + i, tl.load(prefix_ptr + b) + depth)
    # leaves: real nodes without children, numbered in increasing node index
    p = tl.load(prow + offs, mask=in_n, other=-2).to(tl.int64)
    real = ((p >= 0) | (offs == 0)) & in_n
    has_child = tl.sum(((p[None, :] == offs[:, None]) & in_n[None, :]).to(tl.int32), axis=1) > 0
    leaf = real & (has_child == 0)
    is_leaf = tl.sum(tl.where(offs == i, leaf.to(tl.int32), 0)) > 0
    if is_leaf:
        slot = tl.sum((leaf & (offs < i)).to(tl.int64))
        base = ret_ptr + (b * NL + slot) * L
        k = i
        d = depth
        while d >= 0:
            tl.store(base + d, k)
            k = tl.load(prow + tl.maximum(k, 0)).to(tl.int64)
            d -= 1


def tree_buffers(parents: torch.Tensor, prefix_len: torch.Tensor) -> TreeBuffers:
    """``ck.tree_buffers`` on validated ``parents [B,N] int32`` and ``prefix_len [B] int64``."""
    B, N = parents.shape
    dev = parents.device
    W = (N + 31) // 32
    parents = parents.to(torch.int32).contiguous()
    p = parents.to(torch.int64)
    # retrieve's shape only (host): leaf count and max depth
    has_child = torch.zeros(B, N + 1, dtype=torch.bool, device=dev)
    has_child.scatter_(1, torch.where(p >= 0, p, N), True)
    real = p >= 0
    real[:, 0] = True
    n_leaves = int((real & ~has_child[:, :N]).sum(1).max())
    L = int(depths(parents).max()) + 1
    mask = torch.empty(B, N, N, dtype=torch.int8, device=dev)
    packed = torch.empty(B, N, W, dtype=torch.int32, device=dev)
    pos = torch.empty(B, N, dtype=torch.int64, device=dev)
    retrieve = torch.full((B, n_leaves, L), -1, dtype=torch.int64, device=dev)
    BLOCK_N = max(2, triton.next_power_of_2(N))
    _tree_buffers_kernel[(B * N,)](parents, prefix_len.to(torch.int64).contiguous(), mask, packed, pos, retrieve,
                                   N, W, n_leaves, L, BLOCK_N=BLOCK_N)
    return TreeBuffers(mask.view(torch.bool), pos, retrieve, packed)
