"""``ck.similarity_sets``: CASCADE's interchangeable-sibling and convergent-child sets."""
from typing import Tuple

import torch

from ... import _backend
from ...trees import Tree, prepare_tree
from ...types import SimilaritySets
from ...validation import FLOAT_DTYPES, check_number, check_tensor


def similarity_sets(parents, hidden, tau_pos=0.85, tau_seq=0.5, *, backend="auto") -> SimilaritySets:
    """Siblings with cos >= tau_pos and children with cos >= tau_seq of every node (docs/CONTRACT.md §4),
    as bool [B,N,N] and packed int32 [B,N,ceil(N/32)]. ``parents``: a ``ck.Tree`` or [N] / [B, N] ints."""
    hidden = check_tensor(hidden, "hidden", ndim=3, dtypes=FLOAT_DTYPES + (torch.float64,))
    if torch.compiler.is_compiling() and not isinstance(parents, Tree):
        raise TypeError("under torch.compile, pass parents as a ck.prepare_tree(...) result")
    tree = prepare_tree(parents, device=hidden.device)
    B, N, D = hidden.shape
    if N != tree.num_nodes or tree.batch not in (1, B) or D == 0:
        raise ValueError(f"hidden must have shape [B, N, D>0] matching parents {(tree.batch, tree.num_nodes)}, "
                         f"got {tuple(hidden.shape)}")
    check_number(tau_pos, "tau_pos")
    check_number(tau_seq, "tau_seq")
    if torch.compiler.is_compiling():
        return SimilaritySets(*_similarity_op(tree.expand(B).contiguous(), hidden.contiguous(), float(tau_pos),
                                              float(tau_seq), backend))
    _, impl = _backend.resolve("similarity_sets", backend, hidden.device)
    return impl(tree.expand(B).contiguous(), hidden.detach().contiguous(), float(tau_pos), float(tau_seq))


@torch.library.custom_op("cascade_kernels::similarity_sets", mutates_args=())
def _similarity_op(parents: torch.Tensor, hidden: torch.Tensor, tau_pos: float, tau_seq: float,
                   backend: str) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    _, impl = _backend.resolve("similarity_sets", backend, hidden.device)
    return tuple(t.clone() for t in impl(parents, hidden, tau_pos, tau_seq))


@_similarity_op.register_fake
def _(parents, hidden, tau_pos, tau_seq, backend):
    B, N, _ = hidden.shape
    W = (N + 31) // 32
    new = hidden.new_empty
    return (new((B, N, N), dtype=torch.bool), new((B, N, N), dtype=torch.bool), new((B, N, W), dtype=torch.int32),
            new((B, N, W), dtype=torch.int32))
