"""CPU path of the drafter soft cross-entropy (SPEC §7): row chunks, gradient computed in forward.

Per chunk of rows (float32 math; float64 for float64 inputs): ``logp = log_softmax(draft)`` and ``q = softmax(target)`` are computed
once, the row loss is ``-<q, logp>``, and the gradient ``scale_k * (exp(logp) - q)`` is written
straight into a buffer of the draft dtype that ``forward`` saves. ``backward`` only multiplies that
buffer by the (scalar) incoming gradient, as Liger's fused linear cross-entropy does. The chunk's
float32 temporaries stay small (about ``_CHUNK_ELEMS`` elements), so peak memory is the gradient
buffer plus a few cache-sized blocks, instead of the reference's several ``[R, V]`` float32 tensors.
"""
from __future__ import annotations

import torch

__all__ = ["soft_cross_entropy_cpu", "CpuSoftCrossEntropyFunction"]

# float32 elements per chunk and temporary: 2**18 elements = 1 MiB, a few of them fit in L2.
_CHUNK_ELEMS = 1 << 18


def _forward(draft: torch.Tensor, target: torch.Tensor, scale: torch.Tensor, chunk_elems: int):
    rows, v = draft.shape
    live = torch.nonzero(scale != 0).flatten().tolist()  # rows that count (never read the rest)
    alloc = torch.empty if len(live) == rows else torch.zeros
    grad = alloc((rows, v), dtype=draft.dtype, device=draft.device)
    acc = torch.float64 if draft.dtype == torch.float64 else torch.float32
    loss = torch.zeros((), dtype=acc, device=draft.device)
    if not live:
        return loss, grad
    step = max(1, chunk_elems // max(v, 1))
    # Group consecutive live rows into runs so that slices (not gathers) are used where possible.
    i = 0
    n = len(live)
    while i < n:
        j = i + 1
        while j < n and j - i < step and live[j] == live[j - 1] + 1:
            j += 1
        r0, r1 = live[i], live[j - 1] + 1
        s = scale[r0:r1].to(acc)
        logp = torch.log_softmax(draft[r0:r1].to(acc), dim=-1)
        q = torch.softmax(target[r0:r1].to(acc), dim=-1)
        ce = -torch.linalg.vecdot(q, logp)  # [rows]
        loss = loss + (s * ce).sum()
        if grad.dtype == acc:
            torch.exp(logp, out=grad[r0:r1])
            grad[r0:r1].sub_(q).mul_(s[:, None])
        else:
            grad[r0:r1].copy_(logp.exp_().sub_(q).mul_(s[:, None]))
        i = j
    return loss, grad


class CpuSoftCrossEntropyFunction(torch.autograd.Function):
    """``sum_k scale_k * CE(softmax(target_k), log_softmax(draft_k))``; gradient wrt draft only."""

    @staticmethod
    def forward(ctx, draft, target, scale, chunk_elems=_CHUNK_ELEMS):
        loss, grad = _forward(draft, target.detach(), scale.detach().float(), int(chunk_elems))
        ctx.save_for_backward(grad)
        return loss

    @staticmethod
    def backward(ctx, grad_output):
        (grad,) = ctx.saved_tensors
        if not ctx.needs_input_grad[0]:
            return None, None, None, None
        # Liger's trick: a loss that is the graph's output gets grad_output == 1; skip the multiply.
        if torch.equal(grad_output, torch.ones_like(grad_output)):
            return grad, None, None, None
        return grad * grad_output.to(grad.dtype), None, None, None


def soft_cross_entropy_cpu(
    draft: torch.Tensor, target: torch.Tensor, scale: torch.Tensor, chunk_elems: int = _CHUNK_ELEMS
) -> torch.Tensor:
    """``draft``, ``target``: ``[R, V]`` (any float dtype, rows contiguous); ``scale``: ``[R]``."""
    return CpuSoftCrossEntropyFunction.apply(draft, target, scale, chunk_elems)
