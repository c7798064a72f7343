"""MAR-style continuous-token models: a causal AR target over VAE latents and its EAGLE-1 drafter,
both with a diagonal Gaussian-mixture head (``cascade_kernels.GaussianMixture``).

They are ``model.Transformer`` and ``drafter.Drafter`` with two modules swapped: the token embedding is a
linear projection of a latent vector ``[..., D] -> [..., dim]`` and the head maps a (normed) hidden state
to the parameters of a K-component diagonal Gaussian mixture over the next latent. Everything else
(blocks, RoPE, class token / class-bias / absolute-position paths, ``KVCache`` with pending tree nodes,
``prefill`` / ``forward_tree`` / ``decode_step``, the drafter's entry layout) is the discrete stack's
code, so the decode loop's protocol is the same with a mixture where the logits were:

    cache, dist [B], hidden [B, dim] = target.prefill(class_ids [B], max_len)
    dist [B, N], hidden [B, N, dim] = target.forward_tree(cache, latents [B, N, D], mask [B, N, N], position_ids [B, N])
    dist [B, N], feats [B, N, dim]  = drafter.forward_tree(dcache, latents, feats, mask, position_ids)

Sequence layout: position 0 = class token, positions 1..64 = the 8x8 latents in raster order;
``dist[:, p]`` is the density of image token p. No classifier-free guidance: a guided mixture density
``q_c^s q_u^(1-s)`` is not a mixture, so the target is trained without class dropout and uses the
class-bias path (``model.py``) instead.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from cascade_kernels import GaussianMixture

from .drafter import Drafter, DrafterConfig
from .model import TargetConfig, Transformer

LOG_SCALE_MIN = -5.0  # soft lower bound of a component's log standard deviation (normalised latents)


class MixtureHead(nn.Module):
    """hidden [..., dim] -> GaussianMixture with batch shape [...]: K components over D dimensions.
    ``log_scales = LOG_SCALE_MIN + softplus(raw - LOG_SCALE_MIN)`` keeps every scale positive and above
    ``exp(LOG_SCALE_MIN)``; the weights are ``softmax(logits)``."""

    def __init__(self, dim: int, latent_dim: int, num_components: int):
        super().__init__()
        self.D, self.K = latent_dim, num_components
        self.proj = nn.Linear(dim, num_components * (1 + 2 * latent_dim))

    def reset_parameters(self, generator: torch.Generator | None = None) -> None:
        """Small weights; component means spread as N(0, 1) draws, unit scales (unit-variance latents)."""
        nn.init.normal_(self.proj.weight, std=0.02, generator=generator)
        with torch.no_grad():
            b = self.proj.bias.view(self.K, 1 + 2 * self.D)
            b.zero_()
            b[:, 1:1 + self.D] = torch.randn(self.K, self.D, generator=generator)
            b[:, 1 + self.D:] = math.log(0.5)

    def forward(self, h: torch.Tensor) -> GaussianMixture:
        out = self.proj(h).unflatten(-1, (self.K, 1 + 2 * self.D))
        logits, means, raw = out[..., 0], out[..., 1:1 + self.D], out[..., 1 + self.D:]
        log_scales = LOG_SCALE_MIN + F.softplus(raw - LOG_SCALE_MIN)
        return GaussianMixture(logits, means, log_scales, check_finite=False)


@dataclass
class ContinuousTargetConfig(TargetConfig):
    vocab_size: int = 0  # unused: the tokens are latent vectors
    num_classes: int = 10
    dim: int = 128
    n_layers: int = 4
    n_heads: int = 4
    mlp_hidden: int = 352
    max_seq_len: int = 65  # class token + 8*8 latents
    class_dropout: float = 0.0  # no CFG for mixture heads (module doc)
    class_bias: bool = True
    abs_pos_emb: bool = True
    latent_dim: int = 8
    mixture_components: int = 8


class ContinuousTransformer(Transformer):
    """``model.Transformer`` over latent vectors with a ``MixtureHead``: ``forward(class_ids [B], latents
    [B, T, D]) -> (GaussianMixture [B, T+1], hidden [B, T+1, dim])``; ``prefill`` / ``forward_tree`` /
    ``decode_step`` as the discrete target's with latents ``[B, N, D]`` for token ids and a mixture for logits."""

    def __init__(self, cfg: ContinuousTargetConfig | None = None, **kw):
        super().__init__(cfg or ContinuousTargetConfig(**kw))
        self.head.reset_parameters()

    @staticmethod
    def _token_embedding(cfg) -> nn.Module:
        return nn.Linear(cfg.latent_dim, cfg.dim)

    @staticmethod
    def _output_head(cfg) -> nn.Module:
        return MixtureHead(cfg.dim, cfg.latent_dim, cfg.mixture_components)


@dataclass
class ContinuousDrafterConfig(DrafterConfig):
    vocab_size: int = 0  # unused
    dim: int = 128
    n_heads: int = 4
    mlp_hidden: int = 352
    max_seq_len: int = 65
    latent_dim: int = 8
    mixture_components: int = 8


class ContinuousDrafter(Drafter):
    """EAGLE-1 drafter of a ``ContinuousTransformer`` (``drafter.Drafter`` with the target's latent
    projection and mixture head as frozen copies): ``forward(latents [B, T, D], feats [B, T, dim]) ->
    (GaussianMixture [B, T], predicted features [B, T, dim])``."""

    def __init__(self, cfg: ContinuousDrafterConfig | None = None, **kw):
        super().__init__(cfg or ContinuousDrafterConfig(**kw))

    @staticmethod
    def _frozen_copies(cfg) -> tuple[nn.Module, nn.Module]:
        return (ContinuousTransformer._token_embedding(cfg),
                ContinuousTransformer._output_head(cfg))

    @classmethod
    def config_from_target(cls, t: ContinuousTargetConfig) -> ContinuousDrafterConfig:
        return ContinuousDrafterConfig(0, t.dim, t.n_heads, t.mlp_hidden, t.max_seq_len, t.rope_base,
                                       t.latent_dim, t.mixture_components)


def mixture_nll(dist: GaussianMixture, x: torch.Tensor) -> torch.Tensor:
    """Mean negative log-density (nats per token) of latents x [..., D] under dist (batch shape [...])."""
    return -dist.log_prob(x).mean()


def drafter_loss(pred_feat, pred_dist: GaussianMixture, target_feat, target_dist: GaussianMixture, seed,
                 w_ce: float = 0.1):
    """EAGLE-1's loss with mixture heads: smooth-L1 on features (1.0) + the cross-entropy of the drafter's
    mixture to the target's, ``-E_{x~q} log p(x)`` (``w_ce``; EAGLE's soft cross-entropy to the target
    distribution), estimated with Philox draws from q: ``seed`` is an int64 tensor ``[draws, *batch]``, one
    draw per seed. Returns (loss, parts)."""
    fl = F.smooth_l1_loss(pred_feat, target_feat)
    with torch.no_grad():
        x = torch.stack([target_dist.sample(s) for s in seed])  # [draws, *batch, D]
    ce = -pred_dist.log_prob(x).mean()
    return fl + w_ce * ce, {"feat_smooth_l1": float(fl.detach()), "ce": float(ce.detach())}
