"""Target/drafter tree attention and KV-cache equivalence on tiny random-init models."""
import pytest
import torch

from cascade_lab.drafter import Drafter, eagle_loss
from cascade_lab.model import Transformer, TargetConfig, chain_mask



def tree_buffers_local(parents: torch.Tensor, prefix_len: torch.Tensor):
    """Local stand-in for cascade_kernels.tree_buffers: parents [B,N] (-1 = root; parents[i] < i)
    -> (mask [B,N,N] bool: j ancestor of i or j == i, position_ids [B,N] = prefix_len + depth)."""
    b, n = parents.shape
    mask = torch.zeros(b, n, n, dtype=torch.bool)
    depth = torch.zeros(b, n, dtype=torch.long)
    for bi in range(b):
        for i in range(n):
            j = i
            while j >= 0:
                mask[bi, i, j] = True
                j = int(parents[bi, j])
            depth[bi, i] = int(mask[bi, i].sum()) - 1
    return mask, prefix_len.view(-1, 1) + depth


def tree_buffers(parents, prefix_len):
    try:
        from cascade_kernels import tree_buffers as tb  # type: ignore

        out = tb(parents, prefix_len)
        return out.mask, out.position_ids
    except Exception:  # not written yet / different signature
        return tree_buffers_local(parents, prefix_len)


def path(parents_row, i):
    p = []
    while i >= 0:
        p.append(i)
        i = int(parents_row[i])
    return p[::-1]


TINY = dict(vocab_size=16, num_classes=3, dim=32, n_layers=2, n_heads=4, mlp_hidden=64, max_seq_len=40)


@pytest.fixture(params=[False, True], ids=["prefix-class", "class-bias+abs-pos"])
def tiny(request):
    torch.manual_seed(0)
    m = Transformer(TargetConfig(**TINY, class_bias=request.param, abs_pos_emb=request.param)).double().eval()
    # make the weights less tiny so differences would show (and the zero-initialised paths non-zero)
    with torch.no_grad():
        for n, p in m.named_parameters():
            if n.startswith(("cls_bias", "pos_emb")):
                p.normal_(0.0, 0.5)
            p.mul_(5.0 if p.dim() > 1 else 1.0)
    return m


def test_optional_input_paths_start_as_identity():
    """A prefix-class model's weights loaded into one with class_bias and abs_pos_emb compute the same."""
    torch.manual_seed(0)
    plain = Transformer(TargetConfig(**TINY)).eval()
    aided = Transformer(TargetConfig(**TINY, class_bias=True, abs_pos_emb=True)).eval()
    missing, unexpected = aided.load_state_dict(plain.state_dict(), strict=False)
    assert sorted(missing) == ["cls_bias.weight", "pos_emb.weight"] and not unexpected
    cls, toks = torch.tensor([0, 3]), torch.randint(0, 16, (2, 9))
    torch.testing.assert_close(aided(cls, toks), plain(cls, toks))


def test_class_bias_needs_the_cache_class_ids(tiny):
    if not tiny.cfg.class_bias:
        pytest.skip("prefix-class model reads no class ids after prefill")
    cache = tiny.new_cache(1)
    with pytest.raises(ValueError, match="class_ids"):
        tiny.forward_tree(cache, torch.zeros(1, 1, dtype=torch.long), chain_mask(1, 1), torch.zeros(1, 1, dtype=torch.long))


PARENTS = torch.tensor([[-1, 0, 0, 1, 1, 2, 5], [-1, 0, 1, 0, 3, 3, 2]])


def setup_prefix(m, gen):
    """Prefill classes, then commit different prefix lengths (3 and 5) via a chain tree forward."""
    cls = torch.tensor([1, 2])
    cache, l0, h0 = m.prefill(cls)
    pre = torch.randint(0, 16, (2, 5), generator=gen)
    pos = cache.lengths[:, None] + torch.arange(5)[None]
    m.forward_tree(cache, pre, chain_mask(2, 5), pos)
    cache.commit(torch.tensor([[0, 1, 2, -1, -1], [0, 1, 2, 3, 4]]))
    seqs = [pre[0, :3], pre[1, :5]]
    return cls, cache, seqs, (l0, h0)


def test_prefill_matches_full(tiny):
    cls = torch.tensor([0, 3])  # 3 = null class
    cache, lg, h = tiny.prefill(cls)
    lf, hf = tiny(cls)
    torch.testing.assert_close(lg, lf[:, 0]); torch.testing.assert_close(h, hf[:, 0])
    assert cache.lengths.tolist() == [1, 1]


def test_incremental_equals_full_causal(tiny):
    gen = torch.Generator().manual_seed(1)
    cls = torch.tensor([0, 2])
    toks = torch.randint(0, 16, (2, 12), generator=gen)
    lf, hf = tiny(cls, toks)
    cache, l0, h0 = tiny.prefill(cls)
    ls, hs = [l0], [h0]
    for t in range(12):
        l, h = tiny.decode_step(cache, toks[:, t:t + 1])
        ls.append(l[:, 0]); hs.append(h[:, 0])
    torch.testing.assert_close(torch.stack(ls, 1), lf)
    torch.testing.assert_close(torch.stack(hs, 1), hf)
    assert cache.lengths.tolist() == [13, 13]


def test_tree_equals_sequential_paths(tiny):
    gen = torch.Generator().manual_seed(2)
    cls, cache, seqs, _ = setup_prefix(tiny, gen)
    assert cache.lengths.tolist() == [4, 6]
    nodes = torch.randint(0, 16, PARENTS.shape, generator=gen)
    mask, pos = tree_buffers(PARENTS, cache.lengths)
    lt, ht = tiny.forward_tree(cache, nodes, mask, pos)
    assert lt.shape == (2, 7, 16) and ht.shape == (2, 7, 32)
    assert cache.lengths.tolist() == [4, 6]  # tree forward does not append
    for b in range(2):
        for i in range(7):
            seq = torch.cat([seqs[b], nodes[b, path(PARENTS[b], i)]])
            lf, hf = tiny(cls[b:b + 1], seq[None])
            torch.testing.assert_close(lt[b, i], lf[0, -1])
            torch.testing.assert_close(ht[b, i], hf[0, -1])


def test_commit_path_then_continue(tiny):
    gen = torch.Generator().manual_seed(3)
    cls, cache, seqs, _ = setup_prefix(tiny, gen)
    nodes = torch.randint(0, 16, PARENTS.shape, generator=gen)
    mask, pos = tree_buffers(PARENTS, cache.lengths)
    tiny.forward_tree(cache, nodes, mask, pos)
    acc = [path(PARENTS[0], 6), path(PARENTS[1], 4)]  # [0,2,5,6] and [0,3,4]
    L = max(map(len, acc))
    idx = torch.tensor([a + [-1] * (L - len(a)) for a in acc])
    cache.commit(idx)
    assert cache.lengths.tolist() == [4 + 4, 6 + 3]
    nxt = torch.randint(0, 16, (2, 2), generator=gen)
    lc, hc = tiny.decode_step(cache, nxt)
    for b in range(2):
        seq = torch.cat([seqs[b], nodes[b, acc[b]], nxt[b]])
        lf, hf = tiny(cls[b:b + 1], seq[None])
        torch.testing.assert_close(lc[b], lf[0, -2:])
        torch.testing.assert_close(hc[b], hf[0, -2:])


def test_commit_errors(tiny):
    cache, _, _ = tiny.prefill(torch.tensor([0, 1]))
    with pytest.raises(RuntimeError):
        cache.commit(torch.tensor([[0], [0]]))
    tiny.forward_tree(cache, torch.zeros(2, 2, dtype=torch.long), chain_mask(2, 2), cache.lengths[:, None] + torch.arange(2))
    with pytest.raises(ValueError):
        cache.commit(torch.tensor([[-1, 0], [0, 1]]))


def test_drafter_shapes_and_tree(tiny):
    d = Drafter.from_target(tiny).double().eval()
    gen = torch.Generator().manual_seed(4)
    toks = torch.randint(0, 16, (2, 9), generator=gen)
    lf, hf = tiny(torch.tensor([0, 1]), toks)
    ld, fd = d(toks[:, :8], hf[:, :8])
    assert ld.shape == (2, 8, 16) and fd.shape == (2, 8, 32)
    loss, parts = eagle_loss(fd, ld, hf[:, 1:9], lf[:, 1:9])
    assert loss.dim() == 0 and set(parts) == {"feat_smooth_l1", "soft_ce"}
    # drafter tree forward == its causal forward on each root-to-node path
    cache = d.new_cache(2)
    d.forward_tree(cache, toks[:, :3], hf[:, :3], chain_mask(2, 3), torch.arange(3).expand(2, 3))
    cache.commit_all()
    nodes = torch.randint(0, 16, PARENTS.shape, generator=gen)
    feats = torch.randn(2, 7, 32, generator=gen, dtype=torch.float64)
    mask, pos = tree_buffers(PARENTS, cache.lengths)
    lt, ht = d.forward_tree(cache, nodes, feats, mask, pos)
    for b in range(2):
        for i in [3, 6]:
            p = path(PARENTS[b], i)
            lr, hr = d(torch.cat([toks[b, :3], nodes[b, p]])[None], torch.cat([hf[b, :3], feats[b, p]])[None])
            torch.testing.assert_close(lt[b, i], lr[0, -1])
            torch.testing.assert_close(ht[b, i], hr[0, -1])
    # frozen embedding / head copies
    assert not d.tok_emb.weight.requires_grad and not d.head.weight.requires_grad
    torch.testing.assert_close(d.head.weight, tiny.head.weight)


def test_eq4_hook_matches_eagle_at_c1():
    ck = pytest.importorskip("cascade_kernels")
    if not hasattr(ck, "cascade_drafter_loss"):
        pytest.skip("cascade_kernels.cascade_drafter_loss not available")
    from cascade_lab.drafter import LOSSES, eq4_loss

    assert set(LOSSES) >= {"eagle", "eq4"}
    g = torch.Generator().manual_seed(5)
    pf, pl = torch.randn(2, 5, 8, generator=g), torch.randn(2, 5, 16, generator=g)
    tf, tl = torch.randn(2, 5, 8, generator=g), torch.randn(2, 5, 16, generator=g)
    l1, _ = eq4_loss(pf, pl, tf, tl, c=1.0)
    l2, _ = eagle_loss(pf, pl, tf, tl)
    torch.testing.assert_close(l1.float(), l2.float(), rtol=1e-4, atol=1e-5)


def test_codebook_init_makes_synonym_codes_start_alike():
    """Codes close in the VQ codebook get close token embeddings and LM-head rows, at the default scale."""
    from cascade_lab.train_target import codebook_init

    torch.manual_seed(0)
    m = Transformer(TargetConfig(vocab_size=64, num_classes=2, dim=32, n_layers=1, n_heads=2, mlp_hidden=32))
    default_std = float(m.tok_emb.weight.detach().std())
    cb = torch.randn(64, 8)
    cb[1] = cb[0] + 0.01 * torch.randn(8)  # a near-synonym of code 0
    codebook_init(m, cb, torch.Generator().manual_seed(1))
    for w in (m.tok_emb.weight, m.head.weight):
        cos = torch.nn.functional.cosine_similarity(w[0:1], w, dim=-1)
        assert float(cos[1]) > 0.99 and float(cos[2:].abs().max()) < 0.99
        assert abs(float(w.std()) - default_std) < 0.2 * default_std
