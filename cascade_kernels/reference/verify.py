"""Reference verification walk (SPEC §3-6, docs/SEMANTICS.md): the executable spec.

Plain, per-sequence PyTorch. The walk is written once (:func:`_walk`); every method plugs in
through :func:`_relax`, which names the absorbed set ``A(x)``, the relaxed probability ``r(x)`` and
the charge added to ``tvd``.
"""
import math
from dataclasses import dataclass
from typing import List, Optional

import numpy as np
import torch

from .. import philox
from ..methods import GSD, Cascade, Cool, Exact, Lantern
from ..trees import children_lists, depths
from ..types import (STATUS_EMPTY_RESIDUAL, STATUS_NONFINITE_DRAFT, STATUS_NONFINITE_TARGET,
                     SimilaritySets, VerifyOutput)
from .logits import guide, nan_safe_argmax, probs_from_guided
from .trees import similarity_sets

_EMPTY = torch.empty(0, dtype=torch.int64)


@dataclass
class _Relaxation:
    absorbed: torch.Tensor  # int64 token ids of A(x)
    r: float  # relaxed probability r(x) >= q(x)
    charge: float  # added to tvd
    cool_scale: Optional[float] = None  # COOL's w_d (its residual and greedy rule need it)


def _prefix_within(masses: torch.Tensor, cap: float) -> int:
    """Length of the longest prefix whose float32 running sum (in order) is <= cap."""
    if masses.numel() == 0:
        return 0
    running = np.cumsum(masses.numpy())
    return int(np.searchsorted(running, np.float32(cap), side="right"))


def _unique_live(tokens: torch.Tensor, q: torch.Tensor, exclude: torch.Tensor) -> torch.Tensor:
    """Sorted unique tokens (ids >= 0) with q > 0 that are not in ``exclude``."""
    tokens = torch.unique(tokens[tokens >= 0])
    tokens = tokens[q[tokens] > 0]
    if exclude.numel():
        tokens = tokens[~torch.isin(tokens, exclude)]
    return tokens


def _relax(method, q, x: int, child: int, tvd: float, eps: float, ctx) -> _Relaxation:
    """SPEC §4: the method's relaxation of candidate token ``x`` (node ``child``) under ``q``."""
    qx = float(q[x])
    left = eps - tvd
    if isinstance(method, Exact):
        return _Relaxation(_EMPTY, qx, 0.0)
    if isinstance(method, Cool):
        w = method.scale(int(ctx.depth[child]))
        r = float(np.float32(min(1.0, w * qx, qx + left)))
        return _Relaxation(_EMPTY, r, float(np.float32(r - qx)), cool_scale=w)
    if isinstance(method, Lantern):
        nb = method.neighbors[x, : method.n_neighbors]
        nb = nb[nb >= 0]
        cap = method.delta if method.lam is None else (method.lam - 1.0) * qx
        m = _prefix_within(q[nb], min(cap, left))
        absorbed = nb[:m]
    elif isinstance(method, GSD):
        dist = (q - qx).abs()
        ids = torch.nonzero((q > 0) & (dist < method.dp)).flatten()
        ids = ids[ids != x]
        ids = ids[torch.sort(dist[ids], stable=True).indices][: method.G]
        absorbed = ids[: _prefix_within(q[ids], left)]
    elif isinstance(method, Cascade):
        absorbed, charge = _EMPTY, 0.0
        x_t = torch.tensor([x])
        blocks = []
        if method.use_interchange:
            blocks.append(ctx.sets.interchange[child])
        if method.use_convergence:
            blocks.append(ctx.sets.convergence[child])
        for members in blocks:
            toks = _unique_live(ctx.tokens[members], q, torch.cat([x_t, absorbed]))
            mass = float(q[toks].sum())
            if np.float32(tvd + charge + mass) <= eps:
                absorbed = torch.cat([absorbed, toks])
                charge = float(np.float32(charge + mass))
        return _Relaxation(absorbed, float(np.float32(qx + charge)), charge)
    else:  # pragma: no cover - validation rejects other types
        raise TypeError(f"unknown method {method!r}")
    mass = float(q[absorbed].sum()) if absorbed.numel() else 0.0
    return _Relaxation(absorbed, float(np.float32(qx + mass)), mass)


def sample_inverse_cdf(weights: torch.Tensor, u: float) -> int:
    """SPEC §6: smallest i with w_0 + ... + w_i > u * sum(w) (float32, index order); never a 0 weight."""
    w = weights.numpy().astype(np.float32, copy=False)
    running = np.cumsum(w)
    threshold = np.float32(np.float32(u) * running[-1])
    i = min(int(np.searchsorted(running, threshold, side="right")), len(w) - 1)
    if w[i] > 0:
        return i
    nonzero = np.flatnonzero(w > 0)
    later = nonzero[nonzero > i]
    return int(later[0]) if later.size else int(nonzero[-1])


def _greedy_accepts(q, x: int, rel: _Relaxation) -> bool:
    """SPEC §5: x wins the relaxed argmax (ties go to the candidate)."""
    others = q.clone()
    others[x] = 0
    if rel.absorbed.numel():
        others[rel.absorbed] = 0
    best_other = float(others.max())
    if rel.cool_scale is not None:  # COOL takes its extra mass from every other token in proportion
        qx = float(q[x])
        best_other *= (1.0 - rel.r) / (1.0 - qx) if qx < 1.0 else 0.0
    return rel.r >= best_other


def _reject(q, p, x: int, rel: _Relaxation, transport: bool, sampled: bool) -> torch.Tensor:
    """SPEC §3 residual after rejecting ``x`` (unnormalized)."""
    q = q.clone()
    if not sampled:
        q[x] = 0
        if transport and rel.absorbed.numel():
            q[rel.absorbed] = 0
        return q
    if rel.cool_scale is not None:
        f = torch.where(p > 0, torch.clamp(rel.cool_scale * q / p, max=1.0), torch.ones_like(p))
        return torch.clamp(q - p * f, min=0)
    if transport:
        q[x] = rel.r
        if rel.absorbed.numel():
            q[rel.absorbed] = 0
    return torch.clamp(q - p, min=0)


@dataclass
class _Context:
    tokens: torch.Tensor  # [N] int64
    depth: torch.Tensor  # [N]
    sets: Optional[SimilaritySets]  # per-sequence slices [N, N]


def _walk(b, ctx, kids: List[List[int]], guided, target_probs, draft_probs, u_accept, u_sample, method, eps,
          transport, greedy, out):
    """One sequence's walk over its rows ``[N, V]``; writes the outputs at row ``b``.

    ``draft_probs`` is None in deterministic drafting and in greedy mode.
    """
    u, tvd, path, status = 0, 0.0, [0], 0
    sampled = draft_probs is not None
    while True:
        q_u = target_probs[u]
        if not bool(torch.isfinite(q_u).all()):
            out.next_token[b] = nan_safe_argmax(guided[u])
            status |= STATUS_NONFINITE_TARGET
            break
        children = [c for c in kids[u] if int(ctx.tokens[c]) >= 0]
        if not children:
            out.next_token[b] = _final_token(q_u, greedy, u_sample)
            break
        p = draft_probs[u] if sampled else None
        if sampled and not bool(torch.isfinite(p).all()):
            status |= STATUS_NONFINITE_DRAFT
            out.next_token[b] = _final_token(q_u, greedy, u_sample)
            break
        q, seen, accepted = q_u.clone(), set(), None
        for c in children:
            x = int(ctx.tokens[c])
            if not sampled:
                if x in seen:
                    continue
                seen.add(x)
            rel = _relax(method, q, x, c, tvd, eps, ctx)
            tvd = float(np.float32(tvd + rel.charge))
            if greedy:
                ok = _greedy_accepts(q, x, rel)
            elif sampled:
                px = float(p[x])
                ratio = 1.0 if px == 0 and rel.r > 0 else (0.0 if px == 0 else float(np.float32(rel.r / px)))
                ok = float(u_accept[c]) < min(1.0, ratio)
            else:
                ok = float(u_accept[c]) < rel.r
            if ok:
                accepted = c
                break
            q = _reject(q, p, x, rel, transport, sampled)
            total = float(q.sum())
            if not (total > 0 and math.isfinite(total)):
                status |= STATUS_EMPTY_RESIDUAL
                q = None
                break
            q = q / total
        if accepted is not None:
            u = accepted
            path.append(u)
            continue
        if q is None:
            out.next_token[b] = int(q_u.argmax())
        else:
            out.next_token[b] = _final_token(q, greedy, u_sample)
        break
    out.accept_len[b] = len(path) - 1
    out.accepted_nodes[b, : len(path)] = torch.tensor(path, dtype=torch.int32)
    out.tvd[b] = tvd
    out.status[b] = status


def _final_token(weights, greedy: bool, u_sample: float) -> int:
    """Bonus / correction token: argmax in greedy mode, else inverse CDF (SPEC §5, §6)."""
    if greedy:
        return int(weights.argmax())
    return sample_inverse_cdf(weights, u_sample)


def verify_reference(tokens, parents, target_logits, *, method, draft_logits, hidden, residual, eps,
                     temperature, top_k, top_p, cfg_scale, seed) -> VerifyOutput:
    """Reference ``ck.verify`` on validated, normalized inputs (``seed`` int64 [B], ``eps`` float)."""
    B, N = tokens.shape
    greedy = temperature == 0
    guided = guide(target_logits, cfg_scale)
    depth = depths(parents)
    L = int(depth.max()) + 1
    sets = None
    if isinstance(method, Cascade):
        sets = similarity_sets(parents, hidden, method.tau_pos, method.tau_seq)
    nodes = torch.arange(N, dtype=torch.int64)
    u_accept = philox.uniform(seed.view(B, 1), philox.ACCEPT, nodes.view(1, N))
    u_sample = torch.clamp(philox.uniform(seed, philox.SAMPLE, torch.zeros(B, dtype=torch.int64)), min=2.0**-32)

    out = VerifyOutput(
        accept_len=torch.zeros(B, dtype=torch.int32),
        accepted_nodes=torch.full((B, L), -1, dtype=torch.int32),
        next_token=torch.zeros(B, dtype=torch.int64),
        tvd=torch.zeros(B, dtype=torch.float32),
        status=torch.zeros(B, dtype=torch.int32),
        backend="reference",
    )
    target_probs = probs_from_guided(guided, temperature, top_k, top_p)
    draft_probs = None
    if draft_logits is not None and not greedy:
        draft_probs = probs_from_guided(draft_logits.float(), temperature, top_k, top_p)
    for b in range(B):
        ctx = _Context(tokens[b], depth[b], None if sets is None else SimilaritySets(*(s[b] for s in sets)))
        _walk(b, ctx, children_lists(parents[b].tolist()), guided[b], target_probs[b],
              None if draft_probs is None else draft_probs[b], u_accept[b], float(u_sample[b]), method, eps,
              residual == "transport", greedy, out)
    return out
