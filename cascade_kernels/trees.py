"""Draft trees (docs/CONTRACT.md §1): named trees, choice lists, the prepared ``Tree``, LANTERN neighbours.

``prepare_tree(parents)`` validates a tree's structure once and precomputes what the backends and
``tree_buffers`` read (depths, children as CSR and as first-child / next-sibling links, the ancestor
mask and the root-to-leaf paths), on the target device. ``ck.verify``, ``ck.tree_buffers`` and
``ck.similarity_sets`` take a ``Tree`` wherever they take ``parents``; raw ``parents`` are prepared
through a small cache keyed by the tensor object and its version counter, so an in-place edit of a
reused buffer (as dynamic-tree code does) is seen, and a static tree passed again costs a lookup.
"""
import collections
import functools
import operator
import weakref
from typing import List, Sequence

import numpy as np
import torch

# EAGLE-1's default static tree (`mc_sim_7b_63`): 25 draft nodes + the root = 26 nodes.
MC_SIM_7B_63 = [
    [0], [1], [2], [3], [0, 0], [0, 1], [0, 2], [1, 0], [1, 1], [2, 0], [2, 1], [3, 0],
    [0, 0, 0], [0, 0, 1], [0, 0, 2], [0, 1, 0], [0, 1, 1], [0, 2, 0], [0, 2, 1], [1, 0, 0],
    [0, 0, 0, 0], [0, 0, 0, 1], [0, 0, 0, 2], [0, 0, 0, 0, 0], [0, 0, 0, 0, 1],
]

# A deeper static tree for image models (7 draft levels, 59 draft nodes + root = 60): wide near the
# root, a main trunk with two side branches below. Our own; LANTERN's published trees are below.
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


# A small static tree for compute-bound CPU decoding: a depth-4 trunk with one alternative per level 1-2.
SMALL_CHOICES = [[0], [1], [0, 0], [0, 1], [0, 0, 0], [0, 0, 0, 0]]

# LANTERN's published static trees, copied as data from jadohu/LANTERN, commit
# 3a56e451dd5ebfa1903d044f754c68c420de27a9 ("Initial Release"), models/drafters/choices.py
# (tests/test_methods_fidelity.py checks them against that file when CK_PEERS_DIR holds it).
# ``naive_extend_57`` is the default tree of its EaModel.generate (models/ea_model_llamagen.py); its
# image-generation entry point (entrypoints/generate_images.py) defaults to ``mc_sim_7b_63`` (== MC_SIM_7B_63).
LANTERN_NAIVE_EXTEND_57 = [
    [0], [1], [2], [3], [4],
    [0, 0], [0, 1], [0, 2], [0, 3], [1, 0], [1, 1], [1, 2], [2, 0], [2, 1], [2, 2], [3, 0], [3, 1], [4, 0],
    [0, 0, 0], [0, 0, 1], [0, 0, 2], [0, 0, 3], [0, 1, 0], [0, 1, 1], [0, 1, 2], [0, 2, 0], [0, 2, 1], [0, 2, 2],
    [0, 3, 0], [0, 3, 1], [1, 0, 0], [1, 0, 1], [1, 1, 0], [2, 0, 0],
    [0, 0, 0, 0], [0, 0, 0, 1], [0, 0, 0, 2], [0, 0, 0, 3], [0, 0, 1, 0], [0, 0, 1, 1], [0, 0, 1, 2],
    [0, 0, 2, 0], [0, 0, 2, 1], [0, 0, 3, 0], [0, 1, 0, 0], [0, 1, 0, 1], [0, 1, 1, 0], [0, 2, 0, 0],
    [0, 0, 0, 0, 0], [0, 0, 0, 0, 1], [0, 0, 0, 0, 2], [0, 0, 0, 1, 0], [0, 0, 0, 1, 1], [0, 0, 1, 0, 0],
    [0, 0, 1, 0, 1], [0, 0, 1, 1, 0], [0, 0, 2, 0, 0],
]
LANTERN_MC_SIM_7B_63_BALANCED = [
    [0], [1], [2],
    [0, 0], [0, 1], [0, 2], [1, 0], [1, 1], [1, 2], [2, 0], [2, 1],
    [0, 0, 0], [0, 0, 1], [0, 0, 2], [0, 1, 0], [0, 1, 1], [1, 0, 0], [1, 0, 1], [1, 1, 0], [1, 1, 1],
    [0, 0, 0, 0], [0, 0, 0, 1], [0, 0, 0, 2], [0, 0, 0, 0, 0], [0, 0, 0, 0, 1],
]
LANTERN_MEDUSA_2_7B_63 = [
    [0], [1], [2], [3], [4], [5], [6], [7], [8], [9],
    [0, 0], [0, 1], [0, 2], [0, 3], [0, 4], [0, 5], [0, 6], [0, 7], [0, 8], [0, 9], [1, 0], [1, 1], [1, 2], [1, 3],
    [1, 4], [2, 0], [2, 1], [3, 0], [3, 1], [4, 0], [5, 0], [6, 0], [7, 0],
    [0, 0, 0], [0, 0, 1], [0, 0, 2], [0, 0, 3], [0, 0, 4], [0, 0, 5], [0, 0, 6], [0, 0, 7], [0, 0, 8], [0, 1, 0],
    [0, 1, 1], [0, 1, 2], [0, 1, 3], [0, 2, 0], [0, 2, 1], [0, 3, 0], [0, 4, 0], [0, 5, 0],
    [1, 0, 0], [1, 0, 1], [1, 0, 2], [1, 1, 0], [2, 0, 0],
    [0, 0, 0, 0], [0, 0, 0, 1], [0, 0, 0, 2], [0, 0, 0, 3], [0, 0, 1, 0], [0, 0, 2, 0], [0, 1, 0, 0],
]
LANTERN_REVERSE_BALANCED_25 = [
    [0], [1], [2],
    [0, 0], [0, 1], [1, 0], [2, 0],
    [0, 0, 0], [0, 0, 1], [0, 0, 2], [0, 1, 0], [0, 1, 1], [1, 0, 0],
    [0, 0, 0, 0], [0, 0, 0, 1], [0, 0, 0, 2], [0, 0, 1, 0], [0, 0, 1, 1],
    [0, 0, 0, 0, 0], [0, 0, 0, 0, 1], [0, 0, 0, 0, 2], [0, 0, 0, 0, 3], [0, 0, 0, 1, 0], [0, 0, 0, 1, 1],
    [0, 0, 0, 1, 2],
]
LANTERN_CHAIN = [[0], [0, 0], [0, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0, 0]]

NAMED_TREES = {"eagle": MC_SIM_7B_63, "deep": DEEP_CHOICES, "small": SMALL_CHOICES,
               "lantern_naive_extend_57": LANTERN_NAIVE_EXTEND_57, "lantern_mc_sim_7b_63": MC_SIM_7B_63,
               "lantern_mc_sim_7b_63_balanced": LANTERN_MC_SIM_7B_63_BALANCED,
               "lantern_medusa_2_7b_63": LANTERN_MEDUSA_2_7B_63,
               "lantern_reverse_balanced_25": LANTERN_REVERSE_BALANCED_25, "lantern_chain": LANTERN_CHAIN}


def named_tree(name: str):
    """The choice list of a named static tree (``ck.NAMED_TREES``); unknown names are rejected by name."""
    if not isinstance(name, str) or name not in NAMED_TREES:
        raise ValueError(f"tree must be one of {sorted(NAMED_TREES)} (or a choice list / parents tensor), "
                         f"got {name!r}")
    return NAMED_TREES[name]


def tree_from_choices(choices: Sequence[Sequence[int]]) -> torch.Tensor:
    """EAGLE-style choice list -> ``parents [N] int32`` (node 0 = root, CONTRACT §1).

    Choices are ordered as EAGLE orders them (by length, then lexicographically), so the children
    of a node come in increasing rank. Every proper prefix of a choice must itself be a choice.
    """
    if isinstance(choices, str):
        choices = named_tree(choices)
    try:
        paths = [tuple(operator.index(r) for r in c) for c in choices]
    except TypeError as exc:
        raise TypeError(f"choices: a choice list is a list of paths of int child ranks, e.g. [[0], [1], [0, 0]] "
                        f"({exc})") from None
    if not paths:
        raise ValueError("choices: the tree must have at least one drafted node (an empty choice list)")
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


INT_DTYPES = (torch.int64, torch.int32, torch.int16, torch.int8, torch.uint8)


class Tree:
    """A validated tree (or batch of trees) with everything the backends read, on one device.

    ``parents [T, N]`` int32 with ``T`` = 1 (one tree shared by any batch) or the batch size.
    ``depth [T, N]`` int64 (padding nodes 0), ``first_child`` / ``next_sibling`` ``[T, N]`` int32 (-1 = none),
    ``child_start [T, N+1]`` / ``child_list [T, N]`` int32 (CSR: children of u are
    ``child_list[child_start[u]:child_start[u+1]]``, in increasing node index = sibling order),
    ``max_depth`` (int), ``host_parents_ptr`` (the address of the int32 parents in host memory, which the C++
    backend reads; on the CPU ``parents`` is that memory), ``whole_call`` (``(batch, num_nodes, max_depth + 1,
    host_parents_ptr)`` for a tree on the CPU, which the C++ backend's whole-call entry reads; None elsewhere).
    ``mask``, ``packed_mask`` and ``retrieve`` (see ``ck.TreeBuffers``) are made on first use (by the
    reference ``tree_buffers`` op). Build it with :func:`prepare_tree`.
    """

    def __init__(self, parents_np: np.ndarray, device: torch.device):
        T, N = parents_np.shape
        self.batch, self.num_nodes, self.device = T, N, device
        depth = depths(torch.as_tensor(parents_np)).numpy()
        first = np.full((T, N), -1, dtype=np.int32)
        nxt = np.full((T, N), -1, dtype=np.int32)
        last = np.full((T, N), -1, dtype=np.int64)
        count = np.zeros((T, N), dtype=np.int32)
        rows = np.arange(T)
        for i in range(1, N):
            par = parents_np[:, i]
            real = par >= 0
            r, pr = rows[real], par[real]
            no_first = first[r, pr] < 0
            first[r[no_first], pr[no_first]] = i
            has_prev = last[r, pr] >= 0
            nxt[r[has_prev], last[r[has_prev], pr[has_prev]]] = i
            last[r, pr] = i
            count[r, pr] += 1
        start = np.zeros((T, N + 1), dtype=np.int32)
        start[:, 1:] = np.cumsum(count, axis=1)
        # children grouped by parent, in increasing node index (non-children sort to the end)
        order = np.argsort(np.where(parents_np >= 0, parents_np, N).astype(np.int64) * N + np.arange(N), axis=1,
                           kind="stable")
        self.max_depth = int(depth.max())
        self._np_parents = parents_np
        to = functools.partial(torch.as_tensor, device=device)
        host = np.ascontiguousarray(parents_np, dtype=np.int32)
        self._host_parents = host  # what the C++ backend reads, by address (kept alive here)
        self.host_parents_ptr = host.ctypes.data
        self.whole_call = (T, N, self.max_depth + 1, self.host_parents_ptr) if device == torch.device("cpu") else None
        self.parents = to(host)
        self.depth = to(depth)
        self.first_child = to(first)
        self.next_sibling = to(nxt)
        self.child_start = to(start)
        self.child_list = to(order.astype(np.int32))
        self._csr = (start, order)

    @functools.cached_property
    def children(self) -> List[List[List[int]]]:
        """Python lists: ``children[t][u]`` = children of node u of tree t, in sibling order."""
        start, order = self._csr
        return [[order[t, start[t, u]:start[t, u + 1]].tolist() for u in range(self.num_nodes)]
                for t in range(self.batch)]

    def expand(self, B: int) -> torch.Tensor:
        """``parents`` as ``[B, N]`` (a view when one tree serves the batch)."""
        return self.parents.expand(B, self.num_nodes)

    @functools.cached_property
    def _buffers(self):
        from .ops.tree_buffers.reference import tree_buffers

        bufs = tree_buffers(torch.as_tensor(self._np_parents), torch.zeros(self.batch, dtype=torch.int64))
        return type(bufs)(*(t.to(self.device) for t in bufs))

    @property
    def mask(self) -> torch.Tensor:
        """[T, N, N] bool: j is an ancestor of i or j == i (a padding node sees only itself)."""
        return self._buffers.mask

    @property
    def packed_mask(self) -> torch.Tensor:
        """[T, N, ceil(N/32)] int32: the mask's bits."""
        return self._buffers.packed_mask

    @property
    def retrieve(self) -> torch.Tensor:
        """[T, n_leaves, max_depth + 1] int64 root-to-leaf node paths, -1 padded."""
        return self._buffers.retrieve

    def __repr__(self):
        return f"Tree(batch={self.batch}, num_nodes={self.num_nodes}, max_depth={self.max_depth}, device={self.device})"


def _validated(parents, name: str) -> np.ndarray:
    """The tree rules of docs/CONTRACT.md §1 on ``[T, N]`` integer parents; returns int64 numpy."""
    if not isinstance(parents, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor or a ck.Tree, got {type(parents).__name__}")
    if parents.dim() == 1:
        parents = parents.unsqueeze(0)
    if parents.dim() != 2:
        raise ValueError(f"{name} must have shape [N] or [B, N], got {tuple(parents.shape)}")
    if parents.dtype not in INT_DTYPES:
        raise TypeError(f"{name} must have an integer dtype, got {parents.dtype}")
    if parents.device.type == "meta":
        raise ValueError(f"{name} is on the meta device; a tree's structure needs its values")
    T, N = parents.shape
    if T == 0:
        raise ValueError(f"{name} must hold at least one tree (B >= 1), got shape {tuple(parents.shape)}")
    if N == 0:
        raise ValueError(f"{name} must hold at least the root (N >= 1), got N = 0")
    if N >= 2**31 - 1:
        raise ValueError(f"{name}: N = {N} overflows int32 node indices")
    p = parents.detach().to("cpu", torch.int64).numpy()
    if (p[:, 0] != -1).any():
        raise ValueError(f"{name}[:, 0] must be -1 (the root has no parent)")
    bad = (p < -1) | (p >= np.arange(N))
    if bad.any():
        b, i = np.argwhere(bad)[0]
        raise ValueError(f"{name}[{b}, {i}] = {p[b, i]} is not topological: a parent must be -1 or an earlier "
                         f"node (a cycle or forward edge)")
    real = p >= 0
    real[:, 0] = True
    par_real = np.take_along_axis(real, np.maximum(p, 0), axis=1)
    bad = (p >= 0) & ~par_real
    if bad.any():
        b, i = np.argwhere(bad)[0]
        raise ValueError(f"{name}[{b}, {i}]: node's parent {p[b, i]} is a padding node")
    return p


_CACHE_SIZE = 64
_cache: "collections.OrderedDict[int, tuple]" = collections.OrderedDict()


def prepare_tree(parents, *, device=None, name: str = "parents") -> Tree:
    """Validate ``parents`` ([N] or [B, N] ints, a choice list, a tree name, or a ``Tree``) once.

    Returns a :class:`Tree` on ``device`` (default: the tensor's device, CPU for names and lists).
    Raw tensors are cached by object identity and version counter: passing the same unmodified
    tensor again returns the same ``Tree`` without reading its values.
    """
    if isinstance(parents, Tree):  # (device == parents.device first: making a torch.device costs ~0.4 us)
        if device is not None and device != parents.device and torch.device(device) != parents.device:
            return prepare_tree(parents.parents, device=device, name=name)
        return parents
    if isinstance(parents, (str, list, tuple)):
        try:
            parents = tree_from_choices(parents)
        except (TypeError, ValueError) as exc:
            raise type(exc)(f"{name}: {exc}") from None
    if not isinstance(parents, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, a ck.Tree, a choice list or a tree name, "
                        f"got {type(parents).__name__}")
    device = parents.device if device is None else torch.device(device)
    key = id(parents)
    hit = _cache.get(key)
    if hit is not None:
        ref, version, dev, tree = hit
        if ref() is parents and version == parents._version and dev == device:
            _cache.move_to_end(key)
            return tree
    tree = Tree(_validated(parents, name), device)
    _cache[key] = (weakref.ref(parents), parents._version, device, tree)
    while len(_cache) > _CACHE_SIZE:
        _cache.popitem(last=False)
    return tree


def depths(parents: torch.Tensor) -> torch.Tensor:
    """Depth of every node of ``parents [B, N]`` (padding nodes get 0); assumes a valid tree."""
    p = parents.to(torch.int64)
    d = torch.zeros_like(p)
    real = p >= 0
    for i in range(1, p.shape[-1]):
        par = p[..., i].clamp(min=0)
        d[..., i] = torch.where(real[..., i], d.gather(-1, par.unsqueeze(-1)).squeeze(-1) + 1, 0)
    return d


def lantern_neighbors(codebook: torch.Tensor, k: int, chunk: int = 1024) -> torch.Tensor:
    """``[V, k]`` int64: each code's ``k`` nearest other codes by Euclidean distance (LANTERN).

    Nearest first, ties toward the lower id, the code itself excluded. Computed in row chunks so
    memory stays O(chunk * V).
    """
    if codebook.dim() != 2 or not codebook.is_floating_point():
        raise ValueError(f"codebook must be a float tensor [V, d], got {tuple(codebook.shape)} {codebook.dtype}")
    if not bool(torch.isfinite(codebook).all()):
        raise ValueError("codebook holds NaN or inf entries: nearest neighbours are undefined")
    V = codebook.shape[0]
    if not (isinstance(k, int) and 0 <= k < V):
        raise ValueError(f"k must be an int in [0, V-1={V - 1}], got {k!r}")
    cb = codebook.to(torch.float64)
    sq = (cb * cb).sum(1)
    out = torch.empty(V, k, dtype=torch.int64, device=codebook.device)
    ids = torch.arange(V, device=codebook.device)
    for start in range(0, V, chunk):
        rows = slice(start, min(V, start + chunk))
        d2 = (sq[rows, None] + sq[None, :]).sub_(cb[rows] @ cb.T, alpha=2.0)
        d2[torch.arange(d2.shape[0]), ids[rows]] = float("inf")
        out[rows] = _k_smallest_stable(d2, k)
    return out


def _k_smallest_stable(d: torch.Tensor, k: int) -> torch.Tensor:
    """Column ids of the ``k`` smallest entries of each row of ``d`` (no NaN), smallest first, ties toward
    the lower id: the first ``k`` of a stable ascending sort, without sorting whole rows (a partial
    selection finds the k-th value; only the ``k`` kept entries are sorted)."""
    if k == 0:
        return torch.empty(d.shape[0], 0, dtype=torch.int64, device=d.device)
    kth = torch.topk(d, k, dim=1, largest=False, sorted=False).values.amax(1, keepdim=True)
    keep = d <= kth
    if bool((keep.sum(1) != k).any()):  # ties at the k-th value: keep the lowest ids among them
        below, tie = d < kth, d == kth
        keep = below | (tie & (tie.cumsum(1) <= k - below.sum(1, keepdim=True)))
    idx = keep.nonzero()[:, 1].view(-1, k)  # ascending ids within each row
    return idx.gather(1, torch.sort(d.gather(1, idx), dim=1, stable=True).indices)
