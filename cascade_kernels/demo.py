"""Verification demo: one random draft tree verified with every method, as a small table.

``python -m cascade_kernels.demo [--vocab 16384] [--batch 8] [--tree eagle|deep] [--backend auto]``.
The image-generation demo (the project's main job) is ``python -m cascade_lab.demo``.
"""
import argparse
import time

import torch

import cascade_kernels as ck


def build_case(batch, vocab, tree, hidden_dim, seed):
    """A peaked random target whose hidden states cluster, like an image model's (for CASCADE)."""
    g = torch.Generator().manual_seed(seed)
    parents = ck.tree_from_choices(ck.MC_SIM_7B_63 if tree == "eagle" else ck.DEEP_CHOICES)
    N = len(parents)
    parents = parents.expand(batch, N).contiguous()
    logits = torch.randn(batch, N, vocab, generator=g) * 2.0
    tokens = torch.topk(logits + torch.randn(batch, N, vocab, generator=g), 8, dim=-1).indices  # drafter guesses
    child_rank = torch.zeros(N, dtype=torch.int64)
    for i in range(1, N):
        child_rank[i] = sum(1 for j in range(1, i) if parents[0, j] == parents[0, i])
    par = parents[0].clamp(min=0).long()
    draft_tokens = tokens[:, par, child_rank.clamp(max=7)]  # child i proposes its parent's rank-th guess
    draft_tokens[:, 0] = 0
    protos = torch.randn(4, hidden_dim, generator=g)
    hidden = protos[torch.randint(0, 4, (batch, N), generator=g)] + 0.3 * torch.randn(batch, N, hidden_dim, generator=g)
    codebook = torch.randn(vocab, 8, generator=g)
    return draft_tokens, parents, logits, hidden, codebook


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--vocab", type=int, default=4096)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--tree", choices=["eagle", "deep"], default="eagle")
    ap.add_argument("--backend", default="auto")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    tokens, parents, logits, hidden, codebook = build_case(args.batch, args.vocab, args.tree, 64, args.seed)
    neighbors = ck.lantern_neighbors(codebook, 16)
    methods = [("exact", ck.Exact()), ("lantern", ck.Lantern(neighbors, delta=0.1)),
               ("lantern++", ck.Lantern(neighbors, lam=5.0)), ("gsd", ck.GSD()), ("cool", ck.Cool()),
               ("cascade", ck.Cascade(tau_pos=0.8, tau_seq=0.5))]
    print(f"B={args.batch} N={parents.shape[1]} V={args.vocab} tree={args.tree} "
          f"backends available: {ck.available_backends()}")
    print(f"{'method':<10} {'residual':<10} {'mean accept':>11} {'mean tvd':>9} {'ms/call':>8}  backend")
    for name, method in methods:
        for residual in ("transport", "standard"):
            t0 = time.perf_counter()
            out = ck.verify(tokens, parents, logits, method=method, hidden=hidden, residual=residual,
                            seed=args.seed, backend=args.backend)
            ms = (time.perf_counter() - t0) * 1e3
            print(f"{name:<10} {residual:<10} {out.accept_len.float().mean():>11.2f} {out.tvd.mean():>9.4f} "
                  f"{ms:>8.1f}  {out.backend}")
            if name == "exact":
                break


if __name__ == "__main__":
    main()
