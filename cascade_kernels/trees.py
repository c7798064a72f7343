"""Draft trees (SPEC §1): EAGLE-style choice lists, parents arrays, LANTERN neighbour tables."""
from typing import List, Sequence

import torch

# EAGLE-1's default static tree (`mc_sim_7b_63`): 25 draft nodes + the root = 26 nodes.
MC_SIM_7B_63 = [
    [0], [1], [2], [3], [0, 0], [0, 1], [0, 2], [1, 0], [1, 1], [2, 0], [2, 1], [3, 0],
    [0, 0, 0], [0, 0, 1], [0, 0, 2], [0, 1, 0], [0, 1, 1], [0, 2, 0], [0, 2, 1], [1, 0, 0],
    [0, 0, 0, 0], [0, 0, 0, 1], [0, 0, 0, 2], [0, 0, 0, 0, 0], [0, 0, 0, 0, 1],
]

# A deeper static tree for image models (7 draft levels, 59 draft nodes + root = 60), in the spirit
# of LANTERN++'s deeper static trees: wide near the root, a main trunk with two side branches below.
# LANTERN++'s exact published list is not available offline; this is our own.
DEEP_CHOICES = (
    [[i] for i in range(8)]
    + [[i, j] for i in range(4) for j in range(4 if i < 2 else 2)]
    + [[0, 0, j] for j in range(4)] + [[0, 1, j] for j in range(3)] + [[1, 0, j] for j in range(3)]
    + [[0, 2, j] for j in range(2)] + [[1, 1, j] for j in range(2)] + [[2, 0, j] for j in range(2)]
    + [[0, 0, 0, j] for j in range(3)] + [[1, 0, 0, j] for j in range(2)] + [[0, 1, 1, 0]] + [[0, 0, 1, j] for j in range(2)] + [[0, 1, 0, j] for j in range(2)]
    + [[0, 0, 0, 0, j] for j in range(3)] + [[0, 0, 0, 1, j] for j in range(2)]
    + [[0, 0, 0, 0, 0, j] for j in range(3)] + [[0, 0, 0, 0, 1, j] for j in range(2)]
    + [[0, 0, 0, 0, 0, 0, j] for j in range(2)] + [[0, 0, 0, 0, 0, 1, 0]]
)


def tree_from_choices(choices: Sequence[Sequence[int]]) -> torch.Tensor:
    """EAGLE-style choice list -> ``parents [N] int32`` (node 0 = root, SPEC §1).

    Choices are ordered as EAGLE orders them (by length, then lexicographically), so the children
    of a node come in increasing rank. Every proper prefix of a choice must itself be a choice.
    """
    paths = [tuple(int(r) for r in c) for c in choices]
    if any(len(p) == 0 or min(p) < 0 for p in paths):
        raise ValueError("choices: every entry must be a non-empty path of non-negative child ranks")
    if len(set(paths)) != len(paths):
        raise ValueError("choices: duplicate path")
    paths.sort(key=lambda p: (len(p), p))
    index = {(): 0}
    parents = [-1]
    for n, p in enumerate(paths, start=1):
        if p[:-1] not in index:
            raise ValueError(f"choices: the prefix {list(p[:-1])} of {list(p)} is missing")
        index[p] = n
        parents.append(index[p[:-1]])
    return torch.tensor(parents, dtype=torch.int32)


def depths(parents: torch.Tensor) -> torch.Tensor:
    """Depth of every node of ``parents [B, N]`` (padding nodes get 0); assumes a valid tree."""
    p = parents.to(torch.int64)
    d = torch.zeros_like(p)
    real = p >= 0
    for i in range(1, p.shape[-1]):
        par = p[..., i].clamp(min=0)
        d[..., i] = torch.where(real[..., i], d.gather(-1, par.unsqueeze(-1)).squeeze(-1) + 1, 0)
    return d


def children_lists(parents_row: Sequence[int]) -> List[List[int]]:
    """Children of every node of one tree, in increasing node index (the drafter's rank order)."""
    kids: List[List[int]] = [[] for _ in parents_row]
    for i, par in enumerate(parents_row):
        if i > 0 and par >= 0:
            kids[par].append(i)
    return kids


def lantern_neighbors(codebook: torch.Tensor, k: int, chunk: int = 1024) -> torch.Tensor:
    """``[V, k]`` int64: each code's ``k`` nearest other codes by Euclidean distance (LANTERN).

    Nearest first, ties toward the lower id, the code itself excluded. Computed in row chunks so
    memory stays O(chunk * V).
    """
    if codebook.dim() != 2 or not codebook.is_floating_point():
        raise ValueError(f"codebook must be a float tensor [V, d], got {tuple(codebook.shape)} {codebook.dtype}")
    V = codebook.shape[0]
    if not (isinstance(k, int) and 0 <= k < V):
        raise ValueError(f"k must be an int in [0, V-1={V - 1}], got {k!r}")
    cb = codebook.to(torch.float64)
    sq = (cb * cb).sum(1)
    out = torch.empty(V, k, dtype=torch.int64, device=codebook.device)
    ids = torch.arange(V, device=codebook.device)
    for start in range(0, V, chunk):
        rows = slice(start, min(V, start + chunk))
        d2 = sq[rows, None] + sq[None, :] - 2.0 * cb[rows] @ cb.T
        d2[torch.arange(d2.shape[0]), ids[rows]] = float("inf")
        order = torch.sort(d2, dim=1, stable=True).indices
        out[rows] = order[:, :k]
    return out
