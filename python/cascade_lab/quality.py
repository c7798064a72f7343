"""Quality measures: class fidelity (a small CNN classifier's accuracy on generated images),
"our FID" (Frechet distance between the classifier's penultimate features of generated vs
held-out real crops), and per-position entropy of the target's token distribution."""
from __future__ import annotations

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F


class Classifier(nn.Module):
    """64x64 RGB -> num_classes. Penultimate features: feat_dim-d (after global avg pool + Linear)."""

    def __init__(self, num_classes: int = 8, ch: int = 32, feat_dim: int = 128):
        super().__init__()

        def blk(i, o):
            return nn.Sequential(nn.Conv2d(i, o, 3, stride=2, padding=1), nn.BatchNorm2d(o), nn.ReLU(),
                                 nn.Conv2d(o, o, 3, padding=1), nn.BatchNorm2d(o), nn.ReLU())

        self.body = nn.Sequential(blk(3, ch), blk(ch, 2 * ch), blk(2 * ch, 4 * ch), blk(4 * ch, 4 * ch))
        self.proj = nn.Linear(4 * ch, feat_dim)
        self.out = nn.Linear(feat_dim, num_classes)

    def features(self, x):
        return F.relu(self.proj(self.body(x).mean((2, 3))))

    def forward(self, x):
        return self.out(self.features(x))


@torch.no_grad()
def classify(clf: Classifier, images: torch.Tensor, bs: int = 128):
    """-> (logits [B,C], features [B,F])."""
    clf.eval()
    lo, fe = [], []
    for i in range(0, len(images), bs):
        f = clf.features(images[i:i + bs].to(next(clf.parameters()).dtype))
        fe.append(f); lo.append(clf.out(f))
    return torch.cat(lo), torch.cat(fe)


def class_fidelity(clf: Classifier, images: torch.Tensor, class_ids: torch.Tensor) -> float:
    """Fraction of images the classifier assigns to their intended class."""
    lo, _ = classify(clf, images)
    return float((lo.argmax(-1).cpu() == class_ids.cpu()).float().mean())


def frechet_distance(feats_a, feats_b, eps: float = 1e-6) -> float:
    """Frechet distance between Gaussians fitted to two feature sets [N,F] (FID formula)."""
    from scipy import linalg

    a = np.asarray(feats_a, dtype=np.float64)
    b = np.asarray(feats_b, dtype=np.float64)
    mu1, mu2 = a.mean(0), b.mean(0)
    s1, s2 = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    covmean = linalg.sqrtm(s1.dot(s2))
    if not np.isfinite(covmean).all():
        off = np.eye(s1.shape[0]) * eps
        covmean = linalg.sqrtm((s1 + off).dot(s2 + off))
    covmean = covmean.real
    d = mu1 - mu2
    return float(d.dot(d) + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean))


def our_fid(clf: Classifier, generated: torch.Tensor, real: torch.Tensor) -> float:
    """Frechet distance of classifier penultimate features, generated vs real (held-out) crops."""
    _, fg = classify(clf, generated)
    _, fr = classify(clf, real)
    return frechet_distance(fg.double().cpu().numpy(), fr.double().cpu().numpy())


@torch.no_grad()
def per_position_entropy(model, class_ids: torch.Tensor, tokens: torch.Tensor, cfg_scale: float = 1.0,
                         temperature: float = 1.0) -> torch.Tensor:
    """Mean entropy (nats) of the target's next-token distribution at each of the T positions,
    teacher-forced on tokens [B,T] (e.g. held-out or generated sequences). Returns [T]."""
    lg, _ = model(class_ids, tokens[:, :-1])
    if cfg_scale != 1.0:
        lu, _ = model(torch.full_like(class_ids, model.null_class), tokens[:, :-1])
        lg = lu + cfg_scale * (lg - lu)
    lp = (lg.float() / temperature).log_softmax(-1)
    return -(lp.exp() * lp).sum(-1).mean(0)
