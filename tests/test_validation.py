"""Every boundary check names its argument; NaN/Inf logits and bad token ids do not raise (status bits)."""
import math

import pytest
import torch

import cascade_kernels as ck

B, N, V, D = 2, 5, 11, 6
PARENTS = torch.tensor([[-1, 0, 0, 1, 1], [-1, 0, 1, -1, -1]], dtype=torch.int32)


def good():
    g = torch.Generator().manual_seed(0)
    return dict(tokens=torch.randint(0, V, (B, N), generator=g), parents=PARENTS.clone(),
                target_logits=torch.randn(B, N, V, generator=g))


def call(**over):
    args = good()
    kw = {k: over.pop(k) for k in list(over) if k not in args}
    args.update(over)
    kw.setdefault("backend", "reference")
    return ck.verify(args["tokens"], args["parents"], args["target_logits"], **kw)


CASES = [
    pytest.param(dict(tokens=[[0] * N] * B), TypeError, "tokens", id="tokens-not-tensor"),
    pytest.param(dict(tokens=torch.zeros(B, N, 1, dtype=torch.int64)), ValueError, "tokens", id="tokens-rank"),
    pytest.param(dict(tokens=torch.zeros(B, N)), TypeError, "tokens", id="tokens-float"),
    # token values are checked eagerly only with check="full" (otherwise: status BAD_TOKEN, test_verify_parity)
    pytest.param(dict(tokens=torch.full((B, N), V), check="full"), ValueError, "tokens", id="token-id-eq-V"),
    pytest.param(dict(tokens=torch.full((B, N), -2), check="full"), ValueError, "tokens", id="token-id-negative"),
    pytest.param(dict(check="eager"), ValueError, "check", id="check-name"),
    pytest.param(dict(parents=PARENTS[:, :4]), ValueError, "parents", id="parents-shape"),
    pytest.param(dict(parents=PARENTS.float()), TypeError, "parents", id="parents-float"),
    pytest.param(dict(parents=torch.tensor([[0, 0, 0, 1, 1], [-1, 0, 1, -1, -1]])), ValueError, "parents", id="root-not-minus1"),
    pytest.param(dict(parents=torch.tensor([[-1, 2, 0, 1, 1], [-1, 0, 1, -1, -1]])), ValueError, "parents", id="forward-edge"),
    pytest.param(dict(parents=torch.tensor([[-1, 1, 0, 1, 1], [-1, 0, 1, -1, -1]])), ValueError, "parents", id="self-cycle"),
    pytest.param(dict(parents=torch.tensor([[-1, 0, 0, 1, 1], [-1, 0, -1, 2, -1]])), ValueError, "parents", id="child-of-padding"),
    pytest.param(dict(parents=torch.tensor([[-1, 0, 0, 1, -5], [-1, 0, 1, -1, -1]])), ValueError, "parents", id="parent-below-minus1"),
    pytest.param(dict(target_logits=torch.randn(B, N)), ValueError, "target_logits", id="logits-rank"),
    pytest.param(dict(target_logits=torch.randn(B + 1, N, V)), ValueError, "target_logits", id="logits-batch"),
    pytest.param(dict(target_logits=torch.randn(B, N, V).double()), TypeError, "target_logits", id="logits-float64"),
    pytest.param(dict(target_logits=torch.randn(B, N, 0)), ValueError, "target_logits", id="logits-empty-V"),
    pytest.param(dict(cfg_scale=2.0), ValueError, "target_logits", id="cfg-needs-2B"),
    pytest.param(dict(draft_logits=torch.randn(B, N, V + 1)), ValueError, "draft_logits", id="draft-V"),
    pytest.param(dict(draft_logits=torch.randn(B, N, V).long()), TypeError, "draft_logits", id="draft-dtype"),
    pytest.param(dict(method=ck.Cascade()), ValueError, "hidden", id="cascade-needs-hidden"),
    pytest.param(dict(method=ck.Cascade(), hidden=torch.randn(B, N + 1, D)), ValueError, "hidden", id="hidden-shape"),
    pytest.param(dict(method="exact"), TypeError, "method", id="method-string"),
    pytest.param(dict(method=ck.Lantern(torch.full((V + 2, 3), -1))), ValueError, "neighbors", id="lantern-V"),
    pytest.param(dict(residual="exact"), ValueError, "residual", id="residual-name"),
    pytest.param(dict(eps=-0.1), ValueError, "eps", id="eps-negative"),
    pytest.param(dict(eps=float("nan")), ValueError, "eps", id="eps-nan"),
    pytest.param(dict(temperature=-1.0), ValueError, "temperature", id="temperature-negative"),
    pytest.param(dict(temperature=float("inf")), ValueError, "temperature", id="temperature-inf"),
    # 0 or inf once rounded to float32, where every backend divides by it (the C++ backend crashed on both)
    pytest.param(dict(temperature=5e-324), ValueError, "temperature", id="temperature-below-float32"),
    pytest.param(dict(temperature=1e300), ValueError, "temperature", id="temperature-above-float32"),
    pytest.param(dict(top_k=V + 1), ValueError, "top_k", id="top_k-gt-V"),
    pytest.param(dict(top_k=-1), ValueError, "top_k", id="top_k-negative"),
    pytest.param(dict(top_k=2.5), TypeError, "top_k", id="top_k-float"),
    pytest.param(dict(top_p=0.0), ValueError, "top_p", id="top_p-zero"),
    pytest.param(dict(top_p=1.5), ValueError, "top_p", id="top_p-gt-1"),
    pytest.param(dict(seed=1.5), TypeError, "seed", id="seed-float"),
    pytest.param(dict(seed=torch.zeros(B + 1, dtype=torch.int64)), ValueError, "seed", id="seed-batch"),
    pytest.param(dict(seed=torch.zeros(B, dtype=torch.int32)), TypeError, "seed", id="seed-int32"),
    pytest.param(dict(backend="cuda-magic"), ValueError, "backend", id="backend-name"),
    # found by a fuzzer: each raised from inside torch or Python without naming the argument
    pytest.param(dict(seed=torch.zeros(B, dtype=torch.int64, device="meta")), ValueError, "seed", id="seed-meta"),
    pytest.param(dict(target_logits=torch.randn(B, N, V).to_sparse()), ValueError, "target_logits",
                 id="logits-sparse"),
    pytest.param(dict(out=tuple(ck.VerifyOutput.empty(B, 3, "cpu", "x")[:5])), TypeError, "out", id="out-tuple"),
    pytest.param(dict(out=ck.VerifyOutput.empty(B, 3, "cpu", "x")._replace(tvd=torch.zeros(B, requires_grad=True))),
                 ValueError, "out.tvd", id="out-requires-grad"),
    pytest.param(dict(out=(lambda o: o._replace(status=o.accept_len))(ck.VerifyOutput.empty(B, 3, "cpu", "x"))),
                 ValueError, "out.accept_len shares memory with out.status", id="out-fields-alias"),
    pytest.param(dict(parents=[["a"]]), TypeError, "parents", id="choices-not-int"),
    pytest.param(dict(parents=[0, 1]), TypeError, "parents", id="choices-flat"),
    pytest.param(dict(parents=[[0], [0, 1]]), ValueError, "parents", id="choices-missing-prefix"),
]


@pytest.mark.parametrize("over, exc, name", CASES)
def test_bad_input_names_the_argument(over, exc, name):
    with pytest.raises(exc, match=name):
        call(**over)
    if "cpu" in ck.available_backends() and "backend" not in over:
        with pytest.raises(exc, match=name):
            call(**over, backend="cpu")


def test_negated_views_are_read_as_their_values():
    """torch._neg_view tensors are contiguous but lazily negated: the C++ backend read the raw memory (a
    fuzzer's finding). Every backend now decides on -logits as on a negated view of logits."""
    args = good()
    neg = torch._neg_view(args["target_logits"])
    want = ck.verify(args["tokens"], args["parents"], -args["target_logits"], backend="reference")
    for backend in ck.available_backends():
        if backend == "triton":
            continue
        got = ck.verify(args["tokens"], args["parents"], neg, backend=backend)
        assert got.next_token.tolist() == want.next_token.tolist(), backend
        assert got.accepted_nodes.tolist() == want.accepted_nodes.tolist(), backend


def test_out_sharing_memory_with_an_input_is_named():
    """out= tensors that overlap an input or each other (a fuzzer's finding: not detected) are rejected by
    name, on the general path and on the C++ fast entry (prepared tree, packed method), which declines them."""
    args = good()
    tree, method = ck.prepare_tree(args["parents"]), ck.Exact()
    ck.verify(args["tokens"], tree, args["target_logits"], method=method)  # packs the method
    L = tree.max_depth + 1
    fine = ck.VerifyOutput.empty(B, L, "cpu", "x")
    tokens = args["tokens"].clone()
    clash = fine._replace(next_token=tokens.view(-1)[:B])  # int64 [B] inside tokens' memory
    for backend in ["reference"] + (["cpu"] if "cpu" in ck.available_backends() else []):
        ck.verify(tokens, tree, args["target_logits"], method=method, out=fine, backend=backend)  # (resolved once)
        with pytest.raises(ValueError, match="out.next_token shares memory with tokens"):
            ck.verify(tokens, tree, args["target_logits"], method=method, out=clash, backend=backend)


def test_lantern_table_on_meta_is_named():
    with pytest.raises(ValueError, match="neighbors"):
        ck.Lantern(torch.full((V, 2), -1, dtype=torch.int64, device="meta"))


@pytest.mark.parametrize("temperature", [5e-324, 2.0 ** -150, 1e300, 3.5e38])
def test_temperature_outside_float32_is_rejected_on_the_fast_path_too(temperature):
    """A fuzzer's crash of the C++ backend: a temperature that rounds to 0 or inf in float32 made NaN scaled
    logits, and top-k's select on them read out of bounds. The decode loop's form of the call (prepared tree,
    packed method: the C++ fast entry) declines it, and the general path names it; the float32 extremes pass."""
    tree = ck.prepare_tree(ck.tree_from_choices([[0], [0, 0]]))
    tokens = torch.tensor([[1, 1, 0]])
    logits = torch.tensor([[[0.0, 1.0, -math.inf], [52.0, 56.0, 1.0], [-21.0, 77.0, 0.0]]])
    method = ck.Exact()
    ck.verify(tokens, tree, logits, method=method, top_k=2, backend="cpu")  # packs the method: the fast entry
    for backend in ("cpu", "reference", "auto"):
        with pytest.raises(ValueError, match="temperature"):
            ck.verify(tokens, tree, logits, method=method, temperature=temperature, top_k=2, backend=backend)
    for extreme in (2.0 ** -149, float(torch.finfo(torch.float32).max)):
        outs = [ck.verify(tokens, tree, logits, method=method, temperature=extreme, top_k=2, backend=b)
                for b in ("cpu", "reference")]
        assert all(0 <= int(o.next_token) < 3 for o in outs)
        assert [o.status.tolist() for o in outs[1:]] == [outs[0].status.tolist()]


def test_device_mismatch_named():
    args = good()
    with pytest.raises(ValueError, match="tokens"):
        ck.verify(args["tokens"].to("meta"), args["parents"], args["target_logits"])


@pytest.mark.parametrize("bad", [
    pytest.param(dict(neighbors=torch.tensor([[0], [0]])), id="own-token"),
    pytest.param(dict(neighbors=torch.tensor([[1, 1], [0, -1]])), id="duplicate"),
    pytest.param(dict(neighbors=torch.tensor([[5], [0]])), id="out-of-range"),
    pytest.param(dict(neighbors=torch.tensor([[1], [0]]), lam=0.5), id="lam-below-1"),
])
def test_lantern_table_checked_once(bad):
    with pytest.raises(ValueError, match="Lantern"):
        ck.Lantern(**bad)


def test_method_parameters_checked():
    with pytest.raises(ValueError, match="GSD.G"):
        ck.GSD(G=-1)
    with pytest.raises(ValueError, match="Cascade.eps"):
        ck.Cascade(eps=-1)
    with pytest.raises(ValueError, match="Cascade.tau_pos"):
        ck.Cascade(tau_pos=float("nan"))
    with pytest.raises(ValueError, match="Cool.w_min"):
        ck.Cool(w_min=-0.5)


def test_tree_helpers_validate():
    with pytest.raises(ValueError, match="prefix"):
        ck.tree_from_choices([[0, 0]])
    with pytest.raises(ValueError, match="duplicate"):
        ck.tree_from_choices([[0], [0]])
    with pytest.raises(ValueError, match="max_depth"):
        ck.tree_buffers(ck.tree_from_choices([[0], [0, 0]]), 0, max_depth=1)
    with pytest.raises(ValueError, match="prefix_len"):
        ck.tree_buffers(PARENTS, -1)
    with pytest.raises(ValueError, match="hidden"):
        ck.similarity_sets(PARENTS, torch.randn(B, N + 1, D))
    with pytest.raises(ValueError, match="k must"):
        ck.lantern_neighbors(torch.randn(4, 2), 4)
    with pytest.raises(ValueError, match="top_k"):
        ck.process_logits(torch.randn(3, 5), top_k=6)


@pytest.mark.parametrize("poison", [float("nan"), float("inf"), -float("inf")], ids=["nan", "posinf", "all-neginf"])
def test_nonfinite_logits_do_not_raise(poison):
    args = good()
    logits = args["target_logits"]
    if math.isinf(poison) and poison < 0:
        logits[0, 0] = poison  # every logit -inf: no distribution
    else:
        logits[0, 0, 3] = poison
    out = ck.verify(args["tokens"], args["parents"], logits, backend="reference")
    assert int(out.status[0]) == ck.STATUS_NONFINITE_TARGET
    assert int(out.accept_len[0]) == 0
    assert 0 <= int(out.next_token[0]) < V
    assert int(out.status[1]) == ck.STATUS_OK
