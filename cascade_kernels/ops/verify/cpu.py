"""``backend="cpu"``: the compiled C++ walk (``cascade_kernels._C``, built from ``csrc/``).

No torch C++ headers: every tensor goes to C++ as its address (``data_ptr()``) with shapes and dtype
codes (``codes.DTYPES``), zero-copy; the outputs are the caller's tensors, written in place. OpenMP
spreads the sequences over ``torch.get_num_threads()`` threads (one when the batch is a single sequence).

Two entries: :func:`verify` is the backend of the general path (``api.verify`` checked and normalised the
arguments), and ``_C.verify_call`` (reached as ``verify.call``) is the whole ``ck.verify`` call for the common
case, which ``api.verify`` tries first once this backend serves CPU tensors. It *recognises* arguments that are
already in the general path's normal form (CPU tensors of the plain tensor type, contiguous, int64 tokens, a
prepared tree (``Tree.whole_call``), a method packed by an earlier call without a reference-only option
(``HostParams.whole_call``), plain Python scalars in range, no CFG, no drafter logits) and returns None for
anything else, which then takes the general path (whose errors name the argument). A decode step reaches it
with cold caches, where each Python-level operation costs about a cache miss, so it is one C function
(csrc/bindings.cpp): it reads the Python objects with C calls and each tensor with one call of torch's DLPack
C exchange API (data, device, dtype, shape, strides), and runs the walk only when all of them are in form. What it
reads from the tree and the method (a dozen attribute lookups) it keeps for the last few (tree, method) pairs,
keyed by weak references and used only while the tree's ``whole_call`` and the method's packed form are the
objects it was read from. It never raises for a call it declines and never accepts what the general path would
reject; tests/test_call_path.py fuzzes the two paths against each other.
"""
import torch
from torch import Tensor, get_num_threads

from ... import _C
from ...codes import DTYPES
from ...methods import Method, PackedMethod
from ...trees import Tree
from ...types import VerifyArgs, VerifyOutput
from ...validation import DRAFT_SAMPLINGS

_DTYPE_CODE = {getattr(torch, name): code for name, code in DTYPES.items()}
_CPU = torch.device("cpu")


def verify(args: VerifyArgs, out: VerifyOutput) -> None:
    """Fill ``out`` with the C++ walk over every sequence of ``args`` (validated CPU tensors)."""
    tokens, tree, logits, draft, hidden, m, transport, eps, temperature, top_k, top_p, cfg_scale, seed = args[:13]
    B, N = tokens.shape
    nb = m.neighbors
    _C.verify(
        B, N, logits.shape[2], tree.max_depth + 1, tokens.data_ptr(), tree.host_parents_ptr,
        0 if tree.batch == 1 else N, logits.data_ptr(), _DTYPE_CODE[logits.dtype], cfg_scale is not None,
        cfg_scale or 0.0, 0 if draft is None else draft.data_ptr(), 0 if draft is None else _DTYPE_CODE[draft.dtype],
        0 if hidden is None else hidden.data_ptr(), 0 if hidden is None else _DTYPE_CODE[hidden.dtype],
        0 if hidden is None else hidden.shape[2], m.code, m.host.ints_ptr, m.host.floats_ptr,
        0 if nb is None or nb.numel() == 0 else nb.data_ptr(), 0 if nb is None else nb.shape[1], transport,
        eps, temperature, top_k, top_p, seed.data_ptr(), out.accept_len.data_ptr(),
        out.accepted_nodes.data_ptr(), out.next_token.data_ptr(), out.tvd.data_ptr(), out.status.data_ptr(),
        1 if B == 1 else get_num_threads())


def _new_outputs(B: int, L: int) -> VerifyOutput:
    return VerifyOutput.empty(B, L, _CPU, "cpu")


def _as_cpu(out: VerifyOutput) -> VerifyOutput:
    return out._replace(backend="cpu")


def _declines(*args) -> None:
    return None


# torch's DLPack C exchange API (torch >= 2.9): without it the whole-call entry is not used
_ENTRY = hasattr(torch._C, "_dlpack_exchange_api") and _C.set_call_entry(
    torch._C._dlpack_exchange_api(), Tensor, Tree, Method, PackedMethod, VerifyOutput, _new_outputs, _as_cpu,
    get_num_threads, DRAFT_SAMPLINGS)
verify.call = _C.verify_call if _ENTRY else _declines  # how api.verify reaches it from the resolved backend
