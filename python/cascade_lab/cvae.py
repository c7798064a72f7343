"""Small conv VAE: the continuous tokenizer. 64x64x3 <-> an 8x8 grid of D-dimensional latents (D = 8).

Encoder downsamples x8 (three stride-2 convs) to a diagonal Gaussian posterior; the decoder mirrors it.
Loss: pixel MSE + ``kl_weight`` x KL (means over elements; ``kl_weight = 1e-3`` is a Gaussian decoder of
pixel standard deviation about 0.1). The tokens are the posterior means, normalised per channel by the
training set's mean and standard deviation (buffers ``latent_shift`` / ``latent_scale``, fitted once after
training by ``fit_normalisation``), so the AR model sees roughly unit-variance latents.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from .vq import ResBlock

SCENE_STYLE = "photo"  # the scenes (data.STYLES) the shipped continuous stack was trained and is evaluated on


class ContinuousVAE(nn.Module):
    def __init__(self, latent_dim: int = 8, ch: int = 32):
        super().__init__()
        self.latent_dim = latent_dim
        c1, c2, c3 = ch, 2 * ch, 4 * ch
        self.enc = nn.Sequential(
            nn.Conv2d(3, c1, 3, padding=1), nn.SiLU(),
            nn.Conv2d(c1, c2, 4, stride=2, padding=1), nn.SiLU(),
            nn.Conv2d(c2, c3, 4, stride=2, padding=1), nn.SiLU(),
            nn.Conv2d(c3, c3, 4, stride=2, padding=1),
            ResBlock(c3), nn.SiLU(),
            nn.Conv2d(c3, 2 * latent_dim, 1),
        )
        self.dec = nn.Sequential(
            nn.Conv2d(latent_dim, c3, 3, padding=1),
            ResBlock(c3), nn.SiLU(),
            nn.ConvTranspose2d(c3, c3, 4, stride=2, padding=1), nn.SiLU(),
            nn.ConvTranspose2d(c3, c2, 4, stride=2, padding=1), nn.SiLU(),
            nn.ConvTranspose2d(c2, c1, 4, stride=2, padding=1), nn.SiLU(),
            nn.Conv2d(c1, 3, 3, padding=1),
        )
        self.register_buffer("latent_shift", torch.zeros(latent_dim))
        self.register_buffer("latent_scale", torch.ones(latent_dim))

    def posterior(self, x: torch.Tensor):
        """x [B,3,64,64] in [-1,1] -> (mean, logvar) [B,D,8,8] (unnormalised)."""
        mean, logvar = self.enc(x).chunk(2, 1)
        return mean, logvar.clamp(-12.0, 6.0)

    def forward(self, x: torch.Tensor, generator: torch.Generator | None = None):
        """Training forward: (reconstruction, KL per element averaged) with a reparameterised sample."""
        mean, logvar = self.posterior(x)
        z = mean + torch.exp(0.5 * logvar) * torch.randn(mean.shape, generator=generator, device=x.device)
        kl = 0.5 * (mean.pow(2) + logvar.exp() - 1.0 - logvar).mean()
        return self.dec(z), kl

    @torch.no_grad()
    def fit_normalisation(self, images: torch.Tensor, bs: int = 128) -> None:
        """Set ``latent_shift`` / ``latent_scale`` to the per-channel mean / std of the posterior means."""
        z = torch.cat([self.posterior(images[i:i + bs])[0] for i in range(0, len(images), bs)])
        z = z.transpose(0, 1).reshape(self.latent_dim, -1)
        self.latent_shift.copy_(z.mean(1))
        self.latent_scale.copy_(z.std(1).clamp_min(1e-4))

    @torch.no_grad()
    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """images [B,3,64,64] in [-1,1] -> normalised latents [B, 64, D] float32 (raster order)."""
        mean, _ = self.posterior(images)
        b, d, h, w = mean.shape
        z = mean.permute(0, 2, 3, 1).reshape(b, h * w, d)
        return (z - self.latent_shift) / self.latent_scale

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """normalised latents [B, N, D] (N a square) -> images [B,3,64,64] in [-1,1] (clamped)."""
        if latents.dim() != 3 or latents.shape[-1] != self.latent_dim:
            raise ValueError(f"latents must have shape [B, N, {self.latent_dim}], got {tuple(latents.shape)}")
        b, n, d = latents.shape
        s = int(round(n ** 0.5))
        if s * s != n:
            raise ValueError(f"latents: N = {n} is not a square grid")
        z = (latents.float() * self.latent_scale + self.latent_shift).view(b, s, s, d).permute(0, 3, 1, 2)
        return self.dec(z).clamp(-1, 1)
