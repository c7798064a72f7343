"""``ck.tree_buffers``: attention mask, position ids, root-to-leaf paths and packed mask of draft trees."""
import torch

from ... import _backend
from ...trees import Tree, prepare_tree
from ...types import TreeBuffers
from ...validation import check_number


def tree_buffers(parents, prefix_len=0, *, max_depth=None, backend="auto") -> TreeBuffers:
    """Buffers of docs/CONTRACT.md §1 for a tree or a batch of trees.

    ``parents``: a ``ck.Tree``, or ``[N]`` / ``[B, N]`` integer parents (prepared and cached). ``prefix_len``:
    an int or an integer tensor ``[B]``. ``max_depth`` rejects deeper trees. ``backend="auto"`` returns the
    buffers the prepared tree already holds (computed once); ``"reference"`` / ``"triton"`` recompute them.
    A 1-D ``parents`` gives outputs without the batch dimension.
    """
    was_1d = isinstance(parents, torch.Tensor) and parents.dim() == 1
    tree = prepare_tree(parents)
    T = tree.batch
    if max_depth is not None:
        check_number(max_depth, "max_depth", lo=0, integer=True)
        if tree.max_depth > max_depth:
            raise ValueError(f"parents: tree depth {tree.max_depth} exceeds max_depth = {max_depth}")
    prefix = _prefix(prefix_len, T, tree)
    if backend == "auto":
        out = TreeBuffers(tree.mask, prefix.unsqueeze(-1) + tree.depth, tree.retrieve, tree.packed_mask)
    else:
        _, impl = _backend.resolve("tree_buffers", backend, tree.device)
        out = impl(tree.parents, prefix)
    if was_1d:
        out = TreeBuffers(*(t[0] for t in out))
    return out


def _prefix(prefix_len, T: int, tree: Tree) -> torch.Tensor:
    """``prefix_len`` as int64 ``[T]`` on the tree's device (int64 overflow of prefix + depth rejected)."""
    limit = 2**63 - 1 - tree.max_depth
    if isinstance(prefix_len, torch.Tensor):
        if prefix_len.dtype.is_floating_point or prefix_len.dtype == torch.bool or prefix_len.dim() > 1 \
                or prefix_len.numel() not in (1, T):
            raise ValueError(f"prefix_len must be an int or an integer tensor [B={T}], got "
                             f"{prefix_len.dtype} {tuple(prefix_len.shape)}")
        prefix = prefix_len.to(device=tree.device, dtype=torch.int64).reshape(-1).expand(T).contiguous()
        if bool(((prefix < 0) | (prefix > limit)).any()):
            raise ValueError(f"prefix_len must be in [0, 2**63 - 1 - max_depth = {limit}]")
        return prefix
    check_number(prefix_len, "prefix_len", lo=0, hi=limit, integer=True)
    return torch.full((T,), int(prefix_len), dtype=torch.int64, device=tree.device)
