"""Property tests (hypothesis) of the reference walk over random trees, logits and methods."""
import math

import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import cascade_kernels as ck


@st.composite
def verify_case(draw):
    B = draw(st.integers(1, 3))
    N = draw(st.integers(1, 9))
    V = draw(st.integers(2, 12))
    parents = torch.full((B, N), -1, dtype=torch.int32)
    for b in range(B):
        real = [0]
        for i in range(1, N):
            if draw(st.booleans()) or len(real) == 1:
                parents[b, i] = draw(st.sampled_from(real))
                real.append(i)
    seed = draw(st.integers(0, 2**31))
    g = torch.Generator().manual_seed(seed)
    tokens = torch.randint(-1, V, (B, N), generator=g)
    scale = draw(st.sampled_from([0.5, 2.0, 8.0]))
    cfg = draw(st.sampled_from([None, 1.0, 3.0]))
    logits = torch.randn((2 if cfg else 1) * B, N, V, generator=g) * scale
    if draw(st.booleans()):
        logits[0, draw(st.integers(0, N - 1)), draw(st.integers(0, V - 1))] = float("nan")
    draft = torch.randn(B, N, V, generator=g) * scale if draw(st.booleans()) else None
    hidden = torch.randn(B, N, 4, generator=g)
    nb = ck.lantern_neighbors(torch.randn(V, 2, generator=g), min(V - 1, 3))
    method = draw(st.sampled_from([ck.Exact(), ck.Lantern(nb, delta=0.3), ck.Lantern(nb, lam=4.0), ck.GSD(G=3),
                                   ck.Cool(delta=3.0), ck.Cascade(tau_pos=0.0, tau_seq=0.0, eps=0.3)]))
    kw = dict(method=method, draft_logits=draft, hidden=hidden, cfg_scale=cfg,
              residual=draw(st.sampled_from(["transport", "standard"])),
              eps=draw(st.sampled_from([None, 0.0, 0.05, 0.5])),
              temperature=draw(st.sampled_from([0.0, 0.7, 1.0])),
              top_k=draw(st.sampled_from([0, 1, V])), top_p=draw(st.sampled_from([1.0, 0.6])),
              seed=draw(st.integers(-(2**40), 2**40)))
    return tokens, parents, logits, kw


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(verify_case())
def test_walk_invariants(case):
    tokens, parents, logits, kw = case
    out = ck.verify(tokens, parents, logits, backend="reference", **kw)
    B, V = tokens.shape[0], logits.shape[-1]
    budget = kw["eps"] if kw["eps"] is not None else (0.3 if kw["method"].name == "cascade" else math.inf)
    assert ((out.next_token >= 0) & (out.next_token < V)).all()
    assert (out.tvd >= 0).all() and (out.tvd <= budget + 1e-6).all()
    assert ((out.status & ~7) == 0).all()
    for b in range(B):
        path = out.accepted_nodes[b].tolist()
        n = int(out.accept_len[b])
        assert path[0] == 0 and all(x == -1 for x in path[n + 1:]) and all(x >= 0 for x in path[: n + 1])
        for parent, child in zip(path[:n], path[1:n + 1]):
            assert int(parents[b, child]) == parent and int(tokens[b, child]) >= 0
        if kw["method"].name == "exact" or kw["eps"] == 0.0:
            assert float(out.tvd[b]) == 0.0
