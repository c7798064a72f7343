"""Triton backend vs the reference, decision for decision (issue 4).

On a machine without CUDA the kernels run through Triton's CPU interpreter (``TRITON_INTERPRET=1``,
set by ``tests/conftest.py``) on small, odd shapes with ``BLOCK_V`` smaller than ``V`` so every chunk
loop runs several times. On a CUDA machine the same tests run on the GPU (``DEVICES`` below).
Expected: identical ``accept_len``, ``accepted_nodes``, ``next_token``, ``status``; ``tvd`` within 1e-5.
"""
import pytest
import torch

import cascade_kernels as ck
from cascade_kernels import philox
from conftest import HAS_CUDA, HAS_TRITON

pytestmark = pytest.mark.skipif(not HAS_TRITON, reason="triton is not installed")

DEVICES = [pytest.param("cpu", id="interp",
                        marks=pytest.mark.skipif(HAS_CUDA, reason="CUDA present: the GPU lane runs instead")),
           pytest.param("cuda", id="cuda", marks=pytest.mark.skipif(not HAS_CUDA, reason="no CUDA GPU on this machine"))]


@pytest.fixture(autouse=True)
def _small_blocks(monkeypatch):
    from cascade_kernels.ops import verify_triton

    monkeypatch.setattr(verify_triton, "MAX_BLOCK_V", 16)


# ------------------------------------------------------------------------------------------------
# Case construction
# ------------------------------------------------------------------------------------------------
TREES = [  # different shapes, padding (-1 parents at i > 0) in the middle and at the end
    [-1, 0, 0, 0, 1, 1, 2, 4, 4, 7, -1, -1],
    [-1, 0, 0, 1, 1, 3, -1, 3, 5, 0, 9, -1],
    [-1, 0, 1, 2, 0, 4, 0, 6, 1, 8, 3, 10],
    [-1, 0, 0, 0, 0, 1, 1, 2, 5, -1, 8, 8],
]


def make_case(B=4, V=37, seed=0, dtype=torch.float32, cfg=False, sampled=False, D=19, nan_rows=(),
              nan_draft_rows=(), boost=2.5):
    g = torch.Generator().manual_seed(seed)
    N = len(TREES[0])
    parents = torch.tensor(TREES[:B], dtype=torch.int32)
    tokens = torch.randint(0, V, (B, N), generator=g)
    tokens[:, 2] = tokens[:, 1]  # a repeated candidate
    if B > 1:
        tokens[1, 4] = -1  # a real child whose token is -1
    logits = torch.randn(B, N, V, generator=g) * 1.5
    for b in range(B):  # make the drafted tokens likely so the walks go deep
        for i in range(1, N):
            par = int(parents[b, i])
            if par >= 0 and int(tokens[b, i]) >= 0:
                logits[b, par, tokens[b, i]] += boost * float(torch.rand((), generator=g))
    hidden = torch.randn(B, N, D, generator=g)
    hidden = hidden + 2.0 * hidden[:, :1]  # shared direction: some cosines above the thresholds
    args = dict(tokens=tokens, parents=parents, hidden=hidden)
    if cfg:
        uncond = logits + 0.5 * torch.randn(B, N, V, generator=g)
        target = torch.cat([logits, uncond])
    else:
        target = logits
    for b, i in nan_rows:
        target[b, i, 3] = float("nan")
    args["target_logits"] = target.to(dtype)
    if sampled:
        draft = logits + 0.7 * torch.randn(B, N, V, generator=g)
        for b, i in nan_draft_rows:
            draft[b, i, 5] = float("nan")
        args["draft_logits"] = draft.to(dtype)
    return args


def neighbors(V, K=6, seed=1):
    return ck.lantern_neighbors(torch.randn(V, 3, generator=torch.Generator().manual_seed(seed)), K)


def methods(V):
    return {
        "exact": ck.Exact(),
        "lantern": ck.Lantern(neighbors(V), delta=0.15),
        "lanternpp": ck.Lantern(neighbors(V), lam=3.0),
        "gsd": ck.GSD(G=4, dp=0.05),
        "cascade": ck.Cascade(tau_pos=0.6, tau_seq=0.5, eps=0.4),
        "cascade_inter": ck.Cascade(tau_pos=0.6, tau_seq=0.5, eps=0.4, use_convergence=False),
        "cool": ck.Cool(),
    }


def run_both(device, args, method, seeds=(0, 1, 2), **kw):
    outs = []
    for s in seeds:
        seed = torch.arange(args["tokens"].shape[0], dtype=torch.int64) * 7919 + s
        a = {k: (v.to(device) if isinstance(v, torch.Tensor) else v) for k, v in args.items()}
        ref = ck.verify(**args, method=method, seed=seed, backend="reference", **kw)
        tri = ck.verify(**a, method=_to(method, device), seed=seed.to(device), backend="triton", **kw)
        assert_same(ref, tri, args["target_logits"].shape[-1])
        outs.append(ref)
    return outs


def _to(method, device):
    if isinstance(method, ck.Lantern) and device != "cpu":
        return ck.Lantern(method.neighbors.to(device), k=method.k, delta=method.delta, lam=method.lam)
    return method


def assert_same(ref, tri, V):
    assert tri.backend == "triton"
    for f in ("accept_len", "accepted_nodes", "next_token", "status"):
        r, t = getattr(ref, f), getattr(tri, f).cpu()
        assert r.dtype == t.dtype, f
        assert torch.equal(r, t), f"{f}: reference {r.tolist()} vs triton {t.tolist()}"
    torch.testing.assert_close(tri.tvd.cpu(), ref.tvd, atol=1e-5, rtol=0)
    assert bool(((tri.next_token >= 0) & (tri.next_token < V)).all())


# ------------------------------------------------------------------------------------------------
# Every method x drafting mode x residual, and greedy
# ------------------------------------------------------------------------------------------------
METHOD_NAMES = ["exact", "lantern", "lanternpp", "gsd", "cascade", "cascade_inter", "cool"]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("residual", ["transport", "standard"])
@pytest.mark.parametrize("drafting", ["deterministic", "sampled"])
@pytest.mark.parametrize("name", METHOD_NAMES)
def test_methods(device, name, drafting, residual):
    V = 37
    args = make_case(V=V, seed=METHOD_NAMES.index(name) * 4 + 2 * (drafting == "sampled") + (residual == "standard"), sampled=drafting == "sampled")
    outs = run_both(device, args, methods(V)[name], seeds=(0,), residual=residual)
    if name in ("exact", "lantern", "cool"):
        assert int(outs[0].accept_len.max()) > 0  # the walks do go below the root


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("drafting", ["deterministic", "sampled"])
@pytest.mark.parametrize("name", METHOD_NAMES)
def test_greedy(device, name, drafting):
    V = 37
    args = make_case(V=V, seed=11, sampled=drafting == "sampled")  # greedy ignores draft_logits
    run_both(device, args, methods(V)[name], seeds=(0,), temperature=0.0)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name", ["exact", "cascade", "cool", "lantern", "gsd"])
def test_eps_zero_is_exact(device, name):
    V = 37
    args = make_case(V=V, seed=5)
    ex = run_both(device, args, ck.Exact(), seeds=(3,))
    relaxed = run_both(device, args, methods(V)[name], seeds=(3,), eps=0.0)
    assert torch.equal(ex[0].accepted_nodes, relaxed[0].accepted_nodes)


# ------------------------------------------------------------------------------------------------
# Logit processing: CFG, temperature, top-k, top-p, dtypes, vocabulary sizes
# ------------------------------------------------------------------------------------------------
PROC = [
    pytest.param(dict(V=61, cfg=True), dict(cfg_scale=2.5), id="cfg-V61"),
    pytest.param(dict(V=61), dict(temperature=0.7, top_k=5), id="T0.7-topk5-V61"),
    pytest.param(dict(V=130), dict(top_p=0.8), id="topp0.8-V130"),
    pytest.param(dict(V=130, cfg=True), dict(cfg_scale=1.5, temperature=1.3, top_k=20, top_p=0.9),
                 id="cfg-T1.3-topk20-topp0.9-V130"),
    pytest.param(dict(V=37), dict(top_k=1), id="topk1-V37"),
    pytest.param(dict(V=37), dict(top_k=37, top_p=0.3), id="topkV-topp0.3-V37"),
    pytest.param(dict(V=61, dtype=torch.bfloat16), dict(top_k=7), id="bf16-topk7-V61"),
    pytest.param(dict(V=61, dtype=torch.float16, cfg=True), dict(cfg_scale=3.0, top_p=0.95), id="fp16-cfg-V61"),
    pytest.param(dict(V=37, dtype=torch.bfloat16), dict(temperature=0.0, top_k=4), id="bf16-greedy-topk4"),
]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("drafting", ["deterministic", "sampled"])
@pytest.mark.parametrize("case,kw", PROC)
def test_processing(device, case, kw, drafting, monkeypatch):
    from cascade_kernels.ops import verify_triton

    monkeypatch.setattr(verify_triton, "MAX_BLOCK_V", 32 if case["V"] < 100 else 64)  # still < V
    args = make_case(seed=21, sampled=drafting == "sampled", **case)
    name = "cascade" if "cfg_scale" in kw else "exact"  # CASCADE reads the conditional half's hidden
    run_both(device, args, methods(case["V"])[name], seeds=(0,), **kw)


# ------------------------------------------------------------------------------------------------
# Non-finite rows and a tiny batch
# ------------------------------------------------------------------------------------------------
NONFINITE = [
    pytest.param(dict(nan_rows=[(0, 0), (2, 1), (3, 5)]), dict(), id="nan-target"),
    # a NaN anywhere flags the row, even where top-k would mask it
    pytest.param(dict(nan_rows=[(0, 0), (1, 1)]), dict(top_k=4), id="nan-target-topk"),
    pytest.param(dict(nan_rows=[(0, 0)], cfg=True), dict(cfg_scale=2.0), id="nan-target-cfg"),
    pytest.param(dict(sampled=True, nan_draft_rows=[(0, 0), (2, 1), (3, 2)]), dict(), id="nan-draft"),
]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("case,kw", NONFINITE)
def test_nonfinite_rows(device, case, kw):
    args = make_case(seed=31, **case)
    outs = run_both(device, args, ck.Exact(), seeds=(0,), **kw)
    if not kw.get("top_k"):
        assert int(outs[0].status.max()) > 0


@pytest.mark.parametrize("device", DEVICES)
def test_inf_and_all_neg_inf_rows(device):
    args = make_case(seed=41)
    args["target_logits"][0, 0, 7] = float("inf")
    args["target_logits"][1, 0, :] = -float("inf")
    args["target_logits"][2, 0, :5] = -float("inf")  # partly -inf is still a distribution
    outs = run_both(device, args, ck.Exact(), seeds=(0,))
    assert outs[0].status.tolist()[:2] == [1, 1]


@pytest.mark.parametrize("device", DEVICES)
def test_single_sequence_root_only_children(device):
    args = make_case(B=1, seed=51)
    args = {k: (v[:, :4] if k in ("tokens", "parents", "hidden") else v) for k, v in args.items()}
    args["target_logits"] = args["target_logits"][:, :4].contiguous()
    args["tokens"] = args["tokens"].contiguous()
    args["parents"] = args["parents"].contiguous()
    run_both(device, args, ck.Exact(), seeds=(0, 1))


# ------------------------------------------------------------------------------------------------
# Tree buffers, similarity sets, Philox streams
# ------------------------------------------------------------------------------------------------
def _random_parents(B, N, seed):
    g = torch.Generator().manual_seed(seed)
    par = torch.full((B, N), -1, dtype=torch.int32)
    for b in range(B):
        real = [0]
        for i in range(1, N):
            if torch.rand((), generator=g) < 0.15:
                continue  # padding node
            par[b, i] = real[int(torch.randint(0, len(real), (), generator=g))]
            real.append(i)
    return par


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("B,N", [pytest.param(1, 1, id="root-only"), pytest.param(3, 12, id="B3-N12"),
                                 pytest.param(2, 37, id="B2-N37-two-words")])
def test_tree_buffers(device, B, N):
    parents = _random_parents(B, N, seed=N)
    prefix = torch.tensor([5, 0, 17][:B])
    ref = ck.tree_buffers(parents, prefix, backend="reference")
    tri = ck.tree_buffers(parents.to(device), prefix.to(device), backend="triton")
    for f in ref._fields:
        r, t = getattr(ref, f), getattr(tri, f).cpu()
        assert r.dtype == t.dtype and torch.equal(r, t), f


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16, torch.float64],
                         ids=["fp32", "bf16", "fp16", "fp64"])
@pytest.mark.parametrize("N,D", [pytest.param(12, 19, id="N12-D19"), pytest.param(37, 67, id="N37-D67")])
def test_similarity_sets(device, dtype, N, D):
    B = 2
    parents = _random_parents(B, N, seed=D)
    g = torch.Generator().manual_seed(N)
    hidden = torch.randn(B, N, D, generator=g)
    hidden = (hidden + 1.5 * hidden[:, :1]).to(dtype)
    hidden[1, 3] = hidden[1, 2]  # identical states
    ref = ck.similarity_sets(parents, hidden, 0.7, 0.5, backend="reference")
    tri = ck.similarity_sets(parents.to(device), hidden.to(device), 0.7, 0.5, backend="triton")
    assert int(ref.interchange.sum()) > 0 and int(ref.convergence.sum()) > 0
    for f in ref._fields:
        r, t = getattr(ref, f), getattr(tri, f).cpu()
        assert r.dtype == t.dtype and torch.equal(r, t), f


if HAS_TRITON:
    import triton
    import triton.language as tl

    from cascade_kernels.ops.verify_triton import _uniform

    @triton.jit
    def _philox_streams_kernel(seed_ptr, out_ptr, n):
        s = tl.load(seed_ptr)
        for i in range(0, n):
            tl.store(out_ptr + i, _uniform(s, tl.full([], 0, tl.int64) + i))  # ACCEPT stream, index = node
        tl.store(out_ptr + n, _uniform(s, tl.full([], 1, tl.int64) << 32))  # SAMPLE stream, index 0


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("seed", [0, -7, 2**40 + 3, 2**63 - 1])
def test_philox_streams(device, seed):
    n = 12
    out = torch.empty(n + 1, device=device)
    _philox_streams_kernel[(1,)](torch.tensor([seed], device=device), out, n)
    ref = torch.cat([philox.uniform(torch.tensor(seed), philox.ACCEPT, torch.arange(n)),
                     philox.uniform(torch.tensor(seed), philox.SAMPLE, torch.zeros(1, dtype=torch.int64))])
    assert torch.equal(out.cpu(), ref)
