"""Benchmarks of ``ck.verify``: reference vs the fastest fused backend of the device vs the softmax floor.

Two entry points:

* pytest-benchmark suite (a reduced grid)::

      python -m pytest benchmarks/bench_verify.py -p no:cacheprovider --benchmark-only

  On a CUDA machine this times ``triton`` (and ``reference``) on the GPU; on a CPU-only machine the Triton
  rows are skipped (the interpreter is not a speed measure) and ``cpu`` is timed when it is built.

* script (the full table)::

      python benchmarks/bench_verify.py [--quick]

  writes ``benchmarks/results/verify_compare_<device>.json`` and ``.md`` (``verify_cpu.*`` belongs to
  ``bench_verify_cpu.py``) (device = ``cpu`` or ``cuda``) with the
  machine, torch/triton versions and the command.

Shapes: B in {1, 8, 64}, N in {26 (EAGLE mc_sim_7b_63), 60 (ck.DEEP_CHOICES)}, (V, D) in
{(16384, 1280), (65536, 4096)}, with and without CFG (``cfg_scale=2``: the logits tensor is [2B, N, V]),
methods Exact and Cascade (Cascade reads hidden [B, N, D]). Inputs are "deep": every node's target puts
most of its mass on its first child's token, so each walk follows the first-child chain to a leaf.
Providers, same process, medians of interleaved repetitions:

* ``reference`` — the PyTorch reference backend (skipped when the logits exceed ``REF_MAX_ELEMS``);
* the fused backend of the device — ``triton`` on CUDA; on the CPU whatever ``ck.available_backends()``
  offers besides ``reference`` / ``triton`` (the C++ ``cpu`` backend when built), else nothing;
* ``floor`` — one ``torch.softmax`` over all ``[B, N, V]`` float32 rows (after the CFG combine when CFG is
  on), the cost of materializing every ``q``, which a fused walk avoids.

GB/s = bytes of the inputs the op must be able to read (all logits, + hidden for Cascade) / median time.
A fused walk reads only the visited rows, so its GB/s over the whole tensor can exceed memory bandwidth.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time

import pytest
import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import cascade_kernels as ck  # noqa: E402

TREES = {26: ck.MC_SIM_7B_63, 60: ck.DEEP_CHOICES}
VD = [(16384, 1280), (65536, 4096)]
REF_MAX_ELEMS = 2**27  # reference above this many logits (fp32: 512 MiB) is skipped (time and memory)
MAX_ELEMS = 2**28  # no case above this (this machine's RAM); noted in the results
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def fused_backend():
    """The fastest fused backend for DEVICE, or None."""
    avail = ck.available_backends()
    if DEVICE == "cuda":
        return "triton" if "triton" in avail else None
    others = [b for b in avail if b not in ("reference", "triton")]
    return others[0] if others else None


def make_inputs(B, N, V, D, cfg, seed=0):
    gen = torch.Generator().manual_seed(seed)
    parents = ck.tree_from_choices(TREES[N]).expand(B, N).contiguous()
    tokens = torch.randint(0, V, (B, N), generator=gen)
    rows = 2 * B if cfg else B
    logits = torch.randn(rows, N, V, generator=gen)
    first = {}
    for i in range(1, N):
        first.setdefault(int(parents[0, i]), i)
    r = torch.arange(rows)
    for u, c in first.items():
        logits[r, u, tokens[r % B, c]] += 25.0
    hidden = torch.randn(B, N, D, generator=gen)
    d = dict(tokens=tokens, parents=parents, target_logits=logits, hidden=hidden,
             seed=torch.arange(B, dtype=torch.int64))
    return {k: v.to(DEVICE) for k, v in d.items()}


def verify_fn(inputs, method, backend, cfg):
    kw = dict(inputs)
    if method == "exact":
        kw.pop("hidden")
    m = ck.Exact() if method == "exact" else ck.Cascade()
    return lambda: ck.verify(**kw, method=m, cfg_scale=2.0 if cfg else None, backend=backend)


def floor_fn(inputs, cfg):
    x = inputs["target_logits"]
    if cfg:
        half = x.shape[0] // 2
        return lambda: torch.softmax(x[half:] + 2.0 * (x[:half] - x[half:]), dim=-1)
    return lambda: torch.softmax(x, dim=-1)


def sync():
    if DEVICE == "cuda":
        torch.cuda.synchronize()


def bytes_read(B, N, V, D, cfg, method):
    n = (2 if cfg else 1) * B * N * V * 4
    return n + (B * N * D * 4 if method == "cascade" else 0)


# ------------------------------------------------------------------------------------------------
# pytest-benchmark suite (reduced grid)
# ------------------------------------------------------------------------------------------------
PYTEST_CASES = [pytest.param(B, N, V, D, cfg, m, id=f"B{B}-N{N}-V{V}-{'cfg-' if cfg else ''}{m}")
                for B, N in ((1, 26), (8, 60)) for V, D in VD[:1] for cfg in (False, True)
                for m in ("exact", "cascade")]


@pytest.mark.parametrize("provider", ["reference", "fused", "floor"])
@pytest.mark.parametrize("B,N,V,D,cfg,method", PYTEST_CASES)
def test_verify(benchmark, B, N, V, D, cfg, method, provider):
    inputs = make_inputs(B, N, V, D, cfg)
    if provider == "fused":
        backend = fused_backend()
        if backend is None:
            pytest.skip("no fused backend on this device (Triton on the CPU runs only through the interpreter, "
                        "which is not a speed measure; the C++ 'cpu' backend is not built)")
        fn = verify_fn(inputs, method, backend, cfg)
    elif provider == "reference":
        fn = verify_fn(inputs, method, "reference", cfg)
    else:
        fn = floor_fn(inputs, cfg)

    def run():
        out = fn()
        sync()
        return out

    benchmark.extra_info["bytes"] = bytes_read(B, N, V, D, cfg, method)
    benchmark.pedantic(run, rounds=5, iterations=1, warmup_rounds=1)
    med = benchmark.stats.stats.median
    benchmark.extra_info["GB/s"] = benchmark.extra_info["bytes"] / med / 1e9


# ------------------------------------------------------------------------------------------------
# script
# ------------------------------------------------------------------------------------------------
def timeit_many(fns, budget_s, min_reps=2, max_reps=15):
    """Interleaved repetitions of several callables; returns {name: median seconds}."""
    times = {k: [] for k in fns}
    for fn in fns.values():
        fn()
        sync()  # warm-up
    start = time.perf_counter()
    reps = 0
    while reps < max_reps and (reps < min_reps or time.perf_counter() - start < budget_s):
        for k, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            sync()
            times[k].append(time.perf_counter() - t0)
        reps += 1
    return {k: statistics.median(v) for k, v in times.items()}, reps


def machine_info():
    info = dict(platform=platform.platform(), python=platform.python_version(), torch=torch.__version__,
                threads=torch.get_num_threads(), cpus=os.cpu_count(), device=DEVICE)
    try:
        import triton

        info["triton"] = triton.__version__
    except Exception:  # pragma: no cover
        info["triton"] = None
    try:
        with open("/proc/cpuinfo") as f:
            info["cpu"] = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), "")
    except OSError:  # pragma: no cover
        pass
    if DEVICE == "cuda":
        info["gpu"] = torch.cuda.get_device_name()
    try:
        info["commit"] = subprocess.check_output(["git", "rev-parse", "--short", "HEAD"], text=True).strip()
    except Exception:  # pragma: no cover
        info["commit"] = None
    return info


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="B in {1, 8} and V = 16384 only")
    ap.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "results"))
    args = ap.parse_args()
    fused = fused_backend()
    rows = []
    t_start = time.perf_counter()
    Bs = (1, 8) if args.quick else (1, 8, 64)
    vds = VD[:1] if args.quick else VD
    for B in Bs:
        for N in (26, 60):
            for V, D in vds:
                for cfg in (False, True):
                    elems = (2 if cfg else 1) * B * N * V
                    if elems > MAX_ELEMS:
                        for method in ("exact", "cascade"):
                            rows.append(dict(B=B, N=N, V=V, D=D, cfg=cfg, method=method,
                                             note=f"skipped: {elems * 4 / 2**30:.1f} GiB of logits"))
                        continue
                    inputs = make_inputs(B, N, V, D, cfg)
                    for method in ("exact", "cascade"):
                        fns = {"floor": floor_fn(inputs, cfg)}
                        note = []
                        if elems <= REF_MAX_ELEMS:
                            fns["reference"] = verify_fn(inputs, method, "reference", cfg)
                        else:
                            note.append("reference skipped (size)")
                        if fused:
                            fns[fused] = verify_fn(inputs, method, fused, cfg)
                        budget = 1.5 if elems <= 2**24 else 0.5
                        med, reps = timeit_many(fns, budget)
                        nbytes = bytes_read(B, N, V, D, cfg, method)
                        row = dict(B=B, N=N, V=V, D=D, cfg=cfg, method=method, reps=reps, bytes=nbytes,
                                   note="; ".join(note))
                        for k, v in med.items():
                            row[f"{k}_ms"] = v * 1e3
                            row[f"{k}_GBps"] = nbytes / v / 1e9
                            if "reference" in med:
                                row[f"{k}_x_ref"] = med["reference"] / v
                        rows.append(row)
                        print(json.dumps(row), flush=True)
                    del inputs
    elapsed = time.perf_counter() - t_start
    info = machine_info()
    info["fused_backend"] = fused
    info["command"] = "python benchmarks/bench_verify.py" + (" --quick" if args.quick else "")
    info["elapsed_s"] = round(elapsed, 1)
    info["notes"] = ("Triton rows are absent on CPU-only machines (the interpreter is not a speed measure); "
                     "no GPU numbers are estimated. GB/s is over all logits (+ hidden for Cascade), the bytes "
                     "the op may read; a fused walk reads only the visited rows.")
    write_results(rows, info, fused, args.out, elapsed)


def write_results(rows, info, fused, out_dir, elapsed):
    os.makedirs(out_dir, exist_ok=True)
    stem = os.path.join(out_dir, f"verify_compare_{DEVICE}")
    with open(stem + ".json", "w") as f:
        json.dump(dict(machine=info, rows=rows), f, indent=1)
    with open(stem + ".md", "w") as f:
        f.write(f"# ck.verify benchmark ({DEVICE})\n\n")
        for k, v in info.items():
            f.write(f"- {k}: `{v}`\n")
        provs = ["reference", fused, "floor"] if fused else ["reference", "floor"]
        head = ["B", "N", "V", "D", "cfg", "method"]
        cols = []
        for p in provs:
            cols += [f"{p} ms", f"{p} GB/s", f"{p} x ref"]
        f.write("\n| " + " | ".join(head + cols + ["note"]) + " |\n")
        f.write("|" + "---|" * (len(head) + len(cols) + 1) + "\n")
        for r in rows:
            cells = [str(r[h]) for h in head]
            for p in provs:
                for suf in ("ms", "GBps", "x_ref"):
                    v = r.get(f"{p}_{suf}")
                    cells.append("" if v is None else f"{v:.3g}")
            cells.append(r.get("note", ""))
            f.write("| " + " | ".join(cells) + " |\n")
    print(f"wrote {stem}.json / .md in {elapsed:.0f} s")


if __name__ == "__main__":
    main()
