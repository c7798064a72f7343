"""Decode loop for continuous tokens: AR baseline, exact chain speculative decoding, CSpD (docs/CONTINUOUS.md).

Protocol (``cascade_lab.ctarget`` implements it; the discrete protocol of ``decode.py`` with a
``GaussianMixture`` where the logits were and latent vectors ``[.., D]`` for token ids; no CFG):

* ``target.prefill(class_ids [B], max_len) -> (cache, dist, hidden [B, H])``: the class token is
  committed; ``dist`` (batch shape ``[B]``) is the density of the first token.
* ``target.forward_tree(cache, tokens [B, N, D], mask [B, N, N], position_ids [B, N])
  -> (dist [B, N], hidden [B, N, H])``: node i sees the committed cache and the nodes j with
  ``mask[b, i, j]``; their K/V stay pending until ``cache.commit(node_indices [B, L])`` (``-1`` trailing
  padding) appends the listed nodes; ``cache.lengths [B]``.
* ``drafter.new_cache(B, max_len)``, ``drafter.forward_tree(cache, tokens [B, N, D], feats [B, N, H], mask,
  position_ids) -> (dist [B, N], feats [B, N, H])``, EAGLE-1's layout: the entry made of (the target's
  feature at position p, the token at position p + 1) sits at drafter position p.

Seeds: sequence ``b`` has the base seed ``seed + b`` (or ``seed[b]``); step ``t`` (0 = the draw from the
prefill's density; one step per target forward) has ``s_t = decode.step_seed(base, t)``. An AR step draws
its token with ``dist.sample(s_t)``; a speculative step draws chain token ``i`` from the drafter with
``sample(step_seed(s_t, 1 + i))`` and verifies with ``verify_continuous(..., seed=s_t)``.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import List

import torch

from .decode import SequenceStats, _append, _base_seeds, _catch_up, _finish, _progress, step_seed
from .ops.verify_continuous import INNER_TEMPERATURE, PREFILL_FRACTION, GaussianMixture, cspd_prefill_len
from .ops.verify_continuous import verify_continuous
from .ops.verify_continuous.mixture import sample_uniforms
from .validation import check_number

__all__ = ["generate_continuous", "ContinuousGenerateOutput", "CRITERIA"]

CRITERIA = ("exact", "cspd")


@dataclass
class ContinuousGenerateOutput:
    latents: torch.Tensor  # [B, num_tokens, D] float32
    stats: List[SequenceStats]  # per sequence: tokens, accept_lengths, target_forwards, alpha, wall_time


def _seed_grid(seeds, cols, device) -> torch.Tensor:
    """int64 [len(seeds), len(cols)]: step_seed(seeds[r], cols[c])."""
    return torch.tensor([[step_seed(s, c) for c in cols] for s in seeds], dtype=torch.int64, device=device)


def _chain_mask(B: int, n: int, device) -> torch.Tensor:
    return torch.ones(n, n, dtype=torch.bool, device=device).tril().expand(B, n, n)


def generate_continuous(target, class_ids: torch.Tensor, *, drafter=None, num_tokens: int = 64, draft_len: int = 4,
                        criterion: str = "exact", temperature: float = 1.0,
                        inner_temperature: float = INNER_TEMPERATURE, prefill_fraction: float = PREFILL_FRACTION,
                        seed=0, max_proposals: int = 64, backend: str = "auto",
                        progress: bool = False) -> ContinuousGenerateOutput:
    """Generate ``num_tokens`` continuous tokens per class id: AR decoding without a ``drafter``, else
    chain speculative decoding (the drafter proposes ``draft_len`` tokens, ``verify_continuous`` keeps a
    prefix and draws the next token).

    ``temperature``: every component's scales (target and drafter) are multiplied by it before sampling
    and verification (``GaussianMixture.with_temperature``); exact decoding then samples the tempered target.

    ``criterion`` (with a drafter): ``"exact"``: speculative sampling with the true mixture densities,
    the emitted sequence has the target's (tempered) law. ``"cspd"``: the two approximations of CSpD
    (arXiv 2411.11925) on the mixture head: the target alone draws the first
    ``cspd_prefill_len(num_tokens, prefill_fraction)`` tokens, and the acceptance test compares the two
    densities with every component's scales multiplied by ``inner_temperature``
    (``verify_continuous(accept_temperature=...)``; for ``K = 1`` this is ``verify_cspd``). The residual
    draw after a rejection and the bonus draw are untempered. Approximate: with a large inner temperature
    almost every draft is accepted and the output follows the drafter more than the target. CSpD's
    alignment of denoising trajectories has no counterpart: mixture densities are exact.

    Returns ``ContinuousGenerateOutput(latents [B, num_tokens, D], stats)``; ``stats[b].alpha`` = tokens per
    target forward (prefill included). Same seeds, same inputs -> the same latents (module docstring).
    """
    if not isinstance(class_ids, torch.Tensor) or class_ids.dim() != 1 or class_ids.dtype.is_floating_point \
            or class_ids.dtype == torch.bool or class_ids.numel() == 0:
        raise ValueError("class_ids must be a non-empty 1-D integer tensor [B]")
    num_classes = getattr(target, "null_class", None)
    if num_classes is not None and bool(((class_ids < 0) | (class_ids >= num_classes)).any()):
        raise ValueError(f"class_ids must lie in [0, num_classes={num_classes}), got {class_ids.tolist()}")
    check_number(num_tokens, "num_tokens", lo=1, integer=True)
    check_number(draft_len, "draft_len", lo=1, integer=True)
    check_number(temperature, "temperature", lo=0.0, lo_open=True)
    if criterion not in CRITERIA:
        raise ValueError(f"criterion must be one of {CRITERIA}, got {criterion!r}")
    if criterion == "cspd" and drafter is None:
        raise ValueError("criterion='cspd' needs a drafter")
    check_number(inner_temperature, "inner_temperature", lo=0.0, lo_open=True)
    B, dev = class_ids.shape[0], class_ids.device
    bases = _base_seeds(seed, B)
    cspd = criterion == "cspd"
    n_ar = max(1, cspd_prefill_len(num_tokens, prefill_fraction)) if cspd else (1 if drafter else num_tokens)
    stats = [SequenceStats() for _ in range(B)]
    bar = _progress(num_tokens * B, progress)
    t0 = time.perf_counter()

    max_len = num_tokens + draft_len + 2
    tcache, dist, hidden = target.prefill(class_ids, max_len)
    # the AR draws' uniforms, all in one Philox evaluation: step t draws with seed s_t
    uc, u1, u2 = sample_uniforms(_seed_grid(bases, range(n_ar), dev), dist.D)
    x = dist.with_temperature(temperature).sample(uniforms=(uc[:, 0], u1[:, 0], u2[:, 0]))  # [B, D]
    out = torch.zeros(B, num_tokens, x.shape[-1], dtype=torch.float32, device=dev)
    count = torch.zeros(B, dtype=torch.int64, device=dev)
    feats = [hidden]  # target features of the committed positions whose densities drew the tokens
    zero = torch.zeros(B, dtype=torch.int64, device=dev)
    _append(out, count, x.unsqueeze(1), zero, bar)
    step, forwards = 1, 1
    ones = torch.ones(B, 1, 1, dtype=torch.bool, device=dev)
    while int(count[0]) < n_ar:  # AR steps (every row in lockstep)
        dist, hidden = target.forward_tree(tcache, x.unsqueeze(1), ones, tcache.lengths.unsqueeze(1))
        tcache.commit(torch.zeros(B, 1, dtype=torch.int64, device=dev))
        x = dist[:, 0].with_temperature(temperature).sample(uniforms=(uc[:, step], u1[:, step], u2[:, step]))
        feats.append(hidden[:, 0])
        _append(out, count, x.unsqueeze(1), zero, bar)
        step, forwards = step + 1, forwards + 1
    for s in stats:
        s.target_forwards = forwards
        s.accept_lengths.extend([0] * (forwards - 1))
    if drafter is not None and int(count[0]) < num_tokens:
        _speculate(target, drafter, tcache, out, count, x, torch.stack(feats, 1), bases, step, stats, bar,
                   draft_len=draft_len, temperature=temperature, max_proposals=max_proposals, backend=backend,
                   accept_temperature=inner_temperature if cspd else 1.0)
    _finish(stats, bar, t0, num_tokens)
    return ContinuousGenerateOutput(out, stats)


def _speculate(target, drafter, tcache, out, count, root, ctx_feats, bases, step, stats, bar, *, draft_len,
               temperature, max_proposals, backend, accept_temperature):
    """Chain speculative steps until every sequence has ``out.shape[1]`` tokens. ``root`` [B, D]: the last
    emitted token (not in the target's cache yet); ``ctx_feats`` [B, n, H]: the target's features of the n
    committed positions, which with the n emitted tokens make the drafter's first entries."""
    B, num_tokens, _ = out.shape
    dev = out.device
    L = draft_len
    dcache = drafter.new_cache(B, tcache.max_len)
    n = ctx_feats.shape[1]
    root_dist, root_feat = _catch_up(drafter, dcache, out[:, :n], ctx_feats, torch.zeros(B, dtype=torch.int64, device=dev),
                                     False)
    chain = _chain_mask(B, L + 1, dev)
    steps = torch.arange(L + 1, device=dev)
    # every step emits a token, so at most num_tokens - count[0] more steps: their verify seeds s_t and the
    # drafting uniforms (seeds step_seed(s_t, 1 + i)) in one Philox evaluation
    n_steps = num_tokens - int(count.min())
    verify_seeds = _seed_grid(bases, range(step, step + n_steps), dev)  # [B, n_steps]
    uc, u1, u2 = sample_uniforms(torch.stack([_seed_grid(row, range(1, L + 1), dev) for row in verify_seeds.tolist()]),
                                 root.shape[-1])  # [B, n_steps, L(, D)]
    for k in range(n_steps):
        if not bool((count < num_tokens).any()):
            break
        pos0 = tcache.lengths.clone()
        drafts, dists, dfeats = [], [], [root_feat]
        d_dist = root_dist
        for i in range(L):
            p_i = d_dist.with_temperature(temperature)
            drafts.append(p_i.sample(uniforms=(uc[:, k, i], u1[:, k, i], u2[:, k, i])))
            dists.append(p_i)
            if i + 1 < L:  # the drafter's density of chain token i + 1, from the drafted entries 0..i
                dd, ff = drafter.forward_tree(dcache, torch.stack(drafts, 1), torch.stack(dfeats, 1),
                                              _chain_mask(B, i + 1, dev), pos0.unsqueeze(1) + steps[:i + 1])
                d_dist = dd[:, -1]
                dfeats.append(ff[:, -1])
        draft = torch.stack(drafts, 1)  # [B, L, D]
        tokens = torch.cat([root.unsqueeze(1), draft], 1)  # [B, L + 1, D]
        q, hidden = target.forward_tree(tcache, tokens, chain, pos0.unsqueeze(1) + steps)
        res = verify_continuous(draft, GaussianMixture.stack(dists, 1), q.with_temperature(temperature),
                                seed=verify_seeds[:, k].contiguous(),
                                max_proposals=max_proposals, accept_temperature=accept_temperature, backend=backend)
        active = count < num_tokens
        n_acc = res.accept_len.long()
        keep = (steps.unsqueeze(0) <= n_acc.unsqueeze(1)) & active.unsqueeze(1)
        tcache.commit(torch.where(keep, steps.unsqueeze(0), torch.full_like(keep, -1, dtype=torch.int64)))
        for b in torch.nonzero(active).flatten().tolist():
            stats[b].target_forwards += 1
            stats[b].accept_lengths.append(int(n_acc[b]))
        emitted = torch.cat([draft, torch.zeros_like(root).unsqueeze(1)], 1)
        emitted[torch.arange(B, device=dev), n_acc] = res.next
        _append(out, count, emitted, torch.where(active, n_acc, 0), bar, active)
        # drafter catch-up over (H[root], d_1), ..., (H[d_a], next) at positions pos0 .. pos0 + a
        root_dist, root_feat = _catch_up(drafter, dcache, emitted, hidden, pos0, False,
                                         torch.where(active, n_acc + 1, 0))
        root = res.next
