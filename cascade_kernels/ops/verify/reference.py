"""Reference verification walk (docs/CONTRACT.md §2-6): the executable statement of the contract.

Plain, per-sequence PyTorch. The walk is written once (:func:`_walk`); every method plugs in
through one relaxation function per method code (:data:`_RELAX`), which names the absorbed set
``A(x)``, the relaxed probability ``r(x)`` and the charge added to ``tvd``.
"""
import math
from dataclasses import dataclass
from typing import List, Optional

import numpy as np
import torch

from ... import philox
from ...codes import METHODS
from ...methods import PackedMethod, cool_scale
from ...types import (STATUS_BAD_TOKEN, STATUS_EMPTY_RESIDUAL, STATUS_NONFINITE_DRAFT, STATUS_NONFINITE_TARGET,
                      SimilaritySets, VerifyArgs, VerifyOutput)
from ..process_logits.reference import guide, nan_safe_argmax, probs_from_guided
from ..similarity_sets.reference import similarity_sets

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
    """Sorted unique tokens (ids in [0, V)) with q > 0 that are not in ``exclude``."""
    tokens = torch.unique(tokens[(tokens >= 0) & (tokens < q.shape[0])])
    tokens = tokens[q[tokens] > 0]
    if exclude.numel():
        tokens = tokens[~torch.isin(tokens, exclude)]
    return tokens


def _relax_exact(m: PackedMethod, q, x: int, child: int, tvd: float, eps: float, ctx) -> _Relaxation:
    return _Relaxation(_EMPTY, float(q[x]), 0.0)


def _relax_cool(m: PackedMethod, q, x: int, child: int, tvd: float, eps: float, ctx) -> _Relaxation:
    qx = float(q[x])
    w = cool_scale(m.fparams, int(ctx.depth[child]))
    r = float(np.float32(min(1.0, w * qx, qx + (eps - tvd))))
    return _Relaxation(_EMPTY, r, float(np.float32(r - qx)), cool_scale=w)


def _absorbing(absorbed: torch.Tensor, q, x: int) -> _Relaxation:
    mass = float(q[absorbed].sum()) if absorbed.numel() else 0.0
    return _Relaxation(absorbed, float(np.float32(float(q[x]) + mass)), mass)


def _relax_lantern(m: PackedMethod, q, x: int, child: int, tvd: float, eps: float, ctx) -> _Relaxation:
    nb = m.neighbors[x]
    nb = nb[nb >= 0]
    qx = float(q[x])
    if m.i("lantern_pp"):  # the cap (lam - 1) q(x) is 0 when q(x) = 0, also for lam = inf
        cap = m.f("lantern_lam_m1") * qx if qx > 0 else 0.0
    else:
        cap = m.f("lantern_delta")
    return _absorbing(nb[: _prefix_within(q[nb], min(cap, eps - tvd))], q, x)


def _relax_gsd(m: PackedMethod, q, x: int, child: int, tvd: float, eps: float, ctx) -> _Relaxation:
    dist = (q - q[x]).abs()
    ids = torch.nonzero((q > 0) & (dist < m.f("gsd_dp"))).flatten()
    ids = ids[ids != x]
    ids = ids[torch.sort(dist[ids], stable=True).indices][: m.i("gsd_G")]
    return _absorbing(ids[: _prefix_within(q[ids], eps - tvd)], q, x)


def _relax_cascade(m: PackedMethod, q, x: int, child: int, tvd: float, eps: float, ctx) -> _Relaxation:
    """Interchangeable block first, then convergence; each absorbed whole if it fits the budget."""
    absorbed, charge = _EMPTY, 0.0
    x_t = torch.tensor([x])
    blocks = []
    if m.i("use_interchange"):
        blocks.append(ctx.sets.interchange[child])
    if m.i("use_convergence"):
        blocks.append(ctx.sets.convergence[child])
    for members in blocks:
        toks = _unique_live(ctx.tokens[members], q, torch.cat([x_t, absorbed]))
        mass = float(q[toks].sum())
        if np.float32(tvd + charge + mass) <= eps:
            absorbed = torch.cat([absorbed, toks])
            charge = float(np.float32(charge + mass))
    return _Relaxation(absorbed, float(np.float32(float(q[x]) + charge)), charge)


_RELAX = {METHODS["exact"]: _relax_exact, METHODS["cool"]: _relax_cool, METHODS["lantern"]: _relax_lantern,
          METHODS["gsd"]: _relax_gsd, METHODS["cascade"]: _relax_cascade}


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
          transport, greedy, out):  # noqa: C901 - the walk is the contract, kept in one piece
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
        ids = [int(ctx.tokens[c]) for c in kids[u]]
        if any(x < -1 or x >= q_u.shape[0] for x in ids):
            status |= STATUS_BAD_TOKEN
            out.next_token[b] = _final_token(q_u, greedy, u_sample)
            break
        children = [c for c, x in zip(kids[u], ids) if x >= 0]
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
            rel = _RELAX[method.code](method, q, x, c, tvd, eps, ctx)
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


def verify(args: VerifyArgs, out: VerifyOutput) -> None:
    """Reference ``ck.verify``: fills ``out`` (on the logits' device) from validated ``args``."""
    B, N = args.tokens.shape
    tree, method, dev = args.tree, args.method, args.target_logits.device
    cpu = lambda t: None if t is None else t.detach().cpu()  # noqa: E731
    tokens, seed = cpu(args.tokens), cpu(args.seed)
    greedy = args.temperature == 0
    guided = guide(cpu(args.target_logits), args.cfg_scale)
    parents = cpu(tree.expand(B))
    depth = cpu(tree.depth).expand(B, N)
    sets = None
    if method.code == METHODS["cascade"]:
        sets = similarity_sets(parents, cpu(args.hidden), method.f("tau_pos"), method.f("tau_seq"))
    if method.neighbors is not None:
        method = method._replace(neighbors=cpu(method.neighbors))
    nodes = torch.arange(N, dtype=torch.int64)
    u_accept = philox.uniform(seed.view(B, 1), philox.ACCEPT, nodes.view(1, N))
    u_sample = torch.clamp(philox.uniform(seed, philox.SAMPLE, torch.zeros(B, dtype=torch.int64)), min=2.0**-32)
    result = VerifyOutput(*(torch.zeros_like(t, device="cpu") for t in out[:4]),
                          status=torch.zeros_like(out.status, device="cpu"))
    result.accepted_nodes.fill_(-1)
    target_probs = probs_from_guided(guided, args.temperature, args.top_k, args.top_p)
    draft_probs = None
    if args.draft_logits is not None:
        draft_probs = probs_from_guided(cpu(args.draft_logits).float(), args.temperature, args.top_k, args.top_p)
    for b in range(B):
        ctx = _Context(tokens[b], depth[b], None if sets is None else SimilaritySets(*(s[b] for s in sets)))
        _walk(b, ctx, tree.children[b if tree.batch > 1 else 0], guided[b], target_probs[b],
              None if draft_probs is None else draft_probs[b], u_accept[b], float(u_sample[b]), method, args.eps,
              args.transport, greedy, result)
    for dst, src in zip(out[:5], result[:5]):
        dst.copy_(src)
