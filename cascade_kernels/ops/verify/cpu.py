"""``backend="cpu"``: the compiled C++ walk (``cascade_kernels._C``, built from ``csrc/``).

No torch C++ headers: every tensor goes to C++ as its address (``data_ptr()``) with shapes and dtype
codes (``codes.DTYPES``), zero-copy; the outputs are the caller's tensors, written in place. OpenMP
spreads the sequences over ``torch.get_num_threads()`` threads (one when the batch is a single sequence).

Two entries: :func:`verify` is the backend of the general path (``api.verify`` checked and normalised the
arguments), and :func:`verify_call` (reached as ``verify.call``) is the whole ``ck.verify`` call for the
common case, which ``api.verify`` tries first once this backend serves CPU tensors. It *recognises*
arguments that are already in the general path's normal form (CPU tensors of the plain tensor type,
contiguous, int64 tokens, a prepared tree, a method packed by an earlier call, Python scalars in range,
no CFG, no drafter logits) with as few attribute reads as it can -- a decode step reaches it with cold
caches, where each Python-level operation costs about a cache miss -- and returns None for anything else,
which then takes the general path (whose errors name the argument). It never raises and never accepts
what that path would reject; tests/test_call_path.py fuzzes the two paths against each other.
"""
import math

import torch
from torch import Tensor, get_num_threads

from ... import _C
from ...codes import DTYPES, METHODS
from ...methods import Method, reference_only_reason
from ...trees import Tree
from ...types import VerifyArgs, VerifyOutput
from ...validation import DRAFT_SAMPLINGS, FLOAT_DTYPES, check_seed

_DTYPE_CODE = {getattr(torch, name): code for name, code in DTYPES.items()}
_LOGITS_CODE = {d: _DTYPE_CODE[d] for d in FLOAT_DTYPES}  # the dtypes check_verify_inputs takes
_HIDDEN_CODE = {**_LOGITS_CODE, torch.float64: _DTYPE_CODE[torch.float64]}
_TRANSPORT = {"transport": True, "standard": False}  # residual="peer" is reference-only
_CASCADE = METHODS["cascade"]
_CPU = torch.device("cpu")
_I64, _I32, _F32 = torch.int64, torch.int32, torch.float32
_INF = math.inf
_INT_LIMIT = 2**31 - 1


def verify(args: VerifyArgs, out: VerifyOutput) -> None:
    """Fill ``out`` with the C++ walk over every sequence of ``args`` (validated CPU tensors)."""
    _launch(*args[:13], out)


def _launch(tokens, tree, logits, draft, hidden, m, transport, eps, temperature, top_k, top_p, cfg_scale, seed,
            out) -> None:
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


def _plain(t, shape, dtype) -> bool:
    """``t`` is a contiguous CPU tensor of the plain tensor type with this shape and dtype."""
    return t.__class__ is Tensor and t.dtype is dtype and t.shape == shape and t.is_cpu and t.is_contiguous()


def verify_call(tokens, parents, target_logits, method, draft_logits, hidden, residual, eps, temperature, top_k,
                top_p, cfg_scale, seed, out, draft_sampling):
    """``ck.verify(...)`` (check="fast") for the common case on CPU tensors, or None: see the module doc."""
    if (draft_logits is not None or cfg_scale is not None or tokens.__class__ is not Tensor
            or target_logits.__class__ is not Tensor or parents.__class__ is not Tree
            or residual.__class__ is not str or draft_sampling.__class__ is not str
            or draft_sampling not in DRAFT_SAMPLINGS or not isinstance(method, Method) or not method.name):
        return None
    transport = _TRANSPORT.get(residual)
    ts, ls = tokens.shape, target_logits.shape
    if (transport is None or len(ts) != 2 or len(ls) != 3 or tokens.dtype is not _I64
            or target_logits.dtype not in _LOGITS_CODE or not tokens.is_cpu or not target_logits.is_cpu):
        return None
    B, N = ts
    V = ls[2]
    if (ls[0] != B or ls[1] != N or B == 0 or V == 0 or V >= _INT_LIMIT or B * N >= _INT_LIMIT
            or parents.num_nodes != N or (parents.batch != 1 and parents.batch != B) or parents.device != _CPU
            or not tokens.is_contiguous() or not target_logits.is_contiguous()):
        return None
    m = method.__dict__.get("packed")  # packed by an earlier call (methods.pack)
    if m is None or m.embeddings is not None or reference_only_reason(m) is not None:
        return None
    nb = m.neighbors
    if nb is not None and (nb.shape[0] != V or not nb.is_cpu):
        return None
    if m.code == _CASCADE:
        if hidden.__class__ is not Tensor:
            return None
        hs = hidden.shape
        if (len(hs) != 3 or hs[0] != B or hs[1] != N or hs[2] == 0 or hidden.dtype not in _HIDDEN_CODE
                or not hidden.is_cpu or not hidden.is_contiguous()):
            return None
    elif hidden is not None:
        return None
    if eps is None:
        eps = method.default_eps
        eps = _INF if eps is None else float(eps)
    elif eps.__class__ is not float or not eps >= 0.0:
        return None
    if not (temperature.__class__ is float and top_k.__class__ is int and top_p.__class__ is float
            and 0.0 <= temperature < _INF and 0 <= top_k <= V and 0.0 < top_p <= 1.0):
        return None
    if seed.__class__ is int:
        if not -(2**63) <= seed < 2**63:
            return None
        seed = check_seed(seed, B, _CPU)
    elif not _plain(seed, (B,), _I64):
        return None
    L = parents.max_depth + 1
    if out is None:
        out = VerifyOutput.empty(B, L, _CPU, "cpu")
    elif out.__class__ is VerifyOutput:
        if not (_plain(out.accept_len, (B,), _I32) and _plain(out.accepted_nodes, (B, L), _I32)
                and _plain(out.next_token, (B,), _I64) and _plain(out.tvd, (B,), _F32)
                and _plain(out.status, (B,), _I32)):
            return None
        if out.backend != "cpu":
            out = out._replace(backend="cpu")
    else:
        return None
    _launch(tokens, parents, target_logits, None, hidden if m.code == _CASCADE else None, m, transport, eps,
            temperature, top_k, top_p, None, seed, out)
    return out


verify.call = verify_call  # how api.verify reaches it from the resolved backend
