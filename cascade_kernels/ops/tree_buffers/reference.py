"""Reference tree buffers (docs/CONTRACT.md §1): mask, position ids, root-to-leaf paths, packed mask."""
import torch

from ...trees import depths
from ...types import TreeBuffers, pack_bits


def ancestor_mask(parents: torch.Tensor) -> torch.Tensor:
    """[B, N, N] bool: j is an ancestor of i or j == i; a padding node sees only itself."""
    B, N = parents.shape
    p = parents.to(torch.int64)
    mask = torch.eye(N, dtype=torch.bool, device=parents.device).expand(B, N, N).clone()
    for i in range(1, N):
        par = p[:, i]
        real = par >= 0
        rows = mask[torch.arange(B, device=p.device), par.clamp(min=0)]
        mask[:, i] |= rows & real.unsqueeze(-1)
    return mask


def tree_buffers(parents: torch.Tensor, prefix_len: torch.Tensor) -> TreeBuffers:
    """Reference ``ck.tree_buffers`` on validated ``parents [B, N]`` and ``prefix_len [B]``."""
    B, N = parents.shape
    mask = ancestor_mask(parents)
    depth = depths(parents)
    position_ids = prefix_len.to(torch.int64).unsqueeze(-1) + depth
    p = parents.to(torch.int64)
    real = (p >= 0)
    real[:, 0] = True
    has_child = torch.zeros(B, N, dtype=torch.bool, device=parents.device)
    for i in range(1, N):
        par = p[:, i]
        ok = par >= 0
        has_child[ok, par[ok]] = True
    leaf = real & ~has_child
    n_leaves = int(leaf.sum(1).max())
    L = int(depth.max()) + 1
    retrieve = torch.full((B, n_leaves, L), -1, dtype=torch.int64, device=parents.device)
    for b in range(B):
        for slot, leaf_node in enumerate(torch.nonzero(leaf[b]).flatten().tolist()):
            path = torch.nonzero(mask[b, leaf_node]).flatten()  # ancestors are in depth order
            retrieve[b, slot, : path.numel()] = path
    return TreeBuffers(mask, position_ids, retrieve, pack_bits(mask))
