"""CASCADE drafter loss (CONTRACT §7): fused Triton / CPU backends against the PyTorch reference.

Triton runs through its CPU interpreter here (tests/conftest.py sets TRITON_INTERPRET=1), so the
shapes are small and odd, and the chunk size is forced small to exercise the online-softmax loop.
"""
import os

import pytest
import torch
import torch.nn.functional as F

from cascade_kernels.ops.drafter_loss import cascade_drafter_loss, position_weights
from cascade_kernels.ops.drafter_loss.chunked import soft_cross_entropy_chunked
from cascade_kernels.ops.drafter_loss.reference import (
    cascade_drafter_loss_reference,
    soft_cross_entropy_reference,
)

try:
    import triton  # noqa: F401

    HAS_TRITON = True
except Exception:  # pragma: no cover
    HAS_TRITON = False

HAS_CUDA = torch.cuda.is_available()
INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"
requires_triton = pytest.mark.skipif(
    not (HAS_TRITON and (HAS_CUDA or INTERPRET)),
    reason="needs triton with a CUDA GPU or TRITON_INTERPRET=1",
)
requires_cuda = pytest.mark.skipif(not HAS_CUDA, reason="no CUDA GPU on this machine")

if HAS_TRITON and (HAS_CUDA or INTERPRET):
    from cascade_kernels.ops.drafter_loss.triton import soft_cross_entropy_triton

DEVICES = [
    pytest.param("cpu", id="cpu"),
    pytest.param("cuda", id="cuda", marks=requires_cuda),
]

# (B, T, V, D, block): B=0 means the [T, V] form; block = forced Triton chunk (None = default).
SHAPES = [
    pytest.param(0, 7, 37, 16, 16, id="T7-V37-blk16"),
    pytest.param(0, 5, 130, 8, 32, id="T5-V130-blk32"),
    pytest.param(2, 5, 130, 12, 64, id="B2-T5-V130-blk64"),
    pytest.param(3, 4, 71, 5, None, id="B3-T4-V71-blkdef"),
    pytest.param(0, 1, 1, 3, 2, id="T1-V1-blk2"),
]


def _inputs(B, T, V, D, dtype=torch.float32, device="cpu", seed=0, mask_p=0.25):
    g = torch.Generator().manual_seed(seed)
    lead = (T,) if B == 0 else (B, T)
    draft = (2.0 * torch.randn(*lead, V, generator=g)).to(device=device, dtype=dtype)
    target = (3.0 * torch.randn(*lead, V, generator=g)).to(device=device, dtype=dtype)
    hidden = torch.randn(*lead, D, generator=g)
    # make roughly half the consecutive pairs similar (cos near 1)
    near = torch.rand(*lead, generator=g) < 0.5
    for k in range(1, T):
        sel = near[..., k]
        hidden[..., k, :] = torch.where(
            sel[..., None], hidden[..., k - 1, :] + 0.05 * torch.randn(*lead[:-1], D, generator=g), hidden[..., k, :]
        )
    mask = torch.rand(*lead, generator=g) >= mask_p
    return draft, target, hidden.to(device), mask.to(device)


def _run(backend, draft, target, hidden, mask, **kw):
    d = draft.detach().clone().requires_grad_(True)
    loss = cascade_drafter_loss(d, target, hidden, mask, backend=backend, **kw)
    loss.backward()
    return loss.detach(), d.grad


def _rows_scale(hidden, mask, c=2.0, tau=0.5, w_cls=0.1):
    w, n = position_weights(hidden, mask, c, tau)
    return (w * w_cls / n.clamp_min(1)).reshape(-1)


def _assert_close(name, got, want, atol, rtol=0.0):
    got, want = got.double().cpu(), want.double().cpu()
    assert torch.isfinite(got).all() == torch.isfinite(want).all(), f"{name}: non-finite mismatch"
    err = (got - want).abs()
    bound = atol + rtol * want.abs()
    bad = err > bound
    if bad.any():
        idx = torch.nonzero(bad)[0].tolist()
        raise AssertionError(
            f"{name}: max err {err.max().item():.3g}, {int(bad.sum())} bad, first at {idx}: "
            f"got {got[tuple(idx)].item():.6g} want {want[tuple(idx)].item():.6g}"
        )


# --------------------------------------------------------------------------------------------
# Position weights (the w_k of CONTRACT §7)


def test_position_weights_hand_built():
    h = torch.tensor([[1.0, 0.0], [1.0, 0.1], [0.0, 1.0], [0.0, 1.0], [0.0, 2.0], [5.0, 5.0]])
    mask = torch.tensor([True, True, True, True, False, True])
    w, n = position_weights(h, mask, c=3.0, tau_seq=0.5)
    # 0~1 similar -> c; 1~2 not -> 1; 2~3 similar -> c; 3's successor masked -> 1 (sequence end);
    # 4 masked -> 0; 5 is last -> 1
    assert w.tolist() == [3.0, 1.0, 3.0, 1.0, 0.0, 1.0]
    assert int(n) == 5
    wb, nb = position_weights(torch.stack([h, h]), torch.stack([mask, mask]), 3.0, 0.5)
    assert wb.tolist() == [w.tolist(), w.tolist()] and int(nb) == 10  # no pair across sequences


def test_position_weights_nan_and_zero_hidden():
    # NaN cosine = not similar; zero vectors: cos = 0 / max(0, 1e-12) = 0, similar only if tau <= 0
    h = torch.tensor([[float("nan"), 1.0], [float("nan"), 1.0], [0.0, 0.0], [0.0, 0.0]])
    w, _ = position_weights(h, torch.ones(4, dtype=torch.bool), 2.0, 0.0)
    assert w.tolist() == [1.0, 1.0, 2.0, 1.0]
    w, _ = position_weights(h, torch.ones(4, dtype=torch.bool), 2.0, 0.1)
    assert w.tolist() == [1.0, 1.0, 1.0, 1.0]


# --------------------------------------------------------------------------------------------
# Reference: gradcheck and the EAGLE special case


def test_reference_gradcheck_float64():
    draft, target, hidden, mask = _inputs(2, 4, 11, 5, dtype=torch.float64, seed=3)
    fp = torch.randn(2, 4, 6, dtype=torch.float64, requires_grad=True)
    ft = torch.randn(2, 4, 6, dtype=torch.float64)
    d = draft.clone().requires_grad_(True)

    def f(d_, fp_):
        return cascade_drafter_loss(d_, target, hidden, mask, feature_pred=fp_, feature_target=ft,
                                    backend="reference").double()

    # smooth-L1's kink at |x| = 1 is not hit by these random values
    assert torch.autograd.gradcheck(f, (d, fp), eps=1e-6, atol=1e-6)


@pytest.mark.parametrize("backend", ["reference", "chunked", pytest.param("triton", marks=requires_triton)])
@pytest.mark.parametrize("B,T,V,D", [pytest.param(0, 7, 37, 16, id="T7-V37"),
                                     pytest.param(2, 5, 130, 12, id="B2-T5-V130")])
def test_c1_equals_eagle_loss(backend, B, T, V, D):
    draft, target, hidden, mask = _inputs(B, T, V, D, seed=5)
    fp = torch.randn(*hidden.shape[:-1], 9, requires_grad=True)
    ft = torch.randn(*hidden.shape[:-1], 9)
    d = draft.clone().requires_grad_(True)
    loss = cascade_drafter_loss(d, target, hidden, mask, c=1.0, feature_pred=fp,
                                feature_target=ft, backend=backend)
    loss.backward()
    # EAGLE's objective, written out (exact division by the number of counted positions)
    d2 = draft.clone().requires_grad_(True)
    fp2 = fp.detach().clone().requires_grad_(True)
    m = mask.float()
    target_p = torch.softmax(target, -1)
    ploss = -(target_p * torch.log_softmax(d2, -1)).sum(-1)
    ploss = (ploss * m).sum() / m.sum()
    vloss = F.smooth_l1_loss(fp2, ft, reduction="none").mean(-1)
    vloss = (vloss * m).sum() / m.sum()
    want = 0.1 * ploss + 1.0 * vloss
    want.backward()
    _assert_close("loss", loss, want.detach(), 1e-6, 1e-6)
    _assert_close("grad draft", d.grad, d2.grad, 1e-7, 1e-5)
    _assert_close("grad feature", fp.grad, fp2.grad, 1e-7, 1e-5)


def test_c_scales_similar_positions():
    # all positions identical hidden -> every position but the last gets c
    T, V = 6, 19
    draft, target, _, _ = _inputs(0, T, V, 4, seed=7)
    hidden = torch.ones(T, 4)
    ce = -(torch.softmax(target, -1) * torch.log_softmax(draft, -1)).sum(-1)
    for c in (0.0, 1.0, 2.5):
        loss = cascade_drafter_loss(draft, target, hidden, c=c, w_cls=1.0, backend="reference")
        want = (c * ce[:-1].sum() + ce[-1]) / T
        _assert_close(f"c={c}", loss, want, 1e-6, 1e-6)


# --------------------------------------------------------------------------------------------
# Fused Triton and CPU paths vs the reference (float32)


@requires_triton
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("B,T,V,D,block", SHAPES)
def test_triton_soft_ce_parity_fp32(B, T, V, D, block, device):
    draft, target, hidden, mask = _inputs(B, T, V, D, device=device, seed=11)
    scale = _rows_scale(hidden, mask).to(device)
    d2, t2 = draft.reshape(-1, V), target.reshape(-1, V)
    a = d2.clone().requires_grad_(True)
    la = soft_cross_entropy_triton(a, t2, scale, block)
    la.backward()
    b = d2.clone().requires_grad_(True)
    lb = soft_cross_entropy_reference(b, t2, scale)
    lb.backward()
    _assert_close("loss", la, lb.detach(), 1e-5, 1e-5)
    _assert_close("grad", a.grad, b.grad, 1e-6, 1e-5)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize(
    "backend", [pytest.param("chunked", id="chunked"), pytest.param("triton", id="triton", marks=requires_triton)]
)
@pytest.mark.parametrize("B,T,V,D,block", SHAPES)
def test_api_parity_fp32_with_features(B, T, V, D, block, backend, device):
    draft, target, hidden, mask = _inputs(B, T, V, D, device=device, seed=13)
    fp = torch.randn(*hidden.shape[:-1], 7, device=device)
    ft = torch.randn(*hidden.shape[:-1], 7, device=device)
    outs = {}
    for be in ("reference", backend):
        d = draft.clone().requires_grad_(True)
        f = fp.clone().requires_grad_(True)
        loss = cascade_drafter_loss(d, target, hidden, mask, feature_pred=f, feature_target=ft, backend=be)
        loss.backward()
        outs[be] = (loss.detach(), d.grad, f.grad)
    for name, x, y in zip(("loss", "grad draft", "grad feature"), outs[backend], outs["reference"]):
        _assert_close(name, x, y, 1e-6, 1e-5)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("backend", ["chunked", pytest.param("triton", marks=requires_triton)])
@pytest.mark.parametrize("offset", [pytest.param(1e3, id="plus1e3"), pytest.param(-3e4, id="minus3e4")])
def test_large_common_logit_offset(offset, backend, device):
    # softmax is shift-invariant; the fused forms must not lose the loss to cancellation
    draft, target, hidden, mask = _inputs(0, 5, 130, 4, device=device, seed=47, mask_p=0.0)
    draft, target = draft + offset, target - offset  # (fp32 rounding of the inputs is kept)
    truth_loss, truth_grad = _run("reference", draft.double(), target.double(), hidden, mask)
    loss, grad = _run(backend, draft, target, hidden, mask)
    _assert_close("loss", loss, truth_loss, 2e-6, 1e-5)
    _assert_close("grad", grad, truth_grad, 1e-6, 1e-4)


@pytest.mark.parametrize("device", DEVICES)
def test_cpu_path_row_chunks(device):
    # chunk smaller than the row count and a mask that splits the runs of live rows
    draft, target, hidden, mask = _inputs(2, 9, 33, 4, device=device, seed=17, mask_p=0.4)
    scale = _rows_scale(hidden, mask).to(device)
    d2, t2 = draft.reshape(-1, 33), target.reshape(-1, 33)
    a = d2.clone().requires_grad_(True)
    threads = torch.get_num_threads()
    la = soft_cross_entropy_chunked(a, t2, scale, chunk_elems=70)  # 2 rows per chunk, worker threads
    la.backward()
    assert torch.get_num_threads() == threads  # the worker threads' setting does not leak
    again = soft_cross_entropy_chunked(d2, t2, scale, chunk_elems=70)
    assert torch.equal(again, la.detach())  # fixed-order partial sums: deterministic
    b = d2.clone().requires_grad_(True)
    lb = soft_cross_entropy_reference(b, t2, scale)
    lb.backward()
    _assert_close("loss", la, lb.detach(), 1e-6, 1e-6)
    _assert_close("grad", a.grad, b.grad, 1e-7, 1e-6)


# --------------------------------------------------------------------------------------------
# Low precision: the flash-attention tolerance rule


def _err_vs_fp64(x, truth):
    return (x.double().cpu() - truth.double().cpu()).abs().max().item()


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize(
    "backend", [pytest.param("chunked", id="chunked"), pytest.param("triton", id="triton", marks=requires_triton)]
)
@pytest.mark.parametrize("dtype", [pytest.param(torch.bfloat16, id="bf16"), pytest.param(torch.float16, id="fp16")])
@pytest.mark.parametrize("B,T,V,D,block", SHAPES[:3])
def test_low_precision_tolerance_rule(B, T, V, D, block, dtype, backend, device):
    """Error of the fused path vs float64 <= 2x the reference-in-low-precision's own error + floor."""
    draft, target, hidden, mask = _inputs(B, T, V, D, dtype=dtype, device=device, seed=19)
    truth_loss, truth_grad = _run("reference", draft.double(), target.double(), hidden, mask)
    ref_loss, ref_grad = _run("reference", draft, target, hidden, mask)
    got_loss, got_grad = _run(backend, draft, target, hidden, mask)
    assert got_grad.dtype == dtype
    floor_loss, floor_grad = 1e-5, 1e-5 * truth_grad.abs().max().item() + 1e-7
    e_ref, e_got = _err_vs_fp64(ref_loss, truth_loss), _err_vs_fp64(got_loss, truth_loss)
    assert e_got <= 2 * e_ref + floor_loss, (e_got, e_ref)
    e_ref, e_got = _err_vs_fp64(ref_grad, truth_grad), _err_vs_fp64(got_grad, truth_grad)
    assert e_got <= 2 * e_ref + floor_grad, (e_got, e_ref)


# --------------------------------------------------------------------------------------------
# Masked positions contribute nothing


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize(
    "backend",
    ["reference", "chunked", pytest.param("triton", marks=requires_triton)],
)
@pytest.mark.parametrize("poison", [pytest.param(1e3, id="big"), pytest.param(float("nan"), id="nan"),
                                    pytest.param(float("inf"), id="inf")])
def test_masked_positions_contribute_nothing(poison, backend, device):
    draft, target, hidden, mask = _inputs(2, 6, 37, 8, device=device, seed=23, mask_p=0.0)
    mask[0, 2] = False
    mask[1, 5] = False
    mask[1, 0] = False
    loss0, grad0 = _run(backend, draft, target, hidden, mask)
    assert (grad0[~mask] == 0).all()
    d, t = draft.clone(), target.clone()
    d[~mask] = poison
    t[~mask] = -poison
    loss1, grad1 = _run(backend, d, t, hidden, mask)
    assert torch.isfinite(loss1)
    assert (grad1[~mask] == 0).all()
    # changing a masked row changes nothing else (the weight of its predecessor is a function of
    # the hidden states and the mask only)
    _assert_close("loss", loss1, loss0, 0.0)
    _assert_close("grad", grad1, grad0, 0.0)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("backend", ["reference", "chunked", pytest.param("triton", marks=requires_triton)])
def test_all_masked_gives_zero(backend, device):
    draft, target, hidden, _ = _inputs(0, 5, 17, 4, device=device, seed=29)
    mask = torch.zeros(5, dtype=torch.bool, device=device)
    fp = torch.randn(5, 3, device=device, requires_grad=True)
    d = draft.clone().requires_grad_(True)
    loss = cascade_drafter_loss(d, target, hidden, mask, feature_pred=fp,
                                feature_target=torch.randn(5, 3, device=device), backend=backend)
    loss.backward()
    assert loss.item() == 0.0
    assert (d.grad == 0).all() and (fp.grad == 0).all()


# --------------------------------------------------------------------------------------------
# Autograd plumbing


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("backend", ["chunked", pytest.param("triton", marks=requires_triton)])
def test_grad_output_scaling_and_retain_graph(backend, device):
    draft, target, hidden, mask = _inputs(0, 5, 29, 4, device=device, seed=31)
    _, g1 = _run("reference", draft, target, hidden, mask)
    d = draft.clone().requires_grad_(True)
    loss = cascade_drafter_loss(d, target, hidden, mask, backend=backend)
    (3.0 * loss).backward(retain_graph=True)
    _assert_close("3x", d.grad, 3 * g1, 1e-7, 1e-5)
    loss.backward()  # grad_output == 1: accumulates into .grad, must not alias the saved buffer
    _assert_close("4x", d.grad, 4 * g1, 1e-7, 1e-5)
    assert target.grad is None


def test_target_is_detached_and_no_grad_ok():
    draft, target, hidden, mask = _inputs(0, 4, 13, 4, seed=37)
    t = target.clone().requires_grad_(True)
    d = draft.clone().requires_grad_(True)
    for backend in ("reference", "chunked"):
        loss = cascade_drafter_loss(d, t, hidden, mask, backend=backend)
        assert loss.dtype == torch.float32 and loss.dim() == 0
        loss.backward()
        assert t.grad is None
    with torch.no_grad():
        cascade_drafter_loss(draft, target, hidden, mask, backend="chunked")


def test_auto_backend_on_cpu_is_chunked_path():
    draft, target, hidden, mask = _inputs(0, 4, 13, 4, seed=41)
    d = draft.clone().requires_grad_(True)
    loss = cascade_drafter_loss(d, target, hidden, mask)
    assert "ChunkedSoftCrossEntropy" in type(loss.grad_fn).__name__


# --------------------------------------------------------------------------------------------
# Validation at the boundary

_D, _T, _H = torch.randn(4, 11), torch.randn(4, 11), torch.randn(4, 3)


@pytest.mark.parametrize(
    "kwargs,exc,match",
    [
        pytest.param(dict(draft_logits=_D.long()), TypeError, "draft_logits", id="draft-int"),
        pytest.param(dict(draft_logits=[[1.0]]), TypeError, "draft_logits", id="draft-list"),
        pytest.param(dict(target_logits=_T.long()), TypeError, "target_logits", id="target-int"),
        pytest.param(dict(target_hidden=_H.int()), TypeError, "target_hidden", id="hidden-int"),
        pytest.param(dict(draft_logits=torch.randn(11)), ValueError, "draft_logits", id="draft-1d"),
        pytest.param(dict(target_logits=torch.randn(4, 12)), ValueError, "vocabulary", id="V-mismatch"),
        pytest.param(dict(target_logits=torch.randn(5, 11)), ValueError, "target_logits", id="T-mismatch"),
        pytest.param(dict(target_logits=torch.randn(1, 4, 11)), ValueError, "target_logits", id="rank-mismatch"),
        pytest.param(dict(target_hidden=torch.randn(5, 3)), ValueError, "target_hidden", id="hidden-T"),
        pytest.param(dict(mask=torch.ones(5, dtype=torch.bool)), ValueError, "mask", id="mask-shape"),
        pytest.param(dict(mask=torch.full((4,), 2)), ValueError, "mask", id="mask-values"),
        pytest.param(dict(mask=[1, 1, 1, 1]), TypeError, "mask", id="mask-list"),
        pytest.param(dict(c=-1.0), ValueError, "c", id="c-negative"),
        pytest.param(dict(c=float("nan")), ValueError, "c", id="c-nan"),
        pytest.param(dict(c="2"), TypeError, "c", id="c-str"),
        pytest.param(dict(tau_seq=1.5), ValueError, "tau_seq", id="tau-big"),
        pytest.param(dict(tau_seq=float("inf")), ValueError, "tau_seq", id="tau-inf"),
        pytest.param(dict(feature_pred=torch.randn(4, 2)), ValueError, "feature", id="feature-alone"),
        pytest.param(dict(feature_pred=torch.randn(4, 2), feature_target=torch.randn(4, 3)),
                     ValueError, "feature_target", id="feature-shape"),
        pytest.param(dict(feature_pred=torch.randn(3, 2), feature_target=torch.randn(3, 2)),
                     ValueError, "feature_pred", id="feature-T"),
        pytest.param(dict(backend="cuda"), ValueError, "backend", id="backend-name"),
        pytest.param(dict(w_cls=None), TypeError, "w_cls", id="w_cls-none"),
    ],
)
def test_validation_errors(kwargs, exc, match):
    args = dict(draft_logits=_D, target_logits=_T, target_hidden=_H)
    args.update(kwargs)
    with pytest.raises(exc, match=match):
        cascade_drafter_loss(**args)


@pytest.mark.skipif(HAS_CUDA or INTERPRET or not HAS_TRITON, reason="only without GPU and interpreter")
def test_triton_on_cpu_without_interpreter_is_refused():  # pragma: no cover - not hit under conftest
    with pytest.raises(ValueError, match="triton"):
        cascade_drafter_loss(_D, _T, _H, backend="triton")


def test_full_reference_entry_point_matches_api():
    draft, target, hidden, mask = _inputs(2, 5, 23, 6, seed=43)
    a = cascade_drafter_loss_reference(draft, target, hidden, mask, c=2.0, tau_seq=0.5)
    b = cascade_drafter_loss(draft, target, hidden, mask, backend="reference")
    _assert_close("loss", a, b, 0.0)


# --------------------------------------------------------------------------------------------
# int64 row offsets (needs a GPU with memory for R * V > 2**31 elements)


@requires_cuda
@requires_triton
@pytest.mark.slow
def test_triton_int64_row_offsets():  # pragma: no cover - GPU only
    V = 65536
    R = (2**31) // V + 3  # R * V > 2**31
    g = torch.Generator(device="cuda").manual_seed(0)
    draft = torch.randn(R, V, device="cuda", dtype=torch.bfloat16, generator=g)
    target = torch.randn(R, V, device="cuda", dtype=torch.bfloat16, generator=g)
    scale = torch.zeros(R, device="cuda")
    scale[-2:] = 1.0
    d = draft.requires_grad_(True)
    loss = soft_cross_entropy_triton(d, target, scale)
    loss.backward()
    tail = draft[-2:].detach().clone().requires_grad_(True)
    want = soft_cross_entropy_reference(tail, target[-2:], scale[-2:])
    want.backward()
    _assert_close("loss", loss, want.detach(), 1e-3, 1e-3)
    _assert_close("grad tail", d.grad[-2:], tail.grad, 1e-2, 1e-2)
