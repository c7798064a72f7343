"""Where a speculative step's time goes (issue 16): target forward over the tree vs one token, drafter per
level, verify, KV commit, and the rest (Python) — for the shipped target and for a target of LlamaGen-B's
shape (random weights: timing only) — at batch 1 and 8 with CFG; then a PROJECTION of each method's speedup
when the target is memory-bound (the tree forward then costs what a one-token forward costs).

Every component is timed interleaved (round-robin over components, medians), one intra-op thread unless
``--threads`` says otherwise.

    python benchmarks/bench_step_cost.py [--threads 1] [--rounds 7] [--alpha-from benchmarks/results/e2e_cpu.json]
"""
import argparse
import json
import os
import platform
import statistics
import sys
import time

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "python"))

import cascade_kernels as ck  # noqa: E402

RESULTS = os.path.join(HERE, "results")
LLAMAGEN_B = dict(vocab_size=16384, num_classes=1000, dim=768, n_layers=12, n_heads=12, mlp_hidden=2048,
                  max_seq_len=1025)


def models(kind: str):
    from cascade_lab.drafter import Drafter, DrafterConfig
    from cascade_lab.model import TargetConfig, Transformer

    if kind == "shipped":
        from cascade_lab import load_drafter, load_target

        return load_target(), load_drafter()
    torch.manual_seed(0)
    target = Transformer(TargetConfig(**LLAMAGEN_B)).eval()
    c = LLAMAGEN_B
    drafter = Drafter(DrafterConfig(vocab_size=c["vocab_size"], dim=c["dim"], n_heads=c["n_heads"],
                                    mlp_hidden=c["mlp_hidden"], max_seq_len=c["max_seq_len"])).eval()
    return target, drafter


def components(target, drafter, B: int, tree_name: str, context: int = 128):
    """name -> zero-argument callable, for one speculative step at batch B with CFG (2B rows)."""
    R = 2 * B
    V = target.cfg.vocab_size
    tree = ck.prepare_tree(tree_name)
    N = tree.num_nodes
    levels = tree.max_depth
    bufs = ck.tree_buffers(tree, context)
    mask = bufs.mask.expand(R, N, N)
    pos = bufs.position_ids.expand(R, N)
    g = torch.Generator().manual_seed(1)
    cls = torch.randint(0, target.cfg.num_classes, (R,), generator=g)
    cache, _, _ = target.prefill(cls, context + 2 * N + 2)
    ctx_tokens = torch.randint(0, V, (R, context - 1), generator=g)
    target.decode_step(cache, ctx_tokens)
    tokens = torch.randint(0, V, (R, N), generator=g)
    one = tokens[:, :1]
    one_mask = torch.ones(R, 1, 1, dtype=torch.bool)
    one_pos = pos[:, :1]
    dcache = drafter.new_cache(R, context + 2 * N + 2)
    per_level = max(1, (N - 1) // max(levels, 1))
    dtok = tokens[:, :per_level]
    dfeat = torch.randn(R, per_level, drafter.cfg.dim, generator=g)
    dmask = torch.eye(per_level, dtype=torch.bool).expand(R, -1, -1)
    dpos = torch.full((R, per_level), context, dtype=torch.long)
    logits = torch.randn(R, N, V, generator=g)
    hidden = torch.randn(B, N, target.cfg.dim, generator=g)
    vtok = tokens[:B]
    seeds = torch.arange(B)
    accepted = torch.full((R, levels + 1), -1, dtype=torch.long)
    accepted[:, :3] = torch.tensor([0, 1, 5])

    def commit():
        target.forward_tree(cache, tokens, mask, pos)  # pending K/V to commit (not timed: subtracted below)
        cache.commit(accepted)
        cache.lengths -= 3  # back to the same context length for the next round

    return {
        "target_1_token": lambda: target.forward_tree(cache, one, one_mask, one_pos),
        f"target_tree_{N}": lambda: target.forward_tree(cache, tokens, mask, pos),
        "drafter_level": lambda: drafter.forward_tree(dcache, dtok, dfeat, dmask, dpos),
        "verify_cascade": lambda: ck.verify(vtok, tree, logits, method=ck.Cascade(), hidden=hidden, seed=seeds,
                                            cfg_scale=3.0, top_k=min(2000, V)),
        "tree_forward_plus_commit": commit,
    }, levels, N


def loop_step_ms(target, drafter, B: int, tree_name: str, num_tokens: int, rounds: int) -> float:
    """Median wall time per verification step of the shipped decode loop itself (Exact, sampled drafting,
    CFG 3, top-k 2000 or V), from the prefill on: what the components above leave out is the loop's Python."""
    V = target.cfg.vocab_size
    classes = torch.arange(B) % target.cfg.num_classes
    per_step = []
    for r in range(rounds):
        t0 = time.perf_counter()
        out = ck.generate(target, classes, drafter=drafter, num_tokens=num_tokens, tree=tree_name, sampled_drafting=True,
                          cfg_scale=3.0, top_k=min(2000, V), seed=r)
        wall = time.perf_counter() - t0
        per_step.append(wall / max(s.target_forwards - 1 for s in out.stats))  # the prefill is not a step
    return statistics.median(per_step) * 1e3


def median_times(fns: dict, rounds: int, inner: int) -> dict:
    for f in fns.values():
        f()
    samples = {k: [] for k in fns}
    for _ in range(rounds):
        for k, f in fns.items():
            t0 = time.perf_counter()
            for _ in range(inner):
                f()
            samples[k].append((time.perf_counter() - t0) / inner)
    return {k: statistics.median(v) for k, v in samples.items()}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--tree", default=None, choices=sorted(ck.NAMED_TREES),
                    help="default: the tree of the --alpha-from run (its α belongs to that tree), else eagle")
    ap.add_argument("--alpha-from", default=os.path.join(RESULTS, "e2e_cpu.json"),
                    help="a JSON with methods[*].alpha (an e2e or demo result) for the projection")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    alphas = {}
    if os.path.exists(args.alpha_from):
        source = json.load(open(args.alpha_from))
        alphas = {m["method"]: m["alpha"] for m in source["methods"]}
        args.tree = args.tree or source.get("settings", {}).get("tree")
    args.tree = args.tree if args.tree in ck.NAMED_TREES else "eagle"
    rows = []
    with torch.no_grad():
        for kind in ("shipped", "llamagen-b-shape"):
            target, drafter = models(kind)
            params = sum(p.numel() for p in target.parameters())
            for B in (1, 8):
                fns, levels, N = components(target, drafter, B, args.tree)
                inner = 3 if kind == "shipped" else 1
                t = median_times(fns, args.rounds, inner)
                t["kv_commit"] = max(0.0, t.pop("tree_forward_plus_commit") - t[f"target_tree_{N}"])
                t1, tree_fwd = t["target_1_token"], t[f"target_tree_{N}"]
                extra = levels * t["drafter_level"] + t["verify_cascade"] + t["kv_commit"]
                loop_ms = loop_step_ms(target, drafter, B, args.tree, 48 if kind == "shipped" else 12,
                                       max(3, args.rounds // 2))
                row = {"model": kind, "params_M": round(params / 1e6, 1), "batch": B, "cfg_rows": 2 * B,
                       "tree": args.tree, "tree_nodes": N, "drafter_levels": levels,
                       "ms": {k: round(v * 1e3, 3) for k, v in t.items()},
                       "tree_over_one_token": round(tree_fwd / t1, 2),
                       "measured_step_ms": round((tree_fwd + extra) * 1e3, 3),
                       "loop_step_ms": round(loop_ms, 3),
                       "loop_rest_ms": round(loop_ms - (tree_fwd + extra) * 1e3, 3),
                       "projection_memory_bound": {
                           m: round(a * t1 / (t1 + extra), 2) for m, a in alphas.items() if m != "ar"},
                       "measured_cpu_speedup_bound": {
                           m: round(a * t1 / (tree_fwd + extra), 2) for m, a in alphas.items() if m != "ar"}}
                rows.append(row)
                print(json.dumps(row), flush=True)
    result = {"command": "python benchmarks/bench_step_cost.py " + " ".join(sys.argv[1:] if argv is None else argv),
              "machine": {"platform": platform.platform(), "cores": os.cpu_count(), "load_1min": os.getloadavg()[0]},
              "versions": {"torch": torch.__version__}, "threads": args.threads, "alpha_from": args.alpha_from,
              "projection_note": ("PROJECTION, not a measurement: speedup = alpha * t(1 token) / (t(1 token) + "
                                  "levels * t(drafter level) + t(verify) + t(commit)), i.e. the tree forward costs "
                                  "what a one-token forward costs (memory-bound target) and the other parts keep "
                                  "their measured cost relative to it."),
              "rows": rows}
    os.makedirs(RESULTS, exist_ok=True)
    with open(os.path.join(RESULTS, "step_cost_cpu.json"), "w") as f:
        json.dump(result, f, indent=2)
    lines = ["# Per-step cost breakdown (CPU) and memory-bound projection", "",
             f"Command: `{result['command']}`; {args.threads} intra-op thread(s); torch {torch.__version__}; "
             f"machine {result['machine']}. Components timed interleaved, medians of {args.rounds} rounds.",
             f"α per method from `{os.path.relpath(args.alpha_from, os.path.dirname(HERE))}`; tree `{args.tree}` "
             f"(drafter forwards per step = its depth: one per level but the last, plus the catch-up).", "",
             "| model | B (rows) | 1 token ms | tree ms (×1 token) | drafter/level ms | verify ms | commit ms |"
             " parts ms | loop step ms (rest) | Exact: CPU bound / projected | CASCADE: CPU bound / projected |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        ms = r["ms"]
        cpu, proj = r["measured_cpu_speedup_bound"], r["projection_memory_bound"]
        lines.append(f"| {r['model']} ({r['params_M']}M) | {r['batch']} ({r['cfg_rows']}) | {ms['target_1_token']} | "
                     f"{ms['target_tree_' + str(r['tree_nodes'])]} (×{r['tree_over_one_token']}) | "
                     f"{ms['drafter_level']} | {ms['verify_cascade']} | {ms['kv_commit']} | "
                     f"{r['measured_step_ms']} | {r['loop_step_ms']} ({r['loop_rest_ms']:+.3f}) | "
                     f"{cpu.get('exact', '—')} / {proj.get('exact', '—')} | "
                     f"{cpu.get('cascade', '—')} / {proj.get('cascade', '—')} |")
    lines += ["", result["projection_note"],
              "CPU bound = α · t(1 token) / measured step time (the parts; the loop's Python excluded).",
              "Loop step = wall time per verification step of `ck.generate` itself (Exact, sampled drafting, CFG 3, "
              "top-k 2000, from the prefill on, so at a shorter context than the parts' 128); rest = loop step − "
              "parts: the loop's Python, drafting draws and probabilities, and the catch-up drafter forward."]
    with open(os.path.join(RESULTS, "step_cost_cpu.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
