"""The ``backend="triton"`` module the registry (``cascade_kernels.backends``) imports.

Entry points take exactly the normalized, validated arguments of ``validation.check_verify_inputs`` /
``api.tree_buffers`` / ``api.similarity_sets``. On the CPU the kernels run through Triton's interpreter
(``TRITON_INTERPRET=1``, set before triton is imported); the registry only routes CPU tensors here then.
"""
from typing import Optional

_IMPORT_ERROR: Optional[str] = None
try:  # pragma: no branch
    import triton  # noqa: F401
    import triton.language  # noqa: F401
except Exception as exc:  # pragma: no cover - triton is optional
    _IMPORT_ERROR = f"triton does not import: {exc!r}"


def unavailable_reason() -> Optional[str]:
    """None when triton imports; otherwise why the Triton backend cannot load."""
    return _IMPORT_ERROR


def verify(*, tokens, parents, target_logits, method, draft_logits, hidden, residual, eps, temperature, top_k,
           top_p, cfg_scale, seed):
    from .verify_triton import verify_triton

    return verify_triton(tokens=tokens, parents=parents, target_logits=target_logits, method=method,
                         draft_logits=draft_logits, hidden=hidden, residual=residual, eps=eps,
                         temperature=temperature, top_k=top_k, top_p=top_p, cfg_scale=cfg_scale, seed=seed)


def tree_buffers(parents, prefix_len):
    from .tree_buffers_triton import tree_buffers_triton

    return tree_buffers_triton(parents, prefix_len)


def similarity_sets(parents, hidden, tau_pos, tau_seq):
    from .similarity_triton import similarity_sets_triton

    return similarity_sets_triton(parents, hidden, tau_pos, tau_seq)
