"""Instructions per ck.verify call on the CPU backend, counted by valgrind's callgrind (repeatable on a
loaded machine, unlike wall-clock times).

    python benchmarks/callgrind_verify_cpu.py            # runs valgrind twice, prints a markdown table

Cases: B=1, N=26 (EAGLE tree), V=16384, shallow / deep (as in bench_verify_cpu.py), Exact / CASCADE,
top_k 0 / 2000. Two valgrind runs of this file with ``--child``: one counts only the C++ backend
(``--toggle-collect=ck::verify_cpu*``), one everything; in both, counters are zeroed on entering
``time.perf_counter`` and dumped on entering ``time.monotonic``, which the child calls around each timed
ck.verify call (after two warm-up calls), so each dump holds exactly one call. Valgrind reports no AVX-512,
so the counts are of the AVX2 kernels (the ISA the extension picks under valgrind).
"""
import argparse
import glob
import os
import re
import statistics
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
CASES = [(deep, method, top_k) for top_k in (0, 2000) for method in ("exact", "cascade") for deep in (False, True)]
REPS = 3


def child():
    import time

    import torch

    sys.path.insert(0, HERE)
    import bench_verify_cpu as bv

    torch.set_num_threads(1)
    for deep, method, top_k in CASES:
        inputs = bv.make_inputs(1, 26, 16384, deep=deep)
        out = bv.call(inputs, method, "cpu", False, top_k)
        f = bv.whole_call(inputs, method, top_k, out)
        f()
        for _ in range(REPS):
            time.perf_counter()
            f()
            time.monotonic()


def run_valgrind(tmp, backend_only):
    prefix = os.path.join(tmp, "be" if backend_only else "all")
    cmd = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={prefix}.%p", "--zero-before=time_perf_counter",
           "--dump-before=time_monotonic"]
    if backend_only:
        cmd += ["--collect-atstart=no", "--toggle-collect=ck::verify_cpu*"]
    env = dict(os.environ, OMP_NUM_THREADS="1", CASCADE_KERNELS_ISA="avx2")
    subprocess.run(cmd + [sys.executable, os.path.abspath(__file__), "--child"], check=True, env=env,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    counts = []
    for path in sorted(glob.glob(prefix + ".*.*"), key=lambda p: int(p.rsplit(".", 1)[1])):
        text = open(path).read()
        m = re.search(r"^(?:summary|totals): (\d+)", text, re.M)
        counts.append(int(m.group(1)) if m else 0)
    if len(counts) != len(CASES) * REPS:
        raise RuntimeError(f"expected {len(CASES) * REPS} dumps, got {len(counts)}")
    return [statistics.median(counts[i * REPS:(i + 1) * REPS]) for i in range(len(CASES))]


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.child:
        return child()
    with tempfile.TemporaryDirectory() as tmp:
        be = run_valgrind(tmp, True)
        whole = run_valgrind(tmp, False)
    print("| case | method | top-k | backend Ir/call | whole call Ir/call |")
    print("|---|---|---|---|---|")
    for (deep, method, top_k), b, w in zip(CASES, be, whole):
        print(f"| {'deep' if deep else 'shallow'} | {method} | {top_k or 'off'} | {b / 1e3:.0f}k | {w / 1e3:.0f}k |")


if __name__ == "__main__":
    main()
