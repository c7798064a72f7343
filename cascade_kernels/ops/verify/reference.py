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
from ...codes import GSD_GROUPS, METHODS
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
    draft_group: Optional[torch.Tensor] = None  # GSD group="peer": sampled acceptance is min(1, r / p(group))


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
    if r >= qx:
        charge = float(np.float32(r - qx))
    else:  # w < 1 (Cool.w_min < 1): the paper's residual makes the position lossless; "standard" does not
        charge = float(np.float32(qx - r)) if ctx.residual == "standard" else 0.0
    return _Relaxation(_EMPTY, r, charge, cool_scale=w)


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
    if m.i("gsd_group") == GSD_GROUPS["peer"]:
        return _relax_gsd_peer(m, q, x, tvd, eps)
    dist = (q - q[x]).abs()
    ids = torch.nonzero((q > 0) & (dist < m.f("gsd_dp"))).flatten()
    ids = ids[ids != x]
    ids = ids[torch.sort(dist[ids], stable=True).indices][: m.i("gsd_G")]
    return _absorbing(ids[: _prefix_within(q[ids], eps - tvd)], q, x)


def _relax_gsd_peer(m: PackedMethod, q, x: int, tvd: float, eps: float) -> _Relaxation:
    """GSD's released rule (junhyukso/GSD @4216c7c, jacobi_iteration_lumina_mgpt.py ~L305-335).

    Window: ranks [c - w, c + w) of the current target row in ascending order (ties by id), c = x's rank,
    clipped at rank 0 (the released Python slice wraps around there). Kept: |q(y) - q(x)| < dp and
    |e_y - e_x|^2 < embed_d2. r(x) = q(group); sampled acceptance min(1, q(group) / p(group)).
    """
    w = m.i("gsd_window")
    order = torch.sort(q, stable=True).indices
    c = int(torch.nonzero(order == x)[0, 0])
    win = order[max(c - w, 0): c + w]
    emb = m.embeddings
    d2 = ((emb[win] - emb[x]) ** 2).sum(1)
    keep = ((q[win] - q[x]).abs() < m.f("gsd_dp")) & (d2 < m.f("gsd_embed_d2"))
    members = win[keep]
    live = members[(members != x) & (q[members] > 0)]
    live = live[torch.sort((q[live] - q[x]).abs(), stable=True).indices]  # budget: nearest in q first
    absorbed = live[: _prefix_within(q[live], eps - tvd)]
    dead = members[(members != x) & (q[members] <= 0)]
    rel = _absorbing(absorbed, q, x)
    rel.draft_group = torch.cat([torch.tensor([x]), absorbed, dead])
    return rel


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
    """CONTRACT §6: smallest i with w_0 + ... + w_i > u * sum(w) (float32, index order); never a 0 weight."""
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
    """CONTRACT §5: x wins the relaxed argmax (ties go to the candidate)."""
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
    """CONTRACT §3 residual after rejecting ``x`` (unnormalized)."""
    q = q.clone()
    if not sampled:
        if rel.cool_scale is not None and transport and rel.cool_scale < 1.0:
            q[x] = max(float(q[x]) - rel.r, 0.0)
            return q
        q[x] = 0
        if transport and rel.absorbed.numel():
            q[rel.absorbed] = 0
        return q
    if rel.cool_scale is not None and (transport or rel.cool_scale >= 1.0):
        # COOL's G* = Norm([q - p min(1, w q / p)]+) (== the standard residual when w >= 1). With w < 1 it keeps
        # x's unaccepted mass: deterministic drafting (p = one-hot x) leaves q(x) - r(x) at x.
        f = torch.where(p > 0, torch.clamp(rel.cool_scale * q / p, max=1.0), torch.ones_like(p))
        return torch.clamp(q - p * f, min=0)
    if transport:
        q[x] = rel.r
        if rel.absorbed.numel():
            q[rel.absorbed] = 0
    return torch.clamp(q - p, min=0)


def _reject_peer(q, p, x: int, rel: _Relaxation, sampled: bool, method: PackedMethod) -> torch.Tensor:
    """``residual="peer"`` (unnormalized): each method's released code / paper (docs/METHODS.md).

    ``p`` is the distribution x was drawn from (with ``draft_sampling="without_replacement"``: the drafter row
    with the earlier siblings removed, renormalised). LANTERN (jadohu/LANTERN @3a56e45
    ``models/ea_model_llamagen.py``): when any neighbour was absorbed, x's first k + 1 neighbours are zeroed
    in the residual (deterministic drafting, ~L771) or in the subtracted drafter row (sampled, ~L646-655).
    COOL: the paper's G*. Exact, GSD, CASCADE: the standard residual.
    """
    if method.code == METHODS["cool"]:
        return _reject(q, p, x, rel, True, sampled)
    q = q.clone()
    zero = None
    if method.code == METHODS["lantern"] and rel.absorbed.numel():
        nb = method.peer_neighbors[x]
        zero = nb[nb >= 0]
    if not sampled:
        q[x] = 0
        if zero is not None:
            q[zero] = 0
        return q
    if zero is not None:
        p = p.clone()
        p[zero] = 0
    return torch.clamp(q - p, min=0)


@dataclass
class _Context:
    tokens: torch.Tensor  # [N] int64
    depth: torch.Tensor  # [N]
    sets: Optional[SimilaritySets]  # per-sequence slices [N, N]
    residual: str = "transport"
    without_replacement: bool = False


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
        p_cur = p  # the distribution the current child was drawn from
        for c in children:
            x = int(ctx.tokens[c])
            if not sampled:
                if x in seen:
                    continue
                seen.add(x)
            elif ctx.without_replacement and not float(p_cur[x]) > 0:
                continue  # never drawn without replacement (a repeat, or no drafter mass): not tried, as EAGLE-1
            rel = _RELAX[method.code](method, q, x, c, tvd, eps, ctx)
            tvd = float(np.float32(tvd + rel.charge))
            if greedy:
                ok = _greedy_accepts(q, x, rel)
            elif sampled:
                px = float(p_cur[x]) if rel.draft_group is None else float(p_cur[rel.draft_group].sum())
                ratio = 1.0 if px == 0 and rel.r > 0 else (0.0 if px == 0 else float(np.float32(rel.r / px)))
                ok = float(u_accept[c]) < min(1.0, ratio)
            else:
                ok = float(u_accept[c]) < rel.r
            if ok:
                accepted = c
                break
            if ctx.residual == "peer":
                q = _reject_peer(q, p_cur, x, rel, sampled, method)
            else:
                q = _reject(q, p_cur, x, rel, transport, sampled)
            if sampled and ctx.without_replacement:
                p_cur = p_cur.clone()
                p_cur[x] = 0
                mass = float(p_cur.sum())
                p_cur = p_cur / mass if mass > 0 else p_cur
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
    """Bonus / correction token: argmax in greedy mode, else inverse CDF (CONTRACT §5, §6)."""
    if greedy:
        return int(weights.argmax())
    return sample_inverse_cdf(weights, u_sample)


def verify(args: VerifyArgs, out: VerifyOutput) -> None:
    """Reference ``ck.verify``: fills ``out`` (on the logits' device) from validated ``args``."""
    B, N = args.tokens.shape
    tree, method = args.tree, args.method
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
        method = method._replace(neighbors=cpu(method.neighbors), peer_neighbors=cpu(method.peer_neighbors))
    if method.embeddings is not None:
        method = method._replace(embeddings=cpu(method.embeddings))
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
        ctx = _Context(tokens[b], depth[b], None if sets is None else SimilaritySets(*(s[b] for s in sets)),
                       args.residual, args.draft_sampling == "without_replacement")
        _walk(b, ctx, tree.children[b if tree.batch > 1 else 0], guided[b], target_probs[b],
              None if draft_probs is None else draft_probs[b], u_accept[b], float(u_sample[b]), method, args.eps,
              args.transport, greedy, result)
    for dst, src in zip(out[:5], result[:5]):
        dst.copy_(src)
