"""EAGLE-1 drafter for the target transformer.

Input at drafter position p: concat(tok_emb(x_{p+1}), f_p) where f_p is the target's feature at
position p (final-layer hidden state *after* the target's final RMSNorm, i.e. exactly what the
target feeds its LM head, like HF ``hidden_states[-1]`` in EAGLE) and x_{p+1} the token sampled
at position p+1 (image token p).  -> Linear(2D -> D) -> one decoder Block (same block type as
the target) -> predicted feature f^_{p+1}.  Logits = target's frozen LM head applied directly to
f^ (no extra norm, since features are post-norm).  The token embedding and LM head are frozen
copies of the target's.

Drafter position ids = the position p of the input feature (so the drafter's KV cache slot p
holds the entry made from (f_p, x_{p+1})).  Tree forward / cache semantics are identical to the
target's (``model.KVCache``: pending K/V, ``commit``).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from .model import Block, KVCache, Transformer, run_blocks


@dataclass
class DrafterConfig:
    vocab_size: int = 512
    dim: int = 256
    n_heads: int = 8
    mlp_hidden: int = 688
    max_seq_len: int = 257
    rope_base: float = 10000.0

    def to_dict(self):
        return asdict(self)


class Drafter(nn.Module):
    def __init__(self, cfg: DrafterConfig | None = None, **kw):
        super().__init__()
        cfg = cfg or DrafterConfig(**kw)
        self.cfg = cfg
        self.tok_emb, self.head = self._frozen_copies(cfg)
        self.tok_emb.requires_grad_(False)
        self.head.requires_grad_(False)
        self.fc = nn.Linear(2 * cfg.dim, cfg.dim)
        self.layers = nn.ModuleList([Block(cfg.dim, cfg.n_heads, cfg.mlp_hidden)])
        for m in [self.fc, *self.layers.modules()]:
            if isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, std=0.02)

    @staticmethod
    def _frozen_copies(cfg) -> tuple[nn.Module, nn.Module]:
        """Modules shaped like the target's token embedding and head (``ctarget.py``: continuous ones)."""
        return nn.Embedding(cfg.vocab_size, cfg.dim), nn.Linear(cfg.dim, cfg.vocab_size, bias=False)

    @classmethod
    def config_from_target(cls, t) -> DrafterConfig:
        return DrafterConfig(t.vocab_size, t.dim, t.n_heads, t.mlp_hidden, t.max_seq_len, t.rope_base)

    @classmethod
    def from_target(cls, target: Transformer) -> "Drafter":
        d = cls(cls.config_from_target(target.cfg))
        d.tok_emb.load_state_dict(target.tok_emb.state_dict())
        d.head.load_state_dict(target.head.state_dict())
        return d

    def _inp(self, tokens, feats):
        return self.fc(torch.cat([self.tok_emb(tokens), feats.to(self.fc.weight.dtype)], -1))

    def forward(self, tokens: torch.Tensor, feats: torch.Tensor, position_ids: torch.Tensor | None = None):
        """Causal training forward. tokens [B,T] = x_{p+1}, feats [B,T,D] = f_p for p = 0..T-1 ->
        (logits [B,T,V], predicted features [B,T,D] = f^_{p+1}). Continuous drafter: tokens [B,T,D_latent]."""
        b, n = tokens.shape[:2]
        if position_ids is None:
            position_ids = torch.arange(n, device=tokens.device).expand(b, n)
        h = run_blocks(self.layers, self._inp(tokens, feats), position_ids, self.cfg.rope_base, causal=True)
        return self.head(h), h

    def new_cache(self, batch: int, max_len: int | None = None, dtype=None, device=None) -> KVCache:
        p = self.fc.weight
        return KVCache(1, batch, self.cfg.n_heads, self.cfg.dim // self.cfg.n_heads,
                       max_len or self.cfg.max_seq_len, dtype or p.dtype, device or p.device)

    @torch.no_grad()
    def forward_tree(self, cache: KVCache, tokens: torch.Tensor, feats: torch.Tensor,
                     mask: torch.Tensor, position_ids: torch.Tensor, extend: bool = False):
        """tokens [B,N] (x_{p+1} of each node), feats [B,N,D] (parent feature f_p: the target's
        feature for committed context, or the drafter's own predicted feature for drafted
        nodes), mask [B,N,N] bool tree mask, position_ids [B,N] = p ->
        (logits [B,N,V], predicted features [B,N,D]).  K/V stay pending until cache.commit.
        ``extend``: the nodes continue the tree of the previous forward_tree call (its P nodes stay
        pending and come first), mask is [B,N,P+N]; drafting a tree level by level then costs each
        node once."""
        h = run_blocks(self.layers, self._inp(tokens, feats), position_ids, self.cfg.rope_base, cache, mask, extend=extend)
        return self.head(h), h


# ------------------------------------------------------------------------- losses
def eagle_loss(pred_feat, pred_logits, target_feat, target_logits, valid=None, w_feat=1.0, w_ce=0.1):
    """EAGLE-1 loss: smooth-L1 on features (w 1.0) + soft CE to the target distribution (w 0.1).
    All [B,T,*]; valid [B,T] bool or None.  Returns (loss, {name: float})."""
    fl = F.smooth_l1_loss(pred_feat, target_feat, reduction="none").mean(-1)
    p = target_logits.float().softmax(-1)
    ce = -(p * pred_logits.float().log_softmax(-1)).sum(-1)
    if valid is None:
        valid = torch.ones_like(fl, dtype=torch.bool)
    v = valid.float()
    fl, ce = (fl * v).sum() / v.sum(), (ce * v).sum() / v.sum()
    loss = w_feat * fl + w_ce * ce
    return loss, {"feat_smooth_l1": float(fl.detach()), "soft_ce": float(ce.detach())}


def eq4_loss(pred_feat, pred_logits, target_feat, target_logits, valid=None, c=2.0, tau_seq=0.5):
    """CASCADE's drafter loss (``--loss eq4``, CONTRACT §7): EAGLE's loss with the soft cross-entropy of a
    position weighted by ``c`` where consecutive target hidden states converge
    (cos(H_k, H_{k+1}) >= tau_seq); ``c = 1`` is exactly :func:`eagle_loss`."""
    from cascade_kernels import cascade_drafter_loss

    loss = cascade_drafter_loss(pred_logits, target_logits, target_feat, mask=valid, c=c, tau_seq=tau_seq,
                                feature_pred=pred_feat, feature_target=target_feat, w_cls=0.1, w_reg=1.0)
    return loss, {"eq4": float(loss.detach())}


LOSSES = {"eagle": eagle_loss, "eq4": eq4_loss}
