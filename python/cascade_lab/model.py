"""LlamaGen-style class-conditional decoder-only transformer over VQ token ids.

Sequence layout (positions): 0 = class token (class embedding; id ``num_classes`` is the null
class used for CFG / 10% class dropout), positions 1..256 = image tokens in raster order.

Two optional input paths (config flags, both zero-initialised so a model without them loads into one
with them unchanged) make the class and the absolute position directly visible to every position:
``class_bias`` adds a second class embedding to every position's input and ``abs_pos_emb`` adds a learned
absolute-position embedding. LlamaGen keeps the class as a prefix only and learns to use it over hundreds
of epochs; a model trained for an hour on 2 cores does not (the shipped 4-layer target's loss with the
null class equalled its loss with the true class), so the lab's target uses both.
Logits at position p predict image token p (0-based), i.e. the token at position p+1.

KV cache: slot s of the cache holds position s.  Per-sequence lengths may differ (after
speculative accepts of different lengths); slots >= lengths[b] are masked out.
``forward_tree`` never appends to the cache: it keeps the K/V of the tree nodes as *pending*
and ``cache.commit(node_indices)`` appends the chosen nodes (e.g. the accepted root-to-node
path) and discards the rest.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F


@dataclass
class TargetConfig:
    vocab_size: int = 512
    num_classes: int = 8
    dim: int = 256
    n_layers: int = 6
    n_heads: int = 8
    mlp_hidden: int = 688
    max_seq_len: int = 257  # class token + 16*16 image tokens
    rope_base: float = 10000.0
    class_dropout: float = 0.1
    class_bias: bool = False  # class embedding added to every position's input (see module doc)
    abs_pos_emb: bool = False  # learned absolute position embedding added to every input

    def to_dict(self):
        return asdict(self)


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight


def rope_cos_sin(position_ids: torch.Tensor, head_dim: int, base: float, dtype):
    """position_ids [B,N] -> cos, sin [B,1,N,head_dim] (rotate-half convention)."""
    inv = 1.0 / (base ** (torch.arange(0, head_dim, 2, device=position_ids.device, dtype=torch.float64) / head_dim))
    ang = position_ids.to(torch.float64)[..., None] * inv  # [B,N,hd/2]
    ang = torch.cat([ang, ang], -1)[:, None]
    return ang.cos().to(dtype), ang.sin().to(dtype)


def apply_rope(x, cos, sin):
    x1, x2 = x.chunk(2, -1)
    return x * cos + torch.cat([-x2, x1], -1) * sin


class Attention(nn.Module):
    def __init__(self, dim: int, n_heads: int):
        super().__init__()
        self.n_heads, self.head_dim = n_heads, dim // n_heads
        self.wqkv = nn.Linear(dim, 3 * dim, bias=False)
        self.wo = nn.Linear(dim, dim, bias=False)

    def forward(self, x, cos, sin, past=None, attn_mask=None, causal=False):
        """x [B,N,D]; past = (k,v) [B,H,S,hd] or None; attn_mask [B,1,N,S+N] bool or None.
        Returns (out [B,N,D], (k, v) of the N new positions, rotated)."""
        b, n, d = x.shape
        q, k, v = self.wqkv(x).view(b, n, 3, self.n_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        kk, vv = k, v
        if past is not None:
            kk, vv = torch.cat([past[0], k], 2), torch.cat([past[1], v], 2)
        o = F.scaled_dot_product_attention(q, kk, vv, attn_mask=attn_mask, is_causal=causal and attn_mask is None)
        return self.wo(o.transpose(1, 2).reshape(b, n, d)), (k, v)


class Block(nn.Module):
    def __init__(self, dim: int, n_heads: int, mlp_hidden: int):
        super().__init__()
        self.attn_norm = RMSNorm(dim)
        self.attn = Attention(dim, n_heads)
        self.mlp_norm = RMSNorm(dim)
        self.w1 = nn.Linear(dim, mlp_hidden, bias=False)
        self.w3 = nn.Linear(dim, mlp_hidden, bias=False)
        self.w2 = nn.Linear(mlp_hidden, dim, bias=False)

    def forward(self, x, cos, sin, past=None, attn_mask=None, causal=False):
        a, kv = self.attn(self.attn_norm(x), cos, sin, past, attn_mask, causal)
        x = x + a
        h = self.mlp_norm(x)
        return x + self.w2(F.silu(self.w1(h)) * self.w3(h)), kv


class KVCache:
    """Per-layer K/V storage [n_layers, B, H, max_len, head_dim] with per-sequence lengths.

    * ``lengths`` [B] int64: number of committed positions of each sequence (slot s = position s).
    * ``pending_k/v`` [n_layers, B, H, N, head_dim]: K/V of the nodes of the last tree forward.
    * ``commit(node_indices)`` appends pending nodes, ``commit_all()`` appends all of them in order.
    * ``class_ids`` [B] int64 or None: each sequence's class (set by the target's prefill; the target's
      ``class_bias`` path reads it in later forwards).
    """

    def __init__(self, n_layers, batch, n_heads, head_dim, max_len, dtype=torch.float32, device="cpu",
                 class_ids: torch.Tensor | None = None):
        shape = (n_layers, batch, n_heads, max_len, head_dim)
        self.k = torch.zeros(shape, dtype=dtype, device=device)
        self.v = torch.zeros(shape, dtype=dtype, device=device)
        self.lengths = torch.zeros(batch, dtype=torch.long, device=device)
        self.max_len = max_len
        self.class_ids = class_ids
        self.pending_k = self.pending_v = None

    @property
    def batch_size(self):
        return self.k.shape[1]

    def view(self, layer: int):
        """(k, v) [B,H,S,hd] over the first S = max(lengths) slots, and valid [B,S] bool."""
        s = int(self.lengths.max()) if self.lengths.numel() else 0
        valid = torch.arange(s, device=self.k.device)[None] < self.lengths[:, None]
        return self.k[layer, :, :, :s], self.v[layer, :, :, :s], valid

    def set_pending(self, k: torch.Tensor, v: torch.Tensor, extend: bool = False) -> None:
        """k, v [n_layers, B, H, N, head_dim]: the K/V of the last forward's nodes; ``extend`` appends
        them to the pending nodes of the forward before (node indices continue) instead of replacing them."""
        if extend:
            k, v = torch.cat([self.pending_k, k], 3), torch.cat([self.pending_v, v], 3)
        self.pending_k, self.pending_v = k, v

    @torch.no_grad()
    def commit(self, node_indices: torch.Tensor) -> None:
        """Append the K/V of tree nodes node_indices [B, L] int64 (in order; -1 = padding, only
        trailing) to each sequence's cache, then drop all pending K/V.  Sequence b grows by
        the number of non-negative entries in row b."""
        if self.pending_k is None:
            raise RuntimeError("KVCache.commit: no pending tree nodes (call forward_tree first)")
        node_indices = node_indices.to(self.k.device).long()
        if node_indices.dim() == 1:
            node_indices = node_indices[:, None]
        valid = node_indices >= 0
        cnt = valid.sum(1)
        if not torch.equal(valid, torch.arange(valid.shape[1], device=valid.device)[None] < cnt[:, None]):
            raise ValueError("KVCache.commit: -1 padding must be trailing")
        if int((self.lengths + cnt).max()) > self.max_len:
            raise ValueError(f"KVCache.commit: cache capacity {self.max_len} exceeded")
        bs, js = valid.nonzero(as_tuple=True)
        nodes = node_indices[bs, js]
        slots = self.lengths[bs] + js
        self.k[:, bs, :, slots] = self.pending_k[:, bs, :, nodes]
        self.v[:, bs, :, slots] = self.pending_v[:, bs, :, nodes]
        self.lengths += cnt
        self.pending_k = self.pending_v = None

    def commit_all(self) -> None:
        """Append every pending node in index order (use after a chain/sequential forward)."""
        b, n = self.pending_k.shape[1], self.pending_k.shape[3]
        self.commit(torch.arange(n, device=self.k.device).expand(b, n))

    def discard(self) -> None:
        self.pending_k = self.pending_v = None


def run_blocks(blocks, x, position_ids, rope_base, cache: KVCache | None = None, tree_mask=None, causal=False,
               extend: bool = False):
    """Shared core: x [B,N,D] through blocks.  With a cache, node i attends to the valid cache
    slots plus the nodes j with tree_mask[b,i,j]; new K/V are stored as pending.  With ``extend`` the
    pending nodes of the previous forward (P of them) come first in the tree: tree_mask is [B,N,P+N]
    and the new nodes are appended to the pending ones."""
    head_dim = blocks[0].attn.head_dim
    cos, sin = rope_cos_sin(position_ids, head_dim, rope_base, x.dtype)
    if cache is None:
        for blk in blocks:
            x, _ = blk(x, cos, sin, causal=causal)
        return x
    if extend and cache.pending_k is None:
        raise RuntimeError("run_blocks(extend=True): no pending tree nodes to extend")
    new_k, new_v = [], []
    for i, blk in enumerate(blocks):
        pk, pv, valid = cache.view(i)
        if extend:
            pk, pv = torch.cat([pk, cache.pending_k[i]], 2), torch.cat([pv, cache.pending_v[i]], 2)
        if i == 0:
            n = x.shape[1]
            mask = torch.cat([valid[:, None, :].expand(-1, n, -1), tree_mask.bool()], -1)[:, None]
        x, (k, v) = blk(x, cos, sin, past=(pk, pv), attn_mask=mask)
        new_k.append(k)
        new_v.append(v)
    cache.set_pending(torch.stack(new_k), torch.stack(new_v), extend)
    return x


def chain_mask(b: int, n: int, device="cpu") -> torch.Tensor:
    """Tree mask of a chain (causal): [B,N,N] bool."""
    return torch.ones(n, n, dtype=torch.bool, device=device).tril().expand(b, n, n)


class Transformer(nn.Module):
    def __init__(self, cfg: TargetConfig | None = None, **kw):
        super().__init__()
        cfg = cfg or TargetConfig(**kw)
        self.cfg = cfg
        self.null_class = cfg.num_classes
        self.tok_emb = self._token_embedding(cfg)
        self.cls_emb = nn.Embedding(cfg.num_classes + 1, cfg.dim)
        self.cls_bias = nn.Embedding(cfg.num_classes + 1, cfg.dim) if cfg.class_bias else None
        self.pos_emb = nn.Embedding(cfg.max_seq_len, cfg.dim) if cfg.abs_pos_emb else None
        self.layers = nn.ModuleList(Block(cfg.dim, cfg.n_heads, cfg.mlp_hidden) for _ in range(cfg.n_layers))
        self.norm = RMSNorm(cfg.dim)
        self.head = self._output_head(cfg)
        self.apply(self._init)
        for n, p in self.named_parameters():
            if n.endswith("wo.weight") or n.endswith("w2.weight"):
                nn.init.normal_(p, std=0.02 / math.sqrt(2 * cfg.n_layers))
        for extra in (self.cls_bias, self.pos_emb):
            if extra is not None:
                nn.init.zeros_(extra.weight)

    @staticmethod
    def _token_embedding(cfg) -> nn.Module:
        """Input embedding of an image token (``ctarget.py`` swaps in a projection of continuous latents)."""
        return nn.Embedding(cfg.vocab_size, cfg.dim)

    @staticmethod
    def _output_head(cfg) -> nn.Module:
        """Head on the final (normed) hidden state: logits here, a Gaussian mixture in ``ctarget.py``."""
        return nn.Linear(cfg.dim, cfg.vocab_size, bias=False)

    @staticmethod
    def _init(m):
        if isinstance(m, (nn.Linear, nn.Embedding)):
            nn.init.normal_(m.weight, std=0.02)

    def _inputs(self, x: torch.Tensor, class_ids: torch.Tensor, position_ids: torch.Tensor) -> torch.Tensor:
        """x [B,N,D] token/class embeddings plus the optional class-bias and position paths."""
        if self.cls_bias is not None:
            x = x + self.cls_bias(class_ids)[:, None]
        if self.pos_emb is not None:
            x = x + self.pos_emb(position_ids.clamp(max=self.cfg.max_seq_len - 1))
        return x

    # ---------------------------------------------------------------- training
    def drop_classes(self, class_ids: torch.Tensor, generator=None) -> torch.Tensor:
        """Replace class ids by the null class with probability cfg.class_dropout."""
        drop = torch.rand(class_ids.shape, generator=generator, device=class_ids.device) < self.cfg.class_dropout
        return torch.where(drop, torch.full_like(class_ids, self.null_class), class_ids)

    def forward(self, class_ids: torch.Tensor, tokens: torch.Tensor | None = None):
        """Full causal forward. class_ids [B], tokens [B,T] (T <= 256) ->
        (logits [B,T+1,V], hidden [B,T+1,D]); logits[:, p] predicts image token p."""
        x = self.cls_emb(class_ids)[:, None]
        if tokens is not None and tokens.shape[1] > 0:
            x = torch.cat([x, self.tok_emb(tokens)], 1)
        b, n, _ = x.shape
        pos = torch.arange(n, device=x.device).expand(b, n)
        x = self._inputs(x, class_ids, pos)
        h = self.norm(run_blocks(self.layers, x, pos, self.cfg.rope_base, causal=True))
        return self.head(h), h

    # ---------------------------------------------------------------- decoding
    def new_cache(self, batch: int, max_len: int | None = None, dtype=None, device=None,
                  class_ids: torch.Tensor | None = None) -> KVCache:
        p = self.norm.weight
        return KVCache(self.cfg.n_layers, batch, self.cfg.n_heads, self.cfg.dim // self.cfg.n_heads,
                       max_len or self.cfg.max_seq_len, dtype or p.dtype, device or p.device, class_ids)

    @torch.no_grad()
    def prefill(self, class_ids: torch.Tensor, max_len: int | None = None):
        """class_ids [B] (null class = cfg.num_classes) -> (cache, logits [B,V], hidden [B,D]).
        The class token (position 0) is committed; logits predict image token 0."""
        b = class_ids.shape[0]
        cache = self.new_cache(b, max_len, class_ids=class_ids)
        pos = torch.zeros(b, 1, dtype=torch.long, device=class_ids.device)
        x = self._inputs(self.cls_emb(class_ids)[:, None], class_ids, pos)
        h = self.norm(run_blocks(self.layers, x, pos, self.cfg.rope_base, cache, chain_mask(b, 1, x.device)))
        cache.commit_all()
        return cache, self.head(h[:, 0]), h[:, 0]

    @torch.no_grad()
    def forward_tree(self, cache: KVCache, tokens: torch.Tensor, mask: torch.Tensor, position_ids: torch.Tensor):
        """tokens [B,N] int64, mask [B,N,N] bool (mask[b,i,j]: j is ancestor of i or j == i),
        position_ids [B,N] int64 (= cache.lengths + depth) -> (logits [B,N,V], hidden [B,N,D]).
        Node i attends to all committed cache slots plus the masked tree nodes.  The cache
        itself is not modified; the nodes' K/V are kept pending until cache.commit(...)."""
        x = self.tok_emb(tokens)
        if self.cls_bias is not None:
            if cache.class_ids is None:
                raise ValueError("forward_tree: this target's class_bias needs cache.class_ids (make the cache "
                                 "with prefill or new_cache(..., class_ids=...))")
        x = self._inputs(x, cache.class_ids, position_ids)
        h = self.norm(run_blocks(self.layers, x, position_ids, self.cfg.rope_base, cache, mask))
        return self.head(h), h

    @torch.no_grad()
    def decode_step(self, cache: KVCache, tokens: torch.Tensor):
        """Append tokens [B,n] (a chain; [B,n,D] latents for the continuous target) at each sequence's
        current end and commit them. Returns (logits [B,n,V], hidden [B,n,D])."""
        b, n = tokens.shape[:2]
        pos = cache.lengths[:, None] + torch.arange(n, device=tokens.device)[None]
        out = self.forward_tree(cache, tokens, chain_mask(b, n, tokens.device), pos)
        cache.commit_all()
        return out
