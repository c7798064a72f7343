"""Every fused backend makes the reference backend's decisions, decision for decision.

One set of cases, parametrised over the backends: ``cpu`` (the C++ extension) and ``triton`` (on a
machine without CUDA through Triton's CPU interpreter, ``TRITON_INTERPRET=1`` set by conftest, with
``MAX_BLOCK_V`` below V so every chunk loop runs several times; on a CUDA machine on the GPU). Each case
verifies a batch of random sequences in one call per backend and compares accept_len, accepted_nodes,
next_token and status exactly and tvd within 1e-5 (rtol 2e-3 in sampled drafting, see assert_same).
The interpreter is slow, so the Triton lane runs smaller batches and vocabularies of the same cases.
"""
import warnings

import pytest
import torch

import cascade_kernels as ck
from cascade_kernels import _backend, philox
from conftest import HAS_CUDA, HAS_TRITON

CPU_REASON = _backend.unavailable_reason("cpu")
BACKENDS = [
    pytest.param("cpu", id="cpu", marks=pytest.mark.skipif(CPU_REASON is not None, reason=f"no C++ extension: {CPU_REASON}")),
    pytest.param("triton", id="triton", marks=pytest.mark.skipif(not HAS_TRITON, reason="triton is not installed")),
]
TRITON_DEVICES = [
    pytest.param("cpu", id="interp", marks=pytest.mark.skipif(HAS_CUDA or not HAS_TRITON,
                                                              reason="CUDA present (the GPU lane runs) or no triton")),
    pytest.param("cuda", id="cuda", marks=pytest.mark.skipif(not HAS_CUDA or not HAS_TRITON, reason="no CUDA GPU")),
]


@pytest.fixture(autouse=True)
def _small_blocks(monkeypatch):
    if HAS_TRITON:
        from cascade_kernels.ops.verify import triton as verify_triton

        monkeypatch.setattr(verify_triton, "MAX_BLOCK_V", 16)


def device_of(backend):
    return "cuda" if backend == "triton" and HAS_CUDA else "cpu"


def size(backend, B, V):
    """The Triton interpreter runs the same case on a smaller batch and vocabulary."""
    if backend == "triton" and not HAS_CUDA:
        return min(B, 3), min(V, 61)
    return B, V


EAGLE = ck.tree_from_choices(ck.MC_SIM_7B_63)
DEEP = ck.tree_from_choices(ck.DEEP_CHOICES)


def random_parents(gen, N, pad_frac=0.2):
    """One random topological tree of N slots, some of them padding (-1 parents), deep-ish."""
    par = [-1]
    for i in range(1, N):
        real = [j for j in range(i) if j == 0 or par[j] >= 0]
        if i > 1 and torch.rand((), generator=gen) < pad_frac:
            par.append(-1)
            continue
        # prefer recent nodes so that trees get deep
        k = len(real)
        pick = real[max(0, k - 1 - int(torch.randint(0, min(k, 4), (), generator=gen)))]
        if torch.rand((), generator=gen) < 0.3:
            pick = real[int(torch.randint(0, k, (), generator=gen))]
        par.append(pick)
    return torch.tensor(par, dtype=torch.int32)


def make_case(seed, *, B=48, V=1000, tree="random", dtype=torch.float32, cfg=False, nan=False, draft=False,
              peak=12.0, hidden_dim=16, repeats=True):
    """Random inputs with logits that favour each node's first children so walks go deep."""
    gen = torch.Generator().manual_seed(seed)
    if tree == "eagle":
        parents = EAGLE.expand(B, -1).clone()
    elif tree == "deep":
        parents = DEEP.expand(B, -1).clone()
    else:
        N = int(torch.randint(8, 40, (), generator=gen))
        parents = torch.stack([random_parents(gen, N) for _ in range(B)])
    N = parents.shape[1]
    tokens = torch.randint(0, V, (B, N), generator=gen)
    if repeats:  # repeated sibling tokens and -1 children
        r = torch.rand(B, N, generator=gen)
        tokens = torch.where(r < 0.05, torch.full_like(tokens, -1), tokens)
        tokens = torch.where((r > 0.05) & (r < 0.15), tokens % 7, tokens)
    scale = torch.rand(B, 1, 1, generator=gen) * 3 + 0.5
    logits = torch.randn(B, N, V, generator=gen) * scale
    # a per-node peak on the tokens of its children (first child highest) so acceptance happens
    for b in range(B):
        for i in range(1, N):
            p = int(parents[b, i])
            t = int(tokens[b, i])
            if p >= 0 and t >= 0:
                rank = int((parents[b, 1:i] == p).sum())
                logits[b, p, t] += peak * float(scale[b]) * (0.3 + float(torch.rand((), generator=gen))) / (1 + rank)
    if nan:
        rows = torch.rand(B, N, generator=gen) < 0.08
        cols = torch.randint(0, V, (B, N), generator=gen)
        vals = torch.tensor([float("nan"), float("inf"), -float("inf")])[torch.randint(0, 3, (B, N), generator=gen)]
        logits[rows, cols[rows]] = vals[rows]
        allneg = torch.rand(B, N, generator=gen) < 0.02
        logits[allneg] = -float("inf")
    target = logits
    if cfg:
        uncond = logits + torch.randn(B, N, V, generator=gen) * 0.5
        target = torch.cat([logits, uncond])
    out = dict(tokens=tokens, parents=parents, target_logits=target.to(dtype),
               seed=torch.randint(0, 2**62, (B,), generator=gen))
    if draft:
        d = logits + torch.randn(B, N, V, generator=gen) * 0.7
        if nan:
            rows = torch.rand(B, N, generator=gen) < 0.05
            d[rows, 0] = float("nan")
        out["draft_logits"] = d.to(dtype)
    base = torch.randn(B, 1, hidden_dim, generator=gen)
    out["hidden"] = base + torch.randn(B, N, hidden_dim, generator=gen) * 0.8
    return out


_NEIGHBORS = {}


def neighbors(V, k=12):
    if V not in _NEIGHBORS:
        gen = torch.Generator().manual_seed(V)
        _NEIGHBORS[V] = ck.lantern_neighbors(torch.randn(V, 3, generator=gen), k=k)
    return _NEIGHBORS[V]


def method_of(name, V):
    return {
        "exact": lambda: ck.Exact(),
        "lantern": lambda: ck.Lantern(neighbors(V), delta=0.2),
        "lantern++": lambda: ck.Lantern(neighbors(V), lam=5.0),
        "gsd": lambda: ck.GSD(G=6, dp=0.1),
        "cascade": lambda: ck.Cascade(tau_pos=0.3, tau_seq=0.2, eps=0.4),
        "cascade-default": lambda: ck.Cascade(),
        "cascade-conv": lambda: ck.Cascade(tau_pos=-1.0, tau_seq=-1.0, eps=0.9, use_interchange=False),
        "cool": lambda: ck.Cool(),
    }[name]()


def assert_same(ref, out, V, ctx="", sampled=False):
    """Decisions identical; tvd within 1e-5. In sampled drafting the residual max(q - p, 0) cancels
    when q(y) ~ p(y) ~ 1, which turns a 1-ulp difference between torch's softmax and ours into a
    relative difference of ~1e-3 in the next level's q (and charge): there tvd gets rtol 2e-3."""
    for name in ("accept_len", "accepted_nodes", "next_token", "status"):
        a, b = getattr(ref, name), getattr(out, name).cpu()
        assert a.shape == b.shape and a.dtype == b.dtype, (name, a.shape, b.shape, a.dtype, b.dtype, ctx)
        if not torch.equal(a, b):
            bad = torch.nonzero((a != b).reshape(a.shape[0], -1).any(-1)).flatten().tolist()
            raise AssertionError(f"{ctx}: {name} differs at sequences {bad[:10]}: ref {a[bad[:3]].tolist()} "
                                 f"{out.backend} {b[bad[:3]].tolist()}")
    torch.testing.assert_close(out.tvd.cpu(), ref.tvd, atol=1e-5, rtol=2e-3 if sampled else 0)
    assert bool(((out.next_token >= 0) & (out.next_token < V)).all())


def run_both(backend, inputs, method, **kw):
    dev = device_of(backend)
    ref = ck.verify(**inputs, method=method, backend="reference", **kw)
    moved = {k: (v.to(dev) if isinstance(v, torch.Tensor) else v) for k, v in inputs.items()}
    if isinstance(method, ck.Lantern) and dev != "cpu":
        method = ck.Lantern(method.neighbors.to(dev), k=method.k, delta=method.delta, lam=method.lam)
    out = ck.verify(**moved, method=method, backend=backend, **kw)
    assert out.backend == backend
    V = inputs["target_logits"].shape[-1]
    assert_same(ref, out, V, sampled="draft_logits" in inputs and kw.get("temperature", 1.0) != 0)
    return ref, out


METHODS = ["exact", "lantern", "lantern++", "gsd", "cascade", "cascade-default", "cascade-conv", "cool"]


def _grid():
    return [pytest.param(m, d, r, id=f"{m}-{d}-{r}") for m in METHODS for d in ("deterministic", "sampled")
            for r in ("transport", "standard")]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("method,drafting,residual", _grid())
def test_parity_methods(backend, method, drafting, residual):
    """every method x drafting x residual, on random trees with padding and the two static trees."""
    trees = [("random", 1000), ("eagle", 37), ("deep", 1271)]
    if backend == "triton" and not HAS_CUDA:
        trees = trees[1:2] if method != "exact" else trees[:2]
    deepest = 0
    for k, (tree, V) in enumerate(trees):
        B, V = size(backend, 24, V)
        inputs = make_case(1000 * k + sum(map(ord, method)), B=B, V=V, tree=tree, draft=drafting == "sampled")
        if not method.startswith("cascade"):
            inputs.pop("hidden")
        ref, _ = run_both(backend, inputs, method_of(method, V), residual=residual)
        deepest = max(deepest, int(ref.accept_len.max()))
    assert deepest >= 2  # deep acceptance really happens in these cases


SETTINGS = [
    pytest.param(dict(temperature=0), {}, id="greedy"),
    pytest.param(dict(temperature=0), dict(draft=True), id="greedy-ignores-draft"),
    pytest.param(dict(temperature=0.7), {}, id="temperature"),
    pytest.param(dict(cfg_scale=2.5), dict(cfg=True), id="cfg"),
    pytest.param(dict(cfg_scale=3.0, temperature=0.9, top_k=30), dict(cfg=True, draft=True), id="cfg-topk-sampled"),
    pytest.param(dict(top_k=25), {}, id="topk"),
    pytest.param(dict(top_k=1), {}, id="topk1"),
    pytest.param(dict(top_p=0.8), {}, id="topp"),
    pytest.param(dict(top_k=30, top_p=0.6), dict(draft=True), id="topk-topp-sampled"),
    pytest.param(dict(top_p=0.95, temperature=0), {}, id="greedy-topp"),
    pytest.param({}, dict(nan=True), id="nan"),
    pytest.param(dict(top_k=30), dict(nan=True, draft=True), id="nan-topk-sampled"),
    pytest.param(dict(cfg_scale=2.0), dict(nan=True, cfg=True), id="nan-cfg"),
    pytest.param({}, dict(dtype=torch.bfloat16), id="bf16"),
    pytest.param(dict(top_k=20), dict(dtype=torch.float16, draft=True), id="fp16-sampled"),
    pytest.param(dict(cfg_scale=1.5), dict(dtype=torch.bfloat16, cfg=True, draft=True), id="bf16-cfg-sampled"),
    pytest.param(dict(eps=0.0), {}, id="eps0"),
    pytest.param(dict(eps=0.05), dict(draft=True), id="eps-small"),
]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("kw,case_kw", SETTINGS)
@pytest.mark.parametrize("method", ["exact", "lantern", "gsd", "cascade", "cool"])
def test_parity_settings(backend, kw, case_kw, method):
    """greedy, CFG, top-k, top-p, NaN rows, bf16/fp16 logits, budgets; odd V."""
    if backend == "triton" and not HAS_CUDA and method not in ("exact", "cascade"):
        pytest.skip("interpreter time: the method grid above covers this method on the Triton lane")
    trees = [("random", 37), ("eagle", 1271)]
    if backend == "triton" and not HAS_CUDA:
        trees = trees[:1]  # interpreter time: the method grid runs the EAGLE tree on this lane
    for k, (tree, V) in enumerate(trees):
        B, V = size(backend, 16, V)
        inputs = make_case(77 + 13 * k + len(method), B=B, V=V, tree=tree, **case_kw)
        run_both(backend, inputs, method_of(method, V), **kw)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("residual", ["transport", "standard"])
def test_cool_charge_is_never_negative(backend, residual):
    """A fuzzer's case: greedy COOL with w_d = 1 and top-p, where a rejected candidate that top-p removed leaves
    q(x) one float32 step above 1 after renormalising; r = min(1, ...) fell below q(x) and the C++ walk charged
    -1 ulp (the reference: 0 under "transport", the removed step under "standard"; the Triton walk follows the
    same rule, though its rounding does not reach this case)."""
    logits = torch.zeros(1, 4, 5)
    logits[0, 0] = torch.tensor([-0.7805705070495605, 5.7496562004089355, -1.8143107891082764, 5.5258612632751465,
                                 -0.8648049831390381])
    inputs = dict(tokens=torch.tensor([[0, 3, 0, 1]]), parents=torch.tensor([-1, 0, 0, 0]), target_logits=logits)
    ref, out = run_both(backend, inputs, ck.Cool(delta=1.0), temperature=0.0, top_p=0.9, residual=residual)
    assert float(out.tvd) >= 0.0 and float(ref.tvd) >= 0.0


@pytest.mark.parametrize("backend", BACKENDS)
def test_nan_rows_set_status(backend):
    B = 64 if backend == "cpu" or HAS_CUDA else 12  # enough sequences for some to meet a poisoned row
    inputs = make_case(5, B=B, V=37, nan=True, draft=True)
    ref, out = run_both(backend, inputs, ck.Exact())
    assert bool((ref.status != 0).any())


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("method", ["exact", "cascade", "lantern"])
def test_out_of_range_tokens_set_status(backend, method):
    """A drafted id outside [-1, V) on a real node: status BAD_TOKEN where the walk meets it, never an error,
    never an id outside [0, V); on padding nodes and the root such ids are never read."""
    B, V = size(backend, 8, 37)
    inputs = make_case(17, B=B, V=V, tree="eagle")
    tokens = inputs["tokens"]
    tokens[0, 1], tokens[1, 2] = V, -5  # children of the root: met at once
    tokens[2, 0] = 10**6  # the root's token is never read
    tokens[3:, 5] = V + 3  # node 5 = choice [0, 0]: met only if the walk gets there
    if not method.startswith("cascade"):
        inputs.pop("hidden")
    ref, out = run_both(backend, inputs, method_of(method, V))
    assert int(ref.status[0]) & ck.STATUS_BAD_TOKEN and int(ref.status[1]) & ck.STATUS_BAD_TOKEN
    assert int(ref.accept_len[0]) == 0 and not int(ref.status[2]) & ck.STATUS_BAD_TOKEN
    with pytest.raises(ValueError, match=r"tokens\[0, 1\]"):
        ck.verify(**inputs, method=method_of(method, V), backend="reference", check="full")


@pytest.mark.parametrize("backend", BACKENDS)
def test_many_seeds_exact_and_cascade(backend):
    """thousands of sequences (hundreds on the interpreter): one batch per call, fresh seeds."""
    for s in range(6 if backend == "cpu" else 2):
        B, V = size(backend, 160, 100)
        inputs = make_case(900 + s, B=B, V=V, tree=("eagle", "deep", "random")[s % 3], draft=s % 2 == 1,
                           peak=15.0)
        for m in ("exact", "cascade"):
            run_both(backend, inputs, method_of(m, V), residual=("transport", "standard")[s % 2])


@pytest.mark.parametrize("backend", BACKENDS)
def test_one_tree_for_the_whole_batch(backend):
    """A [N] tree (or a Tree of batch 1) serves every sequence: same result as the tree repeated B times."""
    B, V = size(backend, 12, 50)
    inputs = make_case(8, B=B, V=V, tree="deep", draft=True)
    dev = device_of(backend)
    moved = {k: v.to(dev) for k, v in inputs.items() if k not in ("parents", "hidden")}
    shared = ck.verify(**moved, parents=ck.prepare_tree(DEEP, device=dev), backend=backend)
    full = ck.verify(**moved, parents=DEEP.expand(B, -1).to(dev), backend=backend)
    for a, b in zip(shared[:5], full[:5]):
        assert torch.equal(a, b)


def test_cpu_one_and_two_threads_agree():
    if CPU_REASON:
        pytest.skip(CPU_REASON)
    inputs = make_case(3, B=33, V=500, tree="deep", draft=True)
    inputs.pop("hidden")
    outs = []
    for threads in (1, 2):
        prev = torch.get_num_threads()
        torch.set_num_threads(threads)
        try:
            outs.append(ck.verify(**inputs, backend="cpu"))
        finally:
            torch.set_num_threads(prev)
    for a, b in zip(outs[0][:5], outs[1][:5]):
        assert torch.equal(a, b)


def test_cpu_philox_matches_python():
    if CPU_REASON:
        pytest.skip(CPU_REASON)
    from cascade_kernels import _C
    for seed in (0, 1, -7, 2**40 + 3, 2**63 - 1):
        for stream in (philox.ACCEPT, philox.SAMPLE):
            for index in (0, 1, 17, 2**20):
                expect = float(philox.uniform(torch.tensor(seed), stream, torch.tensor(index)))
                assert _C.uniform(seed, stream, index) == expect


def test_cpu_large_vocab_int64_offsets():
    """A larger V and tokens near its end (index math in int64); sampled, top-k."""
    if CPU_REASON:
        pytest.skip(CPU_REASON)
    inputs = make_case(11, B=2, V=70000, tree="eagle", draft=True, peak=12.0)
    inputs.pop("hidden")
    run_both("cpu", inputs, ck.Exact(), top_k=100)


def test_auto_uses_cpu_when_built():
    if CPU_REASON:
        pytest.skip(CPU_REASON)
    out = ck.verify(torch.zeros(1, 2, dtype=torch.int64), torch.tensor([[-1, 0]], dtype=torch.int32),
                    torch.randn(1, 2, 5))
    assert out.backend == "cpu"


def test_auto_falls_back_when_extension_missing(monkeypatch):
    """Without the extension, backend='auto' on the CPU uses the reference, warning exactly once."""
    monkeypatch.setitem(_backend._reasons, "cpu", "simulated: cascade_kernels._C not built")
    monkeypatch.setattr(_backend, "_resolved", {})
    monkeypatch.setattr(_backend, "_warned", set())
    inputs = make_case(1, B=2, V=20, tree="eagle")
    inputs.pop("hidden")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        a = ck.verify(**inputs)
        b = ck.verify(**inputs)
    assert a.backend == b.backend == "reference"
    runtime = [w for w in caught if issubclass(w.category, RuntimeWarning)]
    assert len(runtime) == 1 and "not built" in str(runtime[0].message)
    assert "cpu" not in ck.available_backends()
    with pytest.raises(RuntimeError, match="simulated"):
        ck.verify(**inputs, backend="cpu")


# ------------------------------------------------------------------------------------------------
# Triton's other kernels: tree buffers, similarity sets, Philox streams
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


@pytest.mark.parametrize("device", TRITON_DEVICES)
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


@pytest.mark.parametrize("device", TRITON_DEVICES)
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

    from cascade_kernels.ops.verify.triton import _uniform

    @triton.jit
    def _philox_streams_kernel(seed_ptr, out_ptr, n):
        s = tl.load(seed_ptr)
        for i in range(0, n):
            tl.store(out_ptr + i, _uniform(s, tl.full([], 0, tl.int64) + i))  # ACCEPT stream, index = node
        tl.store(out_ptr + n, _uniform(s, tl.full([], 1, tl.int64) << 32))  # SAMPLE stream, index 0


@pytest.mark.parametrize("device", TRITON_DEVICES)
@pytest.mark.parametrize("seed", [0, -7, 2**40 + 3, 2**63 - 1])
def test_philox_streams(device, seed):
    n = 12
    out = torch.empty(n + 1, device=device)
    _philox_streams_kernel[(1,)](torch.tensor([seed], device=device), out, n)
    ref = torch.cat([philox.uniform(torch.tensor(seed), philox.ACCEPT, torch.arange(n)),
                     philox.uniform(torch.tensor(seed), philox.SAMPLE, torch.zeros(1, dtype=torch.int64))])
    assert torch.equal(out.cpu(), ref)
