"""Benchmarks of CASCADE's drafter loss (CONTRACT §7): forward + backward, fused/CPU paths vs reference.

Two ways to run it:

- pytest-benchmark suite::

      python -m pytest benchmarks/bench_drafter_loss.py -p no:cacheprovider --benchmark-only
      CK_BENCH_QUICK=1 python -m pytest benchmarks/bench_drafter_loss.py ...   # T=1024, V=16384 only

  Providers: ``reference`` and ``cpu`` on the CPU; ``reference`` and ``triton`` on CUDA (the Triton
  interpreter is not a speed measure, so no Triton rows on the CPU). ``benchmark.extra_info`` holds
  the peak memory of one fwd+bwd (CPU: rise of the process's peak resident set, VmHWM, reset through
  ``/proc/self/clear_refs``; tracemalloc does not see torch's allocator; CUDA:
  ``torch.cuda.max_memory_allocated`` above the inputs) and GB/s over the bytes a fused pass must
  move: ``2*T*V*elem`` read + ``T*V*elem`` gradient written.

- script (CPU comparison, writes ``benchmarks/results/drafter_loss_cpu.{json,md}``)::

      python benchmarks/bench_drafter_loss.py            # T=1024, V=16384 (the quick shape)
      python benchmarks/bench_drafter_loss.py --full     # T in {1024, 4096} x V in {16384, 65536}
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from cascade_kernels.ops.drafter_loss import cascade_drafter_loss  # noqa: E402

QUICK = os.environ.get("CK_BENCH_QUICK") == "1"
T_VALUES = [1024] if QUICK else [1024, 4096]
V_VALUES = [16384] if QUICK else [16384, 65536]
D_HIDDEN = 256
HAS_CUDA = torch.cuda.is_available()
try:
    import triton  # noqa: F401

    HAS_TRITON = True
except Exception:  # pragma: no cover
    HAS_TRITON = False


# ------------------------------------------------------------------------------------------------
# shared setup


def make_inputs(T, V, dtype, device, seed=0):
    g = torch.Generator(device=device).manual_seed(seed)
    draft = torch.empty(T, V, dtype=dtype, device=device).normal_(generator=g)
    target = torch.empty(T, V, dtype=dtype, device=device).normal_(generator=g).mul_(2)
    hidden = torch.randn(T, D_HIDDEN, device=device, generator=g)
    mask = torch.ones(T, dtype=torch.bool, device=device)
    return draft, target, hidden, mask


def fwd_bwd(draft, target, hidden, mask, backend):
    d = draft.detach().requires_grad_(True)  # a new leaf on the same storage: no copy
    loss = cascade_drafter_loss(d, target, hidden, mask, backend=backend)
    loss.backward()
    return loss, d.grad


def bytes_moved(T, V, dtype):
    elem = torch.empty((), dtype=dtype).element_size()
    return 3 * T * V * elem  # draft + target read, gradient written


def _status_kib(key):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key):
                return int(line.split()[1])
    return None


def peak_memory_bytes(fn, device):
    """Peak extra memory of one call of ``fn``, in bytes (None where it cannot be measured)."""
    gc.collect()
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        out = fn()
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated() - base
        del out
        return peak
    try:
        base = _status_kib("VmRSS")
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # reset VmHWM (the peak resident set) to the current RSS
    except OSError:
        return None
    out = fn()
    peak = _status_kib("VmHWM")
    del out
    return (peak - base) * 1024


# ------------------------------------------------------------------------------------------------
# pytest-benchmark suite

PROVIDERS = [
    pytest.param("cpu", "reference", id="cpu-reference"),
    pytest.param("cpu", "chunked", id="cpu-chunked"),
    pytest.param(
        "cuda", "reference", id="cuda-reference",
        marks=pytest.mark.skipif(not HAS_CUDA, reason="no CUDA GPU"),
    ),
    pytest.param(
        "cuda", "triton", id="cuda-triton",
        marks=pytest.mark.skipif(not (HAS_CUDA and HAS_TRITON), reason="Triton rows need a CUDA GPU"),
    ),
]
DTYPES = [pytest.param(torch.float32, id="fp32"), pytest.param(torch.bfloat16, id="bf16")]


@pytest.mark.parametrize("V", V_VALUES, ids=lambda v: f"V{v}")
@pytest.mark.parametrize("T", T_VALUES, ids=lambda t: f"T{t}")
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("device,backend", PROVIDERS)
def test_drafter_loss_fwd_bwd(benchmark, device, backend, dtype, T, V):
    if device == "cpu":
        torch.set_num_threads(max(1, os.cpu_count() or 1))
    draft, target, hidden, mask = make_inputs(T, V, dtype, device)

    def run():
        out = fwd_bwd(draft, target, hidden, mask, backend)
        if device == "cuda":
            torch.cuda.synchronize()
        return out

    run()  # warm-up (Triton compile, allocator)
    peak = peak_memory_bytes(run, device)
    rounds = 3 if T * V >= (1 << 26) else 5
    benchmark.pedantic(run, rounds=rounds, iterations=1, warmup_rounds=0)
    med = benchmark.stats.stats.median
    benchmark.extra_info.update(
        provider=f"{device}-{backend}", T=T, V=V, dtype=str(dtype).replace("torch.", ""),
        median_s=med, peak_mem_bytes=peak, bytes_moved=bytes_moved(T, V, dtype),
        gbps=bytes_moved(T, V, dtype) / med / 1e9,
        memory_method=("torch.cuda.max_memory_allocated" if device == "cuda" else "VmHWM rise (/proc)"),
    )


# ------------------------------------------------------------------------------------------------
# script: CPU comparison written to benchmarks/results


def _time_median(fn, reps, warmup=1):
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(reps):
        gc.collect()
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), min(times), times


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--full", action="store_true", help="T in {1024,4096} x V in {16384,65536}")
    ap.add_argument("--reps", type=int, default=7)
    ap.add_argument("--dtypes", default="float32,bfloat16")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "drafter_loss_cpu"))
    args = ap.parse_args(argv)
    torch.set_num_threads(max(1, os.cpu_count() or 1))
    shapes = [(t, v) for t in (1024, 4096) for v in (16384, 65536)] if args.full else [(1024, 16384)]
    dtypes = [getattr(torch, n) for n in args.dtypes.split(",")]
    rows = []
    for T, V in shapes:
        for dtype in dtypes:
            draft, target, hidden, mask = make_inputs(T, V, dtype, "cpu")
            res = {}
            # interleave the providers' repetitions so that load from other processes hits both
            for backend in ("reference", "chunked"):
                res[backend] = {"peak_mem_bytes": peak_memory_bytes(
                    lambda: fwd_bwd(draft, target, hidden, mask, backend), "cpu")}
            reps = args.reps if T * V < (1 << 26) else max(3, args.reps // 2)
            times = {"reference": [], "chunked": []}
            for _ in range(reps):
                for backend in ("reference", "chunked"):
                    times[backend] += _time_median(
                        lambda: fwd_bwd(draft, target, hidden, mask, backend), 1, warmup=0)[2]
            for backend in ("reference", "chunked"):
                med = statistics.median(times[backend])
                res[backend].update(median_s=med, min_s=min(times[backend]), times_s=times[backend],
                                    gbps=bytes_moved(T, V, dtype) / med / 1e9)
            row = dict(T=T, V=V, dtype=str(dtype).replace("torch.", ""), reps=reps,
                       bytes_moved=bytes_moved(T, V, dtype), **{f"{k}": v for k, v in res.items()},
                       speedup_median=res["reference"]["median_s"] / res["chunked"]["median_s"],
                       memory_ratio=(res["reference"]["peak_mem_bytes"] / res["chunked"]["peak_mem_bytes"]
                                     if res["chunked"]["peak_mem_bytes"] else None))
            rows.append(row)
            print(f"T={T} V={V} {row['dtype']}: reference {res['reference']['median_s']*1e3:.1f} ms, "
                  f"chunked {res['chunked']['median_s']*1e3:.1f} ms (x{row['speedup_median']:.2f}); peak mem "
                  f"{res['reference']['peak_mem_bytes']/2**20:.0f} MiB vs {res['chunked']['peak_mem_bytes']/2**20:.0f} MiB",
                  flush=True)
            del draft, target, hidden, mask
            gc.collect()
    try:
        load = os.getloadavg()
    except OSError:  # pragma: no cover
        load = None
    meta = dict(
        command="python benchmarks/bench_drafter_loss.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        platform=platform.platform(), processor=platform.processor() or platform.machine(),
        cpu_count=os.cpu_count(), torch_threads=torch.get_num_threads(),
        torch=torch.__version__, triton=(triton.__version__ if HAS_TRITON else None),
        python=platform.python_version(), loadavg_at_end=load,
        timing="fwd+bwd of cascade_drafter_loss (no feature term), perf_counter, providers interleaved",
        memory="rise of VmHWM (peak RSS, reset via /proc/self/clear_refs) over one fwd+bwd",
        gbps_bytes="3*T*V*elem (draft+target read once, gradient written once)",
    )
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(dict(meta=meta, rows=rows), indent=2) + "\n")
    md = ["# drafter loss (CONTRACT §7), CPU: fused-gradient CPU path vs PyTorch reference", "",
          f"Command: `{meta['command']}`  ", f"Machine: {meta['platform']}, {meta['processor']}, "
          f"{meta['cpu_count']} CPUs ({meta['torch_threads']} torch threads), load average at end "
          f"{load}  ", f"torch {meta['torch']}, triton {meta['triton']}, Python {meta['python']}  ",
          f"Timing: {meta['timing']}. Memory: {meta['memory']}. GB/s over {meta['gbps_bytes']}.", "",
          "| T | V | dtype | reference median ms | chunked median ms | speed-up | reference min ms | chunked min ms "
          "| reference peak MiB | chunked peak MiB | chunked GB/s |",
          "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        a, b = r["reference"], r["chunked"]
        md.append(f"| {r['T']} | {r['V']} | {r['dtype']} | {a['median_s']*1e3:.1f} | {b['median_s']*1e3:.1f} | "
                  f"{r['speedup_median']:.2f}x | {a['min_s']*1e3:.1f} | {b['min_s']*1e3:.1f} | "
                  f"{a['peak_mem_bytes']/2**20:.0f} | {b['peak_mem_bytes']/2**20:.0f} | {b['gbps']:.2f} |")
    out.with_suffix(".md").write_text("\n".join(md) + "\n")
    print(f"wrote {out.with_suffix('.json')} and {out.with_suffix('.md')}")


if __name__ == "__main__":
    main()
