"""A minimal speculative decoder over any target and drafter that follow a small protocol.

Protocol (``cascade_lab`` implements it; ``R`` = rows = B, or 2B with CFG: conditional rows first):

* ``target.prefill(class_ids [R], max_len) -> (cache, logits [R, V], hidden [R, D])``: the class
  token is committed; ``logits`` predict the first image token; the cache holds ``max_len`` slots.
* ``target.forward_tree(cache, tokens [R, N], mask [R, N, N], position_ids [R, N])
  -> (logits [R, N, V], hidden [R, N, D])``: node i sees the committed cache and the tree nodes j
  with ``mask[r, i, j]``; their K/V stay pending.
* ``cache.commit(node_indices [R, L])`` appends the pending nodes listed (``-1`` trailing padding)
  and drops the rest; ``cache.lengths [R]`` are the committed lengths.
* ``drafter.new_cache(R, max_len)`` and ``drafter.forward_tree(cache, tokens, feats, mask, position_ids)
  -> (logits, feats)`` (EAGLE-1: the entry made of ``(feature of position p, token at p + 1)`` sits
  at drafter position p). Optional: when ``drafter.forward_tree`` takes an ``extend`` keyword, a static
  tree is drafted level by level with ``extend=True`` (the nodes of the earlier levels stay pending and
  come first, ``mask [R, n, P + n]``), so each drafted node costs one drafter forward; otherwise every
  level re-runs the drafter over all nodes drafted so far.
* ``target.null_class``: the class id of the unconditional half (CFG).

Seeds (CONTRACT §6 asks the loop to document them): sequence ``b`` has the base seed ``seed + b`` (or
``seed[b]`` when a list/tensor is given); step ``t`` (0 = the token sampled from the prefill) uses
``step_seed(base, t) = splitmix64(base + t * 0x9E3779B97F4A7C15)`` as the ``ck.verify`` seed, and
sampled drafting draws node ``i``'s token with ``philox.uniform(step_seed, DRAFT, i)``.
"""
import inspect
import math
import numbers
import time
from dataclasses import dataclass, field
from typing import List, Optional, Sequence, Union

import torch

from . import philox
from .methods import Exact
from .ops.process_logits import process_logits
from .ops.process_logits.reference import guide
from .ops.tree_buffers import tree_buffers
from .ops.tree_buffers.reference import ancestor_mask
from .ops.verify import verify
from .trees import MC_SIM_7B_63, depths, named_tree, prepare_tree, tree_from_choices

DRAFT = philox.DRAFT  # Philox stream of the drafting draws
_MASK64 = (1 << 64) - 1


def splitmix64(x: int) -> int:
    x = (x + 0x9E3779B97F4A7C15) & _MASK64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK64
    return x ^ (x >> 31)


def step_seed(base: int, step: int) -> int:
    """The int64 verify seed of one sequence at one step (see the module docstring)."""
    v = splitmix64((base + step * 0x9E3779B97F4A7C15) & _MASK64)
    return v - (1 << 64) if v >= (1 << 63) else v


@dataclass(frozen=True)
class DynamicTree:
    """EAGLE-2 dynamic tree: expand the ``top_k`` best frontier nodes by cumulative draft
    log-probability for ``depth`` levels, then keep the ``total_tokens`` best nodes."""

    total_tokens: int = 25
    depth: int = 5
    top_k: int = 4


@dataclass
class SequenceStats:
    tokens: int = 0  # image tokens generated
    accept_lengths: List[int] = field(default_factory=list)  # per verification step
    step_tvd: List[float] = field(default_factory=list)  # per verification step (the verify output's tvd)
    target_forwards: int = 0  # including the prefill
    tvd: float = 0.0  # sum of per-step tvd
    wall_time: float = 0.0  # the batch's wall time divided by B

    @property
    def alpha(self) -> float:
        """Tokens per target forward, the prefill included (the paper's acceptance length α)."""
        return self.tokens / max(1, self.target_forwards)


@dataclass
class GenerateOutput:
    tokens: torch.Tensor  # [B, num_tokens] int64
    stats: List[SequenceStats]


def _base_seeds(seed, B) -> List[int]:
    """Per-sequence base seeds: ``seed + b`` for an int, else the B given ints (each in [-2**63, 2**63))."""
    if isinstance(seed, numbers.Integral) and not isinstance(seed, bool):
        seeds = [int(seed) + b for b in range(B)]
    elif isinstance(seed, torch.Tensor) and not seed.dtype.is_floating_point and seed.dtype != torch.bool:
        seeds = [int(s) for s in seed.reshape(-1).tolist()]
    elif isinstance(seed, (list, tuple)) and all(isinstance(s, numbers.Integral) and not isinstance(s, bool)
                                                 for s in seed):
        seeds = [int(s) for s in seed]
    else:
        raise TypeError(f"seed must be an int, a list of B ints or an integer tensor [B], got {seed!r}")
    if len(seeds) != B:
        raise ValueError(f"seed must be an int or hold B={B} values, got {len(seeds)}")
    if any(not -(2**63) <= s < 2**63 for s in seeds):
        raise ValueError("seed: every seed must fit in int64 ([-2**63, 2**63)), as ck.verify requires")
    return seeds


def _seeds_at(bases, step, device):
    return torch.tensor([step_seed(b, step) for b in bases], dtype=torch.int64, device=device)


def _rows(x: torch.Tensor, cfg: bool) -> torch.Tensor:
    """Duplicate a per-sequence tensor for the unconditional half."""
    return torch.cat([x, x]) if cfg else x


class _Sampling:
    """The user's processing settings, applied to draft logits the way verify applies them."""

    def __init__(self, temperature, top_k, top_p, cfg_scale):
        self.temperature, self.top_k, self.top_p, self.cfg_scale = temperature, top_k, top_p, cfg_scale

    def guided(self, logits_rows: torch.Tensor) -> torch.Tensor:
        return guide(logits_rows, self.cfg_scale) if self.cfg_scale is not None else logits_rows.float()

    def probs(self, guided: torch.Tensor) -> torch.Tensor:
        p = process_logits(guided, self.temperature, self.top_k, self.top_p)
        return torch.nan_to_num(p, nan=0.0)


def _draw(probs: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """Inverse-CDF draws, one per row of probs [M, V] (zero-probability ids are never returned)."""
    cum = probs.double().cumsum(-1)
    idx = torch.searchsorted(cum, (u.double() * cum[:, -1]).unsqueeze(-1), right=True).squeeze(-1)
    idx = idx.clamp(max=probs.shape[-1] - 1)
    bad = probs.gather(-1, idx.unsqueeze(-1)).squeeze(-1) <= 0
    if bad.any():
        idx[bad] = probs[bad].argmax(-1)
    return idx


class _TreeDrafter:
    """Drafts one tree per sequence from the drafter's state at the root (EAGLE-1 / EAGLE-2)."""

    def __init__(self, drafter, sampling: _Sampling, tree, sampled: bool, cfg: bool, without_replacement=False):
        self.drafter, self.sampling, self.sampled, self.cfg = drafter, sampling, sampled, cfg
        self.without_replacement = without_replacement
        self.extends = "extend" in inspect.signature(drafter.forward_tree).parameters
        self.dynamic = tree if isinstance(tree, DynamicTree) else None
        if self.dynamic is None:
            choices = _choices(tree)
            self.parents = tree_from_choices(choices)
            ordered = sorted((tuple(c) for c in choices), key=lambda c: (len(c), c))
            self.rank = torch.tensor([0] + [c[-1] for c in ordered])
            # a static tree's structure is the same every step: prepare it once (per device)
            self.tree = prepare_tree(self.parents)
            self.bufs = tree_buffers(self.tree)
            self.depth = self.bufs.position_ids[0]
            self.levels = [torch.nonzero(self.depth == d).flatten() for d in range(1, int(self.depth.max()) + 1)]
            # node -> its earlier siblings (drafted before it when children are drawn without replacement)
            par = self.parents.tolist()
            self.earlier = {i: [j for j in range(1, i) if par[j] == par[i]] for i in range(1, len(par))}
            self.forest = {}  # upto -> (mask, depth) of drafted nodes 1..upto-1
            # a level's children are drawn from their parents' rows: each distinct parent's probabilities once
            self.level_parents = [torch.unique(self.parents[lv].long(), return_inverse=True) for lv in self.levels]
            self._plan_expansions(set(par[1:]))
        elif sampled:
            raise ValueError("DynamicTree drafting is deterministic (top-k expansion); use a static tree to sample")

    def _plan_expansions(self, with_children: set) -> None:
        """Per expanded level d: the nodes of level d that have children (only those need the drafter's
        features and logits: a leaf's row is never a children's distribution, and no later node attends to
        a leaf) and their mask over the pending nodes of levels 1..d, in the order they are appended."""
        anc = ancestor_mask(self.parents.unsqueeze(0))[0]  # [N, N]: j is an ancestor of i or j == i
        self.expansions, pending = [], []  # per level: (nodes, their parents, mask)
        for level in self.levels[:-1]:
            nodes = torch.tensor([i for i in level.tolist() if i in with_children], dtype=torch.int64)
            pending += nodes.tolist()
            self.expansions.append((nodes, self.parents[nodes].long(), anc[nodes][:, pending]))

    def draft(self, dcache, root_tok, root_feat, root_logits, pos0, seeds):
        """Returns tokens [B, N], parents [B, N] int32 and the guided draft logits [B, N, V] (None
        for dynamic trees; a static tree's leaves get zero rows: no children are drawn from them, and
        verification reads a node's row only for its children). ``pos0`` [B]: the target position of the root."""
        if self.dynamic is not None:
            return self._draft_dynamic(dcache, root_tok, root_feat, root_logits, pos0)
        return self._draft_static(dcache, root_tok, root_feat, root_logits, pos0, seeds)

    def _expand(self, dcache, tokens, parents, feats, pos0, upto, forest=None):
        """Drafter forward over drafted nodes 1..upto-1 (root excluded) -> (logits, feats) [R, n, *].
        ``forest``: their (ancestor mask, depth), derived from ``parents`` when not given."""
        if forest is None:
            sub = parents[:, 1:upto].to(torch.int64)
            sub = torch.where(sub >= 1, sub - 1, torch.full_like(sub, -1))  # root's children become roots
            forest = (ancestor_mask(sub), depths(parents[:, :upto])[:, 1:])
        mask, depth = forest
        par = parents[:, 1:upto].long().clamp(min=0)
        in_feats = torch.gather(feats, 1, _rows(par, self.cfg).unsqueeze(-1).expand(-1, -1, feats.shape[-1]))
        positions = _rows(pos0.unsqueeze(1) + depth - 1, self.cfg)
        return self.drafter.forward_tree(dcache, _rows(tokens[:, 1:upto], self.cfg), in_feats,
                                         _rows(mask, self.cfg), positions)

    def _expand_level(self, dcache, tokens, feats, pos0, d, B):
        """Drafter forward over the nodes of level d that have children (``_plan_expansions``) ->
        (nodes, logits [R, n, V], feats [R, n, D]); each attends to its ancestors among the nodes the
        earlier levels left pending (``extend``)."""
        nodes, node_parents, mask = self.expansions[d - 1]
        in_feats = feats[:, node_parents]
        positions = _rows((pos0 + (d - 1)).unsqueeze(1).expand(-1, len(nodes)), self.cfg)
        logits, out_feats = self.drafter.forward_tree(dcache, _rows(tokens[:, nodes], self.cfg), in_feats,
                                                      _rows(mask.expand(B, -1, -1), self.cfg), positions,
                                                      extend=d > 1)
        return nodes, logits, out_feats

    def _static_forest(self, upto, B):
        if upto not in self.forest:
            sub = self.parents[1:upto].to(torch.int64).unsqueeze(0)
            sub = torch.where(sub >= 1, sub - 1, torch.full_like(sub, -1))
            self.forest[upto] = (ancestor_mask(sub)[0], self.depth[1:upto])
        mask, depth = self.forest[upto]
        return mask.expand(B, -1, -1), depth.expand(B, -1)

    def _draft_static(self, dcache, root_tok, root_feat, root_logits, pos0, seeds):
        B = root_tok.shape[0]
        R, D = root_feat.shape
        V = root_logits.shape[-1]
        N = len(self.parents)
        dev = root_tok.device
        if int(self.rank.max()) >= V:
            raise ValueError(f"tree: a child rank of {int(self.rank.max())} needs a vocabulary of more than "
                             f"{int(self.rank.max())} tokens, got V = {V}")
        if self.tree.device != dev:  # the per-tree tensors, once per device
            self.tree = prepare_tree(self.parents, device=dev)
            self.level_parents = [(ps.to(dev), which.to(dev)) for ps, which in self.level_parents]
            self.expansions = [tuple(t.to(dev) for t in e) for e in self.expansions]
        parents = self.tree.expand(B)
        tokens = torch.zeros(B, N, dtype=torch.int64, device=dev)
        tokens[:, 0] = root_tok
        feats = root_feat.new_zeros(R, N, D)
        feats[:, 0] = root_feat
        guided = root_logits.new_zeros(B, N, V, dtype=torch.float32)
        guided[:, 0] = self.sampling.guided(root_logits)
        for d, level in enumerate(self.levels, start=1):
            level = level.to(dev)
            parents_of, which = self.level_parents[d - 1]
            p = self.sampling.probs(guided[:, parents_of])[:, which]  # [B, n, V]
            if self.sampled:
                u = philox.uniform(seeds.unsqueeze(1), DRAFT, level.unsqueeze(0))
                if not self.without_replacement:
                    tokens[:, level] = _draw(p.reshape(-1, V), u.reshape(-1)).view(B, -1)
                else:  # EAGLE-1 / LANTERN++: each child from p with its earlier siblings' tokens removed
                    for j, node in enumerate(level.tolist()):
                        pj = p[:, j].clone()
                        sibs = self.earlier[node]
                        if sibs:
                            pj.scatter_(1, tokens[:, sibs], 0.0)
                        tokens[:, node] = _draw(pj, u[:, j])
            else:
                rank = self.rank[level].to(dev)
                best = torch.topk(p, int(rank.max()) + 1, dim=-1).indices
                tokens[:, level] = best.gather(-1, rank.view(1, -1, 1).expand(B, -1, 1)).squeeze(-1)
            if d == len(self.levels):
                break
            upto = int(level[-1]) + 1
            if self.extends:
                nodes, logits, out_feats = self._expand_level(dcache, tokens, feats, pos0, d, B)
                feats[:, nodes] = out_feats
                guided[:, nodes] = self.sampling.guided(logits)
            else:
                logits, out_feats = self._expand(dcache, tokens, parents, feats, pos0, upto,
                                                 self._static_forest(upto, B))
                nodes = self.expansions[d - 1][0]  # the rows later levels read, as above
                feats[:, nodes] = out_feats[:, nodes - 1]
                guided[:, nodes] = self.sampling.guided(logits[:, nodes - 1])
        return tokens, self.tree, guided

    def tree_buffers(self, parents, pos0):
        """Tree mask and position ids of this step's trees."""
        if self.dynamic is None:
            B = pos0.shape[0]
            return self.bufs.mask[0].to(pos0.device).expand(B, -1, -1), pos0.unsqueeze(1) + self.depth.to(pos0.device)
        bufs = tree_buffers(parents, pos0)
        return bufs.mask, bufs.position_ids

    def _draft_dynamic(self, dcache, root_tok, root_feat, root_logits, pos0):
        k, depth_max, total = self.dynamic.top_k, self.dynamic.depth, self.dynamic.total_tokens
        B = root_tok.shape[0]
        R, D = root_feat.shape
        V = root_logits.shape[-1]
        n_slots = 1 + k * depth_max
        dev = root_tok.device
        tokens = torch.zeros(B, n_slots, dtype=torch.int64, device=dev)
        parents = torch.full((B, n_slots), -1, dtype=torch.int32, device=dev)
        score = torch.full((B, n_slots), -math.inf, device=dev)
        feats = root_feat.new_zeros(R, n_slots, D)
        tokens[:, 0], score[:, 0], feats[:, 0] = root_tok, 0.0, root_feat
        logp_frontier = torch.log(self.sampling.probs(self.sampling.guided(root_logits)))  # [B, V]
        frontier = torch.zeros(B, 1, dtype=torch.int64, device=dev)  # slots of the current frontier
        for d in range(1, depth_max + 1):
            cand = score.gather(1, frontier).unsqueeze(-1) + logp_frontier.view(B, frontier.shape[1], V)
            best = torch.topk(cand.view(B, -1), k, dim=-1)
            slots = torch.arange(1 + (d - 1) * k, 1 + d * k, device=dev).expand(B, k)
            tokens.scatter_(1, slots, best.indices % V)
            parents.scatter_(1, slots, frontier.gather(1, best.indices // V).to(torch.int32))
            score.scatter_(1, slots, best.values)
            if d == depth_max:
                break
            logits, out_feats = self._expand(dcache, tokens, parents, feats, pos0, 1 + d * k)
            feats[:, slots[0]] = out_feats[:, slots[0] - 1]
            guided = self.sampling.guided(logits[:, slots[0] - 1].reshape(-1, V)).view(B, k, V)
            logp_frontier = torch.log(self.sampling.probs(guided))
            frontier = slots
        return _select_best(tokens, parents, score, total)


def _choices(tree):
    """A static tree argument (None, a name, a choice list) as its choice list."""
    if tree is None:
        return MC_SIM_7B_63
    if isinstance(tree, str):
        return named_tree(tree)
    if not isinstance(tree, (list, tuple)) or not tree:
        raise ValueError(f"tree must be a tree name, a non-empty choice list or a ck.DynamicTree, got {tree!r}")
    return tree


def _max_depth(tree) -> int:
    if isinstance(tree, DynamicTree):
        return tree.depth
    return max(len(c) for c in _choices(tree))


def _select_best(tokens, parents, score, total):
    """Keep the root and the ``total`` best-scoring drafted nodes per sequence as a compact tree
    (topological, children in decreasing score); pad sequences with -1 nodes."""
    B, S = tokens.shape
    level = depths(parents)
    order_key = score - 1e-6 * level  # a parent outranks its children, ties included
    order_key[:, 0] = math.inf
    keep = torch.topk(order_key, min(total + 1, S), dim=-1).indices  # root first
    N = keep.shape[1]
    out_tok = torch.zeros(B, N, dtype=torch.int64, device=tokens.device)
    out_par = torch.full((B, N), -1, dtype=torch.int32, device=tokens.device)
    for b in range(B):
        slots = [s for s in keep[b].tolist() if score[b, s] > -math.inf]
        par, sc, lv = parents[b].tolist(), score[b].tolist(), level[b].tolist()
        assert all(par[s] in slots for s in slots if s), "dynamic tree selection lost an ancestor"
        ordered = sorted(slots, key=lambda s: (lv[s], -sc[s], s))  # topological, rank order within a parent
        new = {s: i for i, s in enumerate(ordered)}
        for s, i in new.items():
            out_tok[b, i] = tokens[b, s]
            out_par[b, i] = -1 if s == 0 else new[par[s]]
    return out_tok, out_par, None


def generate(target, class_ids: torch.Tensor, *, drafter=None, num_tokens: int = 256,
             method=Exact(), tree: Union[str, Sequence, DynamicTree, None] = "eagle", sampled_drafting=False,
             cfg_scale: Optional[float] = None, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0,
             residual: str = "transport", eps: Optional[float] = None, seed=0, backend: str = "auto",
             progress: bool = False, draft_sampling: str = "iid") -> GenerateOutput:
    """Generate ``num_tokens`` image tokens per class id: speculative when a ``drafter`` is given,
    plain AR decoding otherwise (the baseline). Returns the tokens and per-sequence statistics.

    ``draft_sampling`` (with ``sampled_drafting=True``): ``"iid"`` draws every child of a node
    independently from its drafter row; ``"without_replacement"`` draws them in rank order, each from
    the row with the earlier siblings' tokens removed (EAGLE-1, LANTERN++), and verifies with the matching
    residual (reference backend this round; ``backend="auto"`` routes there)."""
    if draft_sampling not in ("iid", "without_replacement"):
        raise ValueError(f"draft_sampling must be 'iid' or 'without_replacement', got {draft_sampling!r}")
    if draft_sampling == "without_replacement" and not sampled_drafting:
        raise ValueError("draft_sampling='without_replacement' needs sampled_drafting=True")
    if not isinstance(class_ids, torch.Tensor) or class_ids.dim() != 1 or class_ids.dtype.is_floating_point \
            or class_ids.dtype == torch.bool or class_ids.numel() == 0:
        raise ValueError("class_ids must be a non-empty 1-D integer tensor [B]")
    num_classes = getattr(target, "null_class", None)  # ids 0 .. num_classes-1; num_classes = the null class
    if num_classes is not None and bool(((class_ids < 0) | (class_ids >= num_classes)).any()):
        raise ValueError(f"class_ids must lie in [0, num_classes={num_classes}), got {class_ids.tolist()}")
    if not (isinstance(num_tokens, int) and num_tokens >= 1):
        raise ValueError(f"num_tokens must be a positive int, got {num_tokens!r}")
    if drafter is not None and not isinstance(tree, DynamicTree):
        _choices(tree)  # an unknown tree name or an empty list fails before any work
    B, dev = class_ids.shape[0], class_ids.device
    cfg = cfg_scale is not None
    rows = torch.cat([class_ids, torch.full_like(class_ids, target.null_class)]) if cfg else class_ids
    bases = _base_seeds(seed, B)
    sampling = _Sampling(temperature, top_k, top_p, cfg_scale)
    vkw = dict(residual=residual, eps=eps, temperature=temperature, top_k=top_k, top_p=top_p, cfg_scale=cfg_scale,
               backend=backend, draft_sampling=draft_sampling)
    stats = [SequenceStats() for _ in range(B)]
    out = torch.full((B, num_tokens), -1, dtype=torch.int64, device=dev)
    count = torch.zeros(B, dtype=torch.int64, device=dev)
    bar = _progress(num_tokens * B, progress)
    t0 = time.perf_counter()

    max_len = num_tokens + 2 + (0 if drafter is None else _max_depth(tree))
    tcache, logits0, hidden0 = target.prefill(rows, max_len)
    for s in stats:
        s.target_forwards += 1
    single = prepare_tree(torch.tensor([-1], dtype=torch.int32), device=dev)  # the root alone
    first = verify(torch.zeros(B, 1, dtype=torch.int64, device=dev), single, logits0.unsqueeze(1),
                   seed=_seeds_at(bases, 0, dev), **vkw)
    root = first.next_token
    _append(out, count, root.unsqueeze(1), torch.zeros(B, dtype=torch.int64, device=dev), bar)
    step = 1
    if drafter is None:
        while bool((count < num_tokens).any()):
            pos = tcache.lengths.unsqueeze(1)
            ones = torch.ones(len(rows), 1, 1, dtype=torch.bool, device=dev)
            logits, _ = target.forward_tree(tcache, _rows(root.unsqueeze(1), cfg), ones, pos)
            tcache.commit(torch.zeros(len(rows), 1, dtype=torch.int64, device=dev))
            res = verify(torch.zeros(B, 1, dtype=torch.int64, device=dev), single, logits, seed=_seeds_at(bases, step, dev),
                         **vkw)
            active = count < num_tokens
            for b in torch.nonzero(active).flatten().tolist():
                stats[b].target_forwards += 1
                stats[b].accept_lengths.append(0)
                stats[b].step_tvd.append(0.0)
            root = res.next_token
            _append(out, count, root.unsqueeze(1), torch.zeros(B, dtype=torch.int64, device=dev), bar)
            step += 1
    else:
        drafting = _TreeDrafter(drafter, sampling, tree, sampled_drafting, cfg,
                                without_replacement=draft_sampling == "without_replacement")
        dcache = drafter.new_cache(len(rows), max_len)
        # drafter entry (feature of the class position, first image token) at drafter position 0
        root_logits, root_feat = _catch_up(drafter, dcache, root.unsqueeze(1), hidden0.unsqueeze(1),
                                           torch.zeros(B, dtype=torch.int64, device=dev), cfg)
        while bool((count < num_tokens).any()):
            seeds = _seeds_at(bases, step, dev)
            pos0 = tcache.lengths[:B]
            tokens, parents, guided = drafting.draft(dcache, root, root_feat, root_logits, pos0, seeds)
            mask, position_ids = drafting.tree_buffers(parents, pos0)
            logits, hidden = target.forward_tree(tcache, _rows(tokens, cfg), _rows(mask, cfg), _rows(position_ids, cfg))
            res = verify(tokens, parents, logits, method=method, hidden=hidden[:B],
                         draft_logits=guided if sampled_drafting else None, seed=seeds, **vkw)
            active = count < num_tokens
            nodes = res.accepted_nodes.long()
            nodes = torch.where(active.unsqueeze(1), nodes, torch.full_like(nodes, -1))
            tcache.commit(_rows(nodes, cfg))
            for b in torch.nonzero(active).flatten().tolist():
                stats[b].target_forwards += 1
                stats[b].accept_lengths.append(int(res.accept_len[b]))
                stats[b].step_tvd.append(float(res.tvd[b]))
                stats[b].tvd += stats[b].step_tvd[-1]
            n_acc = res.accept_len.long()
            path_tokens = torch.gather(tokens, 1, nodes.clamp(min=0))[:, 1:]  # accepted draft tokens
            emitted = torch.cat([path_tokens, torch.zeros(B, 1, dtype=torch.int64, device=dev)], 1)
            emitted.scatter_(1, n_acc.unsqueeze(1), res.next_token.unsqueeze(1))
            _append(out, count, emitted, torch.where(active, n_acc + 1, 0) - 1, bar, active)
            # drafter catch-up over (H[root], a_1), ..., (H[a_k], next) at positions pos0 .. pos0 + k
            path_feats = torch.gather(hidden, 1, _rows(nodes.clamp(min=0), cfg).unsqueeze(-1).expand(-1, -1, hidden.shape[-1]))
            lengths = torch.where(active, n_acc + 1, 0)
            root_logits, root_feat = _catch_up(drafter, dcache, emitted, path_feats, pos0, cfg, lengths)
            root = res.next_token
            step += 1
    _finish(stats, bar, t0, num_tokens)
    return GenerateOutput(out, stats)


def _catch_up(drafter, dcache, tokens, feats, pos0, cfg, lengths=None):
    """Commit the drafter entries (feats[:, j], tokens[:, j]) at positions pos0 + j (j < lengths)
    and return the drafter's logits/feature after the last one (they draft the next tree). ``tokens`` [B, n]
    ids or [B, n, D] continuous tokens (``decode_continuous``: a mixture where the logits are)."""
    B, n = tokens.shape[:2]
    if lengths is None:
        lengths = torch.full((B,), n, dtype=torch.int64, device=tokens.device)
    mask = torch.ones(n, n, dtype=torch.bool, device=tokens.device).tril().expand(B, n, n)
    pos = pos0.unsqueeze(1) + torch.arange(n, device=tokens.device)
    logits, out_feats = drafter.forward_tree(dcache, _rows(tokens, cfg), feats[:, :n], _rows(mask, cfg), _rows(pos, cfg))
    idx = torch.arange(n, device=tokens.device).unsqueeze(0)
    commit = torch.where(idx < lengths.unsqueeze(1), idx, torch.full_like(idx, -1))
    dcache.commit(_rows(commit, cfg))
    last = _rows((lengths - 1).clamp(min=0), cfg)
    r = torch.arange(last.shape[0], device=tokens.device)
    return logits[r, last], out_feats[r, last]


def _append(out, count, emitted, last_index, bar, active=None):
    """Write emitted[b, :last_index[b] + 1] after the tokens sequence b already has (truncating).
    ``out`` [B, total] token ids or [B, total, D] continuous tokens."""
    B, total = out.shape[:2]
    for b in range(B):
        if active is not None and not bool(active[b]):
            continue
        n = min(int(last_index[b]) + 1, total - int(count[b]))
        if n <= 0:
            continue
        out[b, count[b]: count[b] + n] = emitted[b, :n]
        count[b] += n
        if bar is not None:
            bar.update(n)


def _finish(stats: List[SequenceStats], bar, t0: float, num_tokens: int) -> None:
    """End of a decode: close the progress bar; each sequence gets the batch's wall time / B and its tokens."""
    wall = time.perf_counter() - t0
    if bar is not None:
        bar.close()
    for s in stats:
        s.wall_time = wall / len(stats)
        s.tokens = num_tokens


def _progress(total, enabled):
    if not enabled:
        return None
    try:
        from tqdm import tqdm
    except ImportError:  # pragma: no cover
        return None
    return tqdm(total=total, unit="tok", desc="decode", leave=False)
