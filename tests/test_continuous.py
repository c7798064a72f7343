"""verify_continuous (docs/CONTINUOUS.md): exactness of the emitted tokens, acceptance rate, backend
parity decision for decision, and input handling.

The statistical tests draw B independent sequences in one call (seed b for sequence b): ~4 000 in
the normal run, 20 000+ under ``-m slow`` / ``CK_SLOW=1``.
"""
import os

import numpy as np
import pytest
import torch
from scipy import integrate, stats

from cascade_kernels.ops.verify_continuous import (STATUS_NONFINITE, STATUS_PROPOSALS_EXHAUSTED, GaussianMixture,
                                                   verify_continuous)
from cascade_kernels._backend import unavailable_reason
from cascade_kernels.ops.verify_continuous.mixture import box_muller, choose_component, draw_uniforms

from conftest import HAS_TRITON

SLOW = os.environ.get("CK_SLOW") == "1"
P_MIN = 1e-3  # the smallest p-value a correct sampler is allowed (fixed seeds: the outcome is deterministic)
STAT_BACKEND = "cpu" if unavailable_reason("cpu") is None else "reference"

# 1-D target q and a shifted drafter p: (weights, means, sigmas).
Q1 = ([0.3, 0.7], [-1.0, 1.5], [0.5, 0.8])
P1 = ([0.6, 0.4], [-0.3, 2.2], [0.6, 0.7])


def mixture(params, B, P, D=1):
    """GaussianMixture with batch [B, P]: every row the same 1-D params (repeated over D)."""
    w, mu, sig = (torch.tensor(v, dtype=torch.float32) for v in params)
    K = w.numel()
    return GaussianMixture(torch.log(w).expand(B, P, K).contiguous(),
                           mu.view(1, 1, K, 1).expand(B, P, K, D).contiguous(),
                           torch.log(sig).view(1, 1, K, 1).expand(B, P, K, D).contiguous())


def sample(g: GaussianMixture, gen) -> torch.Tensor:
    """One draw per batch element of ``g`` with torch's own generator (independent of Philox)."""
    lg = g.logits.reshape(-1, g.K)
    k = torch.multinomial(torch.softmax(lg, -1), 1, generator=gen).squeeze(1)
    rows = torch.arange(lg.shape[0])
    mu = g.means.reshape(-1, g.K, g.D)[rows, k]
    sd = g.log_scales.reshape(-1, g.K, g.D)[rows, k].exp()
    return (mu + sd * torch.randn(mu.shape, generator=gen)).reshape(*g.batch_shape, g.D)


def cdf1(params, x):
    w, mu, sig = params
    return sum(wk * stats.norm.cdf(x, m, s) for wk, m, s in zip(w, mu, sig))


def pdf1(params, x):
    w, mu, sig = params
    return sum(wk * stats.norm.pdf(x, m, s) for wk, m, s in zip(w, mu, sig))


def first_tokens(out, draft):
    """The first emitted token of each sequence: draft[:, 0] if accepted, else next."""
    return torch.where((out.accept_len >= 1).unsqueeze(1), draft[:, 0], out.next)


def chi2_pvalue(counts, masses):
    counts = np.asarray(counts, dtype=np.float64).ravel()
    expected = np.asarray(masses, dtype=np.float64).ravel() * counts.sum()
    # Cochran's rule for the chi-square approximation: no cell below 1, at most 20% below 5
    assert expected.min() >= 1 and (expected < 5).mean() <= 0.2, "bins too small for a chi-square test"
    return stats.chisquare(counts, expected).pvalue


N_STAT = 20_000 if SLOW else 4_000


@pytest.fixture(scope="module")
def one_d_run():
    """L = 1, D = 1: q vs shifted p, N_STAT sequences."""
    B = N_STAT
    p, q = mixture(P1, B, 1), mixture(Q1, B, 2)
    draft = sample(p, torch.Generator().manual_seed(0))
    out = verify_continuous(draft, p, q, seed=torch.arange(B), backend=STAT_BACKEND)
    return draft, out


def test_first_token_follows_target_ks(one_d_run):
    draft, out = one_d_run
    assert bool((out.status == 0).all())
    assert 0.2 < float((out.accept_len == 0).float().mean()) < 0.8  # both branches exercised
    res = stats.kstest(first_tokens(out, draft)[:, 0].numpy(), lambda x: cdf1(Q1, x))
    assert res.pvalue > P_MIN, res


def test_acceptance_rate_is_one_minus_tv(one_d_run):
    _, out = one_d_run
    tv = 0.5 * integrate.quad(lambda x: abs(pdf1(Q1, x) - pdf1(P1, x)), -np.inf, np.inf, limit=200)[0]
    rate = float((out.accept_len >= 1).double().mean())
    se = np.sqrt((1 - tv) * tv / out.accept_len.numel())
    assert abs(rate - (1 - tv)) < 4 * se, (rate, 1 - tv, se)
    # rejected sequences drew from the residual, whose per-proposal acceptance is TV: mean = 1 / TV
    n_prop = out.proposals[out.accept_len == 0].double()
    assert abs(float(n_prop.mean()) - 1 / tv) < 4 * float(n_prop.std()) / np.sqrt(n_prop.numel())


@pytest.mark.slow
def test_first_token_ks_reference_backend():
    B = 20_000
    p, q = mixture(P1, B, 1), mixture(Q1, B, 2)
    draft = sample(p, torch.Generator().manual_seed(3))
    out = verify_continuous(draft, p, q, seed=torch.arange(B) + 10**6, backend="reference")
    assert stats.kstest(first_tokens(out, draft)[:, 0].numpy(), lambda x: cdf1(Q1, x)).pvalue > P_MIN


def test_equal_densities_accept_every_draft():
    B, L, K, D = 64, 4, 3, 3
    gen = torch.Generator().manual_seed(1)
    q = GaussianMixture(torch.randn(B, L + 1, K, generator=gen), torch.randn(B, L + 1, K, D, generator=gen),
                        0.3 * torch.randn(B, L + 1, K, D, generator=gen))
    p = GaussianMixture(q.logits[:, :L].clone(), q.means[:, :L].clone(), q.log_scales[:, :L].clone())
    out = verify_continuous(sample(p, gen), p, q, seed=torch.arange(B))
    assert bool((out.accept_len == L).all()) and bool((out.status == 0).all())
    assert bool((out.proposals == 1).all())  # the bonus token: one draw from q[:, L]


def test_four_dim_chi2():
    B, D = N_STAT, 4
    gen = torch.Generator().manual_seed(2)
    w = torch.tensor([0.5, 0.3, 0.2])
    mu = torch.randn(3, D, generator=gen)
    ls = 0.3 * torch.randn(3, D, generator=gen) - 0.3
    q1 = GaussianMixture(torch.log(w), mu, ls)
    p1 = GaussianMixture(torch.log(w.flip(0)), mu + 0.4, ls + 0.2)
    q = GaussianMixture(q1.logits.expand(B, 2, 3), q1.means.expand(B, 2, 3, D), q1.log_scales.expand(B, 2, 3, D))
    p = GaussianMixture(p1.logits.expand(B, 1, 3), p1.means.expand(B, 1, 3, D), p1.log_scales.expand(B, 1, 3, D))
    draft = sample(p, gen)
    out = verify_continuous(draft, p, q, seed=torch.arange(B) + 17, backend=STAT_BACKEND)
    assert bool((out.status == 0).all())
    tokens = first_tokens(out, draft)
    # 3 bins per coordinate at the terciles of a large Monte Carlo sample of q: 81 cells
    big = sample(GaussianMixture(q1.logits.expand(400_000, 3), q1.means.expand(400_000, 3, D),
                                 q1.log_scales.expand(400_000, 3, D)), gen)
    edges = torch.quantile(big[::4], torch.tensor([1 / 3, 2 / 3]), dim=0)  # [2, D]

    def cells(x):
        idx = (x.unsqueeze(0) > edges.unsqueeze(1)).sum(0)  # [n, D] in 0..2
        return (idx * torch.tensor([1, 3, 9, 27])).sum(1)

    masses = torch.bincount(cells(big), minlength=81).double() / big.shape[0]
    counts = torch.bincount(cells(tokens), minlength=81)
    assert chi2_pvalue(counts.numpy(), masses.numpy()) > P_MIN


def test_depth_two_chain_chi2():
    """L = 2, position-dependent q and p: the first two emitted tokens are i.i.d. q0 x q1 (the toy
    target ignores the prefix). A sequence that stops at position 0 gets its second token from a
    second call (fresh draft at position 1), as the decode loop would."""
    B = N_STAT
    Q = [Q1, ([0.5, 0.5], [0.0, 3.0], [1.0, 0.4]), ([1.0], [0.0], [1.0])]
    P = [P1, ([0.3, 0.7], [0.5, 2.5], [1.2, 0.5])]

    def stack(params_list, B):
        gs = [mixture(pr, B, 1) for pr in params_list]
        K = max(g.K for g in gs)
        pad = lambda t, val: torch.nn.functional.pad(t, (0, K - t.shape[-1]), value=val)  # noqa: E731
        return GaussianMixture(torch.cat([pad(g.logits, -1e4) for g in gs], 1),
                               torch.cat([torch.nn.functional.pad(g.means, (0, 0, 0, K - g.K)) for g in gs], 1),
                               torch.cat([torch.nn.functional.pad(g.log_scales, (0, 0, 0, K - g.K)) for g in gs], 1))

    q, p = stack(Q, B), stack(P, B)
    gen = torch.Generator().manual_seed(4)
    draft = sample(p, gen)
    out = verify_continuous(draft, p, q, seed=torch.arange(B) + 5000, backend=STAT_BACKEND)
    t0 = first_tokens(out, draft)[:, 0]
    t1 = torch.where(out.accept_len >= 2, draft[:, 1, 0], out.next[:, 0])
    again = out.accept_len == 0
    n = int(again.sum())
    q2, p2 = stack(Q[1:], n), stack(P[1:], n)
    d2 = sample(p2, gen)
    out2 = verify_continuous(d2, p2, q2, seed=torch.arange(n) + 10**7, backend=STAT_BACKEND)
    t1[again] = first_tokens(out2, d2)[:, 0]
    assert bool((out.status == 0).all()) and bool((out2.status == 0).all())
    assert min(int(again.sum()), int((out.accept_len == 1).sum()), int((out.accept_len == 2).sum())) > B // 20
    e0, e1 = np.array([-1.0, 0.0, 1.2]), np.array([0.0, 2.0, 3.0])
    m0 = np.diff(cdf1(Q[0], np.concatenate([[-np.inf], e0, [np.inf]])))
    m1 = np.diff(cdf1(Q[1], np.concatenate([[-np.inf], e1, [np.inf]])))
    counts = np.zeros((4, 4))
    np.add.at(counts, (np.searchsorted(e0, t0.numpy()), np.searchsorted(e1, t1.numpy())), 1)
    assert chi2_pvalue(counts, np.outer(m0, m1)) > P_MIN


# ---------------------------------------------------------------------------------------------
# Backend parity

def _random_case(B, L, Kq, Kp, D, seed, shift=0.6):
    gen = torch.Generator().manual_seed(seed)
    q = GaussianMixture(torch.randn(B, L + 1, Kq, generator=gen), torch.randn(B, L + 1, Kq, D, generator=gen),
                        0.3 * torch.randn(B, L + 1, Kq, D, generator=gen))
    p = GaussianMixture(torch.randn(B, L, Kp, generator=gen), torch.randn(B, L, Kp, D, generator=gen) + shift,
                        0.3 * torch.randn(B, L, Kp, D, generator=gen))
    return sample(p, gen), p, q


def _parity_backends():
    names = ["reference"]
    if unavailable_reason("cpu") is None:
        names.append("cpu")
    if HAS_TRITON and os.environ.get("TRITON_INTERPRET") == "1" or torch.cuda.is_available():
        names.append("triton")
    return names


def _verify_on(name, draft, p, q, seed, **kw):
    """verify_continuous on backend ``name``; the compiled Triton lane (a CUDA GPU, as in
    benchmarks/gpu_check.sh) gets the inputs on the GPU, the interpreter lane keeps them on the CPU."""
    if name == "triton" and torch.cuda.is_available():
        draft, seed = draft.cuda(), seed.cuda()
        p, q = (GaussianMixture(g.logits.cuda(), g.means.cuda(), g.log_scales.cuda()) for g in (p, q))
    return verify_continuous(draft, p, q, seed=seed, backend=name, **kw)


def _assert_same(outs):
    ref = outs[0][1]
    for name, o in outs[1:]:
        for field in ("accept_len", "proposals", "status"):
            assert torch.equal(getattr(o, field).cpu(), getattr(ref, field)), (name, field, getattr(o, field), ref)
        assert torch.allclose(o.next.cpu(), ref.next, atol=1e-5, rtol=0), (name, o.next, ref.next)


PARITY_SHAPES = [(B, L, K, D) for B in (1, 3) for L in (1, 4) for K in (1, 3) for D in (1, 5)]
_coverage = {"reject": 0, "exhausted": 0, "multi": 0, "bonus": 0}


@pytest.mark.parametrize("B,L,K,D", PARITY_SHAPES)
def test_backend_parity(B, L, K, D):
    names = _parity_backends()
    if len(names) < 2:
        pytest.skip("only the reference backend is available")
    draft, p, q = _random_case(B, L, K, 4 - K, D, seed=B * 1000 + L * 100 + K * 10 + D)
    for M in (64, 2):
        outs = [(n, _verify_on(n, draft, p, q, torch.arange(B) + 11 * M, max_proposals=M)) for n in names]
        _assert_same(outs)
        o = outs[0][1]
        _coverage["reject"] += int((o.accept_len < L).sum())
        _coverage["bonus"] += int((o.accept_len == L).sum())
        _coverage["exhausted"] += int(((o.status & STATUS_PROPOSALS_EXHAUSTED) != 0).sum())
        _coverage["multi"] += int((o.proposals > 1).sum())


def test_backend_parity_exercised_every_branch():
    """Runs after the parametrized cases: they must have met rejections, accepted chains, residual
    draws with several proposals and exhausted samplers (else parity proves little)."""
    if sum(_coverage.values()) == 0:
        pytest.skip("the parity cases did not run")
    assert min(_coverage.values()) > 0, _coverage


@pytest.mark.parametrize("T", [0.3, 42.0])
def test_backend_parity_accept_temperature(T):
    names = _parity_backends()
    if len(names) < 2:
        pytest.skip("only the reference backend is available")
    draft, p, q = _random_case(3, 4, 2, 3, 2, seed=31)
    outs = [(n, _verify_on(n, draft, p, q, torch.arange(3) + 5, max_proposals=8, accept_temperature=T))
            for n in names]
    _assert_same(outs)


def test_accept_temperature_tempers_the_acceptance_test_only():
    """accept_temperature = T stops where exact verification of the mixtures with every scale
    multiplied by T stops; the token after the stop is the untempered one (residual / bonus draw)."""
    B, L, T = 400, 3, 2.5
    draft, p, q = _random_case(B, L, 2, 3, 2, seed=21)
    widen = lambda g: GaussianMixture(g.logits, g.means, g.log_scales + np.log(T))  # noqa: E731
    seed = torch.arange(B) + 1
    hot = verify_continuous(draft, p, q, seed=seed, accept_temperature=T)
    wide = verify_continuous(draft, widen(p), widen(q), seed=seed)
    exact = verify_continuous(draft, p, q, seed=seed)
    assert torch.equal(hot.accept_len, wide.accept_len)
    assert float(hot.accept_len.float().mean()) > float(exact.accept_len.float().mean())  # T > 1 accepts more
    same = hot.accept_len == exact.accept_len
    assert 0 < int(same.sum()) < B
    assert torch.equal(hot.next[same], exact.next[same]) and torch.equal(hot.proposals[same], exact.proposals[same])
    one = verify_continuous(draft, p, q, seed=seed, accept_temperature=1)
    assert all(torch.equal(a, b) for a, b in zip(exact, one))


@pytest.mark.filterwarnings("ignore:All-NaN slice:RuntimeWarning")  # the interpreter's max over NaN params
def test_nonfinite_inputs_set_status_on_every_backend():
    B, L, K, D = 5, 3, 2, 2
    gen = torch.Generator().manual_seed(9)
    ql, qm, qs = torch.randn(B, L + 1, K, generator=gen), torch.randn(B, L + 1, K, D, generator=gen), \
        0.2 * torch.randn(B, L + 1, K, D, generator=gen)
    pl, pm, ps = ql[:, :L].clone(), qm[:, :L].clone(), qs[:, :L].clone()  # p = q: every finite draft accepted
    draft = sample(GaussianMixture(pl, pm, ps), gen)
    draft[0, 1, 0] = float("nan")  # broken draft at 1: stop, next ~ q[0, 1]
    qm[1, 0, 0, 0] = float("inf")  # broken target at 0: stop, next = 0
    pl[2, 2, 0] = float("nan")  # broken drafter density at 2: stop, next ~ q[2, 2]
    qs[3, L, 1, 1] = float("nan")  # broken bonus target: next = 0
    p = GaussianMixture(pl, pm, ps, check_finite=False)
    q = GaussianMixture(ql, qm, qs, check_finite=False)
    outs = [(n, verify_continuous(draft, p, q, seed=3, backend=n)) for n in _parity_backends()]
    _assert_same(outs)
    o = outs[0][1]
    assert o.accept_len.tolist() == [1, 0, 2, L, L]
    assert o.status.tolist() == [STATUS_NONFINITE] * 4 + [0]
    assert o.proposals.tolist() == [1, 0, 1, 0, 1]
    assert bool(torch.isfinite(o.next).all())
    assert bool((o.next[[1, 3]] == 0).all()) and bool((o.next[[0, 2, 4]] != 0).all())


def test_exhausted_sampler_returns_a_proposal_not_zeros():
    B, L, D = 256, 1, 2
    draft, p, q = _random_case(B, L, 2, 2, D, seed=5, shift=0.1)
    out = verify_continuous(draft, p, q, seed=torch.arange(B), max_proposals=1)
    ex = (out.status & STATUS_PROPOSALS_EXHAUSTED) != 0
    assert int(ex.sum()) > 0
    assert bool((out.proposals[ex] == 1).all()) and bool((out.accept_len[ex] < L).all())
    assert bool(torch.isfinite(out.next).all()) and bool((out.next[ex].abs().sum(1) > 0).all())
    # with room for proposals the same sequences keep a residual draw, and their decisions do not move
    big = verify_continuous(draft, p, q, seed=torch.arange(B), max_proposals=4096)
    assert torch.equal(big.accept_len, out.accept_len)
    assert int(((big.status & STATUS_PROPOSALS_EXHAUSTED) != 0).sum()) == 0


@pytest.mark.parametrize("backend", _parity_backends())
def test_exhausted_fallback_is_the_proposal_with_the_largest_residual_ratio(backend):
    """Recomputes the M proposals from their documented Philox indices and checks the fallback choice."""
    B, L, D, M = 64, 2, 3, 3
    draft, p, q = _random_case(B, L, 2, 2, D, seed=12, shift=0.1)
    seed = torch.arange(B) * 7
    out = verify_continuous(draft, p, q, seed=seed, max_proposals=M, backend=backend)
    ex = torch.nonzero((out.status & STATUS_PROPOSALS_EXHAUSTED) != 0).flatten()
    assert ex.numel() > 3
    for b in ex.tolist():
        s = int(out.accept_len[b])
        qs = GaussianMixture(q.logits[b, s], q.means[b, s], q.log_scales[b, s])
        ps = GaussianMixture(p.logits[b, s], p.means[b, s], p.log_scales[b, s])
        uc, u1, u2, _ = draw_uniforms(seed[b:b + 1], torch.arange(M).view(1, M) + s * M, D)
        k = choose_component(qs.logits, uc[0])
        y = qs.means[k] + qs.log_scales[k].exp() * box_muller(u1[0], u2[0])  # [M, D]
        rho = (1 - torch.exp(ps.log_prob(y) - qs.log_prob(y))).clamp(min=0)
        assert torch.allclose(out.next[b], y[int(torch.argmax(rho))], atol=1e-5), (b, rho)


def test_bonus_token_follows_the_last_target_ks():
    B = N_STAT
    q = mixture(Q1, B, 2)
    q = GaussianMixture(q.logits, torch.cat([q.means[:, :1], q.means[:, 1:] + 2.0], 1), q.log_scales)  # q_1 = q_0 + 2
    p = GaussianMixture(q.logits[:, :1], q.means[:, :1], q.log_scales[:, :1])  # p = q_0: the draft is accepted
    out = verify_continuous(sample(p, torch.Generator().manual_seed(13)), p, q, seed=torch.arange(B) + 99,
                            backend=STAT_BACKEND)
    assert bool((out.accept_len == 1).all())
    shifted = (Q1[0], [m + 2.0 for m in Q1[1]], Q1[2])
    assert stats.kstest(out.next[:, 0].numpy(), lambda x: cdf1(shifted, x)).pvalue > P_MIN


def test_seed_int_equals_constant_tensor_and_is_deterministic():
    draft, p, q = _random_case(4, 3, 3, 2, 3, seed=6)
    a = verify_continuous(draft, p, q, seed=123)
    b = verify_continuous(draft, p, q, seed=torch.full((4,), 123, dtype=torch.int64))
    c = verify_continuous(draft, p, q, seed=124)
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert not torch.equal(a.next, c.next)


def test_log_prob_matches_torch_distributions():
    gen = torch.Generator().manual_seed(7)
    g = GaussianMixture(torch.randn(5, 3, generator=gen), torch.randn(5, 3, 4, generator=gen),
                        0.5 * torch.randn(5, 3, 4, generator=gen))
    x = torch.randn(5, 4, generator=gen) * 2
    d = torch.distributions
    ref = d.MixtureSameFamily(d.Categorical(logits=g.logits.double()),
                              d.Independent(d.Normal(g.means.double(), g.log_scales.double().exp()), 1))
    assert torch.allclose(g.log_prob(x).double(), ref.log_prob(x.double()), atol=1e-4, rtol=1e-5)
    assert g.log_prob(x).dtype == torch.float32


# ---------------------------------------------------------------------------------------------
# Bad input

def test_mixture_validation_names_the_argument():
    lg, mu, ls = torch.zeros(2, 3), torch.zeros(2, 3, 4), torch.zeros(2, 3, 4)
    with pytest.raises(ValueError, match="K >= 1"):
        GaussianMixture(torch.zeros(2, 0), torch.zeros(2, 0, 4), torch.zeros(2, 0, 4))
    with pytest.raises(ValueError, match="means: the dimension D"):
        GaussianMixture(lg, torch.zeros(2, 3, 0), torch.zeros(2, 3, 0))
    with pytest.raises(ValueError, match="^means must have shape"):
        GaussianMixture(lg, torch.zeros(2, 2, 4), ls)
    with pytest.raises(ValueError, match="^log_scales must have the shape"):
        GaussianMixture(lg, mu, torch.zeros(2, 3, 5))
    with pytest.raises(ValueError, match="^logits must be finite"):
        GaussianMixture(torch.full((2, 3), float("nan")), mu, ls)
    with pytest.raises(ValueError, match="^log_scales must be finite"):
        GaussianMixture(lg, mu, torch.full((2, 3, 4), -float("inf")))  # a zero scale
    with pytest.raises(TypeError, match="^means must be a torch.Tensor"):
        GaussianMixture(lg, [[0.0]], ls)
    with pytest.raises(TypeError, match="^logits must have a float dtype"):
        GaussianMixture(torch.zeros(2, 3, dtype=torch.int64), mu, ls)
    with pytest.raises(ValueError, match="^x must have shape"):
        GaussianMixture(lg, mu, ls).log_prob(torch.zeros(2, 3))


def test_verify_validation_names_the_argument():
    draft, p, q = _random_case(2, 3, 2, 2, 4, seed=8)
    with pytest.raises(TypeError, match="^draft must be a torch.Tensor"):
        verify_continuous(draft.numpy(), p, q)
    with pytest.raises(ValueError, match="^draft must have shape"):
        verify_continuous(draft[0], p, q)
    with pytest.raises(ValueError, match="^draft must have B >= 1"):
        verify_continuous(draft[:, :0], p, q)
    with pytest.raises(TypeError, match="^draft_dist must be a GaussianMixture"):
        verify_continuous(draft, (p.logits, p.means, p.log_scales), q)
    with pytest.raises(ValueError, match=r"^target_dist must have batch shape \(2, 4\)"):
        verify_continuous(draft, p, p)
    with pytest.raises(ValueError, match="^draft_dist has D = 4 but draft has D = 3"):
        verify_continuous(draft[..., :3], p, q)
    with pytest.raises(ValueError, match="^max_proposals must be >= 1"):
        verify_continuous(draft, p, q, max_proposals=0)
    with pytest.raises(TypeError, match="^max_proposals must be an int"):
        verify_continuous(draft, p, q, max_proposals=2.5)
    with pytest.raises(ValueError, match="^max_proposals = .* overflows"):
        verify_continuous(draft, p, q, max_proposals=2**28)
    with pytest.raises(TypeError, match="^seed"):
        verify_continuous(draft, p, q, seed=1.5)
    for bad in (0.0, -1.0, float("nan"), float("inf"), 1e-50):
        with pytest.raises(ValueError, match="^accept_temperature"):
            verify_continuous(draft, p, q, accept_temperature=bad)
    with pytest.raises(TypeError, match="^accept_temperature must be a number"):
        verify_continuous(draft, p, q, accept_temperature="42")
    with pytest.raises(ValueError, match="^backend must be one of"):
        verify_continuous(draft, p, q, backend="gpu")
