"""The compiled C++ CPU backend (``backend="cpu"``): ``cascade_kernels._C`` built from ``csrc/``.

Interface: no torch C++ headers. This wrapper receives the validated, normalized inputs of
``validation.check_verify_inputs`` (contiguous CPU tensors), allocates the outputs, and hands the C++
walk raw addresses (``tensor.data_ptr()``) with shapes and dtype codes, zero-copy. The whole batch is
verified in one call; OpenMP spreads the sequences over ``num_threads`` threads (default
``torch.get_num_threads()``).
"""
from typing import Optional

import torch

from .methods import GSD, Cascade, Cool, Exact, Lantern
from .types import VerifyOutput

try:  # the extension is optional: setup.py builds it when it can
    from . import _C
    _IMPORT_ERROR: Optional[str] = None
except Exception as exc:  # ImportError, or a broken/ABI-mismatched build
    _C = None
    _IMPORT_ERROR = (f"cascade_kernels._C could not be imported ({type(exc).__name__}: {exc}); "
                     "rebuild it with `pip install -e . --no-build-isolation`")

_DTYPE_CODE = {torch.float32: 0, torch.bfloat16: 1, torch.float16: 2, torch.float64: 3}
_METHOD_CODE = {"exact": 0, "lantern": 1, "gsd": 2, "cascade": 3, "cool": 4}


def unavailable_reason() -> Optional[str]:
    """None when the extension imports, else why not."""
    return _IMPORT_ERROR if _C is None else None


def _ptr(t: Optional[torch.Tensor]) -> int:
    return 0 if t is None else t.data_ptr()


def _cpu_contiguous(t: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
    if t is None:
        return None
    if t.device.type != "cpu":
        raise ValueError(f"backend 'cpu' needs CPU tensors, got {t.device}")
    return t.contiguous()


def verify(*, tokens, parents, target_logits, method, draft_logits, hidden, residual, eps, temperature, top_k,
           top_p, cfg_scale, seed, num_threads: Optional[int] = None) -> VerifyOutput:
    """``ck.verify`` on validated, normalized inputs (see validation.check_verify_inputs)."""
    if _C is None:  # pragma: no cover - the registry checks unavailable_reason() first
        raise RuntimeError(_IMPORT_ERROR)
    tokens = _cpu_contiguous(tokens).to(torch.int64)
    parents = _cpu_contiguous(parents).to(torch.int32)
    target_logits = _cpu_contiguous(target_logits)
    greedy = temperature == 0
    draft_logits = None if greedy else _cpu_contiguous(draft_logits)
    seed = _cpu_contiguous(seed).to(torch.int64)
    B, N = tokens.shape
    V = target_logits.shape[2]
    name = method.name
    if name not in _METHOD_CODE:  # pragma: no cover - validation rejects other types
        raise TypeError(f"unknown method {method!r}")

    neighbors, nb_stride, n_nb, l_delta, l_lam = None, 0, 0, 0.1, -1.0
    if isinstance(method, Lantern):
        neighbors = _cpu_contiguous(method.neighbors).to(torch.int64)
        nb_stride, n_nb = neighbors.shape[1], method.n_neighbors
        l_delta = float(method.delta)
        l_lam = -1.0 if method.lam is None else float(method.lam)
    G, dp = (int(method.G), float(method.dp)) if isinstance(method, GSD) else (14, 0.15)
    tau_pos, tau_seq, use_i, use_c = 0.85, 0.5, True, True
    if isinstance(method, Cascade):
        tau_pos, tau_seq = float(method.tau_pos), float(method.tau_seq)
        use_i, use_c = bool(method.use_interchange), bool(method.use_convergence)
        hidden = _cpu_contiguous(hidden)
    else:
        hidden = None
    c_delta, c_nu, c_wmin = ((float(method.delta), float(method.nu), float(method.w_min))
                             if isinstance(method, Cool) else (2.0, 0.7, 1.0))
    assert isinstance(method, (Exact, Lantern, GSD, Cascade, Cool))

    accept_len = torch.zeros(B, dtype=torch.int32)
    nodes = torch.full((B, N), -1, dtype=torch.int32)
    next_token = torch.zeros(B, dtype=torch.int64)
    tvd = torch.zeros(B, dtype=torch.float32)
    status = torch.zeros(B, dtype=torch.int32)
    threads = int(num_threads) if num_threads is not None else torch.get_num_threads()

    L = _C.verify(
        B, N, V, _ptr(tokens), _ptr(parents), _ptr(target_logits), _DTYPE_CODE[target_logits.dtype],
        cfg_scale is not None, 0.0 if cfg_scale is None else float(cfg_scale),
        _ptr(draft_logits), _DTYPE_CODE[draft_logits.dtype] if draft_logits is not None else 0,
        _ptr(hidden), _DTYPE_CODE[hidden.dtype] if hidden is not None else 0,
        hidden.shape[2] if hidden is not None else 0,
        _METHOD_CODE[name], _ptr(neighbors), nb_stride, n_nb, l_delta, l_lam, G, dp, tau_pos, tau_seq, use_i, use_c,
        c_delta, c_nu, c_wmin, residual == "transport", float(eps), float(temperature), int(top_k), float(top_p),
        _ptr(seed), _ptr(accept_len), _ptr(nodes), _ptr(next_token), _ptr(tvd), _ptr(status), max(1, threads))
    accepted_nodes = nodes if L == N else nodes[:, :L].contiguous()
    return VerifyOutput(accept_len, accepted_nodes, next_token, tvd, status, backend="cpu")
