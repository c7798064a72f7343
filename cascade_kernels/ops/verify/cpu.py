"""``backend="cpu"``: the compiled C++ walk (``cascade_kernels._C``, built from ``csrc/``).

No torch C++ headers: every tensor goes to C++ as its address (``data_ptr()``) with shapes and dtype
codes (``codes.DTYPES``), zero-copy; the outputs are the caller's tensors, written in place. OpenMP
spreads the sequences over ``torch.get_num_threads()`` threads (one when the batch is a single sequence).

Two entries: :func:`verify` is the backend of the general path (``api.verify`` checked and normalised the
arguments), and :func:`verify_call` (reached as ``verify.call``) is the whole ``ck.verify`` call for the
common case, which ``api.verify`` tries first once this backend serves CPU tensors. It *recognises*
arguments that are already in the general path's normal form (CPU tensors of the plain tensor type,
contiguous, int64 tokens, a prepared tree, a method packed by an earlier call, Python scalars in range,
no CFG, no drafter logits) and returns None for anything else, which then takes the general path (whose
errors name the argument). A decode step reaches it with cold caches, where each Python-level operation
costs about a cache miss, so the tensors are not read through torch's Python getters: ``_C.verify_call``
reads each with one call of torch's DLPack C exchange API (data, device, dtype, shape, strides) and runs
the walk only when all of them are in form. It never raises and never accepts what the general path
would reject; tests/test_call_path.py fuzzes the two paths against each other.
"""
import math

import torch
from torch import Tensor, get_num_threads

from ... import _C
from ...codes import DTYPES, METHODS
from ...methods import Method, reference_only_reason
from ...trees import Tree
from ...types import VerifyArgs, VerifyOutput
from ...validation import DRAFT_SAMPLINGS, temperature_in_range

_DTYPE_CODE = {getattr(torch, name): code for name, code in DTYPES.items()}
_TRANSPORT = {"transport": True, "standard": False}  # residual="peer" is reference-only
_CASCADE = METHODS["cascade"]
_CPU = torch.device("cpu")
_INF = math.inf
# torch's DLPack C exchange API (torch >= 2.9): without it the fast entry declines every call
_EXCHANGE = hasattr(torch._C, "_dlpack_exchange_api") and _C.set_exchange_api(torch._C._dlpack_exchange_api(), Tensor)


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


def verify_call(tokens, parents, target_logits, method, draft_logits, hidden, residual, eps, temperature, top_k,
                top_p, cfg_scale, seed, out, draft_sampling):
    """``ck.verify(...)`` (check="fast") for the common case on CPU tensors, or None: see the module doc.

    The Python objects (tree, method, scalars, seed, out) are checked here; the tensors in C++
    (``_C.verify_call``, through DLPack's C exchange API), which runs the walk only if all are in form."""
    if (not _EXCHANGE or draft_logits is not None or cfg_scale is not None or parents.__class__ is not Tree
            or residual.__class__ is not str or draft_sampling.__class__ is not str
            or draft_sampling not in DRAFT_SAMPLINGS or not isinstance(method, Method) or not method.name
            or parents.device != _CPU):
        return None
    transport = _TRANSPORT.get(residual)
    m = method.__dict__.get("packed")  # packed by an earlier call (methods.pack)
    if transport is None or m is None or m.embeddings is not None or reference_only_reason(m) is not None:
        return None
    cascade = m.code == _CASCADE
    if hidden is not None and not cascade:  # (CASCADE without hidden: _C.verify_call declines)
        return None
    if eps is None:
        eps = method.default_eps
        eps = _INF if eps is None else float(eps)
    elif eps.__class__ is not float or not eps >= 0.0:
        return None
    if not (temperature.__class__ is float and top_k.__class__ is int and top_p.__class__ is float
            and temperature_in_range(temperature) and 0 <= top_k and 0.0 < top_p <= 1.0):  # top_k <= V: in C++
        return None
    if seed.__class__ is int:  # check_seed's int form, without its cached tensor
        if not -(2**63) <= seed < 2**63:
            return None
        seed_int, seed = seed, None
    elif seed.__class__ is Tensor:
        seed_int = 0
    else:
        return None
    L = parents.max_depth + 1
    if out is None:
        if tokens.__class__ is not Tensor or tokens.dim() != 2:
            return None
        out = VerifyOutput.empty(tokens.shape[0], L, _CPU, "cpu")
    elif out.__class__ is not VerifyOutput:
        return None
    if not _C.verify_call(tokens, target_logits, hidden, seed, seed_int, m.neighbors, out[0], out[1], out[2], out[3],
                          out[4], parents.batch, parents.num_nodes, L, parents.host_parents_ptr, m.code,
                          m.host.ints_ptr, m.host.floats_ptr, cascade, transport, eps, temperature, top_k, top_p,
                          get_num_threads()):
        return None
    return out if out.backend == "cpu" else out._replace(backend="cpu")


verify.call = verify_call  # how api.verify reaches it from the resolved backend
