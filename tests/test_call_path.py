"""The call path: prepared trees and their cache, no host synchronisation, torch.compile, out=, codes."""
import gc
import sys
import warnings
import weakref

import numpy as np
import pytest
import torch

import cascade_kernels as ck
from cascade_kernels import codes
from conftest import HAS_TRITON

EAGLE = ck.tree_from_choices(ck.MC_SIM_7B_63)


def _inputs(B=2, V=40, seed=0):
    g = torch.Generator().manual_seed(seed)
    N = EAGLE.shape[0]
    tokens = torch.randint(0, V, (B, N), generator=g)
    logits = torch.randn(B, N, V, generator=g)
    for i in range(1, N):  # boost the drafted tokens so walks go deep
        logits[torch.arange(B), EAGLE[i].long(), tokens[:, i]] += 3.0
    return tokens, logits, torch.randn(B, N, 8, generator=g)


def test_prepared_tree_holds_the_structure():
    tree = ck.prepare_tree(EAGLE)
    assert tree.batch == 1 and tree.num_nodes == 26 and tree.max_depth == 5
    kids0 = tree.child_list[0, tree.child_start[0, 0]:tree.child_start[0, 1]].tolist()
    assert kids0 == [1, 2, 3, 4] == tree.children[0][0]
    assert tree.first_child[0, 0] == 1 and tree.next_sibling[0, 1] == 2 and tree.next_sibling[0, 4] == -1
    ref = ck.tree_buffers(EAGLE.unsqueeze(0), 7, backend="reference")
    got = ck.tree_buffers(tree, 7)
    for a, b in zip(ref, got):
        assert torch.equal(a, b)
    assert ck.prepare_tree("eagle").max_depth == 5 and ck.prepare_tree(tree) is tree


def test_cache_hits_and_sees_in_place_edits():
    parents = torch.tensor([-1, 0, 0, 1], dtype=torch.int32)
    first = ck.prepare_tree(parents)
    assert ck.prepare_tree(parents) is first  # same unmodified tensor: a lookup
    parents[3] = 2  # dynamic-tree code reusing its buffer
    second = ck.prepare_tree(parents)
    assert second is not first and second.children[0][2] == [3] and first.children[0][1] == [3]
    parents[3] = 5  # now invalid: the edit is seen and rejected
    with pytest.raises(ValueError, match="parents"):
        ck.prepare_tree(parents)
    same_values = torch.tensor([-1, 0, 0, 1], dtype=torch.int32)
    assert ck.prepare_tree(same_values) is not first  # another tensor object is prepared anew


def test_verify_accepts_tree_parents_and_names_alike():
    tokens, logits, _ = _inputs()
    outs = [ck.verify(tokens, p, logits, seed=3) for p in
            (ck.prepare_tree(EAGLE), EAGLE, EAGLE.expand(2, -1), "eagle", ck.MC_SIM_7B_63)]
    for o in outs[1:]:
        for a, b in zip(outs[0][:5], o[:5]):
            assert torch.equal(a, b)


def test_out_buffers_are_written_in_place():
    tokens, logits, _ = _inputs()
    tree = ck.prepare_tree(EAGLE)
    fresh = ck.verify(tokens, tree, logits, seed=5)
    out = ck.VerifyOutput(torch.full((2,), 9, dtype=torch.int32), torch.zeros(2, 6, dtype=torch.int32),
                          torch.zeros(2, dtype=torch.int64), torch.zeros(2), torch.full((2,), 3, dtype=torch.int32))
    got = ck.verify(tokens, tree, logits, seed=5, out=out)
    for a, b, c in zip(fresh[:5], got[:5], out[:5]):
        assert torch.equal(a, b) and b is c
    with pytest.raises(ValueError, match="out.accepted_nodes"):
        ck.verify(tokens, tree, logits, out=out._replace(accepted_nodes=torch.zeros(2, 5, dtype=torch.int32)))


@pytest.mark.skipif(not HAS_TRITON, reason="triton is not installed")
def test_triton_path_never_reads_tensor_values_on_the_host(monkeypatch):
    """With a prepared tree and tensor seeds, nothing in cascade_kernels calls item/bool/int/float/tolist/numpy."""
    tokens, logits, hidden = _inputs()
    tree = ck.prepare_tree(EAGLE)
    seed = torch.tensor([11, 12])
    methods = [ck.Exact(), ck.Cascade(tau_pos=0.1, tau_seq=0.1), ck.Cool()]
    for m in methods:
        ck.verify(tokens, tree, logits, method=m, hidden=hidden, seed=seed, backend="triton")  # compile first
    calls = []

    def guard(name):
        original = getattr(torch.Tensor, name)

        def patched(self, *a, **k):
            caller = sys._getframe(1).f_globals.get("__name__", "")
            if caller.startswith("cascade_kernels"):
                calls.append((name, caller))
                raise AssertionError(f"host sync: Tensor.{name} called from {caller}")
            return original(self, *a, **k)
        monkeypatch.setattr(torch.Tensor, name, patched)

    for name in ("item", "__bool__", "__int__", "__float__", "tolist", "numpy"):
        guard(name)
    for m in methods:
        out = ck.verify(tokens, tree, logits, method=m, hidden=hidden, seed=seed, backend="triton")
        assert out.backend == "triton"
    assert calls == []


def test_torch_compile_fullgraph_matches_eager():
    tokens, logits, hidden = _inputs(seed=4)
    tree = ck.prepare_tree(EAGLE)
    seed = torch.tensor([1, 2])
    method = ck.Cascade(tau_pos=0.2, tau_seq=0.2)

    def step(tokens, logits, hidden, seed):
        out = ck.verify(tokens, tree, logits * 1.0, method=method, hidden=hidden, seed=seed, top_k=10)
        return out.accept_len, out.accepted_nodes, out.next_token, out.tvd, out.status

    eager = step(tokens, logits, hidden, seed)
    # aot_eager: dynamo (no graph break allowed), fake tensors through register_fake, then the custom op
    compiled = torch.compile(step, fullgraph=True, backend="aot_eager")(tokens, logits, hidden, seed)
    for a, b in zip(eager, compiled):
        assert torch.equal(a, b)


def test_torch_compile_similarity_sets_and_buffers():
    _, _, hidden = _inputs(seed=6)
    tree = ck.prepare_tree(EAGLE)

    def sets(hidden):
        s = ck.similarity_sets(tree, hidden * 1.0, 0.1, 0.0)
        b = ck.tree_buffers(tree, 3)
        return s.interchange, s.convergence_packed, b.position_ids, b.mask

    eager = sets(hidden)
    compiled = torch.compile(sets, fullgraph=True, backend="aot_eager")(hidden)
    for a, b in zip(eager, compiled):
        assert torch.equal(a, b)


def test_codes_header_is_generated_from_codes_py():
    import pathlib

    header = pathlib.Path(__file__).resolve().parents[1] / "csrc" / "codes.h"
    assert header.read_text() == codes.render_header(), "run: python -m cascade_kernels.codes > csrc/codes.h"


@pytest.mark.skipif(not HAS_TRITON, reason="triton is not installed")
def test_triton_constants_come_from_codes_py():
    from cascade_kernels.ops.verify import triton as kernel

    assert (kernel.M_LANTERN, kernel.M_GSD, kernel.M_CASCADE, kernel.M_COOL) == tuple(
        codes.METHODS[m] for m in ("lantern", "gsd", "cascade", "cool"))
    assert (kernel.ST_NONFINITE_TARGET, kernel.ST_EMPTY_RESIDUAL, kernel.ST_NONFINITE_DRAFT,
            kernel.ST_BAD_TOKEN) == tuple(codes.STATUS[k] for k in ("NONFINITE_TARGET", "EMPTY_RESIDUAL",
                                                                     "NONFINITE_DRAFT", "BAD_TOKEN"))
    assert (kernel.STREAM_ACCEPT, kernel.STREAM_SAMPLE) == (codes.STREAMS["ACCEPT"], codes.STREAMS["SAMPLE"])


def test_every_method_packs_into_the_declared_slots():
    nb = ck.lantern_neighbors(torch.randn(16, 2), 3)
    for m in (ck.Exact(), ck.Lantern(nb, lam=float("inf")), ck.GSD(G=2**40), ck.Cascade(), ck.Cool(delta=3.0)):
        p = ck.methods.pack(m)
        assert p.code == codes.METHODS[m.name]
        assert len(p.iparams) == len(codes.INT_PARAMS) and len(p.fparams) == len(codes.FLOAT_PARAMS)
        assert all(-(2**63) <= v < 2**63 for v in p.iparams)
    assert ck.methods.pack(ck.Cool(delta=3.0)).f("cool_delta") == 3.0


@pytest.mark.parametrize("backend", ["reference", "cpu"])
def test_seed_tensor_forms_agree(backend):
    """A contiguous int64 [B] seed is used as it is; a strided, a [1] and a 0-d seed are normalised first;
    all give the walk of the equivalent int seeds. A wrong dtype or length is named."""
    if backend not in ck.available_backends():
        pytest.skip(f"{backend} backend not built")
    tokens, logits, _ = _inputs(B=3, seed=4)
    tree = ck.prepare_tree(EAGLE)
    base = torch.tensor([11, 12, 13, 99, 98, 97], dtype=torch.int64)
    ref = [ck.verify(tokens[b:b + 1], tree, logits[b:b + 1], seed=int(base[b]), backend=backend) for b in range(3)]
    for seed in (base[:3].clone(), base.view(2, 3)[0]):  # a fresh tensor, a contiguous view
        out = ck.verify(tokens, tree, logits, seed=seed, backend=backend)
        for b in range(3):
            assert int(out.next_token[b]) == int(ref[b].next_token[0])
            assert int(out.accept_len[b]) == int(ref[b].accept_len[0])
    strided = torch.tensor([11, 0, 12, 0, 13], dtype=torch.int64)[::2]
    assert not strided.is_contiguous()
    out = ck.verify(tokens, tree, logits, seed=strided, backend=backend)
    assert out.next_token.tolist() == [int(r.next_token[0]) for r in ref]
    one = ck.verify(tokens, tree, logits, seed=torch.tensor([12]), backend=backend)
    zero_d = ck.verify(tokens, tree, logits, seed=torch.tensor(12), backend=backend)
    assert torch.equal(one.next_token, zero_d.next_token)
    assert torch.equal(one.next_token, ck.verify(tokens, tree, logits, seed=12, backend=backend).next_token)
    with pytest.raises(TypeError, match="seed"):
        ck.verify(tokens, tree, logits, seed=torch.tensor([1, 2, 3], dtype=torch.int32), backend=backend)
    with pytest.raises(ValueError, match="seed"):
        ck.verify(tokens, tree, logits, seed=torch.tensor([1, 2], dtype=torch.int64), backend=backend)
    with pytest.raises(ValueError, match="tokens"):
        ck.verify(tokens.to("meta"), tree, logits, backend=backend)


def _fast_path_cases(rng, B, V):
    """Random ck.verify argument sets around a valid CPU call: each argument is either its common form or
    one of its unusual forms (valid or not)."""
    N = EAGLE.shape[0]
    g = torch.Generator().manual_seed(int(rng.integers(1 << 30)))
    tokens = torch.randint(0, V, (B, N), generator=g)
    logits = torch.randn(B, N, V, generator=g)
    logits[:, 0, tokens[:, 1]] += 4.0
    hidden = torch.randn(B, N, 8, generator=g)
    tree = ck.prepare_tree(EAGLE)
    nb = ck.lantern_neighbors(torch.randn(V, 3, generator=g), 4)
    L = tree.max_depth + 1

    def outs(**over):
        t = dict(accept_len=torch.zeros(B, dtype=torch.int32), accepted_nodes=torch.zeros(B, L, dtype=torch.int32),
                 next_token=torch.zeros(B, dtype=torch.int64), tvd=torch.zeros(B),
                 status=torch.zeros(B, dtype=torch.int32))
        t.update(over)
        return ck.VerifyOutput(**t)

    options = dict(
        tokens=[tokens, tokens.to(torch.int32), tokens.t().contiguous().t(), tokens[0], tokens.float(),
                tokens.tolist(), tokens[:, :-1]],
        parents=[tree, EAGLE, ck.prepare_tree(EAGLE.expand(B, -1).contiguous()), ck.prepare_tree(EAGLE[:-1]), "eagle"],
        target_logits=[logits, logits.to(torch.bfloat16), logits.half(), logits.double(),
                       logits.transpose(0, 1).contiguous().transpose(0, 1), logits[..., :-1], logits[0],
                       logits.clone().requires_grad_(), torch.nn.Parameter(logits.clone()), torch.cat([logits, logits]),
                       logits.to("meta")],
        method=[ck.Exact(), ck.Cascade(tau_pos=0.1, tau_seq=0.1), ck.Lantern(nb),
                ck.Lantern(ck.lantern_neighbors(torch.randn(V - 1, 3, generator=g), 4)), ck.Cool(), ck.Cool(w_min=0.5),
                ck.GSD(G=3), "exact", None],
        hidden=[None, hidden, hidden.double(), hidden.half(), hidden[:, :-1], hidden[..., :0],
                hidden.transpose(1, 2).contiguous().transpose(1, 2), hidden.int()],
        residual=["transport", "standard", "peer", "bogus", 1],
        eps=[None, 0.0, 0.3, float("inf"), -1.0, float("nan"), 1, np.float32(0.2)],
        temperature=[1.0, 0.0, 0.7, 1, -1.0, float("nan"), float("inf"), np.float64(1.0)],
        top_k=[0, 5, V, V + 1, -1, 5.0, np.int64(5), True],
        top_p=[1.0, 0.9, 0.0, 1.5, 1],
        cfg_scale=[None, 2.0],
        seed=[0, 7, -1, 2**63, -(2**63), True, torch.arange(B), torch.arange(1), torch.arange(B, dtype=torch.int32),
              torch.arange(2 * B)[::2], torch.tensor(3), 1.5],
        backend=["auto", "cpu", "reference", "bogus", None],
        out=[None, outs(), outs(tvd=torch.zeros(B, dtype=torch.float64)),
             outs(accepted_nodes=torch.zeros(B, L + 1, dtype=torch.int32)),
             outs(status=torch.zeros(2 * B, dtype=torch.int32)[::2]), tuple(outs()),
             outs()._replace(backend="reference")],
        draft_sampling=["iid", "without_replacement", "bogus", None],
        draft_logits=[None, torch.randn(B, N, V, generator=g)],
    )
    while True:
        kw = {k: (v[0] if rng.random() < 0.92 else v[int(rng.integers(len(v)))]) for k, v in options.items()}
        if isinstance(kw["method"], ck.Cascade) and kw["hidden"] is None and rng.random() < 0.8:
            kw["hidden"] = hidden
        yield kw


def _outcome(kw):
    """(the outputs, or the exception's type and message), from fresh copies of the mutable arguments."""
    kw = dict(kw)
    if isinstance(kw["out"], ck.VerifyOutput):
        kw["out"] = kw["out"]._replace(**{f: t.clone() for f, t in kw["out"]._asdict().items()
                                          if isinstance(t, torch.Tensor)})
    args = (kw.pop("tokens"), kw.pop("parents"), kw.pop("target_logits"))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            res = ck.verify(*args, **kw)
    except Exception as exc:  # noqa: BLE001 - the two paths must fail alike
        return type(exc), str(exc)
    return tuple(t.clone() if t.device.type != "meta" else None for t in res[:5]) + (res.backend,)


@pytest.mark.skipif("cpu" not in ck.available_backends(), reason="C++ extension not built")
@pytest.mark.parametrize("B", [1, 3])
def test_cpu_fast_entry_agrees_with_the_general_path(monkeypatch, B):
    """_C.verify_call (the whole call for the common case, cpu.verify.call) against the general path on random
    argument sets: the same outputs (and backend name), or the same exception; it is taken often enough."""
    from cascade_kernels.ops.verify import cpu

    taken = []
    entry = cpu.verify.call

    def counting(*a):
        res = entry(*a)
        taken.append(res is not None)
        return res

    rng = np.random.default_rng(B)
    cases = _fast_path_cases(rng, B, V=37)
    ck.verify(torch.zeros(1, 26, dtype=torch.int64), EAGLE, torch.zeros(1, 26, 37), backend="cpu")  # resolve
    ck.verify(torch.zeros(1, 26, dtype=torch.int64), EAGLE, torch.zeros(1, 26, 37))
    for _ in range(250):
        kw = next(cases)
        monkeypatch.setattr(cpu.verify, "call", counting)
        fast = _outcome(kw)
        monkeypatch.setattr(cpu.verify, "call", lambda *a: None)
        general = _outcome(kw)
        assert len(fast) == len(general), (kw, fast, general)
        for a, b in zip(fast, general):
            same = torch.equal(a, b) if isinstance(a, torch.Tensor) else a == b
            assert (a is b is None) or same, (kw, fast, general)
    assert 50 < sum(taken) < len(taken), (sum(taken), len(taken))


@pytest.mark.skipif("cpu" not in ck.available_backends(), reason="C++ extension not built")
def test_cpu_fast_entry_holds_no_references():
    """_C.verify_call reads Python objects with C calls: taken or declined, it leaves every argument's reference
    count (and that of the objects it reads through them) as it found them, once the pair's plan is kept (the
    first calls below)."""
    from cascade_kernels.ops.verify import cpu

    tokens, logits, hidden = _inputs(B=2)
    tree = ck.prepare_tree(EAGLE)
    method = ck.Cascade(tau_pos=0.2, tau_seq=0.2)
    out = ck.verify(tokens, tree, logits, method=method, hidden=hidden, backend="cpu")
    other = out._replace(backend="reference")
    packed = method.packed
    watched = (tokens, logits, hidden, tree, method, out, other, packed, packed.host, tree.whole_call)

    def calls():
        for o, eps, residual in ((out, None, "transport"), (other, 0.3, "standard"), (None, None, "transport"),
                                 (out, None, "peer"), (out, -1.0, "transport")):
            res = cpu.verify.call(tokens, tree, logits, method, None, hidden, residual, eps, 1.0, 0, 1.0, None, 5,
                                  o, "iid")
            assert (res is None) == (residual == "peer" or eps == -1.0)
            assert res is None or res.backend == "cpu"

    calls()
    before = [sys.getrefcount(o) for o in watched]
    for _ in range(200):
        calls()
    assert [sys.getrefcount(o) for o in watched] == before


@pytest.mark.skipif("cpu" not in ck.available_backends(), reason="C++ extension not built")
def test_cpu_fast_entry_plans_follow_the_objects(monkeypatch):
    """_C.verify_call keeps the plans of the last (tree, method) pairs: a plan serves only while the tree's
    whole_call and the method's packed form are the objects it was read from, pairs in turns (fewer or more than
    it keeps) each follow their own tree and method, and a dead tree or method is neither kept alive nor
    matched."""
    from cascade_kernels.ops.verify import cpu
    from cascade_kernels.trees import Tree

    tokens, logits, hidden = _inputs(B=2, V=40, seed=3)
    N = tokens.shape[1]
    taken = []

    def entry(*a):
        res = cpu._C.verify_call(*a)
        taken.append(res is not None)
        return res

    def run(tree, method, fast=True):
        monkeypatch.setattr(cpu.verify, "call", entry if fast else (lambda *a: None))
        h = hidden if isinstance(method, ck.Cascade) else None
        out = ck.verify(tokens, tree, logits, method=method, hidden=h, seed=11, backend="cpu")
        return tuple(t.clone() for t in out[:5])

    def same(a, b):
        return all(torch.equal(x, y) for x, y in zip(a, b))

    ck.verify(tokens, EAGLE, logits, backend="cpu")  # resolves the backend: later calls try the entry
    loose, strict = ck.Cascade(tau_pos=-1.0, tau_seq=-1.0, eps=1.0), ck.Cascade(tau_pos=2.0, tau_seq=2.0, eps=1.0)
    eagle, chain = ck.prepare_tree(EAGLE), ck.prepare_tree(torch.arange(-1, N - 1))
    star = ck.prepare_tree(torch.tensor([-1] + [0] * (N - 1)))
    first = run(eagle, loose)
    assert same(first, run(eagle, loose)) and same(first, run(eagle, loose, fast=False))
    assert not same(first, run(eagle, strict, fast=False))  # the two methods decide differently here
    loose.__dict__["packed"] = strict.packed  # another packed form: the plan read from the old one is not used
    assert same(run(eagle, loose), run(eagle, strict, fast=False))
    del loose.__dict__["packed"]
    assert same(run(eagle, loose), first)
    assert not same(run(chain, loose), first)  # the trees decide differently here
    eagle.whole_call = chain.whole_call  # another tree's: the plan read from the old one is not used
    assert same(run(eagle, loose), run(chain, loose))
    eagle.whole_call = ck.prepare_tree(EAGLE.clone()).whole_call
    assert same(run(eagle, loose), first)

    # pairs in turns, as many as the plans kept and more: each call follows its own tree and method
    methods = [ck.Exact(), ck.Cascade(eps=0.1), ck.Cool(),
               ck.Lantern(ck.lantern_neighbors(torch.randn(40, 3, generator=torch.Generator().manual_seed(1)), k=4))]
    for pairs in ([(eagle, methods[1]), (chain, methods[1]), (star, methods[0]), (eagle, methods[3])],
                  [(t, m) for t in (eagle, chain, star) for m in methods]):
        expect = [run(t, m, fast=False) for t, m in pairs]
        taken.clear()
        for _ in range(3):
            for (t, m), res in zip(pairs, expect):
                assert same(run(t, m), res), (t, m)
        assert all(taken), taken

    # a kept plan holds neither the tree nor the method, and goes when either dies
    method = ck.Cascade(tau_pos=0.3, tau_seq=0.3, eps=0.7)
    packed = method.packed
    tree = Tree(EAGLE.numpy()[None].astype(np.int32), torch.device("cpu"))  # (not in prepare_tree's cache)
    whole_call = tree.whole_call
    before = sys.getrefcount(packed), sys.getrefcount(whole_call)
    run(tree, method)
    assert (sys.getrefcount(packed), sys.getrefcount(whole_call)) == (before[0] + 1, before[1] + 1)  # the plan's
    dead_tree, dead_method = weakref.ref(tree), weakref.ref(method)
    del tree, method
    gc.collect()
    assert dead_tree() is None and dead_method() is None
    assert (sys.getrefcount(packed), sys.getrefcount(whole_call)) == (before[0] - 1, before[1] - 1)
