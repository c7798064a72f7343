"""The CSpD criterion (verify_cspd, cspd_prefill_len; docs/CONTINUOUS.md) and the closed-form
diffusion head that exercises it (diffusion_toy: MixtureDiffusion, histogram_tvd)."""
import math

import numpy as np
import pytest
import torch
from scipy import stats

import cascade_kernels as ck
from cascade_kernels.ops.verify_continuous import (INNER_TEMPERATURE, PREFILL_FRACTION, GaussianMixture,
                                                   cspd_prefill_len, verify_continuous, verify_cspd)
from cascade_kernels.ops.verify_continuous.diffusion_toy import MixtureDiffusion, histogram_tvd

from test_continuous import _assert_same, _parity_backends

TARGET_1D = ([0.3, 0.7], [[-1.0], [1.5]], [[0.5], [0.8]])
DRAFTER_1D = ([0.4, 0.6], [[-0.8], [1.7]], [[0.55], [0.75]])
TARGET_2D = ([0.5, 0.5], [[-1.0, -1.0], [1.0, 0.5]], [[0.5, 0.4], [0.6, 0.5]])
DRAFTER_2D = ([0.45, 0.55], [[-0.8, -1.15], [1.2, 0.35]], [[0.55, 0.45], [0.65, 0.55]])


def aligned_case(target, drafter, B, L, seed, num_steps=100):
    """Drafts and last-step Gaussians of two heads run on the same noise: (draft, drafter step, target step)."""
    t, d = MixtureDiffusion(*target, num_steps=num_steps), MixtureDiffusion(*drafter, num_steps=num_steps)
    noise = t.noise((B, L + 1), torch.Generator().manual_seed(seed))
    ds = d.sample(noise[:, :L])
    return ds.sample, ds, t.sample(noise)


def run(case, **kw):
    draft, d, t = case
    return verify_cspd(draft, d.mean, d.log_std, t.mean, t.log_std, **kw)


# ---------------------------------------------------------------------------------------------
# Pre-filling and defaults

def test_defaults_are_the_released_codes():
    assert (INNER_TEMPERATURE, PREFILL_FRACTION) == (42.0, 0.15)


@pytest.mark.parametrize("n,fraction,expected", [(64, 0.15, 10), (100, 0.15, 15), (256, 0.15, 39), (10, 0.0, 0),
                                                 (10, 1.0, 10), (0, 0.15, 0), (7, 0.5, 4)])
def test_prefill_len(n, fraction, expected):
    assert cspd_prefill_len(n, fraction) == expected


def test_prefill_len_default_matches_the_released_step_count():
    # The released runner lets the target run the steps 0 <= step <= num_iter * ratio: 10 of MAR's 64.
    assert cspd_prefill_len(64) == sum(1 for step in range(64) if step <= 64 * 0.15) == 10


def test_prefill_len_validation():
    with pytest.raises(TypeError, match="^num_tokens must be an int"):
        cspd_prefill_len(64.0)
    with pytest.raises(ValueError, match="^num_tokens must be >= 0"):
        cspd_prefill_len(-1)
    with pytest.raises(ValueError, match="^fraction must be <= 1"):
        cspd_prefill_len(64, 1.5)
    with pytest.raises(ValueError, match="^fraction must be finite"):
        cspd_prefill_len(64, float("nan"))


# ---------------------------------------------------------------------------------------------
# GaussianMixture.gaussians

def test_gaussians_is_a_one_component_mixture():
    gen = torch.Generator().manual_seed(3)
    mu, ls = torch.randn(4, 2, 3, generator=gen), 0.3 * torch.randn(4, 2, 3, generator=gen)
    g = GaussianMixture.gaussians(mu, ls)
    assert (g.batch_shape, g.K, g.D) == ((4, 2), 1, 3)
    x = torch.randn(4, 2, 3, generator=gen)
    d = torch.distributions
    ref = d.Independent(d.Normal(mu.double(), ls.double().exp()), 1).log_prob(x.double())
    assert torch.allclose(g.log_prob(x).double(), ref, atol=1e-5)
    with pytest.raises(TypeError, match="^means must be a torch.Tensor"):
        GaussianMixture.gaussians(mu.numpy(), ls)
    with pytest.raises(ValueError, match="^log_scales must have the shape"):
        GaussianMixture.gaussians(mu, ls[..., :2])
    with pytest.raises(ValueError, match="^log_scales must be finite"):
        GaussianMixture.gaussians(mu, torch.full_like(ls, -math.inf))
    with pytest.raises(ValueError, match="^means must have shape"):
        GaussianMixture.gaussians(torch.tensor(1.0), torch.tensor(0.0))


# ---------------------------------------------------------------------------------------------
# MixtureDiffusion and histogram_tvd

def test_diffusion_shapes_determinism_and_last_step():
    h = MixtureDiffusion(*TARGET_2D, num_steps=20)
    n = h.noise((3, 5), torch.Generator().manual_seed(1))
    assert n.shape == (3, 5, 20, 2) and torch.equal(n, h.noise((3, 5), torch.Generator().manual_seed(1)))
    a, b = h.sample(n), h.sample(n.clone())
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert a.sample.shape == a.mean.shape == a.log_std.shape == (3, 5, 2) and a.sample.dtype == torch.float32
    assert torch.equal(a.sample, a.mean)  # the last step adds no noise
    assert not torch.equal(a.sample, h.sample(h.noise((3, 5), torch.Generator().manual_seed(2))).sample)


def test_diffusion_last_step_std_is_the_respaced_posterior_std():
    # 100 of 1000 cosine steps (MAR): the clipped posterior variance at the last step is
    # beta'_1 (1 - abar'_0) / (1 - abar'_1), abar'_0 = abar(0), abar'_1 = abar(10) of the 1000-step schedule.
    f = lambda u: math.cos((u + 0.008) / 1.008 * math.pi / 2) ** 2  # noqa: E731
    a0, a1 = f(1e-3) / f(0), f(11e-3) / f(0)
    expected = math.sqrt((1 - a1 / a0) * (1 - a0) / (1 - a1))
    h = MixtureDiffusion(*TARGET_1D)
    out = h.sample(h.noise((2,), torch.Generator().manual_seed(0)))
    assert torch.allclose(out.log_std.exp(), torch.full((2, 1), expected), rtol=1e-4)


def test_denoise_single_gaussian_is_linear():
    h = MixtureDiffusion([1.0], [[0.5, -1.0]], [[0.7, 1.3]], num_steps=10)
    x = torch.tensor([[0.2, 3.0], [-1.0, 0.1]], dtype=torch.float64)
    t = 6
    ab = float(h._alpha_bar[t])
    m, s = torch.tensor([0.5, -1.0], dtype=torch.float64), torch.tensor([0.7, 1.3], dtype=torch.float64)
    expected = m + math.sqrt(ab) * s**2 / (ab * s**2 + 1 - ab) * (x - math.sqrt(ab) * m)
    assert torch.allclose(h.denoise(x, t), expected, atol=1e-12)


def test_diffusion_sampler_follows_its_data_mixture_ks():
    h = MixtureDiffusion(*TARGET_1D)
    x = h.sample(h.noise((4000,), torch.Generator().manual_seed(5))).sample[:, 0].numpy()
    w, mu, sd = TARGET_1D
    cdf = lambda v: sum(wk * stats.norm.cdf(v, m[0], s[0]) for wk, m, s in zip(w, mu, sd))  # noqa: E731
    assert stats.kstest(x, cdf).pvalue > 1e-3


def test_data_mixture_is_the_exact_density():
    h = MixtureDiffusion(*TARGET_2D, num_steps=5)
    g = h.data_mixture((3,))
    assert g.batch_shape == (3,) and (g.K, g.D) == (2, 2)
    x = torch.tensor([0.3, -0.4])
    w, mu, sd = (np.array(v) for v in TARGET_2D)
    expected = np.log(sum(w[k] * np.prod(stats.norm.pdf(x.numpy(), mu[k], sd[k])) for k in range(2)))
    assert torch.allclose(g.log_prob(x), torch.full((3,), float(expected)), atol=1e-5)


def test_shared_noise_aligns_the_trajectories():
    """Same noise: equal heads give equal tokens; a slightly shifted drafter gives nearby tokens,
    closer than with independent noise."""
    B = 2000
    case = aligned_case(TARGET_1D, DRAFTER_1D, B, 1, seed=4)
    gap = (case[0][:, 0] - case[2].sample[:, 0]).abs().median()
    head = MixtureDiffusion(*TARGET_1D)
    other = head.sample(head.noise((B,), torch.Generator().manual_seed(9)))
    assert gap < 0.5 * (case[0][:, 0] - other.sample).abs().median()
    same = aligned_case(TARGET_1D, TARGET_1D, 5, 2, seed=4)
    assert torch.equal(same[0], same[2].sample[:, :2])


def test_diffusion_validation():
    w, mu, sd = TARGET_1D
    with pytest.raises(ValueError, match="^weights must have shape"):
        MixtureDiffusion([], [], [])
    with pytest.raises(ValueError, match="^means must have shape"):
        MixtureDiffusion(w, [[0.0]], sd)
    with pytest.raises(ValueError, match="^stds must have the shape"):
        MixtureDiffusion(w, mu, [0.5, 0.8])
    with pytest.raises(ValueError, match="^weights must be positive"):
        MixtureDiffusion([0.5, -0.5], mu, sd)
    with pytest.raises(ValueError, match="^means must be finite"):
        MixtureDiffusion(w, [[0.0], [math.nan]], sd)
    with pytest.raises(ValueError, match="^stds must be positive"):
        MixtureDiffusion(w, mu, [[0.5], [0.0]])
    with pytest.raises(ValueError, match="^num_steps must be an int >= 2"):
        MixtureDiffusion(w, mu, sd, num_steps=1)
    h = MixtureDiffusion(w, mu, sd, num_steps=4)
    with pytest.raises(ValueError, match="^noise must be a tensor of shape"):
        h.sample(torch.zeros(3, 5, 1))


def test_histogram_tvd_known_values():
    a = torch.tensor([[0.1], [0.2], [0.3], [0.4]])
    spread = torch.tensor([[-1.0], [0.5], [2.0], [0.6]])
    tvd, se = histogram_tvd(spread, spread.clone(), [[0.0, 1.0]])
    assert tvd == 0.0 and se > 0.0  # the bootstrap resamples vary
    assert histogram_tvd(a, a + 5.0, [[0.0, 1.0]], n_boot=10)[0] == 1.0  # disjoint cells
    b = torch.tensor([[0.5], [0.5], [-1.0], [2.0]])  # cells: inside 2, below 1, above 1 vs 4 inside
    assert histogram_tvd(a, b, [[0.0, 1.0]], n_boot=10)[0] == pytest.approx(0.5)
    x2 = torch.tensor([[0.5, 0.5], [0.5, 1.5]])  # 2-D: the two points in different cells
    assert histogram_tvd(x2[:1], x2[1:], [[0.0, 1.0], [0.0, 1.0]], n_boot=10)[0] == 1.0
    with pytest.raises(ValueError, match="edges has 1 axes"):
        histogram_tvd(x2, x2, [[0.0, 1.0]])


# ---------------------------------------------------------------------------------------------
# verify_cspd

def test_verify_cspd_is_verify_continuous_on_last_step_gaussians():
    case = aligned_case(TARGET_2D, DRAFTER_2D, 50, 3, seed=1)
    draft, d, t = case
    out = run(case, seed=torch.arange(50))
    ref = verify_continuous(draft, GaussianMixture.gaussians(d.mean, d.log_std),
                            GaussianMixture.gaussians(t.mean, t.log_std), seed=torch.arange(50),
                            accept_temperature=INNER_TEMPERATURE)
    assert all(torch.equal(a, b) for a, b in zip(out, ref))
    assert out.accept_len.shape == (50,) and out.next.shape == (50, 2)
    assert 0 < int(out.accept_len.sum()) < 50 * 3  # both accepted and rejected drafts
    assert ck.verify_cspd is verify_cspd


def test_verify_cspd_seeds_are_deterministic():
    case = aligned_case(TARGET_1D, DRAFTER_1D, 40, 2, seed=2)
    a, b, c = run(case, seed=7), run(case, seed=7), run(case, seed=8)
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert not torch.equal(a.next, c.next)


def test_equal_heads_accept_every_draft():
    out = run(aligned_case(TARGET_1D, TARGET_1D, 30, 3, seed=6), seed=torch.arange(30), inner_temperature=1.0)
    assert bool((out.accept_len == 3).all()) and bool((out.status == 0).all())


def test_acceptance_grows_with_the_inner_temperature():
    case = aligned_case(TARGET_1D, DRAFTER_1D, 1000, 1, seed=3)
    rates = [float((run(case, seed=torch.arange(1000), inner_temperature=T).accept_len == 1).float().mean())
             for T in (1.0, 10.0, 42.0, 100.0)]
    assert rates == sorted(rates) and rates[0] < 0.1 and rates[-1] > 0.9, rates


def test_tempered_criterion_is_detectably_off_the_target():
    """16 000 sequences, 1-D, KS two-sample test of the emitted first token against the target's
    sampler: at the default T = 42 the criterion is measurably approximate; at T = 1 (exact up to
    the last step's tiny spread) no difference is detected at this size. The TVD estimates at
    100 000 sequences are in benchmarks/results/cspd_tvd_cpu.md."""
    n = 16000
    target = MixtureDiffusion(*TARGET_1D)
    ref = target.sample(target.noise((n,), torch.Generator().manual_seed(11))).sample[:, 0].numpy()
    case = aligned_case(TARGET_1D, DRAFTER_1D, n, 1, seed=13)

    def pvalue(T):
        out = run(case, seed=torch.arange(n), inner_temperature=T)
        first = torch.where(out.accept_len >= 1, case[0][:, 0, 0], out.next[:, 0])
        return stats.ks_2samp(first.numpy(), ref).pvalue

    assert pvalue(INNER_TEMPERATURE) < 1e-4
    assert pvalue(1.0) > 1e-3


@pytest.mark.parametrize("T", [1.0, INNER_TEMPERATURE])
def test_verify_cspd_backend_parity(T):
    names = _parity_backends()
    if len(names) < 2:
        pytest.skip("only the reference backend is available")
    case = aligned_case(TARGET_2D, DRAFTER_2D, 6, 3, seed=8, num_steps=20)
    outs = [(n, run(case, seed=torch.arange(6) + 3, inner_temperature=T, backend=n)) for n in names]
    _assert_same(outs)


def test_verify_cspd_validation_names_the_argument():
    draft, d, t = aligned_case(TARGET_1D, DRAFTER_1D, 2, 3, seed=0, num_steps=5)
    args = dict(draft=draft, draft_mean=d.mean, draft_log_std=d.log_std, target_mean=t.mean,
                target_log_std=t.log_std)

    def call(**over):
        return verify_cspd(**{**args, **{k: v for k, v in over.items() if k in args}},
                           **{k: v for k, v in over.items() if k not in args})

    with pytest.raises(TypeError, match="^draft must be a torch.Tensor"):
        call(draft=draft.numpy())
    with pytest.raises(ValueError, match=r"^draft must have shape \[B, L, D\]"):
        call(draft=draft[0])
    with pytest.raises(ValueError, match=r"^draft_mean must have shape \(2, 3, 1\)"):
        call(draft_mean=d.mean[:, :2])
    with pytest.raises(TypeError, match="^draft_log_std must be a torch.Tensor"):
        call(draft_log_std=[0.0])
    with pytest.raises(TypeError, match="^target_mean must have a float dtype"):
        call(target_mean=t.mean.to(torch.int64))
    with pytest.raises(ValueError, match=r"^target_mean must have shape \(2, 4, 1\)"):
        call(target_mean=t.mean[:, :3])
    with pytest.raises(ValueError, match="^target_log_std must be finite"):
        call(target_log_std=torch.full_like(t.log_std, math.nan))
    with pytest.raises(ValueError, match="^accept_temperature must be > 0"):
        call(inner_temperature=0.0)
    with pytest.raises(ValueError, match="^max_proposals must be >= 1"):
        call(max_proposals=0)
