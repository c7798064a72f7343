"""Fused Triton soft cross-entropy for CASCADE's drafter loss (CONTRACT §7), Liger-Kernel style.

One program per row ``k`` (``int64`` row offsets, so ``R * V`` may pass ``2**31``):

- pass 1, chunked over ``V`` by ``BLOCK``: online max / sum-of-exponentials of the target row
  (``m_t``, ``d_t``), the same for the draft row (``m_d``, ``d_d``), and the target-weighted sum of
  shifted draft logits ``a = sum_j exp(t_j - m_t) (z_j - z0)`` (rescaled with ``m_t`` like the
  denominator; ``z0`` = max of the row's first chunk, so a large common offset does not cancel).
  Then ``CE_k = (logsumexp(z) - z0) - a / d_t`` (``sum_j q_j = 1``);
- pass 2, chunked again: the gradient ``scale_k * (softmax(z)_j - q_j)`` is written into a buffer of
  the draft dtype (float32 math, one rounding at the store).

The softmax of either row is never stored; each input row is read twice and the gradient written
once. Rows with ``scale_k == 0`` (masked positions) are not read: their gradient is written as
exact zeros and their loss is 0. ``backward`` only scales the saved buffer by ``grad_output`` (and
returns it untouched when ``grad_output == 1``), like Liger's fused linear cross-entropy.
"""
from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

from .reference import GradientInForward

__all__ = [
    "drafter_ce_forward",
    "TritonSoftCrossEntropyFunction",
    "soft_cross_entropy_triton",
]

MAX_BLOCK = 4096


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


@triton.jit
def _bf16_rne(x):
    # float32 -> bfloat16, round to nearest even, with integer ops. A GPU's cast already rounds
    # this way; Triton's CPU interpreter truncates, so the interpreter uses this instead.
    bits = x.to(tl.uint32, bitcast=True)
    bits = bits + (0x7FFF + ((bits >> 16) & 1))
    out = (bits >> 16).to(tl.uint16).to(tl.bfloat16, bitcast=True)
    return tl.where(x != x, x.to(tl.bfloat16), out)


@triton.jit
def _drafter_ce_fwd_kernel(
    draft_ptr,
    draft_stride,
    target_ptr,
    target_stride,
    grad_ptr,
    grad_stride,
    scale_ptr,
    loss_ptr,
    V,
    BLOCK: tl.constexpr,
    BF16_RNE_BITS: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    draft_ptr += row * draft_stride
    target_ptr += row * target_stride
    grad_ptr += row * grad_stride
    s = tl.load(scale_ptr + row).to(tl.float32)
    offs = tl.arange(0, BLOCK)
    if s == 0.0:
        # Masked row: never read its logits; exact zero gradient and loss.
        for start in range(0, V, BLOCK):
            cols = start + offs
            zero = tl.zeros([BLOCK], dtype=tl.float32)
            tl.store(grad_ptr + cols, zero.to(grad_ptr.dtype.element_ty), mask=cols < V)
        tl.store(loss_ptr + row, 0.0)
    else:
        neg_inf = -float("inf")
        m_t = neg_inf
        d_t = 0.0
        acc = 0.0
        m_d = neg_inf
        d_d = 0.0
        # fixed shift of the draft logits for the target-weighted sum (the first chunk's max), so
        # that CE = (lse - z0) - sum q (z - z0) does not cancel a large common logit offset
        z0 = tl.max(tl.load(draft_ptr + offs, mask=offs < V, other=neg_inf).to(tl.float32), axis=0)
        z0 = tl.where(z0 == neg_inf, 0.0, z0)
        for start in range(0, V, BLOCK):
            cols = start + offs
            msk = cols < V
            t = tl.load(target_ptr + cols, mask=msk, other=neg_inf).to(tl.float32)
            z = tl.load(draft_ptr + cols, mask=msk, other=neg_inf).to(tl.float32)
            # target: online max / sum, with the weighted sum of draft logits riding along
            # (an all -inf prefix keeps the running max at -inf: shift by 0 then, so exp gives 0
            # and never NaN; the running sums are still 0 at that point)
            mt_new = tl.maximum(m_t, tl.max(t, axis=0))
            shift_t = tl.where(mt_new == neg_inf, 0.0, mt_new)
            alpha_t = tl.exp(m_t - shift_t)
            e_t = tl.exp(t - shift_t)
            d_t = d_t * alpha_t + tl.sum(e_t, axis=0)
            # 0 * z := 0 where the target has no mass (also keeps padded lanes out of the sum)
            acc = acc * alpha_t + tl.sum(e_t * tl.where(e_t > 0.0, z - z0, 0.0), axis=0)
            m_t = mt_new
            # draft: online log-sum-exp
            md_new = tl.maximum(m_d, tl.max(z, axis=0))
            shift_d = tl.where(md_new == neg_inf, 0.0, md_new)
            alpha_d = tl.exp(m_d - shift_d)
            d_d = d_d * alpha_d + tl.sum(tl.exp(z - shift_d), axis=0)
            m_d = md_new
        log_d_d = tl.log(d_d)
        ce = (m_d - z0) + log_d_d - acc / d_t
        tl.store(loss_ptr + row, s * ce)
        inv_d_t = 1.0 / d_t
        for start in range(0, V, BLOCK):
            cols = start + offs
            msk = cols < V
            t = tl.load(target_ptr + cols, mask=msk, other=neg_inf).to(tl.float32)
            z = tl.load(draft_ptr + cols, mask=msk, other=neg_inf).to(tl.float32)
            p = tl.exp((z - m_d) - log_d_d)  # not z - (m_d + log d): m_d may be large
            q = tl.exp(t - m_t) * inv_d_t
            g = s * (p - q)
            if BF16_RNE_BITS:
                tl.store(grad_ptr + cols, _bf16_rne(g), mask=msk)
            else:
                tl.store(grad_ptr + cols, g.to(grad_ptr.dtype.element_ty), mask=msk)


def _num_warps(block: int) -> int:
    # Liger's calculate_settings heuristic.
    if block >= 32768:
        return 32
    if block >= 8192:
        return 16
    if block >= 2048:
        return 8
    return 4


def drafter_ce_forward(draft: torch.Tensor, target: torch.Tensor, scale: torch.Tensor, block: int = None):
    """Launch the fused kernel on ``[R, V]`` rows (unit stride along ``V``).

    Returns ``(loss, grad)``: the 0-d float32 loss ``sum_k scale_k * CE_k`` and the gradient of that
    loss wrt ``draft`` (draft dtype). ``block`` overrides the chunk size (a power of two; tests use
    small ones to exercise the chunk loop).
    """
    if draft.stride(-1) != 1:
        draft = draft.contiguous()
    if target.stride(-1) != 1:
        target = target.contiguous()
    rows, v = draft.shape
    scale = scale.detach().to(device=draft.device, dtype=torch.float32).contiguous()
    grad = torch.empty((rows, v), dtype=draft.dtype, device=draft.device)
    loss_rows = torch.empty((rows,), dtype=torch.float32, device=draft.device)
    if rows == 0:
        return loss_rows.sum(), grad
    if block is None:
        block = min(MAX_BLOCK, triton.next_power_of_2(v))
    if block & (block - 1):
        raise ValueError(f"block must be a power of two, got {block}")
    _drafter_ce_fwd_kernel[(rows,)](
        draft,
        draft.stride(0),
        target,
        target.stride(0),
        grad,
        grad.stride(0),
        scale,
        loss_rows,
        v,
        BLOCK=block,
        BF16_RNE_BITS=(draft.dtype == torch.bfloat16 and _interpreting()),
        num_warps=_num_warps(block),
    )
    return loss_rows.sum(), grad


class TritonSoftCrossEntropyFunction(GradientInForward):
    """``sum_k scale_k * CE(softmax(target_k), log_softmax(draft_k))``; gradient wrt draft only."""

    @staticmethod
    def forward(ctx, draft, target, scale, block=None):
        loss, grad = drafter_ce_forward(draft, target.detach(), scale, block)
        ctx.save_for_backward(grad)
        return loss


def soft_cross_entropy_triton(draft, target, scale, block=None):
    """``draft``, ``target``: ``[R, V]``; ``scale``: ``[R]`` float32 (0 = masked row)."""
    return TritonSoftCrossEntropyFunction.apply(draft, target, scale, block)
