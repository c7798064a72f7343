"""Deterministic tests of the reference backend: hand-built cases with known outputs, edge cases,
eps=0 / empty-set equivalence with Exact, batch == per-sequence, trees and buffers."""
import numpy as np
import pytest
import torch

import cascade_kernels as ck
from cascade_kernels import philox
from cascade_kernels.ops.verify.reference import sample_inverse_cdf

NEG = -30.0


def one_hot_logits(B, N, V, hot):
    """[B, N, V] logits whose row n puts (almost) all mass on token hot[n]."""
    logits = torch.full((B, N, V), NEG)
    for n, t in enumerate(hot):
        logits[:, n, t] = 10.0
    return logits


def run(tokens, parents, logits, **kw):
    kw.setdefault("backend", "reference")
    return ck.verify(tokens, parents, logits, **kw)


# ---- hand-built cases --------------------------------------------------------------------------
def test_one_hot_chain_accepts_everything_and_emits_bonus():
    parents = torch.tensor([[-1, 0, 1, 2]], dtype=torch.int32)
    tokens = torch.tensor([[7, 3, 4, 5]])
    out = run(tokens, parents, one_hot_logits(1, 4, 8, [3, 4, 5, 6]), seed=5)
    assert out.accept_len.tolist() == [3]
    assert out.accepted_nodes.tolist() == [[0, 1, 2, 3]]
    assert out.next_token.tolist() == [6]
    assert out.tvd.tolist() == [0.0] and out.status.tolist() == [0]


def test_one_hot_rejects_wrong_child_and_corrects():
    # root wants token 2; children propose 1 then 2: first rejected, second accepted, then bonus 7
    parents = torch.tensor([[-1, 0, 0, 2]], dtype=torch.int32)
    tokens = torch.tensor([[0, 1, 2, 5]])
    out = run(tokens, parents, one_hot_logits(1, 4, 8, [2, 0, 5, 7]))
    assert out.accepted_nodes.tolist() == [[0, 2, 3]]
    assert out.next_token.tolist() == [7]
    # nothing right: correction token is the target's choice
    out = run(torch.tensor([[0, 1, 3, 5]]), parents, one_hot_logits(1, 4, 8, [2, 0, 5, 7]))
    assert out.accept_len.tolist() == [0] and out.next_token.tolist() == [2]


def test_greedy_mode_and_ties_go_to_candidate():
    parents = torch.tensor([[-1, 0, 0]], dtype=torch.int32)
    logits = torch.zeros(1, 3, 4)
    logits[0, 0] = torch.tensor([1.0, 1.0, 0.0, -1.0])  # tie between tokens 0 and 1
    out = run(torch.tensor([[0, 1, 0]]), parents, logits, temperature=0)
    assert out.accepted_nodes.tolist() == [[0, 1]]  # token 1 ties with 0: the candidate wins
    out = run(torch.tensor([[0, 2, 3]]), parents, logits, temperature=0)
    assert out.accept_len.tolist() == [0] and out.next_token.tolist() == [0]  # lowest index on ties


def test_greedy_relaxation_can_flip_the_argmax():
    # q = [0.4, 0.35, 0.25]: candidate 1 absorbs token 2 (LANTERN neighbour) and wins 0.6 vs 0.4
    q = torch.tensor([0.4, 0.35, 0.25])
    logits = torch.log(q).expand(1, 2, 3).clone()
    nb = torch.tensor([[1], [2], [1]])
    out = run(torch.tensor([[0, 1]]), torch.tensor([[-1, 0]], dtype=torch.int32), logits, temperature=0,
              method=ck.Lantern(nb, delta=0.3))
    assert out.accept_len.tolist() == [1]
    assert abs(float(out.tvd[0]) - 0.25) < 1e-6
    out = run(torch.tensor([[0, 1]]), torch.tensor([[-1, 0]], dtype=torch.int32), logits, temperature=0)
    assert out.accept_len.tolist() == [0] and out.next_token.tolist() == [0]


def test_cascade_sets_hand_example():
    # root -> children 1, 2 (similar states), child 1 -> grandchild 3 (similar), grandchild 4 (orthogonal)
    parents = torch.tensor([[-1, 0, 0, 1, 1]], dtype=torch.int32)
    hidden = torch.tensor([[[1.0, 0, 0], [1, 0.1, 0], [1, -0.1, 0], [1, 0.2, 0], [0, 0, 1]]])
    sets = ck.similarity_sets(parents, hidden, tau_pos=0.9, tau_seq=0.9)
    assert sets.interchange[0].nonzero().tolist() == [[1, 2], [2, 1]]
    assert sets.convergence[0].nonzero().tolist() == [[0, 1], [0, 2], [1, 3]]  # the root converges too
    assert sets.interchange_packed[0, :, 0].tolist() == [0, 4, 2, 0, 0]
    assert ck.types.unpack_bits(sets.convergence_packed, 5).equal(sets.convergence)


def test_cascade_budget_all_or_nothing():
    # q = [0.5, 0.3, 0.2]; candidate token 0 (child 1); sibling 2 proposes token 1 (mass 0.3),
    # grandchild 3 proposes token 2 (mass 0.2). eps = 0.35: interchange (0.3) fits, convergence does not.
    parents = torch.tensor([[-1, 0, 0, 1]], dtype=torch.int32)
    logits = torch.log(torch.tensor([0.5, 0.3, 0.2])).expand(1, 4, 3).clone()
    hidden = torch.ones(1, 4, 2)
    tokens = torch.tensor([[0, 0, 1, 2]])
    for eps, charge in ((0.35, 0.3), (0.55, 0.5), (0.25, 0.2), (0.15, 0.0)):
        out = run(tokens, parents, logits, method=ck.Cascade(tau_pos=0.5, tau_seq=0.5, eps=eps), hidden=hidden,
                  temperature=0)
        assert abs(float(out.tvd[0]) - charge) < 1e-6, (eps, out.tvd)
        assert out.accept_len.tolist()[0] >= 1  # token 0 is the argmax anyway


# ---- edge cases --------------------------------------------------------------------------------
def test_empty_residual_falls_back_to_argmax():
    # sampled drafting with q == p (top-k 2); the drawn token 3 has p = q = 0: rejected, residual empty
    logits = torch.tensor([2.0, 1.0, 0.0, -1.0]).expand(1, 2, 4).clone()
    out = run(torch.tensor([[0, 3]]), torch.tensor([[-1, 0]], dtype=torch.int32), logits, draft_logits=logits.clone(),
              top_k=2)
    assert out.status.tolist() == [ck.STATUS_EMPTY_RESIDUAL]
    assert out.next_token.tolist() == [0] and out.accept_len.tolist() == [0]


def test_nonfinite_rows():
    parents = torch.tensor([[-1, 0, 1], [-1, 0, 1]], dtype=torch.int32)
    tokens = torch.tensor([[0, 3, 4], [0, 3, 4]])
    logits = one_hot_logits(2, 3, 8, [3, 4, 6])
    logits[0, 1, 2] = float("nan")  # the accepted child's row: walk stops there
    logits[1, 2] = float("nan")  # a leaf row reached by acceptance, every logit NaN
    out = run(tokens, parents, logits)
    assert out.status.tolist() == [ck.STATUS_NONFINITE_TARGET] * 2
    assert out.accepted_nodes.tolist() == [[0, 1, -1], [0, 1, 2]]
    assert out.next_token.tolist() == [4, 0]  # argmax ignoring NaN; nothing finite -> 0
    draft = torch.zeros(2, 3, 8)
    draft[0, 0, 1] = float("inf")
    out = run(tokens, parents, one_hot_logits(2, 3, 8, [3, 4, 6]), draft_logits=draft)
    assert out.status.tolist() == [ck.STATUS_NONFINITE_DRAFT, 0]
    assert out.next_token.tolist()[0] == 3 and out.accept_len.tolist() == [0, 2]


@pytest.mark.parametrize("sampled", [False, True], ids=["det", "sampled"])
def test_zero_probability_draft_never_accepted(sampled):
    # token 3 is outside the target's top-2: q(3) = 0, so U (even U = 0) never accepts it
    B = 20_000
    logits = torch.tensor([2.0, 1.0, 0.5, -1.0]).expand(B, 2, 4).clone()
    draft = torch.zeros(B, 2, 4) if sampled else None
    out = run(torch.tensor([[0, 3]]).expand(B, 2), torch.tensor([[-1, 0]], dtype=torch.int32).expand(B, 2), logits,
              draft_logits=draft, top_k=2, seed=torch.arange(B))
    assert int(out.accept_len.sum()) == 0
    assert set(out.next_token.tolist()) <= {0, 1}
    u = philox.uniform(torch.arange(B), philox.ACCEPT, torch.ones(B, dtype=torch.int64))
    assert float(u.min()) < 1e-3  # the seeds include near-zero uniforms


def test_inverse_cdf_edges():
    w = torch.tensor([0.0, 0.0, 0.5, 0.0, 0.5, 0.0])
    assert sample_inverse_cdf(w, 2.0**-32) == 2
    assert sample_inverse_cdf(w, 0.49) == 2 and sample_inverse_cdf(w, 0.51) == 4
    assert sample_inverse_cdf(w, 0.99999994) == 4  # never the trailing zero-weight ids
    assert sample_inverse_cdf(torch.tensor([3.0]), 0.7) == 0


def test_padding_and_minus_one_children_ignored():
    # node 2 is padding, node 3 a real child with token -1 (skipped), node 4 real
    parents = torch.tensor([[-1, 0, -1, 0, 0]], dtype=torch.int32)
    tokens = torch.tensor([[0, 1, 7, -1, 5]])
    out = run(tokens, parents, one_hot_logits(1, 5, 8, [5, 0, 0, 0, 6]))
    assert out.accepted_nodes.tolist() == [[0, 4]] and out.next_token.tolist() == [6]


def test_same_seed_same_output_different_seed_differs():
    g = torch.Generator().manual_seed(3)
    parents = ck.tree_from_choices(ck.MC_SIM_7B_63).expand(16, -1).contiguous()
    tokens = torch.randint(0, 50, parents.shape, generator=g)
    logits = torch.randn(16, parents.shape[1], 50, generator=g)
    a = run(tokens, parents, logits, seed=11)
    b = run(tokens, parents, logits, seed=torch.full((16,), 11))
    c = run(tokens, parents, logits, seed=12)
    assert all(torch.equal(x, y) for x, y in zip(a[:5], b[:5]))
    assert not torch.equal(a.next_token, c.next_token)


# ---- eps = 0 and empty sets reproduce Exact; batch == per-sequence --------------------------------
def random_batch(seed, B=6, V=23, D=5, cfg=False):
    g = torch.Generator().manual_seed(seed)
    trees = [ck.tree_from_choices(ck.MC_SIM_7B_63), ck.tree_from_choices([[0], [1], [0, 0], [0, 0, 0]]),
             ck.tree_from_choices([[0], [1], [2], [3], [4], [0, 0], [1, 0]])]
    N = max(len(t) for t in trees)
    parents = torch.full((B, N), -1, dtype=torch.int32)
    for b in range(B):
        t = trees[b % len(trees)]
        parents[b, : len(t)] = t
    tokens = torch.randint(0, V, (B, N), generator=g)
    tokens[parents < 0] = -1
    tokens[:, 0] = 0
    logits = torch.randn((2 if cfg else 1) * B, N, V, generator=g) * 2
    draft = torch.randn(B, N, V, generator=g) * 2
    hidden = torch.randn(B, N, D, generator=g)
    nb = ck.lantern_neighbors(torch.randn(V, 3, generator=g), 6)
    return tokens, parents, logits, draft, hidden, nb


def methods_for(nb):
    return [ck.Lantern(nb, delta=0.3), ck.Lantern(nb, lam=3.0), ck.GSD(), ck.Cool(),
            ck.Cascade(tau_pos=-1.0, tau_seq=-1.0)]


def assert_same_decisions(a, b):
    for name in ("accept_len", "accepted_nodes", "next_token", "status"):
        assert torch.equal(getattr(a, name), getattr(b, name)), name


MODES = [pytest.param(s, r, t, id=f"{'sampled' if s else 'det'}-{r}-T{t}")
         for s in (False, True) for r in ("transport", "standard") for t in (1.0, 0.0)]


@pytest.mark.parametrize("sampled, residual, temperature", MODES)
def test_eps_zero_reproduces_exact(sampled, residual, temperature):
    tokens, parents, logits, draft, hidden, nb = random_batch(1, cfg=True)
    kw = dict(draft_logits=draft if sampled else None, residual=residual, temperature=temperature, cfg_scale=1.5,
              seed=torch.arange(6), hidden=hidden)
    exact = run(tokens, parents, logits, **kw)
    for m in methods_for(nb):
        relaxed = run(tokens, parents, logits, method=m, eps=0.0, **kw)
        assert_same_decisions(relaxed, exact)
        assert float(relaxed.tvd.abs().max()) == 0.0


@pytest.mark.parametrize("sampled, residual, temperature", MODES)
def test_empty_sets_reproduce_exact(sampled, residual, temperature):
    tokens, parents, logits, draft, hidden, nb = random_batch(2)
    kw = dict(draft_logits=draft if sampled else None, residual=residual, temperature=temperature, hidden=hidden,
              seed=torch.arange(6), top_k=15)
    exact = run(tokens, parents, logits, **kw)
    empty = [ck.Lantern(nb, k=0), ck.Lantern(nb, delta=0.0), ck.GSD(G=0), ck.GSD(dp=0.0), ck.Cool(delta=1.0),
             ck.Cascade(tau_pos=1.01, tau_seq=1.01), ck.Cascade(use_interchange=False, use_convergence=False)]
    for m in empty:
        assert_same_decisions(run(tokens, parents, logits, method=m, **kw), exact)


@pytest.mark.parametrize("sampled", [False, True], ids=["det", "sampled"])
def test_batch_equals_per_sequence(sampled):
    tokens, parents, logits, draft, hidden, nb = random_batch(3, cfg=True)
    seeds = torch.tensor([5, 6, 7, 8, 9, 10])
    for m in [ck.Exact()] + methods_for(nb):
        batch = run(tokens, parents, logits, method=m, hidden=hidden, draft_logits=draft if sampled else None,
                    cfg_scale=2.0, seed=seeds)
        for b in range(6):
            single = run(tokens[b:b + 1], parents[b:b + 1], logits[[b, b + 6]], method=m, hidden=hidden[b:b + 1],
                         draft_logits=draft[b:b + 1] if sampled else None, cfg_scale=2.0, seed=int(seeds[b]))
            L = single.accepted_nodes.shape[1]
            assert torch.equal(batch.accepted_nodes[b, :L], single.accepted_nodes[0])
            assert (batch.accepted_nodes[b, L:] == -1).all()
            for name in ("accept_len", "next_token", "tvd", "status"):
                assert torch.equal(getattr(batch, name)[b], getattr(single, name)[0]), (m.name, name)


# ---- trees and buffers -------------------------------------------------------------------------
def test_eagle_and_deep_trees():
    p = ck.tree_from_choices(ck.MC_SIM_7B_63)
    assert len(p) == 26 and p[:5].tolist() == [-1, 0, 0, 0, 0]
    assert int(ck.trees.depths(p[None]).max()) == 5
    d = ck.tree_from_choices(ck.DEEP_CHOICES)
    assert len(d) == 60 and int(ck.trees.depths(d[None]).max()) == 7


@pytest.mark.parametrize("choices", [ck.MC_SIM_7B_63, ck.DEEP_CHOICES], ids=["eagle", "deep"])
def test_tree_buffers_definition(choices):
    parents = ck.tree_from_choices(choices)
    tb = ck.tree_buffers(parents, prefix_len=7)
    N = len(parents)
    for i in range(N):
        anc, j = {i}, int(parents[i])
        while j >= 0:
            anc.add(j)
            j = int(parents[j])
        assert set(tb.mask[i].nonzero().flatten().tolist()) == anc
        assert int(tb.position_ids[i]) == 7 + len(anc) - 1
    leaves = [i for i in range(N) if i not in set(parents.tolist())]
    assert tb.retrieve.shape[0] == len(leaves)
    for row, leaf in zip(tb.retrieve, leaves):
        path = [x for x in row.tolist() if x >= 0]
        assert path[0] == 0 and path[-1] == leaf and tb.mask[leaf, path].all()
    assert torch.equal(ck.types.unpack_bits(tb.packed_mask, N), tb.mask)


def test_tree_buffers_batch_with_padding():
    parents = torch.tensor([[-1, 0, 0, 1], [-1, 0, -1, -1]], dtype=torch.int32)
    tb = ck.tree_buffers(parents, torch.tensor([3, 10]))
    assert tb.position_ids.tolist() == [[3, 4, 4, 5], [10, 11, 10, 10]]
    assert tb.mask[1, 2].tolist() == [False, False, True, False]  # padding sees itself only
    assert tb.retrieve[1].tolist()[0] == [0, 1, -1]


def test_lantern_neighbors_order():
    cb = torch.tensor([[0.0], [1.0], [3.0], [1.5]])
    assert ck.lantern_neighbors(cb, 2).tolist() == [[1, 3], [3, 0], [3, 1], [1, 0]]


# ---- logits processing -------------------------------------------------------------------------
def test_process_logits_steps():
    l = torch.tensor([[3.0, 1.0, 1.0, 0.0, -2.0]])
    assert (ck.process_logits(l, top_k=2) > 0).tolist() == [[True, True, True, False, False]]  # ties kept
    probs = torch.softmax(l, -1)
    kept = ck.process_logits(l, top_p=0.8)
    # 0.78 (token 0) does not reach 0.8; the next probability (0.106, tied tokens 1 and 2) does
    assert (kept > 0).tolist() == [[True, True, True, False, False]]
    assert torch.allclose(kept, torch.where(kept > 0, probs, 0) / probs[0, :3].sum())
    assert torch.allclose(ck.process_logits(l, temperature=0.5), torch.softmax(l / 0.5, -1))
    assert torch.equal(ck.process_logits(l, temperature=0), ck.process_logits(l))
    cu = torch.cat([l, torch.zeros_like(l)])
    assert torch.allclose(ck.process_logits(cu, cfg_scale=2.0), torch.softmax(2 * l, -1))
    assert torch.isnan(ck.process_logits(torch.tensor([[0.0, float("nan")]]))).all()
    assert ck.process_logits(l.bfloat16()).dtype == torch.float32


def test_nan_row_flagged_even_when_top_k_would_mask_it():
    logits = torch.tensor([[[float("nan"), 1.0, 2.0, 9.0], [0.0, 0.0, 0.0, 0.0]]])
    out = run(torch.tensor([[0, 3]]), torch.tensor([[-1, 0]], dtype=torch.int32), logits, top_k=2)
    assert out.status.tolist() == [ck.STATUS_NONFINITE_TARGET] and out.next_token.tolist() == [3]
