"""``ck.similarity_sets``: CASCADE's interchangeable-sibling and convergent-child sets."""
from ... import _backend
from ...trees import prepare_tree
from ...types import SimilaritySets
from ...validation import FLOAT_DTYPES, check_number, check_tensor

import torch


def similarity_sets(parents, hidden, tau_pos=0.85, tau_seq=0.5, *, backend="auto") -> SimilaritySets:
    """Siblings with cos >= tau_pos and children with cos >= tau_seq of every node (docs/CONTRACT.md §4),
    as bool [B,N,N] and packed int32 [B,N,ceil(N/32)]. ``parents``: a ``ck.Tree`` or [N] / [B, N] ints."""
    hidden = check_tensor(hidden, "hidden", ndim=3, dtypes=FLOAT_DTYPES + (torch.float64,))
    tree = prepare_tree(parents, device=hidden.device)
    B, N, D = hidden.shape
    if N != tree.num_nodes or tree.batch not in (1, B) or D == 0:
        raise ValueError(f"hidden must have shape [B, N, D>0] matching parents {(tree.batch, tree.num_nodes)}, "
                         f"got {tuple(hidden.shape)}")
    check_number(tau_pos, "tau_pos")
    check_number(tau_seq, "tau_seq")
    _, impl = _backend.resolve("similarity_sets", backend, hidden.device)
    return impl(tree.expand(B).contiguous(), hidden.detach().contiguous(), float(tau_pos), float(tau_seq))
