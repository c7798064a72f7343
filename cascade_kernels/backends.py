"""Backend registry and ``backend=`` routing.

``"reference"`` always works. ``"cpu"`` is the compiled extension (``cascade_kernels._C``);
``"triton"`` the fused kernels (a CUDA/ROCm GPU, or the CPU interpreter with TRITON_INTERPRET=1).
``"auto"`` picks the fastest available for the tensors' device. An explicitly requested backend that
cannot load raises with the reason; ``"auto"`` falls back (warning once when the extension is missing).
"""
import functools
import importlib
import os
import warnings

import torch

# backend name -> module exposing verify(**normalized) and optionally tree_buffers / similarity_sets
_MODULES = {
    "reference": "cascade_kernels.reference.api",
    "cpu": "cascade_kernels.cpu",
    "triton": "cascade_kernels.ops.triton_api",
}
_warned = set()


@functools.lru_cache(maxsize=None)
def _load(name: str):
    """Import a backend module; raises ImportError/RuntimeError with the reason when unusable."""
    if name not in _MODULES:
        raise ValueError(f"backend must be one of {['auto', *_MODULES]}, got {name!r}")
    module = importlib.import_module(_MODULES[name])
    check = getattr(module, "unavailable_reason", None)
    reason = check() if check else None
    if reason:
        raise RuntimeError(f"backend {name!r} is not available: {reason}")
    return module


def _usable(name: str) -> bool:
    try:
        _load(name)
        return True
    except Exception:
        return False


def available_backends():
    """Names of the backends that load on this machine (``"reference"`` is always there)."""
    return [name for name in _MODULES if _usable(name)]


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET") == "1"


def resolve(backend: str, device: torch.device, op: str = "verify"):
    """(name, module) serving ``op`` for tensors on ``device``."""
    if backend != "auto":
        module = _load(backend)
        if not hasattr(module, op):
            raise ValueError(f"backend {backend!r} does not implement {op}")
        if backend == "triton" and device.type == "cpu" and not _interpreting():
            raise ValueError("backend 'triton' needs GPU tensors (or TRITON_INTERPRET=1 on the CPU)")
        if backend == "cpu" and device.type != "cpu":
            raise ValueError(f"backend 'cpu' needs CPU tensors, got {device}")
        return backend, module
    order = ["triton", "reference"] if device.type != "cpu" else ["cpu", "reference"]
    for name in order:
        usable = _usable(name)
        if usable and hasattr(_load(name), op):
            return name, _load(name)
        if name == "cpu" and not usable and "cpu" not in _warned:
            _warned.add("cpu")
            warnings.warn("cascade_kernels: the C++ extension (cascade_kernels._C) is not built; "
                          "backend='auto' uses the slower reference backend on the CPU", RuntimeWarning,
                          stacklevel=3)
    raise RuntimeError(f"no backend serves {op} on {device}")  # pragma: no cover - reference always does
