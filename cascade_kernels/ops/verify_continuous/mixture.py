"""Diagonal Gaussian mixtures and the output type of ``verify_continuous`` (docs/CONTINUOUS.md).

The float32 formulas here (log-density, inverse-CDF component choice, Box-Muller normals) are the
reference definitions; ``csrc/continuous_cpu.cpp`` and ``triton.py`` spell the same operations in
the same order.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import NamedTuple

import torch

from ... import philox
from ...codes import CONT_STATUS
from ...validation import check_number, check_seed

__all__ = ["GaussianMixture", "ContinuousVerifyOutput", "STATUS_NONFINITE", "STATUS_PROPOSALS_EXHAUSTED",
           "mixture_log_prob", "params_finite", "choose_component", "box_muller", "sample_uniforms"]

STATUS_NONFINITE = CONT_STATUS["NONFINITE"]  # a non-finite draft / parameter met by the walk, or non-finite output
STATUS_PROPOSALS_EXHAUSTED = CONT_STATUS["PROPOSALS_EXHAUSTED"]  # max_proposals proposals, none kept

HALF_LOG_2PI = 0.5 * math.log(2.0 * math.pi)
TWO_PI = 6.2831855  # float32(2 pi)
U_MIN = 2.0**-32  # Box-Muller's first uniform is clamped to [2**-32, 1), as the discrete SAMPLE uniform
_FLOAT_DTYPES = (torch.float32, torch.float64, torch.bfloat16, torch.float16)


@dataclass(frozen=True, eq=False)
class GaussianMixture:
    """A batch of mixtures of diagonal Gaussians: component ``k`` has weight ``softmax(logits)[k]``,
    mean ``means[..., k, :]`` and standard deviations ``exp(log_scales[..., k, :])``.

    Shapes: ``logits [*batch, K]``, ``means`` and ``log_scales [*batch, K, D]``, ``K >= 1``, ``D >= 1``;
    any float dtype (computations are float32). ``check_finite=False`` skips the (synchronising)
    finiteness check, e.g. inside a decode loop: ``verify_continuous`` then flags non-finite
    parameters with ``STATUS_NONFINITE`` instead of raising.
    """

    logits: torch.Tensor
    means: torch.Tensor
    log_scales: torch.Tensor
    check_finite: bool = field(default=True, repr=False)

    def __post_init__(self):
        for name in ("logits", "means", "log_scales"):
            t = getattr(self, name)
            if not isinstance(t, torch.Tensor):
                raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
            if t.dtype not in _FLOAT_DTYPES:
                raise TypeError(f"{name} must have a float dtype, got {t.dtype}")
        if self.logits.dim() < 1:
            raise ValueError("logits must have shape [*batch, K], got a 0-d tensor")
        K = self.logits.shape[-1]
        if K == 0:
            raise ValueError("logits: a mixture needs at least one component (K >= 1), got K = 0")
        if self.means.dim() != self.logits.dim() + 1 or self.means.shape[:-1] != self.logits.shape:
            raise ValueError(f"means must have shape {tuple(self.logits.shape) + ('D',)} (logits' shape + D), "
                             f"got {tuple(self.means.shape)}")
        if self.means.shape[-1] == 0:
            raise ValueError("means: the dimension D must be >= 1, got D = 0")
        if self.log_scales.shape != self.means.shape:
            raise ValueError(f"log_scales must have the shape of means {tuple(self.means.shape)}, "
                             f"got {tuple(self.log_scales.shape)}")
        for name in ("means", "log_scales"):
            if getattr(self, name).device != self.logits.device:
                raise ValueError(f"{name} is on {getattr(self, name).device} but logits on {self.logits.device}")
        if self.check_finite:
            for name in ("logits", "means", "log_scales"):
                if not bool(torch.isfinite(getattr(self, name)).all()):
                    raise ValueError(f"{name} must be finite (log_scales = -inf would be a zero scale); "
                                     f"pass check_finite=False to let verify_continuous flag it instead")

    @property
    def batch_shape(self):
        return tuple(self.logits.shape[:-1])

    @property
    def K(self) -> int:
        return self.logits.shape[-1]

    @property
    def D(self) -> int:
        return self.means.shape[-1]

    def float32(self) -> "GaussianMixture":
        """The same mixture with contiguous float32 parameters (no re-check)."""
        f = lambda t: t.to(torch.float32).contiguous()  # noqa: E731
        return GaussianMixture(f(self.logits), f(self.means), f(self.log_scales), check_finite=False)

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        """float32 log-density at ``x [..., D]`` (``...`` broadcasts with the batch shape)."""
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__}")
        if x.dim() < 1 or x.shape[-1] != self.D:
            raise ValueError(f"x must have shape [..., D={self.D}], got {tuple(x.shape)}")
        return mixture_log_prob(self.logits, self.means, self.log_scales, x)

    def __getitem__(self, index) -> "GaussianMixture":
        """The mixtures at ``index`` of the batch dimensions (basic or advanced indexing of the leading
        batch dimensions only, no ``...``): ``dist[:, -1]``, ``dist[rows, positions]``."""
        if index is Ellipsis or (isinstance(index, tuple) and any(i is Ellipsis for i in index)):
            raise IndexError("GaussianMixture: index the batch dimensions without '...'")
        n = len(index) if isinstance(index, tuple) else 1
        if n > len(self.batch_shape):
            raise IndexError(f"GaussianMixture: {n} indices for batch shape {self.batch_shape}")
        return GaussianMixture(self.logits[index], self.means[index], self.log_scales[index], check_finite=False)

    @classmethod
    def stack(cls, mixtures, dim: int = 0) -> "GaussianMixture":
        """Stack mixtures of one batch shape, K and D along a new batch dimension ``dim`` (``>= 0``)."""
        mixtures = list(mixtures)
        if not mixtures or not all(isinstance(m, GaussianMixture) for m in mixtures):
            raise TypeError("GaussianMixture.stack needs a non-empty sequence of GaussianMixture")
        if not 0 <= dim <= len(mixtures[0].batch_shape):
            raise ValueError(f"GaussianMixture.stack: dim must be in [0, {len(mixtures[0].batch_shape)}], got {dim}")
        return cls(*(torch.stack([getattr(m, f) for m in mixtures], dim) for f in ("logits", "means", "log_scales")),
                   check_finite=False)

    def with_temperature(self, temperature: float) -> "GaussianMixture":
        """The mixture with every component's standard deviations multiplied by ``temperature > 0``
        (weights and means unchanged): the sampling temperature of a mixture head."""
        check_number(temperature, "temperature", lo=0.0, lo_open=True)
        if temperature == 1.0:
            return self
        return GaussianMixture(self.logits, self.means, self.log_scales + math.log(temperature), check_finite=False)

    def sample(self, seed=None, *, uniforms=None) -> torch.Tensor:
        """One draw per batch element, ``[*batch, D]`` float32, from Philox: element ``b`` (flattened
        batch index) uses ``seed[b]`` and the uniforms of proposal ``n = 0`` (docs/CONTINUOUS.md,
        "Randomness": component from stream ``CONT_COMPONENT``, Box-Muller from ``CONT_NORMAL``), i.e. the
        draw ``verify_continuous`` makes at position 0 with that seed. ``seed``: int or int64 tensor of
        the batch shape (or one element). Different draws need different seeds. Or pass ``uniforms``,
        the output of ``sample_uniforms(seed, D)`` (the same draw; a decode loop makes many in one call)."""
        shape, n = self.batch_shape, math.prod(self.batch_shape)
        if (seed is None) == (uniforms is None):
            raise ValueError("GaussianMixture.sample: pass exactly one of seed and uniforms")
        if uniforms is None:
            if isinstance(seed, torch.Tensor) and seed.dim() > 1:
                if tuple(seed.shape) != shape:
                    raise ValueError(f"seed must be an int or an int64 tensor of the batch shape {shape}, "
                                     f"got shape {tuple(seed.shape)}")
                seed = seed.reshape(-1)
            uniforms = sample_uniforms(check_seed(seed, n, self.logits.device).view(shape), self.D)
        uc, u1, u2 = uniforms
        if tuple(uc.shape) != shape or tuple(u1.shape) != shape + (self.D,) or u2.shape != u1.shape:
            raise ValueError(f"uniforms must have shapes {shape}, {shape + (self.D,)} and {shape + (self.D,)}, got "
                             f"{tuple(uc.shape)}, {tuple(u1.shape)} and {tuple(u2.shape)}")
        g = self.float32()
        means, log_scales = g.means.view(n, self.K, self.D), g.log_scales.view(n, self.K, self.D)
        k = choose_component(g.logits.view(n, self.K), uc.reshape(n))
        rows = torch.arange(n, device=means.device)
        y = means[rows, k] + torch.exp(log_scales[rows, k]) * box_muller(u1.reshape(n, self.D), u2.reshape(n, self.D))
        return y.view(*shape, self.D)

    @classmethod
    def gaussians(cls, means: torch.Tensor, log_scales: torch.Tensor, *,
                  check_finite: bool = True) -> "GaussianMixture":
        """One diagonal Gaussian per batch element (``K = 1``): ``means``, ``log_scales [*batch, D]``."""
        for name, t in (("means", means), ("log_scales", log_scales)):
            if not isinstance(t, torch.Tensor):
                raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
            if t.dim() < 1:
                raise ValueError(f"{name} must have shape [*batch, D], got a 0-d tensor")
        return cls(torch.zeros(means.shape[:-1] + (1,), device=means.device), means.unsqueeze(-2),
                   log_scales.unsqueeze(-2), check_finite=check_finite)


class ContinuousVerifyOutput(NamedTuple):
    accept_len: torch.Tensor  # [B] int32: drafts accepted (0..L)
    next: torch.Tensor  # [B, D] float32: the token emitted after the accepted drafts
    proposals: torch.Tensor  # [B] int32: draws from the target at the stopping position
    status: torch.Tensor  # [B] int32: STATUS_* bits


def mixture_log_prob(logits, means, log_scales, x, inv_temperature: float = 1.0):
    """``log sum_k softmax(logits)_k N(x; means_k, diag(exp(log_scales_k))^2)`` in float32.

    Order of operations (shared by every backend): ``z = (x - mu) * exp(-ls) * inv_temperature``;
    component ``c_k = sum_d(-0.5 z^2 - ls) - D * 0.5 log(2 pi)``; ``log_softmax(logits) + c`` reduced
    by log-sum-exp (``-inf`` when every term is ``-inf``). ``inv_temperature`` (a float32 value,
    ``1 / accept_temperature``) is the acceptance test's tempering: with ``1.0`` the product is exact,
    so the untempered density is unchanged; otherwise every component's scales are multiplied by
    the temperature, less the constant ``D log T`` (it cancels in a ratio of two densities).
    """
    logits, means, log_scales = (t.to(torch.float32) for t in (logits, means, log_scales))
    x = x.to(torch.float32)
    z = (x.unsqueeze(-2) - means) * torch.exp(-log_scales) * inv_temperature
    comp = (-0.5 * z * z - log_scales).sum(-1) - means.shape[-1] * HALF_LOG_2PI
    return torch.logsumexp(torch.log_softmax(logits, dim=-1) + comp, dim=-1)


def params_finite(logits, means, log_scales):
    """True where every parameter of the mixture (over the batch shape) is finite."""
    return (torch.isfinite(logits).all(-1) & torch.isfinite(means).flatten(-2).all(-1)
            & torch.isfinite(log_scales).flatten(-2).all(-1))


def choose_component(logits: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """Inverse CDF over ``softmax(logits [..., K])`` in index order: ``e_k = exp(l_k - max l)``,
    ``c_k = e_0 + ... + e_k`` accumulated left to right in float32, ``S = c_{K-1}``; the component is
    ``#{k : c_k <= u * S}`` clamped to ``K - 1``."""
    e = torch.exp(logits - logits.max(-1, keepdim=True).values)
    acc = torch.zeros_like(e[..., 0])
    cum = []
    for k in range(e.shape[-1]):  # explicit float32 left-to-right sum (torch.cumsum accumulates in double)
        acc = acc + e[..., k]
        cum.append(acc)
    c = torch.stack(cum, -1)
    k = (c <= (u * acc).unsqueeze(-1)).sum(-1)
    return k.clamp(max=e.shape[-1] - 1)


def box_muller(u1: torch.Tensor, u2: torch.Tensor) -> torch.Tensor:
    """Standard normals ``sqrt(-2 log max(u1, 2**-32)) * cos(2 pi u2)`` (float32)."""
    u1 = torch.clamp(u1, min=U_MIN)
    return torch.sqrt(-2.0 * torch.log(u1)) * torch.cos(TWO_PI * u2)


def sample_uniforms(seed: torch.Tensor, D: int):
    """The uniforms of ``GaussianMixture.sample`` for int64 seeds of any shape ``S``: (component u [*S],
    Box-Muller u1 [*S, D], u2 [*S, D]), proposal ``n = 0`` of each seed, in one Philox evaluation."""
    flat = seed.reshape(-1)
    uc, u1, u2, _ = draw_uniforms(flat, torch.zeros(flat.shape[0], 1, dtype=torch.int64, device=flat.device), D)
    return uc.view(seed.shape), u1.view(*seed.shape, D), u2.view(*seed.shape, D)


def draw_uniforms(seed: torch.Tensor, n: torch.Tensor, D: int):
    """The uniforms of proposals number ``n`` (docs/CONTINUOUS.md, "Randomness"): ``seed [B]``,
    ``n [B, C]`` int64 -> (component u [B, C], Box-Muller u1 [B, C, D], u2 [B, C, D], residual u [B, C]),
    in one Philox evaluation."""
    d = torch.arange(D, dtype=torch.int64, device=n.device)
    base = (n.unsqueeze(-1) * D + d) * 2
    n1 = n.unsqueeze(-1)
    index = torch.cat([n1, base, base + 1, n1], -1)  # [B, C, 2D + 2]
    stream = torch.tensor([philox.CONT_COMPONENT] + [philox.CONT_NORMAL] * (2 * D) + [philox.CONT_RESIDUAL],
                          dtype=torch.int64, device=n.device)
    u = philox.uint32_to_uniform(philox.philox_uint32(seed.view(-1, 1, 1), index, stream))
    return u[..., 0], u[..., 1:D + 1], u[..., D + 1:2 * D + 1], u[..., -1]
