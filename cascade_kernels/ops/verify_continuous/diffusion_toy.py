"""A closed-form diffusion head to exercise the CSpD criterion (docs/CONTINUOUS.md, "CSpD criterion").

``MixtureDiffusion`` is a DDPM sampler whose denoiser is exact: the data distribution is a diagonal
Gaussian mixture, so ``E[x_0 | x_t]`` has a closed form and no network or training is needed. The
schedule and step follow the diffusion head of MAR, on which the CSpD code is built: a cosine
schedule of 1000 steps respaced to ``num_steps`` (MAR samples with 100), the posterior mean
``coef1 * x0_hat + coef2 * x_t``, the posterior ("fixed small") variance with the first one clipped
to the second, and no noise at the last step, so the token is the last step's mean. A target and a
drafter are two instances with different mixtures; running both on the same noise aligns their
denoising trajectories (CSpD's "trajectory alignment").
"""
from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np
import torch

from .mixture import GaussianMixture

__all__ = ["MixtureDiffusion", "LastStep", "histogram_tvd"]

_TRAIN_STEPS = 1000
_COSINE_S = 0.008


class LastStep(NamedTuple):
    sample: torch.Tensor  # [..., D] float32: the sampler's output (= mean: the last step adds no noise)
    mean: torch.Tensor  # [..., D] float32: the last step's Gaussian mean
    log_std: torch.Tensor  # [..., D] float32: its log standard deviation (the same for every token)


def _respaced_cosine_alpha_bar(num_steps: int) -> np.ndarray:
    """alpha_bar of the 1000-step cosine schedule (betas clipped at 0.999) at the ``num_steps``
    evenly spaced steps round(i * 999 / (num_steps - 1)) (float64)."""
    f = lambda u: math.cos((u + _COSINE_S) / (1 + _COSINE_S) * math.pi / 2) ** 2  # noqa: E731
    betas = np.array([min(1 - f((i + 1) / _TRAIN_STEPS) / f(i / _TRAIN_STEPS), 0.999) for i in range(_TRAIN_STEPS)])
    alpha_bar = np.cumprod(1.0 - betas)
    if num_steps == 1:
        return alpha_bar[:1]
    keep = np.round(np.arange(num_steps) * (_TRAIN_STEPS - 1) / (num_steps - 1)).astype(np.int64)
    return alpha_bar[keep]


class MixtureDiffusion:
    """DDPM over the data distribution ``sum_k w_k N(means_k, diag(stds_k)^2)`` with the exact denoiser.

    Args:
        weights: ``[K]`` positive mixture weights (normalised here).
        means: ``[K, D]``; ``stds``: ``[K, D]`` positive.
        num_steps: denoising steps (``>= 2``; MAR: 100).
    """

    def __init__(self, weights, means, stds, num_steps: int = 100):
        w, mu, sd = (torch.as_tensor(v, dtype=torch.float64) for v in (weights, means, stds))
        if w.dim() != 1 or w.numel() == 0:
            raise ValueError(f"weights must have shape [K] with K >= 1, got {tuple(w.shape)}")
        if mu.dim() != 2 or mu.shape[0] != w.numel() or mu.shape[1] == 0:
            raise ValueError(f"means must have shape [K={w.numel()}, D >= 1], got {tuple(mu.shape)}")
        if sd.shape != mu.shape:
            raise ValueError(f"stds must have the shape of means {tuple(mu.shape)}, got {tuple(sd.shape)}")
        if not bool(torch.isfinite(w).all() and (w > 0).all()):
            raise ValueError("weights must be positive and finite")
        if not bool(torch.isfinite(mu).all()):
            raise ValueError("means must be finite")
        if not bool(torch.isfinite(sd).all() and (sd > 0).all()):
            raise ValueError("stds must be positive and finite")
        if isinstance(num_steps, bool) or not isinstance(num_steps, int) or num_steps < 2:
            raise ValueError(f"num_steps must be an int >= 2, got {num_steps!r}")
        self.log_w = torch.log(w / w.sum())
        self.means, self.stds = mu, sd
        self.num_steps = num_steps
        ab = _respaced_cosine_alpha_bar(num_steps)
        ab_prev = np.append(1.0, ab[:-1])
        beta = 1.0 - ab / ab_prev
        post_var = beta * (1.0 - ab_prev) / (1.0 - ab)
        self._alpha_bar = ab
        self._coef1 = beta * np.sqrt(ab_prev) / (1.0 - ab)
        self._coef2 = (1.0 - ab_prev) * np.sqrt(1.0 - beta) / (1.0 - ab)
        self._log_std = 0.5 * np.log(np.append(post_var[1], post_var[1:]))  # the first clipped to the second

    @property
    def D(self) -> int:
        return self.means.shape[1]

    def data_mixture(self, batch_shape=()) -> GaussianMixture:
        """The data distribution (the exact density this sampler approximates), expanded to ``batch_shape``."""
        K, D = self.means.shape
        f = lambda t, s: t.to(torch.float32).expand(*batch_shape, *s).contiguous()  # noqa: E731
        return GaussianMixture(f(self.log_w, (K,)), f(self.means, (K, D)), f(torch.log(self.stds), (K, D)))

    def noise(self, shape, generator: torch.Generator) -> torch.Tensor:
        """The sampler's noise for tokens of batch shape ``shape``: ``[*shape, num_steps, D]`` float64
        standard normals; entry 0 is the start x_T, entry ``t >= 1`` the noise added by step ``t``.
        Pass the same tensor to two heads to align their trajectories."""
        return torch.randn(*shape, self.num_steps, self.D, generator=generator, dtype=torch.float64)

    def denoise(self, x: torch.Tensor, t: int) -> torch.Tensor:
        """``E[x_0 | x_t = x]`` under the data mixture (float64, ``x [..., D]``)."""
        ab = float(self._alpha_bar[t])
        var = ab * self.stds**2 + (1.0 - ab)  # [K, D]: the marginal of x_t given the component
        dx = x.unsqueeze(-2) - math.sqrt(ab) * self.means  # [..., K, D]
        log_r = self.log_w - 0.5 * (dx * dx / var + torch.log(var)).sum(-1)
        r = torch.softmax(log_r, -1)
        e = self.means + (math.sqrt(ab) * self.stds**2 / var) * dx  # E[x_0 | x_t, k]
        return (r.unsqueeze(-1) * e).sum(-2)

    def sample(self, noise: torch.Tensor) -> LastStep:
        """Run the sampler on ``noise [..., num_steps, D]`` (from ``noise``); returns the tokens and
        the last step's Gaussians."""
        if not isinstance(noise, torch.Tensor) or noise.dim() < 2 or noise.shape[-2:] != (self.num_steps, self.D):
            raise ValueError(f"noise must be a tensor of shape [..., num_steps={self.num_steps}, D={self.D}], "
                             f"got {tuple(noise.shape) if isinstance(noise, torch.Tensor) else type(noise).__name__}")
        noise = noise.to(torch.float64)
        x = noise[..., 0, :]
        for t in range(self.num_steps - 1, -1, -1):
            mean = self._coef1[t] * self.denoise(x, t) + self._coef2[t] * x
            x = mean + math.exp(self._log_std[t]) * noise[..., t, :] if t > 0 else mean
        f32 = lambda v: v.to(torch.float32)  # noqa: E731
        return LastStep(f32(x), f32(mean), torch.full_like(f32(mean), float(self._log_std[0])))


def histogram_tvd(a: torch.Tensor, b: torch.Tensor, edges, *, n_boot: int = 200, seed: int = 0):
    """Histogram estimate of the total-variation distance between the laws of samples ``a [n, D]``
    and ``b [m, D]``: ``1/2 sum |count_a / n - count_b / m|`` over the cells of the grid ``edges``
    (``D`` increasing 1-D edge lists; each axis has ``len(edges_d) + 1`` cells, the two outer ones
    unbounded). Returns ``(tvd, se)``, ``se`` the standard deviation of the estimate over ``n_boot``
    multinomial bootstrap resamples of both histograms (numpy generator ``seed``).

    The estimate is biased upwards by sampling noise (two samples of one law give ``> 0``), and
    downwards by binning (it is the TVD of the binned laws): compare it with the same estimate for
    two samples of one law."""
    def cells(x):
        x = np.asarray(x, dtype=np.float64).reshape(len(x), -1)
        if x.shape[1] != len(edges):
            raise ValueError(f"samples have D = {x.shape[1]} but edges has {len(edges)} axes")
        idx = np.zeros(len(x), dtype=np.int64)
        for d, e in enumerate(edges):
            idx = idx * (len(e) + 1) + np.searchsorted(np.asarray(e, dtype=np.float64), x[:, d])
        return np.bincount(idx, minlength=int(np.prod([len(e) + 1 for e in edges])))

    ca, cb = cells(a), cells(b)
    na, nb = ca.sum(), cb.sum()
    tvd = 0.5 * np.abs(ca / na - cb / nb).sum()
    rng = np.random.default_rng(seed)
    boot = [0.5 * np.abs(rng.multinomial(na, ca / na) / na - rng.multinomial(nb, cb / nb) / nb).sum()
            for _ in range(n_boot)]
    return float(tvd), float(np.std(boot))
