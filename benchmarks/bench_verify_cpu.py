"""Benchmarks of ck.verify on the CPU: reference vs the C++ backend vs the compute floor.

Two entry points:
* ``pytest benchmarks/bench_verify_cpu.py`` -- a small pytest-benchmark suite;
* ``python benchmarks/bench_verify_cpu.py [--quick]`` -- the full table, written to
  ``benchmarks/results/verify_cpu.json`` and ``verify_cpu.md``.

Per case (same process, same machine, medians): the reference backend, the ``cpu`` backend, a one-thread
``torch.softmax`` over only the rows the walk visited (gathered beforehand into a contiguous tensor: the
compute floor) and a streaming read (``x.sum()``) of those rows. "shallow": random logits, the walk
stops at the root; "deep": every node's target puts most of its mass on its first child's token, so the
walk follows the first-child chain to a leaf (depth 5 for the EAGLE tree N=26, 7 for the deep tree N=60).
"""
import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import cascade_kernels as ck  # noqa: E402

TREES = {26: ck.MC_SIM_7B_63, 60: ck.DEEP_CHOICES}
D = 1280


def make_inputs(B, N, V, *, deep, cfg, seed=0):
    gen = torch.Generator().manual_seed(seed)
    parents = ck.tree_from_choices(TREES[N]).expand(B, N).contiguous()
    tokens = torch.randint(0, V, (B, N), generator=gen)
    logits = torch.randn(2 * B if cfg else B, N, V, generator=gen)
    if deep:  # each node's first child gets almost all of the node's mass (in both CFG halves)
        first = {}
        for i in range(1, N):
            first.setdefault(int(parents[0, i]), i)
        for u, c in first.items():
            logits[torch.arange(logits.shape[0]), u, tokens[torch.arange(logits.shape[0]) % B, c]] += 25.0
    hidden = torch.randn(B, N, D, generator=gen)
    return dict(tokens=tokens, parents=parents, target_logits=logits, hidden=hidden,
                seed=torch.arange(B, dtype=torch.int64))


def method_of(name):
    return ck.Exact() if name == "exact" else ck.Cascade()


def call(inputs, method, backend, cfg, top_k):
    kw = dict(inputs)
    if method == "exact":
        kw.pop("hidden")
    return ck.verify(**kw, method=method_of(method), cfg_scale=2.0 if cfg else None, top_k=top_k, backend=backend)


def timeit(fn, budget_s=0.4, min_reps=3, max_reps=40):
    fn()  # warm-up
    times = []
    start = time.perf_counter()
    while len(times) < min_reps or (time.perf_counter() - start < budget_s and len(times) < max_reps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def visited_rows(inputs, out, cfg):
    """The target rows the walk read (cond and uncond halves with CFG), gathered contiguously."""
    B, N = inputs["tokens"].shape
    rows = []
    for b in range(B):
        for node in out.accepted_nodes[b].tolist():
            if node >= 0:
                rows.append(b * N + node)
                if cfg:
                    rows.append((B + b) * N + node)
    flat = inputs["target_logits"].reshape(-1, inputs["target_logits"].shape[-1])
    return flat[torch.tensor(rows)].contiguous()


def run_case(B, N, V, method, cfg, top_k, deep, *, with_reference=True, threads=(1, 2)):
    inputs = make_inputs(B, N, V, deep=deep, cfg=cfg)
    res = dict(B=B, N=N, V=V, method=method, cfg=cfg, top_k=top_k, case="deep" if deep else "shallow")
    torch.set_num_threads(1)
    out = call(inputs, method, "cpu", cfg, top_k)
    res["mean_accept_len"] = float(out.accept_len.float().mean())
    rows = visited_rows(inputs, out, cfg)
    res["visited_rows"] = rows.shape[0]
    res["visited_MB"] = rows.numel() * rows.element_size() / 1e6
    res["floor_softmax_s"] = timeit(lambda: torch.softmax(rows, -1))
    res["stream_read_s"] = timeit(lambda: rows.sum())
    for t in threads:
        torch.set_num_threads(t)
        res[f"cpu_{t}t_s"] = timeit(lambda: call(inputs, method, "cpu", cfg, top_k))
    torch.set_num_threads(max(threads))
    if with_reference:
        ref = call(inputs, method, "reference", cfg, top_k)
        for name in ("accept_len", "accepted_nodes", "next_token", "status"):
            assert torch.equal(getattr(ref, name), getattr(out, name)), (res, name)
        res["reference_s"] = timeit(lambda: call(inputs, method, "reference", cfg, top_k), budget_s=1.0, min_reps=1,
                                    max_reps=5)
    else:
        res["reference_s"] = None
    cpu_best = min(res[f"cpu_{t}t_s"] for t in threads)
    res["cpu_s"] = cpu_best
    res["cpu_over_reference"] = cpu_best / res["reference_s"] if res["reference_s"] else None
    res["speedup_vs_reference"] = res["reference_s"] / cpu_best if res["reference_s"] else None
    res["cpu_1t_over_floor"] = res["cpu_1t_s"] / res["floor_softmax_s"]
    res["cpu_1t_GBps_visited"] = res["visited_MB"] / 1e3 / res["cpu_1t_s"]
    res["stream_GBps"] = res["visited_MB"] / 1e3 / res["stream_read_s"]
    if 2 in threads:
        res["threads_2_over_1_speedup"] = res["cpu_1t_s"] / res["cpu_2t_s"]
    del inputs
    return res


def grid(quick):
    cases = []
    Bs = (1, 8) if quick else (1, 8, 64)
    for B in Bs:
        for N in (26, 60):
            for V in (16384, 65536):
                for method in ("exact", "cascade"):
                    for deep in (False, True):
                        cases.append((B, N, V, method, False, 0, deep))
    for method in ("exact", "cascade"):  # CFG and top-k variants
        for deep in (False, True):
            cases.append((8, 60, 65536, method, True, 0, deep))
            cases.append((8, 60, 65536, method, False, 2000, deep))
            cases.append((8, 60, 65536, method, True, 2000, deep))
    return cases


def machine_info():
    info = dict(python=sys.version.split()[0], torch=torch.__version__, platform=platform.platform(),
                cpu_count=os.cpu_count(), torch_cpu_capability=torch.backends.cpu.get_cpu_capability())
    try:
        from cascade_kernels import _C
        info["extension_isa"] = _C.isa()
    except Exception:  # pragma: no cover
        pass
    try:
        model = [ln for ln in open("/proc/cpuinfo") if ln.startswith("model name")]
        info["cpu_model"] = model[0].split(":", 1)[1].strip() if model else "?"
    except OSError:  # pragma: no cover
        pass
    try:
        info["git_commit"] = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                                            cwd=os.path.dirname(os.path.abspath(__file__))).stdout.strip()
    except Exception:  # pragma: no cover
        pass
    return info


def fmt(x, spec=".3g"):
    return "—" if x is None else format(x, spec)


def write_markdown(path, info, results, command, targets):
    lines = ["# ck.verify on the CPU: reference vs C++ backend vs softmax floor", "",
             f"Command: `{command}`", "",
             "Machine: " + ", ".join(f"{k}={v}" for k, v in info.items()), "",
             "Times are medians in ms. `floor` = one-thread torch.softmax over the visited rows only (gathered, "
             "contiguous); `read` = x.sum() of those rows. cpu 1t / 2t = the C++ backend with 1 / 2 threads "
             "(OpenMP over sequences). GB/s = visited bytes / cpu 1-thread time. Reference is skipped (—) at "
             "B=64, V=65536 (minutes per call: it processes all B*N rows).", "",
             "| B | N | V | method | CFG | top-k | case | accept | rows | ref ms | cpu 1t ms | cpu 2t ms | floor ms | "
             "read ms | ref/cpu | cpu1t/floor | GB/s | 2t speedup |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        lines.append(
            f"| {r['B']} | {r['N']} | {r['V']} | {r['method']} | {'on' if r['cfg'] else 'off'} | {r['top_k'] or 'off'} | "
            f"{r['case']} | {r['mean_accept_len']:.2f} | {r['visited_rows']} | "
            f"{fmt(r['reference_s'] and r['reference_s'] * 1e3, '.1f')} | {r['cpu_1t_s'] * 1e3:.3f} | "
            f"{r['cpu_2t_s'] * 1e3:.3f} | {r['floor_softmax_s'] * 1e3:.3f} | {r['stream_read_s'] * 1e3:.3f} | "
            f"{fmt(r['speedup_vs_reference'], '.0f')} | {r['cpu_1t_over_floor']:.2f} | "
            f"{r['cpu_1t_GBps_visited']:.1f} | {r['threads_2_over_1_speedup']:.2f} |")
    lines += ["", "## Targets", ""]
    for t in targets:
        lines.append(f"- {t}")
    open(path, "w").write("\n".join(lines) + "\n")


def evaluate_targets(results):
    out = []
    sh = [r for r in results if r["case"] == "shallow" and r["speedup_vs_reference"]]
    dp = [r for r in results if r["case"] == "deep"]
    dpr = [r for r in dp if r["speedup_vs_reference"]]
    b64 = [r for r in results if r["B"] == 64]
    if sh:
        worst = min(r["speedup_vs_reference"] for r in sh)
        met = sum(r["speedup_vs_reference"] >= 100 for r in sh)
        out.append(f"shallow >= 100x faster than reference: {'MET' if met == len(sh) else 'MISSED'} (met in {met}/{len(sh)} "
                   f"cases (min {worst:.0f}x, median {statistics.median(r['speedup_vs_reference'] for r in sh):.0f}x)")
    if dp:
        worst = max(r["cpu_1t_over_floor"] for r in dp)
        met = sum(r["cpu_1t_over_floor"] <= 1.5 for r in dp)
        out.append(f"deep <= 1.5x softmax-of-visited-rows floor (1 thread): {'MET' if met == len(dp) else 'MISSED'} (met in "
                   f"{met}/{len(dp)} cases; worst {worst:.2f}x, median "
                   f"{statistics.median(r['cpu_1t_over_floor'] for r in dp):.2f}x)")
    if dpr:
        met = sum(r["speedup_vs_reference"] >= 20 for r in dpr)
        out.append(f"deep >= 20x faster than reference: {'MET' if met == len(dpr) else 'MISSED'} (met in {met}/{len(dpr)} "
                   f"cases (min {min(r['speedup_vs_reference'] for r in dpr):.0f}x)")
    if b64:
        met = sum(r["threads_2_over_1_speedup"] >= 1.6 for r in b64)
        out.append(f"B=64 >= 1.6x faster with 2 threads than 1: {'MET' if met == len(b64) else 'MISSED'} (met in "
                   f"{met}/{len(b64)} cases; min {min(r['threads_2_over_1_speedup'] for r in b64):.2f}x, median "
                   f"{statistics.median(r['threads_2_over_1_speedup'] for r in b64):.2f}x; the 2 cores are shared)")
    return out


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="B in {1, 8} only")
    ap.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "results"))
    args = ap.parse_args(argv)
    info = machine_info()
    results = []
    t0 = time.time()
    for case in grid(args.quick):
        B, N, V, method, cfg, top_k, deep = case
        with_ref = not (B == 64 and V == 65536)
        r = run_case(B, N, V, method, cfg, top_k, deep, with_reference=with_ref)
        results.append(r)
        print(f"{case}: cpu1t {r['cpu_1t_s'] * 1e3:.3f} ms, 2t {r['cpu_2t_s'] * 1e3:.3f} ms, floor "
              f"{r['floor_softmax_s'] * 1e3:.3f} ms, ref {fmt(r['reference_s'] and r['reference_s'] * 1e3, '.1f')} ms, "
              f"accept {r['mean_accept_len']:.2f}  [{time.time() - t0:.0f}s]", flush=True)
    targets = evaluate_targets(results)
    command = "python " + " ".join([os.path.relpath(__file__)] + (argv if argv is not None else sys.argv[1:]))
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "verify_cpu.json"), "w") as f:
        json.dump(dict(machine=info, command=command, total_s=time.time() - t0, targets=targets, results=results), f,
                  indent=1)
    write_markdown(os.path.join(args.out, "verify_cpu.md"), info, results, command, targets)
    print("\n".join(targets))


# ----------------------------------------------------------------------------------------------------
# pytest-benchmark suite (small shapes; the table above is the full picture)
try:
    import pytest

    @pytest.mark.parametrize("backend", ["reference", "cpu"])
    @pytest.mark.parametrize("deep", [False, True], ids=["shallow", "deep"])
    @pytest.mark.parametrize("B", [1, 8])
    def test_bench_verify(benchmark, backend, deep, B):
        if backend == "cpu" and "cpu" not in ck.available_backends():
            pytest.skip("C++ extension not built")
        inputs = make_inputs(B, 26, 16384, deep=deep, cfg=False)
        benchmark(lambda: call(inputs, "exact", backend, False, 0))

    def test_bench_softmax_floor(benchmark):
        inputs = make_inputs(8, 26, 16384, deep=True, cfg=False)
        out = call(inputs, "exact", "reference", False, 0)
        rows = visited_rows(inputs, out, False)
        benchmark(lambda: torch.softmax(rows, -1))
except ImportError:  # pragma: no cover
    pass


if __name__ == "__main__":
    main()
