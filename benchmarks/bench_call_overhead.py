"""Per-call overhead of ``ck.verify`` on the C++ backend (issue 15 targets), with a baseline checkout.

B=1, EAGLE-1 tree (N=26), V=64, Exact, one thread: the kernel's work is tiny, so the time is the call
path. Measured: a prepared tree (``ck.prepare_tree``), raw parents passed again (cache hit), and the
C++ call alone; with ``--baseline DIR`` (a checkout of an older commit with its extension built in
place) the same call on that code, in alternating subprocesses (ABAB...) so machine load hits both.

    python benchmarks/bench_call_overhead.py [--baseline /path/to/old/checkout] [--rounds 5]
    pytest benchmarks/bench_call_overhead.py --benchmark-only
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

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
RESULTS = os.path.join(HERE, "results")

# runs inside a subprocess with the package under test first on sys.path; prints JSON
PROBE = r"""
import json, statistics, sys, time, torch
torch.set_num_threads(1)
import cascade_kernels as ck
prepared = hasattr(ck, "prepare_tree")
p = ck.tree_from_choices(ck.MC_SIM_7B_63); N = len(p); V = 64
g = torch.Generator().manual_seed(0)
t = torch.randint(0, V, (1, N), generator=g); l = torch.randn(1, N, V, generator=g)
raw = p.unsqueeze(0)

def median_us(f, n=2000, reps=7):
    for _ in range(300): f()
    xs = []
    for _ in range(reps):
        t0 = time.perf_counter()
        for _ in range(n): f()
        xs.append((time.perf_counter() - t0) / n * 1e6)
    return statistics.median(xs)

out = {"raw_parents_us": median_us(lambda: ck.verify(t, raw, l, backend="cpu"))}
if prepared:
    tree = ck.prepare_tree(p)
    out["prepared_tree_us"] = median_us(lambda: ck.verify(t, tree, l, backend="cpu"))
    from cascade_kernels.validation import check_verify_inputs
    from cascade_kernels.ops.verify import cpu
    from cascade_kernels.ops.verify.api import _outputs
    args = check_verify_inputs(t, tree, l, ck.Exact(), None, None, "transport", None, 1.0, 0, 1.0, None, 0)
    o = _outputs(args, None)
    out["cpp_call_only_us"] = median_us(lambda: cpu.verify(args, o))
print(json.dumps(out))
"""


def probe(root: str) -> dict:
    env = dict(os.environ, PYTHONPATH=root, OMP_NUM_THREADS="1")
    res = subprocess.run([sys.executable, "-c", PROBE], env=env, capture_output=True, text=True, timeout=600,
                         cwd=root)
    if res.returncode:
        raise RuntimeError(res.stderr[-2000:])
    return json.loads(res.stdout.strip().splitlines()[-1])


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--baseline", help="checkout of an older commit with its extension built in place")
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args(argv)
    runs = {"current": [], "baseline": []}
    for _ in range(args.rounds):
        runs["current"].append(probe(ROOT))
        if args.baseline:
            runs["baseline"].append(probe(args.baseline))
    med = {who: {k: statistics.median(r[k] for r in rs) for k in rs[0]} for who, rs in runs.items() if rs}
    base = None
    if args.baseline:
        base = subprocess.run(["git", "-C", args.baseline, "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True).stdout.strip()
    result = {
        "command": "python benchmarks/bench_call_overhead.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "machine": {"platform": platform.platform(), "cpu": platform.processor() or platform.machine(),
                    "cores": os.cpu_count(), "load_1min": os.getloadavg()[0]},
        "versions": {"torch": torch.__version__, "python": platform.python_version()},
        "shape": "B=1, EAGLE-1 tree N=26, V=64, Exact, backend='cpu', 1 thread",
        "baseline_commit": base, "medians_us": med, "rounds": runs,
        "targets_us": {"prepared_tree": 15.0, "raw_parents_cache_hit": 25.0},
    }
    os.makedirs(RESULTS, exist_ok=True)
    with open(os.path.join(RESULTS, "call_overhead_cpu.json"), "w") as f:
        json.dump(result, f, indent=2)
    cur = med["current"]
    lines = ["# Per-call overhead of ck.verify (backend='cpu')", "",
             f"Command: `{result['command']}`. Machine: {result['machine']}. torch {torch.__version__}.",
             f"Shape: {result['shape']}. Medians of {args.rounds} alternating subprocess rounds, each the median "
             "of 7 repetitions of 2000 calls.", "",
             "| call | current (µs) | target (µs) | met |" + (f" baseline {base} (µs) |" if base else ""),
             "|---|---|---|---|" + ("---|" if base else "")]
    rows = [("prepared tree", "prepared_tree_us", 15.0), ("raw parents again (cache hit)", "raw_parents_us", 25.0),
            ("C++ call alone (args already checked)", "cpp_call_only_us", None)]
    for label, key, target in rows:
        b = f" {med['baseline'].get(key, float('nan')):.1f} |" if base else ""
        if base and key == "raw_parents_us":
            b = f" {med['baseline'][key]:.1f} |"
        met = "" if target is None else ("yes" if cur[key] <= target else "no")
        lines.append(f"| {label} | {cur[key]:.1f} | {target or '—'} | {met} |" + b)
    with open(os.path.join(RESULTS, "call_overhead_cpu.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))


def test_call_overhead(benchmark):
    """pytest-benchmark entry: the prepared-tree call, one thread."""
    import cascade_kernels as ck

    torch.set_num_threads(1)
    p = ck.tree_from_choices(ck.MC_SIM_7B_63)
    t, l = torch.randint(0, 64, (1, len(p))), torch.randn(1, len(p), 64)
    tree = ck.prepare_tree(p)
    backend = "cpu" if "cpu" in ck.available_backends() else "reference"
    benchmark(lambda: ck.verify(t, tree, l, backend=backend))


if __name__ == "__main__":
    main()
