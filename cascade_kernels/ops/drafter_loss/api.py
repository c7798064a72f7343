"""Public entry point of CASCADE's drafter training loss (CONTRACT §7, CASCADE Eq. 4)."""
from __future__ import annotations

import math
from typing import Optional

import torch

from ... import _backend
from .reference import feature_regression_loss, position_weights

__all__ = ["cascade_drafter_loss", "BACKENDS"]

BACKENDS = ("auto", *_backend.IMPLS["drafter_loss"])
_FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)


def _check_float(x: torch.Tensor, name: str) -> None:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.dtype not in _FLOAT_DTYPES:
        raise TypeError(f"{name} must be float32, bfloat16, float16 or float64, got {x.dtype}")


def _check_number(value, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__}")
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value}")
    return value


def _validate(draft_logits, target_logits, target_hidden, mask, c, tau_seq, feature_pred,
              feature_target, w_cls, w_reg, backend):
    _check_float(draft_logits, "draft_logits")
    _check_float(target_logits, "target_logits")
    _check_float(target_hidden, "target_hidden")
    if draft_logits.dim() not in (2, 3):
        raise ValueError(f"draft_logits must be [T, V] or [B, T, V], got shape {tuple(draft_logits.shape)}")
    if target_logits.dim() != draft_logits.dim():
        raise ValueError(
            f"target_logits must have the same rank as draft_logits ({draft_logits.dim()}), "
            f"got shape {tuple(target_logits.shape)}"
        )
    if target_logits.shape[-1] != draft_logits.shape[-1]:
        raise ValueError(
            f"target_logits vocabulary size {target_logits.shape[-1]} != draft_logits vocabulary "
            f"size {draft_logits.shape[-1]}"
        )
    if target_logits.shape != draft_logits.shape:
        raise ValueError(
            f"target_logits shape {tuple(target_logits.shape)} != draft_logits shape {tuple(draft_logits.shape)}"
        )
    if draft_logits.shape[-1] == 0:
        raise ValueError("draft_logits must have a non-empty vocabulary dimension (V >= 1)")
    lead = tuple(draft_logits.shape[:-1])  # (T,) or (B, T)
    if target_hidden.dim() != len(lead) + 1 or tuple(target_hidden.shape[:-1]) != lead:
        raise ValueError(
            f"target_hidden must have shape {lead + ('D',)}, got {tuple(target_hidden.shape)}"
        )
    if mask is not None:
        if not isinstance(mask, torch.Tensor):
            raise TypeError(f"mask must be a torch.Tensor or None, got {type(mask).__name__}")
        if tuple(mask.shape) != lead:
            raise ValueError(f"mask must have shape {lead}, got {tuple(mask.shape)}")
        if mask.dtype.is_complex:
            raise TypeError(f"mask must be bool or 0/1 numbers, got {mask.dtype}")
        if mask.dtype != torch.bool and not bool(((mask == 0) | (mask == 1)).all()):
            raise ValueError("mask must hold only 0/1 (or bool) values")
    if (feature_pred is None) != (feature_target is None):
        raise ValueError("feature_pred and feature_target must be given together (or both None)")
    if feature_pred is not None:
        _check_float(feature_pred, "feature_pred")
        _check_float(feature_target, "feature_target")
        if feature_pred.dim() != len(lead) + 1 or tuple(feature_pred.shape[:-1]) != lead:
            raise ValueError(
                f"feature_pred must have shape {lead + ('D',)}, got {tuple(feature_pred.shape)}"
            )
        if feature_target.shape != feature_pred.shape:
            raise ValueError(
                f"feature_target shape {tuple(feature_target.shape)} != feature_pred shape "
                f"{tuple(feature_pred.shape)}"
            )
    tensors = [("target_logits", target_logits), ("target_hidden", target_hidden)]
    if mask is not None:
        tensors.append(("mask", mask))
    if feature_pred is not None:
        tensors += [("feature_pred", feature_pred), ("feature_target", feature_target)]
    for name, t in tensors:
        if t.device != draft_logits.device:
            raise ValueError(f"{name} is on {t.device}, draft_logits on {draft_logits.device}")
    c = _check_number(c, "c")
    if c < 0:
        raise ValueError(f"c must be >= 0, got {c}")
    tau_seq = _check_number(tau_seq, "tau_seq")
    if not -1.0 <= tau_seq <= 1.0:
        raise ValueError(f"tau_seq must lie in [-1, 1] (a cosine threshold), got {tau_seq}")
    w_cls = _check_number(w_cls, "w_cls")
    w_reg = _check_number(w_reg, "w_reg")
    if not isinstance(backend, str) or backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    return c, tau_seq, w_cls, w_reg


def cascade_drafter_loss(
    draft_logits: torch.Tensor,
    target_logits: torch.Tensor,
    target_hidden: torch.Tensor,
    mask: Optional[torch.Tensor] = None,
    c: float = 2.0,
    tau_seq: float = 0.5,
    feature_pred: Optional[torch.Tensor] = None,
    feature_target: Optional[torch.Tensor] = None,
    w_cls: float = 0.1,
    w_reg: float = 1.0,
    backend: str = "auto",
) -> torch.Tensor:
    """CASCADE's drafter training loss (CONTRACT §7, CASCADE Eq. 4), as a 0-d float32 tensor.

    (float64 inputs are computed and returned in float64 by the ``reference`` and ``cpu`` backends,
    for gradcheck and ground truths; the Triton kernel always computes in float32.)

    Args:
        draft_logits: ``[T, V]`` or ``[B, T, V]`` drafter logits (float32 / bfloat16 / float16 /
            float64). The only input, with ``feature_pred``, that receives a gradient.
        target_logits: same shape; the target model's logits at the same positions (detached).
        target_hidden: ``[T, D]`` or ``[B, T, D]``; the target's last-layer hidden states (detached),
            used only for the position weights.
        mask: ``[T]`` or ``[B, T]``, bool or 0/1 (True = the position counts); ``None`` = all count.
        c: weight of a position whose hidden state is similar to the next one (``c >= 0``; default 2).
        tau_seq: cosine threshold in ``[-1, 1]`` (default 0.5).
        feature_pred, feature_target: optional ``[.., T, D']`` EAGLE feature-regression pair (both or
            neither); ``feature_target`` is detached.
        w_cls, w_reg: weights of the classification and regression terms (EAGLE's 0.1 and 1.0).
        backend: ``"auto"`` (CUDA tensors with triton → ``"triton"``, otherwise ``"chunked"``),
            ``"reference"`` (plain PyTorch, autograd backward), ``"chunked"`` (row chunks, gradient
            computed in forward) or ``"triton"`` (fused kernel; on CPU only under
            ``TRITON_INTERPRET=1``).

    Definition and normalisation (CONTRACT §7). Along each sequence (the ``T`` axis; each ``b`` is its
    own sequence), position ``k`` gets the weight

    - ``w_k = 0`` if ``mask[k]`` is False;
    - ``w_k = c`` if positions ``k`` and ``k+1`` both count and
      ``cos(H_k, H_{k+1}) >= tau_seq`` (``H = target_hidden``; cosine ``dot / max(|a||b|, 1e-12)``
      in float32, NaN = not similar);
    - ``w_k = 1`` otherwise: in particular the last position, and a position whose successor is
      masked (it is the last position of its sequence).

    With ``N`` = number of counted positions over the whole batch, ``q_k = softmax(target_k)``,
    ``log p_k = log_softmax(draft_k)`` (float32),

    ``L = w_cls * sum_k w_k * (-sum_v q_kv log p_kv) / N
    + w_reg * sum_{k counted} sum_d smooth_l1(pred_kd - target_kd) / (N * D')``

    (smooth-L1 with ``beta = 1``; the second term only when both features are given). So the
    classification term is a *sum* of weighted CEs divided by the number of counted positions (not
    by ``sum_k w_k``): ``c`` really scales a similar position's share, and with ``c = 1`` the loss is
    EAGLE's ``0.1 * ploss + 1.0 * vloss`` except that EAGLE divides by ``N + 1e-5``. With ``N = 0``
    the loss is 0 and all gradients are 0. Masked positions are never read: their gradient is exactly
    zero even when their logits are not finite.

    The fused backends compute the gradient wrt ``draft_logits`` during the forward pass (stored in
    the draft dtype) and keep it for ``backward``, which only scales it by the incoming gradient.
    """
    c, tau_seq, w_cls, w_reg = _validate(
        draft_logits, target_logits, target_hidden, mask, c, tau_seq, feature_pred,
        feature_target, w_cls, w_reg, backend,
    )
    lead = tuple(draft_logits.shape[:-1])
    v = draft_logits.shape[-1]
    if mask is None:
        mask = torch.ones(lead, dtype=torch.bool, device=draft_logits.device)
    mask = mask.to(torch.bool)
    if draft_logits.dim() == 2:  # one sequence: [T, V] -> [1, T, V]
        draft_logits, target_logits = draft_logits.unsqueeze(0), target_logits.unsqueeze(0)
        target_hidden, mask = target_hidden.unsqueeze(0), mask.unsqueeze(0)
        if feature_pred is not None:
            feature_pred, feature_target = feature_pred.unsqueeze(0), feature_target.unsqueeze(0)

    _, soft_cross_entropy = _backend.resolve("drafter_loss", backend, draft_logits.device)
    w, n_valid = position_weights(target_hidden, mask, c, tau_seq)
    scale = (w * (w_cls / n_valid.clamp_min(1).to(torch.float32))).reshape(-1)
    draft2d = draft_logits.reshape(-1, v)
    target2d = target_logits.detach().reshape(-1, v)
    loss = soft_cross_entropy(draft2d, target2d, scale)
    if feature_pred is not None:
        loss = loss + w_reg * feature_regression_loss(feature_pred, feature_target, mask, n_valid)
    return loss
