"""The C++ CPU backend (backend="cpu") makes the reference backend's decisions, decision for decision.

Each parity case verifies a whole batch of random sequences in one call per backend and compares
accept_len, accepted_nodes, next_token and status exactly and tvd within 1e-5.
"""
import warnings

import pytest
import torch

import cascade_kernels as ck
from cascade_kernels import backends, cpu, philox

pytestmark = pytest.mark.skipif(cpu.unavailable_reason() is not None,
                                reason=f"C++ extension not built: {cpu.unavailable_reason()}")

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


def assert_same(ref, out, ctx="", sampled=False):
    """Decisions identical; tvd within 1e-5. In sampled drafting the residual max(q - p, 0) cancels
    when q(y) ~ p(y) ~ 1, which turns a 1-ulp difference between torch's softmax and ours into a
    relative difference of ~1e-3 in the next level's q (and charge): there tvd gets rtol 2e-3."""
    assert out.backend == "cpu"
    for name in ("accept_len", "accepted_nodes", "next_token", "status"):
        a, b = getattr(ref, name), getattr(out, name)
        assert a.shape == b.shape and a.dtype == b.dtype, (name, a.shape, b.shape, a.dtype, b.dtype, ctx)
        if not torch.equal(a, b):
            bad = torch.nonzero((a != b).reshape(a.shape[0], -1).any(-1)).flatten().tolist()
            raise AssertionError(f"{ctx}: {name} differs at sequences {bad[:10]}: ref {a[bad[:3]].tolist()} "
                                 f"cpu {b[bad[:3]].tolist()}")
    assert torch.allclose(ref.tvd, out.tvd, atol=1e-5, rtol=2e-3 if sampled else 0), (ctx, (ref.tvd - out.tvd).abs().max())
    assert bool(((out.next_token >= 0) & (out.next_token < 10**9)).all())


def run_both(inputs, **kw):
    ref = ck.verify(**inputs, backend="reference", **kw)
    out = ck.verify(**inputs, backend="cpu", **kw)
    return ref, out


METHODS = ["exact", "lantern", "lantern++", "gsd", "cascade", "cascade-default", "cascade-conv", "cool"]


def _grid():
    cases = []
    for m in METHODS:
        for drafting in ("deterministic", "sampled"):
            for residual in ("transport", "standard"):
                cases.append(pytest.param(m, drafting, residual, id=f"{m}-{drafting}-{residual}"))
    return cases


@pytest.mark.parametrize("method,drafting,residual", _grid())
def test_parity_methods(method, drafting, residual):
    """every method x drafting x residual, on random trees with padding and the two static trees."""
    for k, (tree, V) in enumerate([("random", 1000), ("eagle", 37), ("deep", 1271)]):
        inputs = make_case(1000 * k + sum(map(ord, method)), B=24, V=V, tree=tree, draft=drafting == "sampled")
        if not method.startswith("cascade"):
            inputs.pop("hidden")
        ref, out = run_both(inputs, method=method_of(method, V), residual=residual)
        assert_same(ref, out, f"{method}/{drafting}/{residual}/{tree}", sampled=drafting == "sampled")
    # deep acceptance really happens in these cases
    assert int(ref.accept_len.max()) >= 2


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


@pytest.mark.parametrize("kw,case_kw", SETTINGS)
@pytest.mark.parametrize("method", ["exact", "lantern", "gsd", "cascade", "cool"])
def test_parity_settings(kw, case_kw, method):
    """greedy, CFG, top-k, top-p, NaN rows, bf16/fp16 logits, budgets; odd V."""
    for k, (tree, V) in enumerate([("random", 37), ("eagle", 1271)]):
        inputs = make_case(77 + 13 * k + len(method), B=16, V=V, tree=tree, **case_kw)
        ref, out = run_both(inputs, method=method_of(method, V), **kw)
        assert_same(ref, out, f"{method}/{kw}/{case_kw}/{tree}", sampled="draft_logits" in inputs)


def test_nan_rows_set_status():
    inputs = make_case(5, B=64, V=37, nan=True, draft=True)
    ref, out = run_both(inputs, method=ck.Exact())
    assert_same(ref, out, sampled=True)
    assert bool((out.status != 0).any())


def test_many_seeds_exact_and_cascade():
    """thousands of sequences: one batch per call, fresh seeds."""
    for s in range(6):
        inputs = make_case(900 + s, B=160, V=100, tree=("eagle", "deep", "random")[s % 3], draft=s % 2 == 1,
                           peak=15.0)
        for m in ("exact", "cascade"):
            ref, out = run_both(inputs, method=method_of(m, 100), residual=("transport", "standard")[s % 2])
            assert_same(ref, out, f"{m}/{s}", sampled=s % 2 == 1)


def test_one_and_two_threads_agree():
    inputs = make_case(3, B=33, V=500, tree="deep", draft=True)
    args = ck.validation.check_verify_inputs(inputs["tokens"], inputs["parents"], inputs["target_logits"],
                                             ck.Exact(), inputs["draft_logits"], None, "transport", None, 1.0, 0,
                                             1.0, None, inputs["seed"])
    one = cpu.verify(**args, num_threads=1)
    two = cpu.verify(**args, num_threads=2)
    for a, b in zip(one[:5], two[:5]):
        assert torch.equal(a, b)


def test_philox_matches_python():
    from cascade_kernels import _C
    for seed in (0, 1, -7, 2**40 + 3, 2**63 - 1):
        for stream in (philox.ACCEPT, philox.SAMPLE):
            for index in (0, 1, 17, 2**20):
                expect = float(philox.uniform(torch.tensor(seed), stream, torch.tensor(index)))
                assert _C.uniform(seed, stream, index) == expect


def test_next_token_in_range_large_vocab_int64_offsets():
    """A larger V and tokens near its end (index math in int64); greedy and sampled."""
    inputs = make_case(11, B=2, V=70000, tree="eagle", draft=True, peak=12.0)
    ref, out = run_both(inputs, method=ck.Exact(), top_k=100)
    assert_same(ref, out, sampled=True)
    assert bool(((out.next_token >= 0) & (out.next_token < 70000)).all())


def test_malformed_tree_rejected_before_cpp():
    tokens = torch.zeros(1, 3, dtype=torch.int64)
    logits = torch.randn(1, 3, 10)
    with pytest.raises(ValueError):
        ck.verify(tokens, torch.tensor([[-1, 2, 0]], dtype=torch.int32), logits, backend="cpu")  # forward edge
    with pytest.raises(ValueError):
        ck.verify(tokens, torch.tensor([[0, 0, 1]], dtype=torch.int32), logits, backend="cpu")  # root not -1
    with pytest.raises(ValueError):
        ck.verify(torch.tensor([[0, 10, 1]]), torch.tensor([[-1, 0, 1]], dtype=torch.int32), logits,
                  backend="cpu")  # token outside [0, V)


def test_auto_uses_cpu_when_built():
    out = ck.verify(torch.zeros(1, 2, dtype=torch.int64), torch.tensor([[-1, 0]], dtype=torch.int32),
                    torch.randn(1, 2, 5))
    assert out.backend == "cpu"


def test_auto_falls_back_when_extension_missing(monkeypatch):
    """Without the extension, backend='auto' on the CPU uses the reference, warning exactly once."""
    monkeypatch.setattr(cpu, "unavailable_reason", lambda: "simulated: cascade_kernels._C not built")
    backends._load.cache_clear()
    monkeypatch.setattr(backends, "_warned", set())
    try:
        inputs = make_case(1, B=2, V=20, tree="eagle")
        inputs.pop("hidden")
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            a = ck.verify(**inputs)
            b = ck.verify(**inputs)
        assert a.backend == b.backend == "reference"
        runtime = [w for w in caught if issubclass(w.category, RuntimeWarning)]
        assert len(runtime) == 1 and "not built" in str(runtime[0].message)
        assert "cpu" not in backends.available_backends()
        with pytest.raises(RuntimeError, match="simulated"):
            ck.verify(**inputs, backend="cpu")
    finally:
        backends._load.cache_clear()
