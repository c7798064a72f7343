"""Edge cases of the C++ backend's faster paths (issue 11), each checked against the reference backend:
top-k by sampled threshold + radix select (ties, -inf, -0.0, k near V), lazy deterministic residuals
(wide nodes past the removed-list and divisor-chain limits, an emptied residual), the thread pool, and
untrusted method parameters."""
import math
import os
import subprocess
import sys
import threading

import pytest
import torch

import cascade_kernels as ck
from cascade_kernels import _backend

CPU_REASON = _backend.unavailable_reason("cpu")
pytestmark = pytest.mark.skipif(CPU_REASON is not None, reason=f"no C++ extension: {CPU_REASON}")


def same(inputs, **kw):
    ref = ck.verify(**inputs, backend="reference", **kw)
    out = ck.verify(**inputs, backend="cpu", **kw)
    for name in ("accept_len", "accepted_nodes", "next_token", "status"):
        assert torch.equal(getattr(ref, name), getattr(out, name)), (name, getattr(ref, name), getattr(out, name))
    torch.testing.assert_close(out.tvd, ref.tvd, atol=1e-5, rtol=2e-3)
    V = inputs["target_logits"].shape[-1]
    assert bool(((out.next_token >= 0) & (out.next_token < V)).all())
    return ref, out


def star(n_kids):
    return torch.tensor([-1] + [0] * n_kids, dtype=torch.int32)


def chain_tree(depth):
    return torch.tensor([-1] + list(range(depth)), dtype=torch.int32)


@pytest.mark.parametrize("kind", ["ties", "neg-inf", "signed-zero", "plain"])
@pytest.mark.parametrize("k", [1, 2, 37, 2000, 8191, 8192])
def test_topk_radix_select_matches_reference(kind, k):
    """V = 8192 (the sampled-threshold path runs from V = 4096): the kept set is exactly `x >= kth`."""
    g = torch.Generator().manual_seed(k + len(kind))
    B, V = 6, 8192
    parents = chain_tree(3)
    N = parents.shape[0]
    logits = torch.randn(B, N, V, generator=g) * 2
    if kind == "ties":  # few distinct values: the k-th largest is shared by many entries
        logits = torch.round(logits * 2) / 2
    elif kind == "neg-inf":  # most of the row masked, sometimes fewer finite entries than k
        mask = torch.rand(B, N, V, generator=g) < 0.97
        logits[mask] = -float("inf")
        logits[:, :, 0] = 1.0  # every row stays a distribution
    elif kind == "signed-zero":
        z = torch.rand(B, N, V, generator=g) < 0.5
        logits = torch.where(z, torch.where(torch.rand(B, N, V, generator=g) < 0.5, 0.0, -0.0), -logits.abs() - 1)
    tokens = torch.randint(0, V, (B, N), generator=g)
    # the children's tokens among the top entries so that walks go on
    for b in range(B):
        for i in range(1, N):
            logits[b, i - 1, tokens[b, i]] = logits[b, i - 1].max() + (b % 3)
    inputs = dict(tokens=tokens, parents=parents, target_logits=logits, seed=torch.arange(B))
    for kw in (dict(top_k=k), dict(top_k=k, temperature=0), dict(top_k=k, top_p=0.7)):
        same(inputs, **kw)


def test_topk_sampled_drafting_large_vocab():
    g = torch.Generator().manual_seed(3)
    B, V = 4, 40000
    parents = ck.tree_from_choices(ck.MC_SIM_7B_63)
    N = parents.shape[0]
    tokens = torch.randint(0, V, (B, N), generator=g)
    logits = torch.randn(B, N, V, generator=g)
    logits[:, :, :50] += 6  # a head of likely tokens
    tokens[:, 1:] = torch.randint(0, 50, (B, N - 1), generator=g)
    draft = logits + 0.3 * torch.randn(B, N, V, generator=g)
    inputs = dict(tokens=tokens, parents=parents, target_logits=logits, draft_logits=draft, seed=torch.arange(B))
    same(inputs, top_k=2000)
    same(inputs, top_k=30, top_p=0.9)


@pytest.mark.parametrize("method", ["exact", "cascade", "lantern", "gsd"])
@pytest.mark.parametrize("n_kids", [5, 20, 90])
def test_wide_nodes_many_lazy_rejections(method, n_kids):
    """Up to 90 rejected children at one node: past the 16-divisor chain and the 64-entry removed list
    (the row is then folded), repeated tokens, deterministic drafting, transport and standard residuals, top-k
    (children outside it rejected without mass)."""
    g = torch.Generator().manual_seed(n_kids)
    B, V = 8, 300
    parents = star(n_kids)
    N = n_kids + 1
    tokens = torch.randint(0, V, (B, N), generator=g)
    tokens[:, 1::3] = tokens[:, 1:2]  # repeats
    logits = torch.randn(B, N, V, generator=g)
    hidden = torch.randn(B, 1, 8, generator=g) + 0.3 * torch.randn(B, N, 8, generator=g)
    m = {"exact": ck.Exact(), "cascade": ck.Cascade(tau_pos=0.2, tau_seq=0.1, eps=0.5),
         "lantern": ck.Lantern(ck.lantern_neighbors(torch.randn(V, 3, generator=g), k=6), delta=0.1),
         "gsd": ck.GSD(G=5, dp=0.01)}[method]
    inputs = dict(tokens=tokens, parents=parents, target_logits=logits, seed=torch.arange(B) * 7)
    if method == "cascade":
        inputs["hidden"] = hidden
    for kw in (dict(), dict(temperature=0), dict(residual="standard"), dict(temperature=0.5),
               dict(top_k=30), dict(top_k=30, residual="standard")):  # top-k: rejections without mass too
        same(inputs, method=m, **kw)


@pytest.mark.parametrize("top_k", [3, 40, 4000])
def test_cascade_top_k_tests_only_absorbable_nodes(top_k):
    """With top-k, CASCADE computes cosines only for the siblings and children whose token x may absorb (q > 0
    among the survivors, not removed, not x, not absorbed): drafted tokens half inside and half outside the
    survivors, hidden states nearly parallel but for every third node's (so some cosines pass tau, some do not),
    repeated tokens, lazy rejections, the
    budget running out, deterministic and sampled drafting. The relaxation must happen (tvd > 0) and agree with
    the reference, which tests every node."""
    g = torch.Generator().manual_seed(top_k)
    B, V, D = 24, 4096, 16
    parents = torch.tensor([-1] + [0] * 6 + [1 + i // 2 for i in range(12)], dtype=torch.int32)
    N = parents.numel()
    tokens = torch.randint(0, V, (B, N), generator=g)
    tokens[:, 5] = tokens[:, 2]  # a repeated sibling token
    logits = torch.randn(B, N, V, generator=g)
    rows = torch.arange(B)
    for i in range(1, N):
        inside = (i + rows) % 2 == 0  # half the drafted tokens among the survivors, half far outside
        logits[rows, parents[i].item(), tokens[:, i]] = torch.where(inside, 6.0, -30.0)
    hidden = torch.randn(B, 1, D, generator=g) + 0.01 * torch.randn(B, N, D, generator=g)
    hidden[:, 2::3] = torch.randn(B, len(range(2, N, 3)), D, generator=g)  # these fail tau, the others pass
    inputs = dict(tokens=tokens, parents=parents, target_logits=logits, hidden=hidden, seed=rows * 31)
    relaxed = 0
    for eps in (0.5, 0.02):
        method = ck.Cascade(tau_pos=0.9, tau_seq=0.9, eps=eps)
        for kw in (dict(), dict(temperature=0), dict(temperature=0.7), dict(residual="standard"),
                   dict(draft_logits=torch.randn(B, N, V, generator=g))):
            _, out = same(inputs, method=method, top_k=min(top_k, V), **kw)
            relaxed += int((out.tvd > 0).sum())
    assert relaxed > 20, relaxed


@pytest.mark.parametrize("top_k", [50, 2000])
@pytest.mark.parametrize("method", ["exact", "cascade"])
def test_rejections_of_tokens_outside_top_k_then_the_final_token(top_k, method):
    """Drafted tokens outside top-k have no mass: rejecting them removes nothing, and when the residual's sum rounds
    to 1 the C++ walk's inverse CDF leaves that divisor out (v / 1 == v). Twelve children at the root, in
    a quarter of the sequences none among the survivors, in the others every second, third or fourth (their
    rejection removes mass: a divisor that is not 1) and the rest far outside; the final token then comes from
    the row's survivors. Rows of 8192 (the sampled threshold), Exact and CASCADE, T = 1 and 0.7; each decision as
    the reference's."""
    g = torch.Generator().manual_seed(top_k)
    B, V, n_kids = 32, 8192, 12
    parents = star(n_kids)
    tokens = torch.randint(0, V, (B, n_kids + 1), generator=g)
    logits = torch.randn(B, n_kids + 1, V, generator=g) * 1.5
    rows = torch.arange(B)
    for i in range(1, n_kids + 1):
        # none inside top-k (rows 0, 4, ...), or every other, every third or every fourth child
        inside = (rows % 4 != 0) & ((rows + i) % (1 + rows % 4) == 0)
        logits[rows, 0, tokens[:, i]] = torch.where(inside, 5.0, -40.0)
    inputs = dict(tokens=tokens, parents=parents, target_logits=logits, seed=rows * 13)
    m = ck.Exact()
    if method == "cascade":
        inputs["hidden"] = torch.randn(B, n_kids + 1, 16, generator=g)
        m = ck.Cascade(tau_pos=0.3, tau_seq=0.3, eps=0.05)
    rejected = 0
    for temperature in (1.0, 0.7):
        ref, _ = same(inputs, method=m, top_k=top_k, temperature=temperature)
        rejected += int((ref.accept_len == 0).sum())
    assert rejected > B  # most sequences reject every child, and their final token comes from the survivors


def test_residual_emptied_by_rejections():
    """top_k = 1 keeps one token; rejecting it empties the residual: EMPTY_RESIDUAL, next = argmax."""
    V = 50
    logits = torch.randn(3, 4, V)
    tokens = torch.tensor([[0, 1, 2, 3]] * 3)
    logits[:, 0, 1] = -5  # the kept token is not the drafted one... unless it is
    logits[1, 0, 2] = 20
    ref, out = same(dict(tokens=tokens, parents=star(3), target_logits=logits, seed=torch.arange(3)), top_k=1)
    inputs = dict(tokens=torch.tensor([[0, 7, 7]]), parents=star(2), target_logits=torch.randn(1, 3, V),
                  seed=torch.tensor([5]))
    inputs["target_logits"][0, 0, 7] = 30.0
    inputs["seed"] = torch.tensor([123456])
    same(inputs, top_k=1)


def test_near_one_mass_rejection_folds_row():
    """A rejected token holding almost all the mass (little left: the cancellation guard folds the row)."""
    g = torch.Generator().manual_seed(0)
    V = 1000
    B = 64
    logits = torch.randn(B, 3, V, generator=g)
    tokens = torch.tensor([[0, 3, 4]] * B)
    logits[:, 0, 3] = 12.0  # q(3) ~ 0.99: rejected in ~1% of seeds
    inputs = dict(tokens=tokens, parents=star(2), target_logits=logits, seed=torch.arange(B) * 977)
    same(inputs)
    same(inputs, method=ck.Cool())


@pytest.mark.parametrize("temperature,top_k", [(1.0, 0), (0.7, 0), (1.0, 100)])
@pytest.mark.parametrize("method", ["exact", "cascade"])
def test_first_child_acceptance_at_the_threshold(temperature, top_k, method):
    """A walk accepts the first child without the row's weights when a cheap upper bound of their sum already
    puts U below q(x) (Walker::accepts_without_weights). The drafted logit is swept across U's threshold in
    steps of 1e-5, so each sequence lands in one regime: surely accepted, within the bound's margin (the
    weights decide), or rejected; each must agree with the reference."""
    g = torch.Generator().manual_seed(11)
    V, B, seed = 3000, 81, 4242
    u = float(ck.philox.uniform(torch.tensor([seed]), ck.philox.ACCEPT, torch.tensor([1]))[0])
    base = torch.randn(V, generator=g, dtype=torch.float64)
    others = torch.exp(base[1:] / temperature)
    rest = float(others.topk(top_k - 1).values.sum() if top_k else others.sum())  # x is the row's max
    a0 = temperature * math.log(u * rest / (1 - u))  # q(token 0) = U at logit a0
    logits = torch.randn(B, 2, V, generator=g)
    logits[:, 0] = base.float()
    logits[:, 0, 0] = torch.tensor([a0 + (k - B // 2) * 1e-5 for k in range(B)])
    inputs = dict(tokens=torch.zeros(B, 2, dtype=torch.int64), parents=chain_tree(1),
                  target_logits=logits, seed=torch.full((B,), seed))
    if method == "cascade":  # orthogonal states: nothing absorbed, so r(x) = q(x) and the bound applies
        inputs["hidden"] = torch.eye(2).expand(B, 2, 2).contiguous()
    ref, out = same(inputs, method=ck.Cascade() if method == "cascade" else ck.Exact(), temperature=temperature,
                    top_k=top_k)
    assert 0 < int(ref.accept_len.sum()) < B  # the sweep crosses the threshold


@pytest.mark.parametrize("top_k", [2, 100, 2000])
@pytest.mark.parametrize("drafting", ["deterministic", "sampled"])
def test_one_pass_top_k_rows_match_the_reference(top_k, drafting):
    """Top-k at T = 1 on rows of 8192: the row's max and the candidates come from one pass (no early acceptance
    possible for the first child: 64 sampled logits put U above its bound e^x / sum of e^s over them), or from two
    when the first child may be accepted early. Rows with NaN or +inf (invalid: flagged before top-k), -inf
    entries, ties, a NaN among the sampled positions, first children from improbable to likely (so both paths
    run), Exact and CASCADE."""
    g = torch.Generator().manual_seed(top_k)
    B, V = 24, 8192
    parents = torch.tensor([-1, 0, 0, 0, 1, 1, 2], dtype=torch.int32)
    N = parents.shape[0]
    logits = torch.randn(B, N, V, generator=g) * 2
    logits[1::4] = torch.round(logits[1::4] * 2) / 2  # ties at the threshold
    logits[2, :, ::7] = -float("inf")
    logits[3, 0, 4000] = float("nan")
    logits[5, 0, 17] = float("inf")
    logits[6, 0, 8 * 3 + 5] = float("nan")  # a position the 1024-entry sample reads (j * 8 + (j * 7) % 8, j = 3)
    tokens = torch.randint(0, V, (B, N), generator=g)
    boost = torch.linspace(0.0, 9.0, B)  # the first children: improbable (no early acceptance) to likely
    for b in range(B):
        for u, c in ((0, 1), (1, 4), (2, 6)):
            logits[b, u, tokens[b, c]] += boost[b]
    hidden = torch.randn(B, N, 16, generator=g)
    hidden[:, 2] = hidden[:, 1] + 0.01 * hidden[:, 2]  # siblings 1 and 2 interchangeable
    kw = dict(draft_logits=torch.randn(B, N, V, generator=g) * 2) if drafting == "sampled" else {}
    inputs = dict(tokens=tokens, parents=parents, target_logits=logits, seed=torch.arange(B) * 7, **kw)
    _, out = same(inputs, top_k=top_k)
    assert int(out.accept_len.sum()) > 0 and bool((out.status != 0).any())
    same(dict(inputs, hidden=hidden), method=ck.Cascade(), top_k=top_k)


@pytest.mark.parametrize("top_k", [1, 2, 3])
def test_first_child_outside_top_k_is_never_accepted_early(top_k):
    """With top-k, the early acceptance also needs x among the survivors: here one or two tokens sit just above
    the drafted one (x is the third largest), so top_k <= 2 masks it (q(x) = 0: always rejected) while its
    weight alone would often pass the bound; top_k = 3 keeps it."""
    g = torch.Generator().manual_seed(5)
    V, B = 3000, 48
    logits = torch.randn(B, 2, V, generator=g)
    logits[:, 0, 0] = 6.0
    logits[:, 0, 1] = 6.0 + torch.linspace(1e-3, 0.3, B)
    logits[:, 0, 2] = 6.5
    inputs = dict(tokens=torch.zeros(B, 2, dtype=torch.int64), parents=chain_tree(1), target_logits=logits,
                  seed=torch.arange(B) * 31)
    ref, _ = same(inputs, top_k=top_k)
    accepted = int(ref.accept_len.sum())
    assert accepted == 0 if top_k < 3 else accepted > 0


@pytest.mark.parametrize("threads", [2, 3])
def test_pool_matches_one_thread_and_concurrent_calls(threads):
    g = torch.Generator().manual_seed(threads)
    B, V = 40, 700
    parents = ck.tree_from_choices(ck.DEEP_CHOICES)
    N = parents.shape[0]
    inputs = dict(tokens=torch.randint(0, V, (B, N), generator=g), parents=parents,
                  target_logits=torch.randn(B, N, V, generator=g) * 3, seed=torch.arange(B))
    prev = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = ck.verify(**inputs, backend="cpu", top_k=50)
        torch.set_num_threads(threads)
        many = ck.verify(**inputs, backend="cpu", top_k=50)
        results = [None] * 4

        def work(i):
            results[i] = ck.verify(**inputs, backend="cpu", top_k=50)

        ts = [threading.Thread(target=work, args=(i,)) for i in range(4)]
        for t in ts:
            t.start()
        for t in ts:
            t.join()
    finally:
        torch.set_num_threads(prev)
    for r in [many] + results:
        for a, b in zip(one[:5], r[:5]):
            assert torch.equal(a, b)


def test_huge_gsd_group_is_bounded_by_vocab():
    """G = 2**40 is clamped to V; with a wide dp and eps the absorbed set is large but memory stays O(V)."""
    g = torch.Generator().manual_seed(1)
    V = 5000
    inputs = dict(tokens=torch.tensor([[0, 1, 2]]), parents=star(2), target_logits=torch.randn(1, 3, V, generator=g),
                  seed=torch.tensor([0]))
    same(inputs, method=ck.GSD(G=2**40, dp=1.0), eps=1.0)
    same(inputs, method=ck.GSD(G=2**40, dp=1.0), eps=1.0, temperature=0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("V", [37, 300, 4099])
def test_rows_read_in_place_fuzz(dtype, V):
    """The row statistics (max / NaN, weights, top-k candidates) are computed straight from the logits
    (vector body and scalar tail, every dtype, with and without CFG and temperature): rows holding -inf,
    -0.0, subnormal halves, values near the dtype's largest, and a few NaN / +inf rows (status), against
    the reference."""
    g = torch.Generator().manual_seed(V + 7 * dtype.itemsize)
    B = 6
    parents = ck.tree_from_choices(ck.MC_SIM_7B_63)
    N = parents.shape[0]
    big = float(torch.finfo(dtype).max)
    for trial in range(4):
        cfg = trial % 2 == 1
        rows = 2 * B if cfg else B
        logits = torch.randn(rows, N, V, generator=g) * 3
        pick = torch.rand(rows, N, V, generator=g)
        logits[pick < 0.05] = -float("inf")
        logits[(pick >= 0.05) & (pick < 0.08)] = -0.0
        logits[(pick >= 0.08) & (pick < 0.10)] = 3e-7  # a float16 subnormal
        if trial == 3:  # near the largest finite value (CFG of these may overflow: then not a distribution)
            logits[(pick >= 0.10) & (pick < 0.11)] = big * 0.9
        logits[0, 1, 5] = float("nan")
        logits[1, 0, V - 1] = float("inf")
        logits = logits.to(dtype)
        tokens = torch.randint(-1, V, (B, N), generator=g)
        for b in range(B):  # make some walks go deeper: the first child's token is its parent's argmax
            for i in (1, 5):
                tokens[b, i] = int(torch.nan_to_num(logits[b, 0].float(), nan=-float("inf")).argmax())
        inputs = dict(tokens=tokens, parents=parents, target_logits=logits, seed=torch.arange(B) + 31 * trial)
        kw = dict(cfg_scale=1.7) if cfg else {}
        for extra in (dict(), dict(temperature=0.6), dict(temperature=0), dict(top_k=5), dict(top_k=V),
                      dict(top_k=3, temperature=1.3), dict(top_p=0.8)):
            same(inputs, **kw, **extra)


def _serial_f32(v):
    import numpy as np
    return np.cumsum(v.numpy().astype(np.float32))[-1] if v.numel() else np.float32(0)


@pytest.mark.parametrize("kind", ["softmax", "ties", "binades", "zeros-subnormal", "negative-nonfinite", "sizes"])
def test_running_sum_is_the_serial_float32_sum(kind):
    """The inverse CDF's blocked running sum (integer multiples of the running sum's ulp within a binade)
    equals the serial float32 loop bit for bit: ties of exactly half an ulp, binade crossings inside
    blocks, zeros and subnormals, negative or non-finite entries (summed serially), odd lengths."""
    from cascade_kernels import _C
    g = torch.Generator().manual_seed(len(kind))
    for trial in range(40):
        n = int(torch.randint(1, 5000, (1,), generator=g)) if kind == "sizes" else 4096
        if kind == "softmax":
            v = torch.softmax(torch.randn(n, generator=g) * (1 + trial % 4), 0)
        elif kind == "ties":  # many entries exactly half an ulp (and 3/2 ulp) of the sum they are added to
            v = torch.full((n,), 2.0 ** -13)
            v[::3] = 2.0 ** -25 * float(1 + trial % 3)
            v[1::7] = 3 * 2.0 ** -26
        elif kind == "binades":  # growing entries: the sum crosses binades inside blocks
            v = torch.linspace(0, 1, n) ** (1 + trial % 5) * 2.0 ** (trial % 9 - 4)
        elif kind == "zeros-subnormal":
            v = torch.rand(n, generator=g) * 1e-3
            v[torch.rand(n, generator=g) < 0.5] = 0.0
            v[torch.rand(n, generator=g) < 0.1] = 1e-40
            v[: 300 + trial] = 0.0
        elif kind == "negative-nonfinite":
            v = torch.rand(n, generator=g)
            v[int(torch.randint(0, n, (1,), generator=g))] = [-0.5, float("inf"), float("nan"), 3e38, -0.0][trial % 5]
        else:
            v = torch.rand(n, generator=g) ** 4
        v = v.float().contiguous()
        got, want = _C.running_sum(v.data_ptr(), v.numel()), _serial_f32(v)
        assert (got == want) or (got != got and want != want), (trial, got, float(want))


def _chained_serial_sums(w, divs, zero):
    """Block starts and total of the float32 running sum of (((w / divs[0]) / divs[1]) ...), zero at ``zero``."""
    import numpy as np
    v = w.numpy().astype(np.float32).copy()
    with np.errstate(over="ignore"):  # a quotient may overflow to inf (as the kernel's must)
        for d in divs:
            v = (v / np.float32(d)).astype(np.float32)
    v[list(zero)] = 0.0
    run = np.cumsum(v, dtype=np.float32)  # numpy's float32 cumsum is the serial loop
    starts = [np.float32(0.0) if b == 0 else run[b - 1] for b in range(0, len(v), 128)]
    return [float(x) for x in starts] + [float(run[-1])]


@pytest.mark.parametrize("kind", ["softmax", "peaked", "subnormal", "many-divisors", "tiny-divisors", "overflow",
                                  "negative-divisors"])
def test_chain_running_sums_equal_the_serial_sum_of_the_divided_values(kind):
    """The inverse CDF's running sums over a lazily divided row (approximated by one product per entry, exact
    divisions only where the approximation cannot decide a rounding) equal the serial float32 loop over the
    exactly divided values, bit for bit, at every block start; also where an intermediate quotient overflows
    while the product of the divisors is moderate, and with negative divisors."""
    from cascade_kernels import _C
    g = torch.Generator().manual_seed(7 + len(kind))
    for trial in range(25):
        n = [4096, 16384, 1000, 129, 16][trial % 5]
        scale = 1 + trial % 6
        if kind == "subnormal":
            w = torch.exp(torch.randn(n, generator=g) * 20 - 60)  # many weights below 2^-126
        elif kind == "peaked":
            w = torch.exp(torch.randn(n, generator=g) * 6)
        else:
            w = torch.exp(torch.randn(n, generator=g) * scale)
        w = w.float().contiguous()
        total = float(w.double().sum())
        k = {"many-divisors": 12, "tiny-divisors": 3}.get(kind, 1 + trial % 8)
        divs = [total] + [float(torch.empty(1).uniform_(0.05, 1.0, generator=g)) for _ in range(k - 1)]
        if kind == "tiny-divisors":
            divs[1:] = [1e-3, 2e-5]
        if kind == "overflow":  # w / 2^-40 overflows for one weight after the first chunk; the divisors' product
            w = torch.zeros(n)  # is 1 and the running sum stays moderate, so that weight's approximation is finite
            w[:1024] = 2.0 ** 87
            w[min(n - 1, 1024 + 37 * trial)] = 2.0 ** (87 + trial % 3)
            divs = [2.0 ** -40, 2.0 ** 40]
        if kind == "negative-divisors":
            divs[1:] = [-4.0, -4.0, 2.0 ** -10][: k - 1] or [-4.0]
        zero = sorted(set(torch.randint(0, n, (trial % 7,), generator=g).tolist()))
        got = _C.chain_running_sums(w.data_ptr(), n, divs, zero)
        want = _chained_serial_sums(w, divs, zero)
        assert got == want, (trial, n, k, [(i, a, b) for i, (a, b) in enumerate(zip(got, want)) if a != b][:3])


@pytest.mark.parametrize("n", [1280, 37, 16, 0])
def test_dots_of_a_node_do_not_depend_on_how_many_are_taken_together(n):
    """CASCADE's cosines of one node with its siblings or children take the dots in groups that share the node's
    loads (4 pairs on AVX-512, 2 otherwise); each dot must have the same bits taken alone or in any group, and be
    a float32-accumulated dot (within float32 rounding of the float64 one)."""
    from cascade_kernels import _C
    g = torch.Generator().manual_seed(n)
    h = torch.randn(10, n, generator=g).contiguous()
    rows = [h[j].data_ptr() for j in range(1, 10)]
    alone = [_C.dots(h[0].data_ptr(), [r], n)[0] for r in rows]
    for m in range(1, 10):
        assert _C.dots(h[0].data_ptr(), rows[:m], n) == alone[:m], m
    assert _C.dots(h[0].data_ptr(), rows[3:], n) == alone[3:]
    exact = (h[1:].double() @ h[0].double()).tolist()
    scale = (h[1:].double().abs() @ h[0].double().abs()).tolist()
    for got, want, sc in zip(alone, exact, scale):
        assert abs(got - want) <= 1e-5 * sc + 1e-12


def test_topk_sample_guess_short_falls_back():
    """Rows whose strided sample (the positions the C++ top-k samples for V = 8192) holds the largest
    logits: fewer than k entries pass the sample's threshold, and the select runs on the whole row."""
    g = torch.Generator().manual_seed(21)
    B, V = 3, 8192
    parents = chain_tree(3)
    N = parents.shape[0]
    logits = torch.randn(B, N, V, generator=g)
    stride = V // 1024
    pos = torch.tensor([j * stride + (j * 7) % stride for j in range(1024)])
    logits[:, :, pos] = 5.0 + torch.rand(B, N, 1024, generator=g)
    tokens = torch.randint(0, V, (B, N), generator=g)
    tokens[:, 1:] = pos[torch.randint(0, 1024, (B, N - 1), generator=g)]  # drafted among the likely ones
    inputs = dict(tokens=tokens, parents=parents, target_logits=logits, seed=torch.arange(B))
    for k in (1500, 2000, 5000):
        same(inputs, top_k=k)
        same(inputs, top_k=k, temperature=0.5)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_one_pass_max_and_compaction_equal_the_two_passes(dtype):
    """Top-k at T = 1 takes the row's max and compacts the candidates (>= the sample's guess) in one pass: the
    max (its sign of zero too) and the NaN flag must be row_max's bits, and the candidates row_compact_ge's,
    which equal numpy's in index order: odd lengths (the scalar tails), CFG, ties, -0.0 / +0.0 maxima, +-inf,
    NaN, and thresholds from -inf to +inf."""
    import struct

    import numpy as np

    from cascade_kernels import _C
    bits = lambda x: struct.pack("<f", x)  # noqa: E731
    code = {torch.float32: 0, torch.bfloat16: 1, torch.float16: 2}[dtype]
    g = torch.Generator().manual_seed(5)
    for trial in range(48):
        n = [1, 15, 16, 63, 64, 65, 129, 1000, 4099, 16384][trial % 10]
        c = torch.randn(n, generator=g)
        if trial % 4 == 1:
            c = torch.round(c * 2) / 2  # ties at the threshold
        if trial % 6 == 2:  # a maximum of zeros of both signs: the sign the max keeps depends on the order
            c = -c.abs() - 1.0
            c[torch.randint(0, n, (3,), generator=g)] = 0.0
            c[torch.randint(0, n, (3,), generator=g)] = -0.0
        if trial % 7 == 3:
            c[int(torch.randint(0, n, (1,), generator=g))] = float("inf") if trial % 2 else -float("inf")
        if trial % 9 == 4 or trial % 10 == 8:  # (n 1000 / 4099 / 16384 too: NaN in the main loop or the tail)
            c[int(torch.randint(0, n, (1,), generator=g))] = float("nan")
        c = c.to(dtype).contiguous()
        cfg = trial % 5 == 0
        u = torch.randn(n, generator=g).to(dtype).contiguous() if cfg else None
        finite = c.float()[torch.isfinite(c.float())]
        for t in (-float("inf"), float(finite.quantile(0.9)) if finite.numel() else 0.0, 0.0, float("inf")):
            (fmax, fnan, fv, fi), (pmax, pnan, pv, pi) = _C.max_compact(
                c.data_ptr(), u.data_ptr() if cfg else 0, code, 1.5, t, n)
            assert (bits(fmax), fnan) == (bits(pmax), pnan), (trial, n, t, fmax, pmax)
            assert (fi, [bits(x) for x in fv]) == (pi, [bits(x) for x in pv]), (trial, n, t)
            x = c.float().numpy()
            if cfg:  # the guided logit, in float32 as the kernels take it: un + s * (c - un)
                un = u.float().numpy()
                x = un + np.float32(1.5) * (x - un)
            keep = np.nonzero(x >= t)[0]
            assert fi == keep.tolist() and np.array_equal(np.array(fv, np.float32), x[keep]), (trial, n, t)
            assert fnan == bool(np.isnan(x).any())
            if not np.isnan(x).all():
                assert fmax == np.nanmax(x), (trial, n)


@pytest.mark.parametrize("kind", ["normal", "ties", "narrow", "signs-zeros-inf", "sizes"])
def test_kth_largest_is_exact(kind):
    """The top-k select (8-bit radix passes from the top of the keys' range) equals the k-th largest by
    sorting: ties, -0.0 / +0.0, +-inf, values within a few ulps of each other, both signs, odd sizes."""
    import numpy as np

    from cascade_kernels import _C
    g = torch.Generator().manual_seed(len(kind))
    for trial in range(60):
        n = int(torch.randint(1, 5000, (1,), generator=g)) if kind == "sizes" else 2500
        if kind == "normal":
            v = torch.randn(n, generator=g) * (1 + trial)
        elif kind == "ties":
            v = torch.randint(-3, 4, (n,), generator=g).float()
        elif kind == "narrow":  # a handful of adjacent floats
            v = 1.5 + torch.randint(0, 5, (n,), generator=g).float() * 2.0 ** -23
        elif kind == "signs-zeros-inf":
            v = torch.randn(n, generator=g)
            pick = torch.randint(0, 6, (n,), generator=g)
            v[pick == 0] = 0.0
            v[pick == 1] = -0.0
            v[pick == 2] = float("inf") if trial % 2 else -float("inf")
        else:
            v = torch.rand(n, generator=g) ** 3 - 0.2
        v = v.float().contiguous()
        srt = np.sort(v.numpy())[::-1]
        for k in {1, 2, n // 3 + 1, n // 2 + 1, n - 1 if n > 1 else 1, n}:
            got = _C.kth_largest(v.data_ptr(), n, k)
            assert got == srt[k - 1], (kind, trial, n, k, got, srt[k - 1])


@pytest.mark.parametrize("V", [1, 7, 31, 32, 33, 64, 1000, 16384, 16411])
def test_fused_weight_sum_is_sum_f64(V):
    """row_exp_sum's float64 sum taken in its pass (when the first child will be rejected) equals the
    separate sum_f64 over the written weights bit for bit, and nothing else changes."""
    from cascade_kernels import _C
    g = torch.Generator().manual_seed(V)
    for scale in (0.1, 1.0, 8.0, 40.0):
        row = (torch.randn(V, generator=g) * scale).contiguous()
        fused, plain, fused64, want64, same_w = _C.exp_sums(row.data_ptr(), V)
        assert same_w and fused == plain and fused64 == want64, (V, scale, fused, plain, fused64, want64)


@pytest.mark.parametrize("V", [5, 32, 100, 16384, 16411])
def test_float64_weight_sums_follow_the_lane_order(V):
    """sum_f64 and the weights' pass's float64 sum add each lane of two K-lane accumulators (pairs of vectors)
    in index order, then the lanes 0..K-1 of their sum, then the tail serially: an oracle in numpy (cumsum adds
    in order) fixes those bits for each ISA's K (16 with AVX-512, else 8)."""
    import numpy as np
    from cascade_kernels import _C
    K = 16 if _C.isa() == "avx512" else 8
    g = torch.Generator().manual_seed(V + 1)
    for scale in (0.5, 3.0, 30.0):
        row = (torch.randn(V, generator=g) * scale).contiguous()
        shifted, w = (row - row.max()).contiguous(), torch.empty(V)
        _C.row_weights(shifted.data_ptr(), V, w.data_ptr())
        x = w.double().numpy()
        n2 = V // (2 * K) * (2 * K)
        pairs = x[:n2].reshape(-1, 2, K)
        acc = np.zeros(K) if n2 == 0 else np.cumsum(pairs[:, 0], axis=0)[-1] + np.cumsum(pairs[:, 1], axis=0)[-1]
        want = 0.0
        for v in list(acc) + list(x[n2:]):
            want += float(v)
        _, _, fused64, plain64, _ = _C.exp_sums(row.data_ptr(), V)
        assert fused64 == want and plain64 == want, (V, scale, fused64, plain64, want)


@pytest.mark.parametrize("order", ["sorted", "shuffled"])
def test_vector_exp_equals_the_scalar_exp(order):
    """The weights' vector exponential (with its one-multiplication path for groups whose every lane lies in
    [-87, 80]) gives the scalar exponential's bits for every x, across the subnormal results (x < -87.3), the
    flush to zero below -104, and groups that mix the two ranges; NaN stays NaN. Both are within 1.1 ulp of
    exp(x) (float64) wherever the result is a normal float (its fused multiply-adds included)."""
    from cascade_kernels import _C
    g = torch.Generator().manual_seed(7)
    # the special values first: the truncation to whole groups below must not drop them
    xs = torch.cat([torch.tensor([0.0, -0.0, 80.0, -87.0, -104.0, float("-inf"), float("nan")]),
                    torch.linspace(-110.0, 1.0, 40000), torch.linspace(-87.5, -86.5, 4096),
                    torch.linspace(-104.5, -103.5, 1024), torch.rand(8192, generator=g) * -20.0])
    if order == "shuffled":
        xs = xs[torch.randperm(len(xs), generator=g)]
    xs = xs[: len(xs) // 64 * 64].contiguous()
    vec = torch.empty_like(xs)
    _C.row_weights(xs.data_ptr(), len(xs), vec.data_ptr())
    one = torch.empty(1)
    scalar = torch.empty_like(xs)
    for i in range(len(xs)):  # a row of one entry: the scalar path
        _C.row_weights(xs[i:].data_ptr(), 1, one.data_ptr())
        scalar[i] = one[0]
    same = (vec.view(torch.int32) == scalar.view(torch.int32)) | (vec.isnan() & scalar.isnan())
    bad = (~same).nonzero().flatten()[:5].tolist()
    assert not bad, [(xs[i].item(), vec[i].item(), scalar[i].item()) for i in bad]
    assert (vec[xs < -104.0] == 0).all() and (vec[(xs > -87.0) & (xs <= 0)] >= 2.0 ** -126).all()
    normal = (xs >= -87.0) & (xs <= 0)
    exact = torch.exp(xs[normal].double())
    ulp = (exact.float().nextafter(torch.tensor(float("inf"))).double() - exact.float().double())
    assert ((vec[normal].double() - exact).abs() / ulp).max() <= 1.1


@pytest.mark.parametrize("isa", ["avx2", "generic"])
def test_the_avx2_and_generic_kernels_pass_this_file_too(isa):
    """The row kernels are compiled three times (AVX-512, AVX2, generic) and a CPU without AVX-512 runs another
    copy: this file's tests run again in a subprocess with CASCADE_KERNELS_ISA capping the choice."""
    if os.environ.get("CASCADE_KERNELS_ISA"):
        pytest.skip("this run is already capped to one ISA")
    env = dict(os.environ, CASCADE_KERNELS_ISA=isa)
    used = subprocess.run([sys.executable, "-c", "from cascade_kernels import _C; print(_C.isa())"], env=env,
                          capture_output=True, text=True, timeout=120).stdout.strip()
    assert used in (isa, "generic"), used  # generic where the CPU lacks AVX2
    run = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", __file__, "-k",
                          "not avx2_and_generic"], env=env, capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-2000:]
    assert " passed" in run.stdout.splitlines()[-1], run.stdout[-500:]

