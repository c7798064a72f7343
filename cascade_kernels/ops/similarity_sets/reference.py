"""Reference CASCADE similarity sets (docs/CONTRACT.md §4): the plain PyTorch statement."""
import torch

from ...types import SimilaritySets, pack_bits


def cosine_matrix(hidden: torch.Tensor) -> torch.Tensor:
    """[B, N, N] float32 cosines ``dot / max(|a||b|, 1e-12)``."""
    h = hidden.float()
    norms = h.norm(dim=-1)
    dots = h @ h.transpose(-1, -2)
    return dots / torch.clamp(norms.unsqueeze(-1) * norms.unsqueeze(-2), min=1e-12)


def similarity_sets(parents: torch.Tensor, hidden: torch.Tensor, tau_pos: float, tau_seq: float) -> SimilaritySets:
    """Reference ``ck.similarity_sets`` on validated inputs (padding nodes belong to no set)."""
    B, N = parents.shape
    p = parents.to(torch.int64)
    real = p >= 0
    cos = cosine_matrix(hidden)
    idx = torch.arange(N, device=parents.device)
    sibling = (p.unsqueeze(-1) == p.unsqueeze(-2)) & real.unsqueeze(-1) & real.unsqueeze(-2)
    sibling &= idx.unsqueeze(-1) != idx.unsqueeze(-2)
    child = (p.unsqueeze(-2) == idx.view(1, N, 1)) & real.unsqueeze(-2)  # child[b, i, j]: parent(j) == i
    inter = sibling & (cos >= tau_pos)
    conv = child & (cos >= tau_seq)
    return SimilaritySets(inter, conv, pack_bits(inter), pack_bits(conv))
