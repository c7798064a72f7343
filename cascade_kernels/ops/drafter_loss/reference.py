"""Plain PyTorch form of CASCADE's drafter training loss (CONTRACT §7, CASCADE Eq. 4).

This file is the executable form of the contract for the loss: the fused Triton kernel
(``triton.py``) and the CPU path (``cpu.py``) must match it. All math is float32 (float64 when the
inputs are float64, so that gradcheck and float64 ground truths work); autograd does the backward. Inputs are assumed validated (``api.py`` does that at the boundary) and flattened:

- ``draft_logits``, ``target_logits``: ``[B, T, V]``
- ``target_hidden``: ``[B, T, D]``
- ``mask``: ``[B, T]`` bool (True = the position counts)

The two helpers :func:`position_weights` and :func:`feature_regression_loss` are shared by every
backend (they are ``O(B*T*D)``, far below the ``O(B*T*V)`` cross-entropy that the fused backends
replace).
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch
import torch.nn.functional as F

def _acc(x: torch.Tensor) -> torch.dtype:
    """Math dtype: float32, or float64 for float64 inputs (gradcheck and float64 ground truth)."""
    return torch.float64 if x.dtype == torch.float64 else torch.float32


__all__ = [
    "position_weights",
    "feature_regression_loss",
    "soft_cross_entropy_reference",
    "cascade_drafter_loss_reference",
]


def position_weights(
    target_hidden: torch.Tensor, mask: torch.Tensor, c: float, tau_seq: float
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Per-position weights ``w [B, T]`` (float32) and the number of counted positions (0-d int64).

    ``w_k = c`` when position ``k`` and its successor ``k+1`` both count and
    ``cos(H_k, H_{k+1}) >= tau_seq``; ``w_k = 1`` for any other counted position (the last position
    of a sequence, or a position whose successor is masked, is a sequence end); ``w_k = 0`` for a
    masked position. The cosine is ``dot(a, b) / max(|a| |b|, 1e-12)`` in float32, and NaN counts as
    not similar (docs/CONTRACT.md, CASCADE section).
    """
    h = target_hidden.detach().float()
    m = mask.to(torch.bool)
    w = m.to(torch.float32)
    if h.shape[-2] > 1:
        a, b = h[..., :-1, :], h[..., 1:, :]
        dot = (a * b).sum(-1)
        den = (a.norm(dim=-1) * b.norm(dim=-1)).clamp_min(1e-12)
        cos = dot / den
        similar = (cos >= tau_seq) & m[..., :-1] & m[..., 1:]  # NaN >= x is False
        w[..., :-1] = torch.where(similar, torch.full_like(cos, float(c)), w[..., :-1])
    return w, m.sum()


def feature_regression_loss(
    feature_pred: torch.Tensor,
    feature_target: torch.Tensor,
    mask: torch.Tensor,
    n_valid: torch.Tensor,
) -> torch.Tensor:
    """EAGLE's feature term: smooth-L1 (beta 1) summed over counted positions and features, divided
    by ``n_valid * D`` (a mean over counted positions and features). Float32; the target is
    detached; masked positions contribute nothing (their values are never read into the sum)."""
    d = feature_pred.shape[-1]
    m = mask.to(torch.bool)
    pred = feature_pred[m].to(_acc(feature_pred))
    tgt = feature_target.detach()[m].to(pred.dtype)
    total = F.smooth_l1_loss(pred, tgt, reduction="sum", beta=1.0)
    return total / (n_valid.clamp_min(1).to(total.dtype) * d)


def soft_cross_entropy_reference(
    draft_logits: torch.Tensor, target_logits: torch.Tensor, row_scale: torch.Tensor
) -> torch.Tensor:
    """``sum_k row_scale_k * CE(softmax(target_k), log_softmax(draft_k))`` over rows of ``[R, V]``.

    Rows with ``row_scale == 0`` are never read (their gradient is exactly zero, even if their logits
    are not finite). Float32 math; autograd gives the gradient wrt ``draft_logits``.
    """
    keep = row_scale != 0
    if not bool(keep.all()):
        draft_logits = draft_logits[keep]
        target_logits = target_logits[keep]
        row_scale = row_scale[keep]
    acc = _acc(draft_logits)
    q = torch.softmax(target_logits.detach().to(acc), dim=-1)
    logp = zero_where_unsupported(torch.log_softmax(draft_logits.to(acc), dim=-1), q)
    ce = -(q * logp).sum(-1)
    return (row_scale.to(acc) * ce).sum()


def zero_where_unsupported(logp: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """0 * log p := 0: a token the target gives no mass contributes nothing, even where p = 0 too."""
    return logp.masked_fill(q == 0, 0.0)


class GradientInForward(torch.autograd.Function):
    """Base of the fused paths: ``forward`` computes the loss and its gradient wrt ``draft`` (saved);
    ``backward`` scales that gradient by the incoming one — a new tensor, never the saved buffer, no sync."""

    @staticmethod
    def backward(ctx, grad_output):
        (grad,) = ctx.saved_tensors
        if not ctx.needs_input_grad[0]:
            return None, None, None, None
        return grad * grad_output.to(grad.dtype), None, None, None


def cascade_drafter_loss_reference(
    draft_logits: torch.Tensor,
    target_logits: torch.Tensor,
    target_hidden: torch.Tensor,
    mask: torch.Tensor,
    c: float = 2.0,
    tau_seq: float = 0.5,
    feature_pred: Optional[torch.Tensor] = None,
    feature_target: Optional[torch.Tensor] = None,
    w_cls: float = 0.1,
    w_reg: float = 1.0,
) -> torch.Tensor:
    """The whole loss (see ``api.cascade_drafter_loss`` for the definition and normalisation)."""
    w, n_valid = position_weights(target_hidden, mask, c, tau_seq)
    denom = n_valid.clamp_min(1).to(torch.float32)
    v = draft_logits.shape[-1]
    scale = (w * float(w_cls) / denom).reshape(-1)
    loss = soft_cross_entropy_reference(
        draft_logits.reshape(-1, v), target_logits.reshape(-1, v), scale
    )
    if feature_pred is not None and feature_target is not None:
        loss = loss + float(w_reg) * feature_regression_loss(
            feature_pred, feature_target, mask, n_valid
        )
    return loss
