"""Triton-only checks of the two-phase verify kernel (issue 12).

- repeat determinism (the CASCADE race): the same call 100x gives identical outputs, B=8 with duplicate
  sibling tokens and large CASCADE sets; runs on CUDA when present (where a race would show), else under
  the interpreter;
- Philox: ``tl.rand`` with the int64 offset ``index + (stream << 32)`` over a full tile of the REAL block
  size equals ``cascade_kernels/philox.py`` (triton >= 3.4);
- parity at the default (real) block sizes with V >= 4096 (no MAX_BLOCK_V override), including top-k by
  radix select with ties, and the chunked phase-1 path (rows wider than MAX_TILE_V).
"""
import pytest
import torch

import cascade_kernels as ck
from cascade_kernels import philox
from conftest import HAS_CUDA, HAS_TRITON

pytestmark = pytest.mark.skipif(not HAS_TRITON, reason="triton is not installed")
DEV = "cuda" if HAS_CUDA else "cpu"
EAGLE = ck.tree_from_choices(ck.MC_SIM_7B_63)


def _case(B, V, seed, dup=True, D=8, tree=EAGLE, boost=2.5):
    g = torch.Generator().manual_seed(seed)
    N = tree.shape[0]
    tokens = torch.randint(0, V, (B, N), generator=g)
    if dup:  # duplicate sibling tokens: children of a node share ids
        tokens = tokens % 3
    logits = torch.randn(B, N, V, generator=g)
    for i in range(1, N):  # favour the drafted tokens so walks go deep and sets get absorbed
        logits[torch.arange(B), tree[i].long(), tokens[:, i]] += boost
    hidden = torch.randn(B, 1, D, generator=g) + 0.3 * torch.randn(B, N, D, generator=g)
    return tokens, logits, hidden, torch.randint(0, 2**62, (B,), generator=g)


def _same(a, b):
    for f in ("accept_len", "accepted_nodes", "next_token", "status", "tvd"):
        assert torch.equal(getattr(a, f).cpu(), getattr(b, f).cpu()), f


SMALL = ck.tree_from_choices(ck.SMALL_CHOICES)


@pytest.mark.parametrize("B", [8] + ([64] if HAS_CUDA else []))
@pytest.mark.parametrize("residual", ["transport"] + (["standard"] if HAS_CUDA else []))
def test_cascade_repeat_determinism(monkeypatch, residual, B):
    """Same call 100x identical (decisions equal to the reference): duplicate siblings, big CASCADE sets.

    On CUDA: B=8 (phase 1 reduces every row) and B=64 (the walk reduces its rows), V=4096. Under the
    interpreter (where no race can show, so this only pins the harness): B=8, V=16, the small tree, the walk
    reducing its rows (fewest programs, to keep 100 calls affordable)."""
    from cascade_kernels.ops.verify import triton as vt

    V = 4096 if HAS_CUDA else 16
    if not HAS_CUDA:
        monkeypatch.setattr(vt, "MAX_PHASE1_ROWS", 0)
    parents = EAGLE if HAS_CUDA else SMALL
    tokens, logits, hidden, seed = _case(B, V, seed=1, boost=2.5 if V < 100 else 8.0, tree=parents)
    method = ck.Cascade(tau_pos=0.0, tau_seq=0.0, eps=0.6)
    tree = ck.prepare_tree(parents, device=DEV)
    args = (tokens.to(DEV), tree, logits.to(DEV))
    kw = dict(method=method, hidden=hidden.to(DEV), seed=seed.to(DEV), residual=residual)
    ref = ck.verify(tokens, parents, logits, method=method, hidden=hidden, seed=seed, residual=residual,
                    backend="reference")
    first = ck.verify(*args, backend="triton", **kw)
    for f in ("accept_len", "accepted_nodes", "next_token", "status"):
        assert torch.equal(getattr(ref, f), getattr(first, f).cpu()), f
    assert int(first.accept_len.sum()) > 0
    for _ in range(99):
        _same(first, ck.verify(*args, backend="triton", **kw))


if HAS_TRITON:
    import triton
    import triton.language as tl

    @triton.jit
    def _rand_tile_kernel(seed_ptr, out_ptr, stream, BLOCK: tl.constexpr):
        offs = tl.arange(0, BLOCK).to(tl.int64)
        s = tl.load(seed_ptr)
        tl.store(out_ptr + offs, tl.rand(s, offs + (tl.full([], 0, tl.int64) + stream << 32)))


@pytest.mark.parametrize("seed", [0, -7, 2**40 + 3, 2**63 - 1])
@pytest.mark.parametrize("stream", [philox.ACCEPT, philox.SAMPLE])
def test_philox_tile_matches_python_at_real_block_size(seed, stream):
    """tl.rand over a full tile of the kernel's real BLOCK_V (1024) == philox.py, bit for bit."""
    from cascade_kernels.ops.verify import triton as vt

    block = vt.MAX_BLOCK_V
    assert block == 1024  # the real tile size: this module never lowers it
    out = torch.empty(block, device=DEV)
    _rand_tile_kernel[(1,)](torch.tensor([seed], device=DEV), out, stream, BLOCK=block)
    ref = philox.uniform(torch.tensor(seed), stream, torch.arange(block))
    assert torch.equal(out.cpu(), ref)


def _parity(tokens, parents, logits, method, hidden=None, draft=None, **kw):
    ref = ck.verify(tokens, parents, logits, method=method, hidden=hidden, draft_logits=draft, backend="reference",
                    **kw)
    mv = lambda t: None if t is None else t.to(DEV)  # noqa: E731
    out = ck.verify(mv(tokens), mv(parents), mv(logits), method=method, hidden=mv(hidden), draft_logits=mv(draft),
                    backend="triton", **kw)
    for f in ("accept_len", "accepted_nodes", "next_token", "status"):
        assert torch.equal(getattr(ref, f), getattr(out, f).cpu()), f
    torch.testing.assert_close(out.tvd.cpu(), ref.tvd, atol=1e-5, rtol=2e-3 if draft is not None else 0)
    return ref


@pytest.mark.parametrize("method", ["exact", "cascade"])
@pytest.mark.parametrize("kw", [dict(), dict(top_k=50), dict(top_k=40, top_p=0.9, temperature=0.8)],
                         ids=["plain", "topk", "topk-topp"])
def test_parity_default_blocks_large_vocab(method, kw):
    """V = 4096 at the default MAX_BLOCK_V / MAX_TILE_V (phase 1 holds the row in registers)."""
    from cascade_kernels.ops.verify import triton as vt

    assert vt.MAX_BLOCK_V == 1024 and vt.MAX_TILE_V == 16384
    tokens, logits, hidden, seed = _case(2, 4096, seed=3, dup=False, boost=9.0)
    m = ck.Exact() if method == "exact" else ck.Cascade(tau_pos=0.2, tau_seq=0.1, eps=0.5)
    ref = _parity(tokens, EAGLE, logits, m, hidden=hidden if method == "cascade" else None, seed=seed, **kw)
    assert int(ref.accept_len.max()) >= 1


def test_parity_default_blocks_sampled_cfg():
    tokens, logits, hidden, seed = _case(2, 4096, seed=4, dup=False, boost=9.0)
    cfg = torch.cat([logits, logits + 0.3 * torch.randn_like(logits)])
    draft = logits + 0.5 * torch.randn_like(logits)
    _parity(tokens, EAGLE, cfg, ck.Exact(), draft=draft, seed=seed, cfg_scale=2.0, top_k=100)


def test_radix_topk_with_ties(monkeypatch):
    """Tied logits (integers), negative zeros and -inf entries: radix select keeps ties like torch.topk."""
    tokens, logits, hidden, seed = _case(2, 61, seed=5, dup=False)
    logits = (logits * 2).round()
    logits[..., 5] = -0.0
    logits[..., 7] = -float("inf")
    for k in (1, 17):
        _parity(tokens, EAGLE, logits, ck.Exact(), seed=seed, top_k=k)


def test_chunked_phase1_path(monkeypatch):
    """Rows wider than MAX_TILE_V stream in chunks (radix rounds and top-p re-read the row)."""
    from cascade_kernels.ops.verify import triton as vt

    monkeypatch.setattr(vt, "MAX_TILE_V", 16)
    monkeypatch.setattr(vt, "MAX_BLOCK_V", 16)
    tokens, logits, hidden, seed = _case(1, 61, seed=6, dup=False)
    logits[0, 0, 3] = float("nan")  # a non-finite row on the chunked path
    for kw in (dict(top_k=9, top_p=0.7),):
        _parity(tokens, EAGLE, logits, ck.Cascade(tau_pos=0.2, tau_seq=0.1), hidden=hidden, seed=seed, **kw)


@pytest.mark.parametrize("guard", [0.0, 1e30], ids=["never-recompute", "always-recompute"])
def test_symbolic_residual_remaining_mass(monkeypatch, guard):
    """The lazy residual's remaining mass, by subtraction only or recomputed by a pass after every
    rejection (REM_GUARD forced), gives the reference's decisions on walks with many rejections."""
    from cascade_kernels.ops.verify import triton as vt

    if HAS_CUDA:
        pytest.skip("REM_GUARD is a compile-time constant on the GPU")
    monkeypatch.setattr(vt, "REM_GUARD", guard)
    tokens, logits, hidden, seed = _case(4, 37, seed=7, dup=False)
    logits = logits * 0.3  # flat rows: most children are rejected
    for s in range(1):
        ref = _parity(tokens, EAGLE, logits, ck.Cascade(tau_pos=0.0, tau_seq=0.0, eps=0.05), hidden=hidden,
                      seed=seed + s)
        _parity(tokens, EAGLE, logits, ck.Exact(), seed=seed + s, top_k=20)


@pytest.mark.parametrize("sampled", [False, True], ids=["deterministic", "sampled"])
def test_on_demand_rows(monkeypatch, sampled):
    """Large batches: the walk reduces only the rows it visits (no phase-1 row programs); same decisions."""
    from cascade_kernels.ops.verify import triton as vt

    monkeypatch.setattr(vt, "MAX_PHASE1_ROWS", 0)
    tokens, logits, hidden, seed = _case(2, 37, seed=8, dup=True)
    draft = logits + 0.5 * torch.randn_like(logits) if sampled else None
    _parity(tokens, EAGLE, logits, ck.Cascade(tau_pos=0.1, tau_seq=0.1), hidden=hidden, draft=draft, seed=seed,
            top_k=9)
    _parity(tokens, EAGLE, logits, ck.Exact(), draft=draft, seed=seed, temperature=0.8, top_p=0.9)


def test_similarity_sets_row_blocks_beyond_64_nodes():
    """N > 64: the Gram kernel splits a tree's rows into 64-row blocks (two loads per D chunk)."""
    g = torch.Generator().manual_seed(9)
    N, D, B = 70, 24, 2
    parents = torch.tensor([-1] + [int(torch.randint(0, i, (), generator=g)) for i in range(1, N)], dtype=torch.int32)
    hidden = torch.randn(B, 1, D, generator=g) + 0.4 * torch.randn(B, N, D, generator=g)
    ref = ck.similarity_sets(parents, hidden, 0.6, 0.4, backend="reference")
    tri = ck.similarity_sets(parents.to(DEV), hidden.to(DEV), 0.6, 0.4, backend="triton")
    assert int(ref.interchange.sum()) > 0 and int(ref.convergence.sum()) > 0
    for f in ref._fields:
        assert torch.equal(getattr(ref, f), getattr(tri, f).cpu()), f
