"""Small conv VQ-VAE: 64x64x3 <-> 16x16 token ids, codebook K=512 entries of dim 32.

Encoder downsamples x4 (two stride-2 convs), EMA codebook (decay 0.99) with dead-code restart,
commitment loss beta=0.25, straight-through gradient to the encoder.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


class ResBlock(nn.Module):
    def __init__(self, ch: int):
        super().__init__()
        self.c1 = nn.Conv2d(ch, ch, 3, padding=1)
        self.c2 = nn.Conv2d(ch, ch, 3, padding=1)

    def forward(self, x):
        return x + self.c2(F.silu(self.c1(F.silu(x))))


class EMACodebook(nn.Module):
    def __init__(self, num_codes: int, dim: int, decay: float = 0.99, eps: float = 1e-5, dead_threshold: float = 0.05):
        super().__init__()
        self.num_codes, self.dim, self.decay, self.eps = num_codes, dim, decay, eps
        self.dead_threshold = dead_threshold
        embed = torch.randn(num_codes, dim) * 0.1
        self.register_buffer("embed", embed)
        self.register_buffer("cluster_size", torch.ones(num_codes))
        self.register_buffer("embed_sum", embed.clone())

    @torch.no_grad()
    def kmeans_init(self, z: torch.Tensor, iters: int = 15, generator=None) -> None:
        """Initialise the codebook by k-means on encoder outputs z [N, d] (fixes code collapse)."""
        c = z[torch.randperm(z.shape[0], generator=generator)[: self.num_codes]].clone()
        for _ in range(iters):
            a = (z.pow(2).sum(1, keepdim=True) - 2 * z @ c.t() + c.pow(2).sum(1)[None]).argmin(1)
            cnt = torch.bincount(a, minlength=self.num_codes).float()
            s = torch.zeros_like(c).index_add_(0, a, z)
            empty = cnt == 0
            c = torch.where(empty[:, None], z[torch.randint(0, z.shape[0], (self.num_codes,), generator=generator)],
                            s / cnt.clamp_min(1)[:, None])
        self.embed.copy_(c)
        self.embed_sum.copy_(c)
        self.cluster_size.fill_(1.0)

    def ids(self, z: torch.Tensor) -> torch.Tensor:
        # z [N, d] -> nearest code ids [N]
        d = z.pow(2).sum(1, keepdim=True) - 2 * z @ self.embed.t() + self.embed.pow(2).sum(1)[None]
        return d.argmin(1)

    def forward(self, z: torch.Tensor):
        """z [N, d] -> (quantized z_q [N,d] with straight-through, ids [N], commit loss)."""
        ids = self.ids(z)
        zq = F.embedding(ids, self.embed)
        if self.training:
            with torch.no_grad():
                onehot = F.one_hot(ids, self.num_codes).type_as(z)
                n = onehot.sum(0)
                s = onehot.t() @ z
                self.cluster_size.mul_(self.decay).add_(n, alpha=1 - self.decay)
                self.embed_sum.mul_(self.decay).add_(s, alpha=1 - self.decay)
                tot = self.cluster_size.sum()
                cs = (self.cluster_size + self.eps) / (tot + self.num_codes * self.eps) * tot
                self.embed.copy_(self.embed_sum / cs[:, None])
                # dead-code restart: a code whose EMA usage fell below dead_threshold (0.05: unused for ~300
                # steps at decay 0.99) jumps to a random encoder output. A threshold near the mean usage
                # (1.0 with 4096 codes and 8192 vectors per batch) thrashes the codebook every step.
                dead = self.cluster_size < self.dead_threshold
                nd = int(dead.sum())
                if nd > 0:
                    pick = z[torch.randint(0, z.shape[0], (nd,), device=z.device)]
                    self.embed[dead] = pick
                    self.embed_sum[dead] = pick
                    self.cluster_size[dead] = 1.0
        commit = F.mse_loss(z, zq.detach())
        zq = z + (zq - z).detach()
        return zq, ids, commit


class VQVAE(nn.Module):
    def __init__(self, num_codes: int = 512, code_dim: int = 32, ch: int = 32):
        super().__init__()
        self.num_codes, self.code_dim = num_codes, code_dim
        c1, c2, c3 = ch, 2 * ch, 4 * ch
        self.enc = nn.Sequential(
            nn.Conv2d(3, c1, 3, padding=1), nn.SiLU(),
            nn.Conv2d(c1, c2, 4, stride=2, padding=1), nn.SiLU(),
            nn.Conv2d(c2, c3, 4, stride=2, padding=1),
            ResBlock(c3), ResBlock(c3), nn.SiLU(),
            nn.Conv2d(c3, code_dim, 1),
        )
        self.codebook = EMACodebook(num_codes, code_dim)
        self.dec = nn.Sequential(
            nn.Conv2d(code_dim, c3, 3, padding=1),
            ResBlock(c3), ResBlock(c3), nn.SiLU(),
            nn.ConvTranspose2d(c3, c2, 4, stride=2, padding=1), nn.SiLU(),
            nn.ConvTranspose2d(c2, c1, 4, stride=2, padding=1), nn.SiLU(),
            nn.Conv2d(c1, 3, 3, padding=1),
        )

    @property
    def embedding(self) -> torch.Tensor:
        """Codebook embedding [K, d] (used e.g. for LANTERN latent neighbourhoods)."""
        return self.codebook.embed

    def _flat(self, z):  # [B,d,16,16] -> [B*256, d]
        return z.permute(0, 2, 3, 1).reshape(-1, self.code_dim)

    def forward(self, x: torch.Tensor):
        """x [B,3,64,64] in [-1,1] -> (recon, ids [B,256], commit loss)."""
        z = self.enc(x)
        b, d, h, w = z.shape
        zq, ids, commit = self.codebook(self._flat(z))
        zq = zq.view(b, h, w, d).permute(0, 3, 1, 2)
        return self.dec(zq), ids.view(b, h * w), commit

    @torch.no_grad()
    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """images [B,3,64,64] in [-1,1] -> token ids [B,256] int64 (raster order)."""
        z = self.enc(images)
        b, _, h, w = z.shape
        return self.codebook.ids(self._flat(z)).view(b, h * w)

    @torch.no_grad()
    def decode(self, ids: torch.Tensor) -> torch.Tensor:
        """ids [B,256] int64 -> images [B,3,64,64] in [-1,1] (clamped)."""
        b, n = ids.shape
        s = int(round(n ** 0.5))
        zq = F.embedding(ids, self.codebook.embed).view(b, s, s, self.code_dim).permute(0, 3, 1, 2)
        return self.dec(zq).clamp(-1, 1)


def psnr(x: torch.Tensor, y: torch.Tensor) -> float:
    """Mean PSNR (dB) over the batch for images in [-1,1] (peak-to-peak 2)."""
    mse = (x.float() - y.float()).pow(2).flatten(1).mean(1).clamp_min(1e-10)
    return float((10 * torch.log10(4.0 / mse)).mean())
