"""``backend="cpu"``: the compiled C++ walk (``cascade_kernels._C``, built from ``csrc/``).

No torch C++ headers: every tensor goes to C++ as its address (``data_ptr()``) with shapes and dtype
codes (``codes.DTYPES``), zero-copy; the outputs are the caller's tensors, written in place. OpenMP
spreads the sequences over ``torch.get_num_threads()`` threads (one when the batch is a single sequence).
"""
import torch
from torch import get_num_threads

from ... import _C
from ...codes import DTYPES
from ...types import VerifyArgs, VerifyOutput

_DTYPE_CODE = {getattr(torch, name): code for name, code in DTYPES.items()}


def verify(args: VerifyArgs, out: VerifyOutput) -> None:
    """Fill ``out`` with the C++ walk over every sequence of ``args`` (validated CPU tensors)."""
    tokens, tree, logits, draft, hidden, m, transport, eps, temperature, top_k, top_p, cfg_scale, seed = args[:13]
    B, N = tokens.shape
    nb = m.neighbors
    _C.verify(
        B, N, logits.shape[2], tree.max_depth + 1, tokens.data_ptr(), tree.parents.data_ptr(),
        0 if tree.batch == 1 else N, logits.data_ptr(), _DTYPE_CODE[logits.dtype], cfg_scale is not None,
        cfg_scale or 0.0, 0 if draft is None else draft.data_ptr(), 0 if draft is None else _DTYPE_CODE[draft.dtype],
        0 if hidden is None else hidden.data_ptr(), 0 if hidden is None else _DTYPE_CODE[hidden.dtype],
        0 if hidden is None else hidden.shape[2], m.code, m.iparams_cpu.data_ptr(), m.fparams_cpu.data_ptr(),
        0 if nb is None or nb.numel() == 0 else nb.data_ptr(), 0 if nb is None else nb.shape[1], transport,
        eps, temperature, top_k, top_p, seed.data_ptr(), out.accept_len.data_ptr(),
        out.accepted_nodes.data_ptr(), out.next_token.data_ptr(), out.tvd.data_ptr(), out.status.data_ptr(),
        1 if B == 1 else get_num_threads())
