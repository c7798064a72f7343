"""One-shot GPU check of the Triton kernels (issue 12), driven by ``benchmarks/gpu_check.sh``.

Sections, each recorded in ONE JSON (+ a markdown table) under ``benchmarks/results/``:

1. versions and device;
2. compile every kernel variant the timing grid uses and read registers / spills from Triton's cache;
3. race / determinism: CASCADE at B=64 with duplicate sibling tokens, the same call 100x, bit-identical;
4. bare-kernel timings with CUDA graphs (``ck.verify(..., out=..., backend="triton")`` captured once, replayed):
   B in {1, 64}, N=60 (``ck.DEEP_CHOICES``), V in {16384, 65536}, CFG on/off, top_k in {0, 2000},
   Exact / CASCADE (D=1280), next to the reference backend (B=1 only, a few calls, no graph) and
   ``torch.softmax`` over all rows (graph-captured);
5. the CUDA parity suite (``pytest tests/test_verify_parity.py -k triton tests/test_triton_kernels.py``),
   run by the shell script after this program, its summary merged into the JSON.

Every section has a time budget; what does not fit is recorded as skipped, never estimated.
``--dry-run`` exercises every code path on the CPU through the Triton interpreter at tiny sizes (no graphs,
no register counts) and writes under ``$TMPDIR``: it checks the script, it measures nothing.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


def parse(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--dry-run", action="store_true", help="CPU interpreter, tiny sizes, nothing measured")
    ap.add_argument("--out", default=None, help="output stem (default benchmarks/results/gpu_check_<device>)")
    ap.add_argument("--budget", type=float, default=330.0, help="seconds for sections 2-4 together")
    ap.add_argument("--merge-pytest", default=None, help="merge a pytest log into an existing JSON and exit")
    return ap.parse_args(argv)


OPTS = parse() if __name__ == "__main__" else None
if OPTS is not None and OPTS.dry_run:
    os.environ["TRITON_INTERPRET"] = "1"

import torch  # noqa: E402

import cascade_kernels as ck  # noqa: E402


def versions(dev):
    import triton

    info = dict(python=platform.python_version(), torch=torch.__version__, triton=triton.__version__,
                cuda=torch.version.cuda, hip=getattr(torch.version, "hip", None), device=str(dev))
    if dev.type == "cuda":
        p = torch.cuda.get_device_properties(dev)
        info.update(name=p.name, sms=p.multi_processor_count, mem_gb=round(p.total_memory / 2**30, 1),
                    capability=f"{p.major}.{p.minor}")
    try:
        info["commit"] = subprocess.run(["git", "-C", ROOT, "rev-parse", "--short", "HEAD"], capture_output=True,
                                        text=True).stdout.strip()
    except Exception:
        pass
    return info


def make_inputs(B, N_tree, V, D, cfg, dev, dup=False, seed=0):
    g = torch.Generator().manual_seed(seed)
    parents = ck.tree_from_choices(N_tree)
    N = parents.shape[0]
    tokens = torch.randint(0, V, (B, N), generator=g)
    if dup:
        tokens = tokens % 3  # duplicate sibling tokens
    logits = torch.randn(B, N, V, generator=g)
    prep = ck.prepare_tree(parents)
    for u in range(N):  # deep walks: each row favours its first child's token
        kids = prep.children[0][u]
        if kids:
            logits[:, u].scatter_(1, tokens[:, kids[0]:kids[0] + 1], 8.0 if dup else 30.0)
    target = torch.cat([logits, logits + 0.1 * torch.randn(B, N, V, generator=g)]) if cfg else logits
    hidden = torch.randn(B, 1, D, generator=g) + 0.3 * torch.randn(B, N, D, generator=g)
    seed_t = torch.randint(0, 2**62, (B,), generator=g)
    tree = ck.prepare_tree(parents, device=dev)
    return tokens.to(dev), tree, target.to(dev), hidden.to(dev), seed_t.to(dev)


def method_of(name):
    return ck.Exact() if name == "exact" else ck.Cascade(tau_pos=0.5, tau_seq=0.3, eps=0.5)


def sync(dev):
    if dev.type == "cuda":
        torch.cuda.synchronize()


def time_fn(fn, dev, reps, graph):
    """Median µs of ``fn`` (replayed from a CUDA graph when ``graph``); CPU interpreter: wall time of 1 call."""
    if dev.type != "cuda":
        t0 = time.time()
        fn()
        return dict(us=1e6 * (time.time() - t0), graph=False, reps=1, note="interpreter: not a speed measure")
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        for _ in range(3):
            fn()
    torch.cuda.current_stream().wait_stream(s)
    sync(dev)
    run = fn
    used_graph = False
    err = None
    if graph:
        try:
            g = torch.cuda.CUDAGraph()
            with torch.cuda.graph(g):
                fn()
            run = g.replay
            used_graph = True
        except Exception as e:  # recorded, then timed without the graph
            err = f"{type(e).__name__}: {e}"[:300]
            sync(dev)
    times = []
    for _ in range(reps):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        run()
        b.record()
        b.synchronize()
        times.append(1e3 * a.elapsed_time(b))
    times.sort()
    return dict(us=times[len(times) // 2], min_us=times[0], graph=used_graph, reps=reps, graph_error=err)


def kernel_registers():
    """(kernel, variant key, n_regs, n_spills) for every compiled variant in Triton's cache."""
    from cascade_kernels.ops.similarity_sets import triton as st
    from cascade_kernels.ops.verify import triton as vt

    rows = []
    for fn in (vt._phase1_kernel, vt._walk_kernel, st._similarity_kernel):
        caches = getattr(fn, "device_caches", None)
        kernels = []
        if caches:
            for entry in caches.values():
                cache = entry[0] if isinstance(entry, tuple) else entry
                kernels += list(cache.values()) if isinstance(cache, dict) else []
        elif hasattr(fn, "cache"):
            for cache in fn.cache.values():
                kernels += list(cache.values())
        for k in kernels:
            try:
                k._init_handles()
            except Exception:
                pass
            meta = getattr(k, "metadata", None)
            rows.append(dict(kernel=fn.__name__ if hasattr(fn, "__name__") else str(fn),
                             n_regs=getattr(k, "n_regs", None), n_spills=getattr(k, "n_spills", None),
                             num_warps=getattr(meta, "num_warps", None), shared=getattr(meta, "shared", None)))
    return rows


def determinism(dev, dry):
    B, V = (2, 64) if dry else (64, 16384)
    reps = 5 if dry else 100
    tokens, tree, logits, hidden, seed = make_inputs(B, ck.MC_SIM_7B_63, V, 64, False, dev, dup=True, seed=1)
    method = ck.Cascade(tau_pos=0.0, tau_seq=0.0, eps=0.6)
    res = {}
    for residual in ("transport", "standard"):
        first = ck.verify(tokens, tree, logits, method=method, hidden=hidden, seed=seed, residual=residual,
                          backend="triton")
        same = 0
        for _ in range(reps - 1):
            o = ck.verify(tokens, tree, logits, method=method, hidden=hidden, seed=seed, residual=residual,
                          backend="triton")
            same += all(torch.equal(a, b) for a, b in zip(first[:5], o[:5]))
        ref = ck.verify(tokens.cpu(), tree.parents.cpu(), logits.cpu(), method=method, hidden=hidden.cpu(),
                        seed=seed.cpu(), residual=residual, backend="reference")
        agree = all(torch.equal(getattr(ref, f), getattr(first, f).cpu())
                    for f in ("accept_len", "accepted_nodes", "next_token", "status"))
        res[residual] = dict(B=B, V=V, calls=reps, identical=same + 1, matches_reference=agree,
                             mean_accept=float(first.accept_len.float().mean()))
    return res


def timing_grid(dry):
    if dry:  # B=2 takes the large-batch path (MAX_PHASE1_ROWS is lowered in a dry run)
        return [dict(B=1, V=64, cfg=False, top_k=0, method="exact"), dict(B=1, V=64, cfg=True, top_k=20, method="cascade"),
                dict(B=2, V=64, cfg=True, top_k=0, method="exact"), dict(B=2, V=64, cfg=False, top_k=20, method="cascade")]
    grid = []
    for V in (16384, 65536):
        for B in (1, 64):
            for m in ("cascade", "exact"):
                for cfg in (False, True):
                    for k in (0, 2000):
                        grid.append(dict(B=B, V=V, cfg=cfg, top_k=k, method=m))
    return grid


def timings(dev, dry, deadline):
    rows = []
    tree_choices = ck.MC_SIM_7B_63 if dry else ck.DEEP_CHOICES
    D = 16 if dry else 1280
    reps = 1 if dry else 50
    for cfgc in timing_grid(dry):
        row = dict(cfgc, N=len(tree_choices) + 1)
        if time.time() > deadline:
            row["skipped"] = "time budget"
            rows.append(row)
            continue
        try:
            tokens, tree, logits, hidden, seed = make_inputs(cfgc["B"], tree_choices, cfgc["V"], D, cfgc["cfg"], dev)
            method = method_of(cfgc["method"])
            kw = dict(method=method, hidden=hidden if cfgc["method"] == "cascade" else None, seed=seed,
                      top_k=cfgc["top_k"], cfg_scale=2.0 if cfgc["cfg"] else None)
            out = ck.verify(tokens, tree, logits, backend="triton", **kw)
            row["mean_accept"] = float(out.accept_len.float().mean())
            row["triton"] = time_fn(lambda: ck.verify(tokens, tree, logits, backend="triton", out=out, **kw), dev,
                                    reps, graph=True)
            if cfgc["cfg"]:
                floor = lambda: torch.softmax(logits[cfgc["B"]:] + 2.0 * (logits[:cfgc["B"]] - logits[cfgc["B"]:]),  # noqa: E731
                                              dim=-1)
            else:
                floor = lambda: torch.softmax(logits.float(), dim=-1)  # noqa: E731
            row["softmax_all_rows"] = time_fn(floor, dev, reps, graph=True)
            if cfgc["B"] == 1 or dry:  # the reference loop: a few eager calls
                row["reference"] = time_fn(lambda: ck.verify(tokens, tree, logits, backend="reference", **kw), dev,
                                           1 if dry else 3, graph=False)
        except Exception as e:
            row["error"] = f"{type(e).__name__}: {e}"[:400]
        rows.append(row)
        print(json.dumps(row), flush=True)
    return rows


def render(res):
    v = res["versions"]
    lines = [f"# GPU check ({'DRY RUN on CPU: nothing here is a GPU measurement' if res['dry_run'] else v.get('name')})",
             "", f"torch {v['torch']} · triton {v['triton']} · cuda {v.get('cuda')} · hip {v.get('hip')} · "
             f"commit {v.get('commit')}", "", "## Determinism (same call repeated)", ""]
    for k, d in res.get("determinism", {}).items():
        lines.append(f"- {k}: B={d['B']} V={d['V']}: {d['identical']}/{d['calls']} identical, "
                     f"matches reference: {d['matches_reference']}")
    lines += ["", "## Registers / spills", "", "| kernel | warps | regs | spills | shared |", "|---|---|---|---|---|"]
    for r in res.get("registers", []):
        lines.append(f"| {r['kernel']} | {r['num_warps']} | {r['n_regs']} | {r['n_spills']} | {r['shared']} |")
    lines += ["", "## Bare-kernel time (µs, median, CUDA graph replay)", "",
              "| B | N | V | CFG | top_k | method | triton | graph | softmax all rows | reference |",
              "|---|---|---|---|---|---|---|---|---|---|"]
    for r in res.get("timings", []):
        if "triton" not in r:
            lines.append(f"| {r['B']} | {r['N']} | {r['V']} | {r['cfg']} | {r['top_k']} | {r['method']} | "
                         f"{r.get('skipped') or r.get('error')} | | | |")
            continue
        ref = r.get("reference", {}).get("us")
        lines.append(f"| {r['B']} | {r['N']} | {r['V']} | {r['cfg']} | {r['top_k']} | {r['method']} | "
                     f"{r['triton']['us']:.1f} | {r['triton']['graph']} | {r['softmax_all_rows']['us']:.1f} | "
                     f"{'' if ref is None else f'{ref:.0f}'} |")
    if "pytest" in res:
        lines += ["", "## CUDA parity suite", "", "```", res["pytest"], "```"]
    return "\n".join(lines) + "\n"


def main():
    opts = OPTS
    if opts.merge_pytest:
        with open(opts.out + ".json") as f:
            res = json.load(f)
        with open(opts.merge_pytest) as f:
            res["pytest"] = "".join(f.readlines()[-15:])
        with open(opts.out + ".json", "w") as f:
            json.dump(res, f, indent=1)
        with open(opts.out + ".md", "w") as f:
            f.write(render(res))
        return
    dry = opts.dry_run
    dev = torch.device("cpu" if dry else "cuda")
    if not dry and not torch.cuda.is_available():
        sys.exit("no CUDA/ROCm device: use --dry-run on a CPU machine")
    torch.manual_seed(0)
    if dry:
        from cascade_kernels.ops.verify import triton as vt

        vt.MAX_PHASE1_ROWS = 40  # so that B=2 (52 rows) exercises the walk-reduces-its-rows path
    out = opts.out or (os.path.join(os.environ.get("TMPDIR", "/tmp"), "gpu_check_dry") if dry else
                       os.path.join(ROOT, "benchmarks", "results", "gpu_check_" + torch.cuda.get_device_name(0)
                                    .replace(" ", "_")))
    t0 = time.time()
    deadline = t0 + opts.budget
    res = dict(dry_run=dry, versions=versions(dev), command=" ".join(sys.argv))
    print(json.dumps(res["versions"]), flush=True)
    res["determinism"] = determinism(dev, dry)
    print(json.dumps(res["determinism"]), flush=True)
    res["timings"] = timings(dev, dry, deadline)
    res["registers"] = [] if dry else kernel_registers()
    res["seconds"] = round(time.time() - t0, 1)
    os.makedirs(os.path.dirname(out), exist_ok=True)
    with open(out + ".json", "w") as f:
        json.dump(res, f, indent=1)
    with open(out + ".md", "w") as f:
        f.write(render(res))
    print(render(res))
    print("OUT", out)


if __name__ == "__main__":
    main()
