"""Test-side oracle: the exact output distribution of the verification walk, by enumeration.

An independent float64 re-statement of CONTRACT §3-4 (docs/CONTRACT.md) for tiny trees (V <= 8): every
accept/reject branch is followed with its probability, so the distribution of (last accepted node,
next token) and the expected ``tvd`` are exact. The reference is then χ²-tested against it.
"""
import math
from typing import Dict, List, Tuple

import numpy as np


def children_of(parents: List[int]) -> List[List[int]]:
    kids = [[] for _ in parents]
    for i, par in enumerate(parents):
        if i > 0 and par >= 0:
            kids[par].append(i)
    return kids


def depth_of(parents: List[int]) -> List[int]:
    d = [0] * len(parents)
    for i, par in enumerate(parents):
        if i > 0 and par >= 0:
            d[i] = d[par] + 1
    return d


def longest_prefix(tokens, q, cap):
    """The longest prefix of ``tokens`` whose mass under q stays <= cap, and that mass."""
    absorbed, mass = [], 0.0
    for t in tokens:
        if mass + q[t] > cap:
            break
        absorbed.append(t)
        mass += q[t]
    return absorbed, mass


def gsd_peer_group(method, q, x):
    """GSD's released group (jacobi_iteration_lumina_mgpt.py ~L305-335), restated: the ranks [c-7, c+7) of
    q in ascending order (ties by id, clipped at 0) around x's rank c, kept by |dq| < dp and squared
    embedding distance < embed_d2; x included."""
    order = sorted(range(len(q)), key=lambda y: (q[y], y))
    c = order.index(x)
    emb = method.embeddings.double().numpy()
    group = []
    for y in order[max(c - method.window, 0): c + method.window]:
        if abs(q[y] - q[x]) < method.dp and float(((emb[y] - emb[x]) ** 2).sum()) < method.embed_d2:
            group.append(y)
    return group


def relax(method, q, x, child, tvd, eps, tokens, depth, inter, conv, residual="transport"):
    """(absorbed token ids, r(x), charge, cool scale or None) in float64 (``relax_full`` adds the GSD group)."""
    return relax_full(method, q, x, child, tvd, eps, tokens, depth, inter, conv, residual)[:4]


def relax_full(method, q, x, child, tvd, eps, tokens, depth, inter, conv, residual="transport"):
    """relax() plus the tokens whose drafter mass is the acceptance denominator (None: x alone)."""
    name = method.name
    qx = q[x]
    left = eps - tvd
    if name == "exact":
        return [], qx, 0.0, None, None
    if name == "cool":
        w = max(method.w_min, method.delta * math.exp(-method.nu * (depth[child] - 1) - method.mu))
        r = min(1.0, w * qx, qx + left)
        charge = r - qx if r >= qx else (qx - r if residual == "standard" else 0.0)
        return [], r, charge, w, None
    if name == "lantern":
        nb = [int(t) for t in method.neighbors[x, : method.n_neighbors].tolist() if t >= 0]
        cap = min(method.delta if method.lam is None else (method.lam - 1.0) * qx, left)
        absorbed, mass = longest_prefix(nb, q, cap)
        return absorbed, qx + mass, mass, None, None
    if name == "gsd" and method.group == "peer":
        group = gsd_peer_group(method, q, x)
        live = sorted((y for y in group if y != x and q[y] > 0), key=lambda y: (abs(q[y] - qx), y))
        absorbed, mass = longest_prefix(live, q, left)
        dead = [y for y in group if y != x and q[y] <= 0]
        return absorbed, qx + mass, mass, None, [x] + absorbed + dead
    if name == "gsd":
        cand = [y for y in range(len(q)) if y != x and q[y] > 0 and abs(q[y] - qx) < method.dp]
        cand.sort(key=lambda y: (abs(q[y] - qx), y))
        absorbed, mass = longest_prefix(cand[: method.G], q, left)
        return absorbed, qx + mass, mass, None, None
    if name == "cascade":
        absorbed, charge = [], 0.0
        blocks = []
        if method.use_interchange:
            blocks.append(inter[child])
        if method.use_convergence:
            blocks.append(conv[child])
        for members in blocks:
            toks = sorted({int(tokens[j]) for j in np.flatnonzero(members) if tokens[j] >= 0})
            toks = [t for t in toks if t != x and q[t] > 0 and t not in absorbed]
            mass = sum(q[t] for t in toks)
            if tvd + charge + mass <= eps:
                absorbed += toks
                charge += mass
        return absorbed, qx + charge, charge, None, None
    raise ValueError(name)


def residual_after_reject(method, q, p, x, absorbed, r, w, residual, sampled):
    """The unnormalized residual after rejecting x (float64), for every ``residual`` option.

    "peer": LANTERN's released code zeroes x's first k + 1 neighbours (in the residual when drafting is
    deterministic, in the subtracted drafter row when sampled) once any neighbour was absorbed; COOL
    uses its paper's G*; the other methods the standard residual."""
    name = method.name if method is not None else "exact"
    if w is not None and (residual != "standard" or w >= 1.0):  # COOL's G*
        if not sampled:
            q = q.copy()
            q[x] = max(q[x] - r, 0.0)
            return q
        f = np.where(p > 0, np.minimum(1.0, w * q / np.where(p > 0, p, 1)), 1.0)
        return np.maximum(q - p * f, 0)
    if residual == "peer":
        zero = []
        if name == "lantern" and absorbed:
            k1 = min(method.neighbors.shape[1], method.n_neighbors + 1)
            zero = [int(t) for t in method.neighbors[x, :k1].tolist() if t >= 0]
        if not sampled:
            q = q.copy()
            q[x] = 0
            q[zero] = 0
            return q
        p = p.copy()
        p[zero] = 0
        return np.maximum(q - p, 0)
    transport = residual == "transport"
    if not sampled:
        q = q.copy()
        q[x] = 0
        if transport:
            q[absorbed] = 0
        return q
    q2 = q.copy()
    if transport:
        q2[x] = r
        q2[absorbed] = 0
    return np.maximum(q2 - p, 0)


def walk_distribution(parents, tokens, q_rows, p_rows=None, method=None, eps=math.inf, transport=True,
                      inter=None, conv=None, residual=None,
                      without_replacement=False) -> Tuple[Dict[Tuple[int, int], float], float]:
    """{(last accepted node, next_token): probability}, E[tvd] for one tree (no NaN rows).

    ``residual`` ("transport" / "standard" / "peer") overrides ``transport``; ``without_replacement``:
    the i-th child was drawn from the drafter row with the earlier siblings removed (renormalised)."""
    if residual is None:
        residual = "transport" if transport else "standard"
    kids = children_of(list(parents))
    depth = depth_of(list(parents))
    V = q_rows.shape[1]
    dist: Dict[Tuple[int, int], float] = {}
    expected_tvd = [0.0]

    def emit(node, weights, prob, tvd):
        w = weights / weights.sum()
        for y in range(V):
            if w[y] > 0:
                dist[(node, y)] = dist.get((node, y), 0.0) + prob * w[y]
        expected_tvd[0] += prob * tvd

    def visit(u, prob, tvd):
        q_u = q_rows[u].astype(np.float64)
        children = [c for c in kids[u] if tokens[c] >= 0]
        if not children:
            emit(u, q_u, prob, tvd)
            return
        sampled = p_rows is not None
        p = None if not sampled else p_rows[u].astype(np.float64)
        q = q_u / q_u.sum()
        reach, seen = prob, set()
        for c in children:
            x = int(tokens[c])
            if not sampled:
                if x in seen:
                    continue
                seen.add(x)
            elif without_replacement and not p[x] > 0:
                continue
            absorbed, r, charge, w, group = relax_full(method, q, x, c, tvd, eps, tokens, depth, inter, conv,
                                                       residual)
            tvd = tvd + charge
            if sampled:
                den = p[x] if group is None else p[group].sum()
                a = 1.0 if den == 0 else min(1.0, r / den)
            else:
                a = r
            if a > 0:
                visit(c, reach * a, tvd)
            reach *= 1.0 - a
            if reach <= 1e-300:
                return
            q = residual_after_reject(method, q, p, x, absorbed, r, w, residual, sampled)
            if sampled and without_replacement:
                p = p.copy()
                p[x] = 0
                p = p / p.sum() if p.sum() > 0 else p
            total = q.sum()
            assert total > 1e-12, "oracle cases must not empty the residual"
            q = q / total
        emit(u, q, reach, tvd)

    visit(0, 1.0, 0.0)
    return dist, expected_tvd[0]


def chi2_against(counts: np.ndarray, probs: np.ndarray, min_expected: float = 5.0):
    """Pearson χ² of ``counts`` against ``probs`` (bins with expected < min_expected merged).

    Returns (stat, df, bound) with the issue's acceptance bound ``df + 10 sqrt(2 df)``. A count in a
    bin of probability zero makes the statistic infinite.
    """
    n = counts.sum()
    expected = probs * n
    if np.any((probs <= 0) & (counts > 0)):
        return math.inf, 1, 1.0
    big = expected >= min_expected
    obs = list(counts[big])
    exp = list(expected[big])
    if (~big).any() and expected[~big].sum() > 0:
        obs.append(counts[~big].sum())
        exp.append(expected[~big].sum())
    obs, exp = np.array(obs, dtype=np.float64), np.array(exp, dtype=np.float64)
    stat = float(((obs - exp) ** 2 / exp).sum())
    df = max(1, len(obs) - 1)
    return stat, df, df + 10.0 * math.sqrt(2.0 * df)


def outcome_probs(dist: Dict[Tuple[int, int], float], N: int, V: int) -> np.ndarray:
    probs = np.zeros(N * V)
    for (node, y), pr in dist.items():
        probs[node * V + y] += pr
    return probs


def tvd_first_token(dist, parents, tokens, q_root: np.ndarray) -> float:
    """TVD between the step's first emitted token and q_root (root's distribution)."""
    V = len(q_root)
    first = np.zeros(V)
    kids = children_of(list(parents))
    root_children = set(kids[0])
    for (node, y), pr in dist.items():
        if node == 0:
            first[y] += pr
        else:
            # the first emitted token is the token of the accepted depth-1 ancestor
            anc = node
            while anc not in root_children:
                anc = parents[anc]
            first[int(tokens[anc])] += pr
    return 0.5 * float(np.abs(first - q_root / q_root.sum()).sum())

