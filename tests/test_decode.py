"""The decode loop (issue 7) on tiny random-init models from cascade_lab."""
import numpy as np
import pytest
import torch

import cascade_kernels as ck

lab = pytest.importorskip("cascade_lab.model")
from cascade_lab.drafter import Drafter  # noqa: E402
from cascade_lab.model import TargetConfig, Transformer  # noqa: E402

V = 16


@pytest.fixture(scope="module")
def models():
    torch.manual_seed(0)
    target = Transformer(TargetConfig(vocab_size=V, num_classes=3, dim=32, n_layers=2, n_heads=2, mlp_hidden=64,
                                      max_seq_len=64)).eval()
    with torch.no_grad():  # sharpen the head so the target is confident but not one-hot
        target.head.weight.mul_(25.0)
    drafter = Drafter.from_target(target).eval()
    return target, drafter


TREES = [pytest.param("eagle", id="eagle"), pytest.param([[0], [1], [0, 0], [0, 0, 0]], id="small-static"),
         pytest.param(ck.DynamicTree(total_tokens=10, depth=3, top_k=3), id="dynamic")]


@pytest.mark.parametrize("tree", TREES)
@pytest.mark.parametrize("cfg", [None, 2.0], ids=["nocfg", "cfg"])
def test_greedy_speculative_equals_greedy_ar(models, tree, cfg):
    target, drafter = models
    classes = torch.tensor([0, 1, 2])
    ar = ck.generate(target, classes, num_tokens=12, temperature=0, cfg_scale=cfg)
    sd = ck.generate(target, classes, drafter=drafter, num_tokens=12, temperature=0, cfg_scale=cfg, tree=tree)
    assert torch.equal(ar.tokens, sd.tokens)
    assert all(s.target_forwards <= a.target_forwards for s, a in zip(sd.stats, ar.stats))
    assert ar.stats[0].target_forwards == 12


@pytest.mark.parametrize("method_name", ["lantern", "gsd", "cool", "cascade"])
def test_eps_zero_relaxed_equals_exact(models, method_name):
    target, drafter = models
    nb = ck.lantern_neighbors(target.tok_emb.weight.detach(), 4)
    method = {"lantern": ck.Lantern(nb), "gsd": ck.GSD(), "cool": ck.Cool(),
              "cascade": ck.Cascade(tau_pos=0.0, tau_seq=0.0)}[method_name]
    classes = torch.tensor([0, 2])
    kw = dict(drafter=drafter, num_tokens=10, seed=3, tree=[[0], [1], [0, 0]])
    exact = ck.generate(target, classes, **kw)
    relaxed = ck.generate(target, classes, method=method, eps=0.0, **kw)
    assert torch.equal(exact.tokens, relaxed.tokens)


@pytest.mark.parametrize("sampled", [False, True], ids=["det", "sampled"])
def test_batch_equals_per_sequence(models, sampled):
    target, drafter = models
    classes = torch.tensor([0, 1, 2, 1])
    kw = dict(drafter=drafter, num_tokens=9, cfg_scale=1.5, sampled_drafting=sampled, method=ck.Cascade(tau_pos=0.5))
    batch = ck.generate(target, classes, seed=[10, 11, 12, 13], **kw)
    for b in range(4):
        single = ck.generate(target, classes[b:b + 1], seed=[10 + b], **kw)
        assert torch.equal(single.tokens[0], batch.tokens[b])
        assert single.stats[0].accept_lengths == batch.stats[b].accept_lengths


def _two_sample_chi2(a, b, bins):
    ca, cb = np.bincount(a, minlength=bins).astype(float), np.bincount(b, minlength=bins).astype(float)
    keep = (ca + cb) > 10
    ca, cb = ca[keep], cb[keep]
    na, nb = ca.sum(), cb.sum()
    tot = ca + cb
    ea, eb = tot * na / (na + nb), tot * nb / (na + nb)
    stat = ((ca - ea) ** 2 / ea).sum() + ((cb - eb) ** 2 / eb).sum()
    df = max(1, keep.sum() - 1)
    return stat, df


@pytest.mark.parametrize("sampled", [False, True], ids=["det", "sampled"])
def test_sampled_exact_matches_ar_per_position(models, sampled):
    """Sampled (T=1) Exact speculative decoding matches AR's per-position token distribution."""
    target, drafter = models
    n = 3000
    classes = torch.zeros(n, dtype=torch.int64)
    kw = dict(num_tokens=4, temperature=1.0, top_k=8)
    ar = ck.generate(target, classes, seed=0, **kw).tokens.numpy()
    sd = ck.generate(target, classes, drafter=drafter, seed=10**6, sampled_drafting=sampled,
                     tree=[[0], [1], [0, 0], [0, 1], [0, 0, 0]], **kw)
    accepted = sum(sum(s.accept_lengths) for s in sd.stats)
    assert accepted > n // 20  # drafts were accepted, so the tree path is exercised
    sd = sd.tokens.numpy()
    for pos in range(4):
        stat, df = _two_sample_chi2(ar[:, pos], sd[:, pos], V)
        assert stat < df + 10 * np.sqrt(2 * df), (pos, stat, df)
    # pairs of consecutive positions too (joint distribution)
    stat, df = _two_sample_chi2(ar[:, 1] * V + ar[:, 2], sd[:, 1] * V + sd[:, 2], V * V)
    assert stat < df + 10 * np.sqrt(2 * df), (stat, df)


def test_step_seed_documented_formula():
    # SplitMix64's published first output for state 0 (Vigna's splitmix64.c): 0xE220A8397B1DCDAF
    assert ck.decode.splitmix64(0) == 0xE220A8397B1DCDAF
    assert ck.decode.step_seed(0, 0) == 0xE220A8397B1DCDAF - 2**64  # as a signed int64
    assert ck.decode.step_seed(0, 1) != ck.decode.step_seed(0, 0)
    assert -(2**63) <= ck.decode.step_seed(2**62, 10**6) < 2**63


@pytest.mark.parametrize("backend", ck.available_backends())
def test_verify_never_reads_a_leafs_draft_row(backend):
    """The decode loop drafts no features or logits for a static tree's leaves (their rows of draft_logits
    stay zero): verification reads a node's draft row only for that node's children, for every method,
    residual and backend."""
    gen = torch.Generator().manual_seed(3)
    tree, parents = ck.prepare_tree("eagle"), ck.tree_from_choices(ck.named_tree("eagle"))
    N, Vs, B = parents.shape[0], 48, 2
    leaves = sorted(set(range(N)) - set(parents[1:].tolist()))
    nb = ck.lantern_neighbors(torch.randn(Vs, 4, generator=gen), 6)
    methods = [ck.Exact(), ck.Cascade(tau_pos=0.3, tau_seq=0.2), ck.Lantern(nb, delta=0.2), ck.Lantern(nb, lam=2.0),
               ck.GSD(), ck.Cool()]
    interpreted = backend == "triton" and not torch.cuda.is_available()  # ~0.7 s a call: one trial, one residual
    for trial in range(1 if interpreted else 6):
        logits, draft = 2 * torch.randn(2 * B, N, Vs, generator=gen), 2 * torch.randn(B, N, Vs, generator=gen)
        tokens, hidden = torch.randint(0, Vs, (B, N), generator=gen), torch.randn(B, N, 16, generator=gen)
        zeroed = draft.clone()
        zeroed[:, leaves] = 0.0
        for m in methods:
            for residual in ("transport",) if interpreted else ("transport", "standard"):
                kw = dict(method=m, hidden=hidden if isinstance(m, ck.Cascade) else None, cfg_scale=3.0,
                          seed=torch.arange(B) + trial, backend=backend, residual=residual)
                a = ck.verify(tokens, tree, logits, draft_logits=draft, **kw)
                b = ck.verify(tokens, tree, logits, draft_logits=zeroed, **kw)
                for field in ("accepted_nodes", "accept_len", "next_token", "tvd"):
                    assert torch.equal(getattr(a, field), getattr(b, field)), (type(m).__name__, residual, field)


class _RecomputingDrafter:
    """The same drafter without the optional ``extend`` keyword: the loop re-runs every drafted node per level."""

    def __init__(self, drafter):
        self.inner = drafter

    def new_cache(self, *a, **kw):
        return self.inner.new_cache(*a, **kw)

    def forward_tree(self, cache, tokens, feats, mask, position_ids):
        return self.inner.forward_tree(cache, tokens, feats, mask, position_ids)


@pytest.mark.parametrize("sampled", [False, True], ids=["det", "sampled"])
def test_level_by_level_drafting_equals_recomputing(models, sampled):
    """Drafting with ``extend`` (each node drafted once) gives the tokens and draft logits of re-running
    the drafter over all drafted nodes at every level, and the decode loop the same tokens."""
    from cascade_kernels.decode import _Sampling, _TreeDrafter

    target, drafter = models
    gen = torch.Generator().manual_seed(4)
    B, D = 2, target.cfg.dim
    R = 2 * B  # CFG rows
    sampling = _Sampling(1.0, 0, 1.0, 2.0)
    root_tok = torch.randint(0, V, (B,), generator=gen)
    root_feat, root_logits = torch.randn(R, D, generator=gen), 3 * torch.randn(R, V, generator=gen)
    pos0, seeds = torch.tensor([3, 3]), torch.tensor([7, 8])
    drafted = []
    for d in (drafter, _RecomputingDrafter(drafter)):
        dcache = d.new_cache(R, 64)
        context = torch.randint(0, V, (R, 3), generator=torch.Generator().manual_seed(5))
        d.forward_tree(dcache, context, torch.randn(R, 3, D, generator=torch.Generator().manual_seed(6)),
                       torch.ones(3, 3, dtype=torch.bool).tril().expand(R, 3, 3), torch.arange(3).expand(R, 3))
        dcache.commit_all()
        td = _TreeDrafter(d, sampling, "eagle", sampled, cfg=True)
        assert td.extends == (d is drafter)
        drafted.append(td.draft(dcache, root_tok, root_feat, root_logits, pos0, seeds))
    (tok_a, _, guided_a), (tok_b, _, guided_b) = drafted
    assert torch.equal(tok_a, tok_b)
    torch.testing.assert_close(guided_a, guided_b, rtol=1e-5, atol=1e-5)
    kw = dict(num_tokens=14, cfg_scale=2.0, sampled_drafting=sampled, tree="eagle", seed=5, method=ck.Cascade(tau_pos=0.5))
    fast = ck.generate(target, torch.tensor([0, 1, 2]), drafter=drafter, **kw)
    slow = ck.generate(target, torch.tensor([0, 1, 2]), drafter=_RecomputingDrafter(drafter), **kw)
    assert torch.equal(fast.tokens, slow.tokens)
