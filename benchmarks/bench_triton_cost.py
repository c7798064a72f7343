"""Hardware-independent cost of the Triton verify kernels, counted in Triton's CPU interpreter (issue 12).

Runs ``ck.verify(backend="triton")`` under ``TRITON_INTERPRET=1`` and counts, per call, the global bytes
loaded and stored (the interpreter builder's ``create_masked_load`` / ``create_masked_store`` hooked;
every byte a masked-on lane moves, attributed to the kernel argument whose tensor holds the address),
the launches and the programs per launch. "before" is main's kernel (``git show e0be600:…``, imported
into a temporary module with its similarity kernel), "after" the working tree's.

Reported per case: logits bytes loaded ÷ bytes of the visited rows and ÷ bytes of all rows, all bytes
loaded (+ stats / scratch / tree arrays) and stored, launches, programs; and a ROOFLINE ESTIMATE (not a
measurement) for an H100/H200-class GPU: per launch 3.5 µs (no CUDA graphs) + max(bytes / 3 TB/s,
largest program's bytes / 60 GB/s).

    python benchmarks/bench_triton_cost.py [--quick]      # writes benchmarks/results/triton_cost.{md,json}
    python -m pytest benchmarks/bench_triton_cost.py --benchmark-only -p no:cacheprovider
"""
from __future__ import annotations

import argparse
import collections
import importlib.util
import json
import os
import platform
import subprocess
import sys
import tempfile
import time

if __name__ == "__main__":
    os.environ["TRITON_INTERPRET"] = "1"  # as a script: counted in the interpreter, whatever the machine
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import torch  # noqa: E402

import cascade_kernels as ck  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BEFORE_COMMIT = "e0be600"
HBM_BPS = 3.0e12  # H100/H200-class HBM, bytes/s (estimate input)
PROG_BPS = 60e9  # what one program (one SM) streams, bytes/s (estimate input)
LAUNCH_US = 3.5  # per launch without CUDA graphs (estimate input)


# ------------------------------------------------------------------------------------------------
# Counting hooks
# ------------------------------------------------------------------------------------------------
class Counter:
    """Installs the hooks; ``calls`` holds one record per launch while active."""

    def __init__(self):
        from triton.runtime import interpreter as interp

        self.interp = interp
        self.launches = []
        self._ranges = []  # (lo, hi, name) of the current launch's tensor arguments
        self._cur = None

    def __enter__(self):
        interp, builder = self.interp, self.interp.interpreter_builder
        self._orig = (interp.GridExecutor.__call__, builder.create_masked_load, builder.create_masked_store)
        counter = self
        orig_call, orig_load, orig_store = self._orig

        def call(gx, *args, **kwargs):
            names = list(gx.arg_names)
            ranges = []
            for name, a in list(zip(names, args)) + list(kwargs.items()):
                if isinstance(a, torch.Tensor) and a.numel():
                    lo = a.data_ptr()
                    ranges.append((lo, lo + a.numel() * a.element_size(), name))
            grid = gx.grid if not callable(gx.grid) else None
            rec = dict(kernel=gx.fn.__name__, programs=int(torch.tensor(grid).prod()) if grid else -1,
                       loads=collections.Counter(), stores=collections.Counter(), prog_bytes=collections.Counter())
            counter._ranges, counter._cur = ranges, rec
            try:
                return orig_call(gx, *args, **kwargs)
            finally:
                counter.launches.append(rec)
                counter._cur = None

        def attribute(ptrs, mask, itemsize, key):
            rec = self._cur
            if rec is None:
                return
            import numpy as np

            p = np.asarray(ptrs).reshape(-1)
            m = np.broadcast_to(np.asarray(mask), np.asarray(ptrs).shape).reshape(-1)
            p = p[m]
            if p.size == 0:
                return
            nbytes = int(p.size) * itemsize
            name = "other"
            for lo, hi, n in self._ranges:
                if lo <= int(p[0]) < hi:
                    name = n
                    break
            rec[key][name] += nbytes
            gid = builder.grid_idx
            rec["prog_bytes"][tuple(gid) if gid is not None else 0] += nbytes

        def load(ptrs, mask, other, cache_policy, is_volatile):
            ret = orig_load(ptrs, mask, other, cache_policy, is_volatile)
            attribute(ptrs.data, mask.data, ret.data.dtype.itemsize, "loads")
            return ret

        def store(ptrs, value, mask, cache_policy):
            attribute(ptrs.data, mask.data, value.data.dtype.itemsize, "stores")
            return orig_store(ptrs, value, mask, cache_policy)

        interp.GridExecutor.__call__ = call
        builder.create_masked_load = load
        builder.create_masked_store = store
        return self

    def __exit__(self, *exc):
        interp, builder = self.interp, self.interp.interpreter_builder
        interp.GridExecutor.__call__ = self._orig[0]
        del builder.create_masked_load
        del builder.create_masked_store


# ------------------------------------------------------------------------------------------------
# before (main's kernel from git history) and after (this tree)
# ------------------------------------------------------------------------------------------------
def _load_old_kernel():
    """Main's verify kernel and its similarity kernel, imported from ``git show`` into temp modules."""
    tmp = tempfile.mkdtemp(prefix="ck_before_")

    def grab(path, modname, fix):
        src = subprocess.run(["git", "-C", ROOT, "show", f"{BEFORE_COMMIT}:{path}"], check=True, capture_output=True,
                             text=True).stdout
        for a, b in fix:
            src = src.replace(a, b)
        f = os.path.join(tmp, modname + ".py")
        with open(f, "w") as fh:
            fh.write(src)
        spec = importlib.util.spec_from_file_location(modname, f)
        mod = importlib.util.module_from_spec(spec)
        sys.modules[modname] = mod
        spec.loader.exec_module(mod)
        return mod

    grab("cascade_kernels/ops/similarity_sets/triton.py", "ck_before_similarity",
         [("from ...types", "from cascade_kernels.types")])
    return grab("cascade_kernels/ops/verify/triton.py", "ck_before_verify",
                [("from ...codes", "from cascade_kernels.codes"), ("from ...methods", "from cascade_kernels.methods"),
                 ("from ...types", "from cascade_kernels.types"),
                 ("from ..similarity_sets.triton import", "from ck_before_similarity import")])


def _impls():
    from cascade_kernels.ops.verify import triton as after

    return {"before": _load_old_kernel().verify, "after": after.verify}


# ------------------------------------------------------------------------------------------------
# Cases
# ------------------------------------------------------------------------------------------------
def make_inputs(tree, B, V, walk, D, cfg=False, seed=0):
    """``deep``: every node's row puts most mass on its first child's token (the walk follows the first-child
    chain to a leaf); ``shallow``: flat rows (children rejected at the root, then a sample from the residual)."""
    g = torch.Generator().manual_seed(seed)
    parents = ck.tree_from_choices(tree)
    N = parents.shape[0]
    tokens = torch.randint(0, V, (B, N), generator=g)
    logits = torch.randn(B, N, V, generator=g)
    if walk == "deep":
        prep = ck.prepare_tree(parents)
        for u in range(N):
            kids = prep.children[0][u]
            if kids:
                logits[:, u].scatter_(1, tokens[:, kids[0]:kids[0] + 1], 40.0)
    target = torch.cat([logits, logits + 0.1 * torch.randn(B, N, V, generator=g)]) if cfg else logits
    hidden = torch.randn(B, 1, D, generator=g) + 0.5 * torch.randn(B, N, D, generator=g)
    return tokens, parents, target, hidden, torch.randint(0, 2**62, (B,), generator=g)


def measure(impl, tokens, parents, target, hidden, seed, method, top_k, cfg):
    """One call of ``impl`` under the counter: the launches and the walk's visited rows."""
    from cascade_kernels.ops.verify.api import _outputs
    from cascade_kernels.validation import check_verify_inputs

    args = check_verify_inputs(tokens, parents, target, method, None, hidden, "transport", None, 1.0, top_k, 1.0,
                               2.0 if cfg else None, seed)
    out = _outputs(args, None)
    with Counter() as c:
        t0 = time.time()
        impl(args, out)
        wall = time.time() - t0
    return c.launches, out, wall


def summarize(launches, out, B, N, V, itemsize, cfg):
    rows_per_seq = 2 if cfg else 1
    visited = int((out.accept_len.to(torch.int64) + 1).sum()) * rows_per_seq
    row_bytes = V * itemsize
    logits_loaded = sum(rec["loads"].get(n, 0) for rec in launches for n in ("tgt_ptr", "drf_ptr"))
    loads = sum(sum(rec["loads"].values()) for rec in launches)
    stores = sum(sum(rec["stores"].values()) for rec in launches)
    est = 0.0
    for rec in launches:
        tot = sum(rec["loads"].values()) + sum(rec["stores"].values())
        biggest = max(rec["prog_bytes"].values()) if rec["prog_bytes"] else 0
        est += LAUNCH_US + 1e6 * max(tot / HBM_BPS, biggest / PROG_BPS)
    return dict(
        visited_rows=visited, all_rows=B * N * rows_per_seq, logits_loaded=logits_loaded,
        x_visited=logits_loaded / (visited * row_bytes), x_all=logits_loaded / (B * N * rows_per_seq * row_bytes),
        loads=loads, stores=stores, loads_x_visited=loads / (visited * row_bytes), launches=len(launches),
        programs=[rec["programs"] for rec in launches], kernels=[rec["kernel"] for rec in launches],
        by_arg={rec["kernel"]: dict(rec["loads"]) for rec in launches},
        est_us=est, accept_len=out.accept_len.tolist(),
        target_met=logits_loaded <= max(1.25 * visited * row_bytes, 1.05 * B * N * rows_per_seq * row_bytes))


def cases(quick=False):
    vs = (4096,) if quick else (4096, 16384)
    for V in vs:
        for walk in ("deep", "shallow"):
            for top_k in (0, 2000):
                for m in ("exact", "cascade"):
                    yield dict(tree="eagle", B=1, V=V, walk=walk, top_k=top_k, method=m, D=1280, cfg=False)
    if not quick:  # the issue's roofline configurations: B=1 and B=64 (CFG), N=60, V=16384, CASCADE, D=1280
        yield dict(tree="deep", B=1, V=16384, walk="deep", top_k=0, method="cascade", D=1280, cfg=False)
        yield dict(tree="deep", B=1, V=16384, walk="deep", top_k=2000, method="cascade", D=1280, cfg=False)
        yield dict(tree="deep", B=64, V=16384, walk="deep", top_k=0, method="cascade", D=1280, cfg=True)


def run_case(impls, case, which=("before", "after")):
    tokens, parents, target, hidden, seed = make_inputs(case["tree"], case["B"], case["V"], case["walk"], case["D"],
                                                        case["cfg"])
    method = ck.Exact() if case["method"] == "exact" else ck.Cascade(tau_pos=0.5, tau_seq=0.3, eps=0.5)
    N = parents.shape[0]
    res = dict(case)
    res["N"] = N
    for name in which:
        launches, out, wall = measure(impls[name], tokens, parents, target, hidden if case["method"] == "cascade"
                                      else None, seed, method, case["top_k"], case["cfg"])
        s = summarize(launches, out, case["B"], N, case["V"], 4, case["cfg"])
        s["interp_s"] = round(wall, 2)
        res[name] = s
    if "before" in res and "after" in res:  # same decisions both ways
        assert res["before"]["accept_len"] == res["after"]["accept_len"], res
    return res


def _versions():
    import triton

    try:
        commit = subprocess.run(["git", "-C", ROOT, "rev-parse", "--short", "HEAD"], capture_output=True,
                                text=True).stdout.strip()
    except Exception:  # pragma: no cover
        commit = "?"
    return dict(torch=torch.__version__, triton=triton.__version__, python=platform.python_version(),
                machine=platform.machine(), commit=commit, before=BEFORE_COMMIT)


def render(results, meta):
    lines = [
        "# Triton verify: global memory traffic counted in the interpreter",
        "",
        f"Command: `{meta['command']}` · torch {meta['torch']} · triton {meta['triton']} · commit {meta['commit']} "
        f"(before = `{meta['before']}`, main's one-program-per-sequence kernel)",
        "",
        "Bytes are counted by hooking the interpreter's masked load/store (every active lane's bytes), so they are",
        "exact for the kernels as written and independent of hardware. `x vis` / `x all` = logits bytes loaded ÷",
        "bytes of the rows the walk visited / ÷ bytes of all rows (CFG counts both halves). Target (issue 12):",
        "logits loaded ≤ max(1.25 × visited, 1.05 × all). `est µs` is a **roofline ESTIMATE, not a measurement**:",
        f"per launch {LAUNCH_US} µs (no CUDA graphs) + max(all bytes / {HBM_BPS / 1e12:g} TB/s, the largest program's "
        f"bytes / {PROG_BPS / 1e9:g} GB/s).",
        "",
        "| tree | B | V | walk | top_k | method | CFG | visited/all rows | before: x vis | x all | all loads x vis "
        "| launches (programs) | est µs | target | after: x vis | x all | all loads x vis | launches (programs) "
        "| est µs | target |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        b, a = r.get("before"), r["after"]

        def cols(s):
            if s is None:
                return "– | – | – | – | – | –"
            return (f"{s['x_visited']:.2f} | {s['x_all']:.2f} | {s['loads_x_visited']:.2f} | {s['launches']} "
                    f"({'+'.join(map(str, s['programs']))}) | {s['est_us']:.1f} | "
                    f"{'met' if s['target_met'] else 'MISSED'}")
        lines.append(f"| {r['tree']} | {r['B']} | {r['V']} | {r['walk']} | {r['top_k']} | {r['method']} | "
                     f"{'on' if r['cfg'] else 'off'} | {a['visited_rows']}/{a['all_rows']} | {cols(b)} | {cols(a)} |")
    lines += ["", "Targets (issue 12), after:", ""]
    met = all(r["after"]["target_met"] for r in results)
    lines.append(f"- logits bytes ≤ max(1.25 × visited, 1.05 × all), every case above: {'met' if met else 'MISSED'}")
    for r in results:
        if r["tree"] == "deep" and r["method"] == "cascade" and r["top_k"] == 0:
            a, bud = r["after"], (15.0 if r["B"] == 1 else 40.0)
            if r["B"] == 1:
                busy = a["programs"][0]
                lines.append(f"- programs at B=1, N=60: {busy} in phase 1 (target ≥ 32): {'met' if busy >= 32 else 'MISSED'}")
            lines.append(f"- roofline ESTIMATE B={r['B']}, N=60, V=16384, CASCADE, D=1280, CFG {'on' if r['cfg'] else 'off'}: "
                         f"{a['est_us']:.1f} µs (target ≤ {bud:g} µs, estimate not measurement): "
                         f"{'met' if a['est_us'] <= bud else 'MISSED'}")
    lines += ["", "Notes:", ""] + [f"- {n}" for n in meta["notes"]]
    return "\n".join(lines) + "\n"


NOTES = [
    "`target` applies the issue's bound to each kernel; `before` met it only where the walk visits few rows and",
    "there is no top-k (2 reads per visited row), never with top-k (34 reads per visited row).",
    "after: B*N <= 512 reduces every row in phase 1 (one program per row: parallel, so one read of ALL rows);",
    "B=64, N=60 (3840 rows) reduces only the visited rows inside the walk (one read of each VISITED row).",
    "The deep walk's extra row is the final inverse-CDF sample (one pass); a shallow walk reads all rows + 1.",
    "Estimates ignore L2 hits (the old kernel's repeated passes over one row would partly hit L2) and compute,",
    "and assume no CUDA graphs (3.5 us per launch); with graphs the launch term shrinks.",
]


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--out", default=os.path.join(ROOT, "benchmarks", "results", "triton_cost"))
    opts = ap.parse_args(argv)
    torch.set_num_threads(1)
    impls = _impls()
    results = []
    for case in cases(opts.quick):
        r = run_case(impls, case)
        results.append(r)
        print(json.dumps({k: v for k, v in r.items() if k not in ("before", "after")}),
              {k: (round(r[k]["x_visited"], 2), round(r[k]["x_all"], 2), round(r[k]["est_us"], 1)) for k in
               ("before", "after")}, flush=True)
    meta = dict(_versions(), command="python benchmarks/bench_triton_cost.py" + (" --quick" if opts.quick else ""),
                notes=NOTES, hbm_bps=HBM_BPS, prog_bps=PROG_BPS, launch_us=LAUNCH_US)
    os.makedirs(os.path.dirname(opts.out), exist_ok=True)
    with open(opts.out + ".json", "w") as f:
        json.dump(dict(meta=meta, results=results), f, indent=1, default=str)
    with open(opts.out + ".md", "w") as f:
        f.write(render(results, meta))
    print(render(results, meta))


def test_triton_cost(benchmark):
    """pytest-benchmark entry: one small case (V=4096, EAGLE, deep walk, CASCADE) counted before and after.

    Needs the kernels in interpreter mode (benchmarks/conftest.py sets it on machines without a GPU; on a GPU
    machine run the script instead, which sets TRITON_INTERPRET=1 before triton is imported)."""
    import pytest

    from cascade_kernels import _backend

    if not _backend.interpreting():
        pytest.skip("the byte counts come from Triton's interpreter: run `python benchmarks/bench_triton_cost.py`")
    impls = _impls()
    case = dict(tree="eagle", B=1, V=4096, walk="deep", top_k=2000, method="cascade", D=64, cfg=False)
    res = benchmark.pedantic(run_case, args=(impls, case), rounds=1, iterations=1)
    assert res["after"]["target_met"]
    assert res["after"]["logits_loaded"] < res["before"]["logits_loaded"]


if __name__ == "__main__":
    main()
