"""One backend resolver for every op (``backend=`` argument).

``"reference"`` (plain PyTorch) always works. ``"cpu"`` is the compiled extension
(``cascade_kernels._C``, built from ``csrc/``); ``"triton"`` the fused kernels (a CUDA/ROCm GPU, or the
CPU interpreter with ``TRITON_INTERPRET=1``); ``"chunked"`` the row-chunked PyTorch path of the drafter
loss. ``"auto"`` picks the fastest implementation of the op for the tensors' device. An explicitly
requested backend that cannot load raises with the reason; ``"auto"`` falls back (warning once when
the C++ extension is missing).
"""
import importlib
import os
import warnings
from typing import Callable, Dict, Optional, Tuple

import torch

# op -> backend -> "module:function"; the first entry of AUTO[device kind] that the op has wins.
IMPLS: Dict[str, Dict[str, str]] = {
    "verify": {"reference": "cascade_kernels.ops.verify.reference:verify",
               "cpu": "cascade_kernels.ops.verify.cpu:verify",
               "triton": "cascade_kernels.ops.verify.triton:verify"},
    "tree_buffers": {"reference": "cascade_kernels.ops.tree_buffers.reference:tree_buffers",
                     "triton": "cascade_kernels.ops.tree_buffers.triton:tree_buffers"},
    "similarity_sets": {"reference": "cascade_kernels.ops.similarity_sets.reference:similarity_sets",
                        "triton": "cascade_kernels.ops.similarity_sets.triton:similarity_sets"},
    "verify_continuous": {"reference": "cascade_kernels.ops.verify_continuous.reference:verify_continuous_reference",
                          "cpu": "cascade_kernels.ops.verify_continuous.cpu:verify_continuous_cpu",
                          "triton": "cascade_kernels.ops.verify_continuous.triton:verify_continuous_triton"},
    "drafter_loss": {"reference": "cascade_kernels.ops.drafter_loss.reference:soft_cross_entropy_reference",
                     "chunked": "cascade_kernels.ops.drafter_loss.chunked:soft_cross_entropy_chunked",
                     "triton": "cascade_kernels.ops.drafter_loss.triton:soft_cross_entropy_triton"},
}
AUTO = {"cpu": ("cpu", "chunked", "reference"), "gpu": ("triton", "reference")}
NAMES = ("reference", "cpu", "triton", "chunked")

_reasons: Dict[str, Optional[str]] = {}
_resolved: Dict[tuple, Tuple[str, Callable]] = {}
_warned = set()


def unavailable_reason(name: str) -> Optional[str]:
    """None when backend ``name`` loads on this machine, else why not."""
    if name not in _reasons:
        reason = None
        try:
            if name == "cpu":
                from . import _C  # noqa: F401
            elif name == "triton":
                import triton  # noqa: F401
                import triton.language  # noqa: F401
        except Exception as exc:  # ImportError, or a broken / ABI-mismatched build
            reason = f"{type(exc).__name__}: {exc}"
            if name == "cpu":
                reason = (f"cascade_kernels._C could not be imported ({reason}); rebuild it with "
                          "`pip install -e . --no-build-isolation`")
        _reasons[name] = reason
    return _reasons[name]


def available_backends():
    """Names of the verification backends that load on this machine (``"reference"`` is always there)."""
    return [name for name in IMPLS["verify"] if unavailable_reason(name) is None]


def interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET") == "1"


def _load(spec: str) -> Callable:
    module, fn = spec.split(":")
    return getattr(importlib.import_module(module), fn)


def resolve(op: str, backend: str, device: torch.device, reference_only: Optional[str] = None) -> Tuple[str, Callable]:
    """(name, function) serving ``op`` for tensors on ``device``; cached per (op, backend, device type).

    ``reference_only``: a description of an option of this call that only the reference backend
    implements (``validation.needs_reference``): ``"auto"`` then picks the reference backend, and any
    other explicit backend raises a ``ValueError`` naming the option."""
    if reference_only is not None:
        if backend == "auto":
            return "reference", _load(IMPLS[op]["reference"])
        if backend != "reference":
            if not isinstance(backend, str) or backend not in NAMES:
                raise ValueError(f"backend must be one of {['auto', *NAMES]}, got {backend!r}")
            raise ValueError(f"backend {backend!r} does not implement {reference_only} (reference backend only "
                             f"this round): use backend='reference', or 'auto', which routes such calls there")
    key = (op, backend, device.type)
    hit = _resolved.get(key)
    if hit is not None and (hit[0] != "triton" or device.type != "cpu" or interpreting()):
        return hit
    impls = IMPLS[op]
    if backend != "auto":
        if not isinstance(backend, str) or backend not in NAMES:
            raise ValueError(f"backend must be one of {['auto', *NAMES]}, got {backend!r}")
        if backend not in impls:
            raise ValueError(f"backend {backend!r} does not implement {op} (it has {sorted(impls)})")
        reason = unavailable_reason(backend)
        if reason:
            raise RuntimeError(f"backend {backend!r} is not available: {reason}")
        if backend == "triton" and device.type == "cpu" and not interpreting():
            raise ValueError("backend 'triton' needs GPU tensors (or TRITON_INTERPRET=1 on the CPU)")
        if backend == "cpu" and device.type != "cpu":
            raise ValueError(f"backend {backend!r} needs CPU tensors, got {device}")
        result = (backend, _load(impls[backend]))
    else:
        order = AUTO["cpu" if device.type == "cpu" else "gpu"]
        name = next(n for n in order if n in impls and unavailable_reason(n) is None)
        if name == "reference" and "cpu" in impls and device.type == "cpu" and "cpu" not in _warned:
            _warned.add("cpu")
            warnings.warn("cascade_kernels: the C++ extension (cascade_kernels._C) is not built; "
                          "backend='auto' uses the slower reference backend on the CPU", RuntimeWarning,
                          stacklevel=3)
        result = (name, _load(impls[name]))
    _resolved[key] = result
    return result
