"""The main job: generate images with plain AR decoding and with every verification method, on the
same classes and seeds, and write a labelled PNG grid plus a JSON of the statistics.

    python -m cascade_lab.demo [--classes 0 1 2 3] [--methods ar exact cascade ...] [--tree eagle]
                               [--cfg 3.0] [--seed 0] [--device cpu] [--out demo_out]
                               [--continuous-methods ar exact cspd] [--draft-len 4]

A second, short section runs the continuous-token stack (VAE latents, mixture-head target and drafter,
``ck.generate_continuous``): AR, exact chain speculative decoding and the CSpD criterion on the same
classes and seeds, α, interleaved batch-1 wall clock and ``continuous_grid.png``.
"""
from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import platform
import sys
from concurrent.futures import ProcessPoolExecutor, as_completed

import torch

import cascade_kernels as ck

from .compare import (CONTINUOUS_METHODS, METHODS, TREES, build_method, fmt_speedup, interleaved, interleaved_walls,
                      label_grid, run_continuous, run_method, tree_arg)
from .data import CLASS_NAMES
from .loaders import load_cdrafter, load_ctarget, load_cvae, load_drafter, load_target, load_vq
from .weights import WEIGHTS_DIR


def parse_args(argv=None):
    ap = argparse.ArgumentParser(prog="python -m cascade_lab.demo", description=__doc__.splitlines()[0])
    ap.add_argument("--classes", type=int, nargs="+", default=[0, 4, 9], help="class ids to generate "
                    "(default: circle, ring, 7)")
    ap.add_argument("--per-class", type=int, default=1, help="images per class")
    ap.add_argument("--methods", nargs="+", default=["ar", "exact", "lantern", "lantern++", "gsd", "cool", "cascade"],
                    choices=METHODS)
    ap.add_argument("--tree", default="eagle", choices=TREES,
                    help="eagle = EAGLE-1's 26-node tree (the paper's); small (6 drafted nodes) costs less per step "
                         "on a compute-bound CPU target")
    ap.add_argument("--deterministic-drafting", dest="sampled_drafting", action="store_false",
                    help="draft the drafter's top-k children instead of sampling them (the paper samples)")
    ap.add_argument("--residual", default="transport", choices=["transport", "standard"])
    ap.add_argument("--cfg", type=float, default=3.0, help="classifier-free guidance scale (0 disables)")
    ap.add_argument("--temperature", type=float, default=1.0)
    ap.add_argument("--top-k", type=int, default=0)
    ap.add_argument("--tau-pos", type=float, default=0.85)
    ap.add_argument("--tau-seq", type=float, default=0.5)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--weights", default=WEIGHTS_DIR, help="folder with the shipped weights")
    ap.add_argument("--drafter", default="drafter_eagle.pt", help="drafter weight file in --weights")
    ap.add_argument("--num-tokens", type=int, default=256, help="image tokens per image (256 = 16x16)")
    ap.add_argument("--out", default="demo_out")
    ap.add_argument("--timing-rounds", type=int, default=2,
                    help="batch-1 timing rounds, methods interleaved in rotated order (0 skips timing)")
    ap.add_argument("--timing-tokens", type=int, default=48, help="image tokens per timed generation")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch intra-op threads (1: this small model's ops are too short to split, and a "
                         "busy second core would stall a 2-thread team at every barrier)")
    ap.add_argument("--jobs", type=int, default=None,
                    help="worker processes for the quality runs (default: as many as the cores allow at --threads "
                         "each, at most 2); the timed runs always run alone in this process")
    ap.add_argument("--continuous-methods", nargs="*", default=CONTINUOUS_METHODS, choices=CONTINUOUS_METHODS,
                    help="methods of the continuous-token section (none: skip it)")
    ap.add_argument("--draft-len", type=int, default=4, help="drafted chain length of continuous speculative decoding")
    ap.add_argument("--continuous-timing-rounds", type=int, default=4,
                    help="batch-1 timing rounds of the continuous section, methods interleaved in rotated order")
    args = ap.parse_args(argv)
    if args.draft_len < 1 or args.continuous_timing_rounds < 0:
        ap.error("--draft-len must be >= 1 and --continuous-timing-rounds >= 0")
    side = int(round(args.num_tokens ** 0.5))
    if args.num_tokens < 1 or side * side != args.num_tokens:
        ap.error(f"--num-tokens must be a square number of tokens (the VQ grid, e.g. 256 = 16x16), got {args.num_tokens}")
    if args.per_class < 1:
        ap.error(f"--per-class must be >= 1, got {args.per_class}")
    if args.timing_rounds < 0 or args.timing_tokens < 1:
        ap.error("--timing-rounds must be >= 0 and --timing-tokens >= 1")
    if args.threads < 1:
        ap.error(f"--threads must be >= 1, got {args.threads}")
    if args.jobs is None:
        args.jobs = max(1, min(2, (os.cpu_count() or 1) // args.threads))
    if args.jobs < 1:
        ap.error(f"--jobs must be >= 1, got {args.jobs}")
    return args


def main(argv=None) -> dict:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    dev = torch.device(args.device)
    vq = load_vq(args.weights, device=dev)
    target = load_target(args.weights, device=dev)
    drafter = load_drafter(args.weights, device=dev, name=args.drafter)
    n_classes = target.cfg.num_classes
    if any(not 0 <= c < n_classes for c in args.classes):
        raise SystemExit(f"--classes must be in [0, {n_classes})")
    class_ids = torch.tensor([c for c in args.classes for _ in range(args.per_class)], device=dev)
    os.makedirs(args.out, exist_ok=True)
    settings = dict(tree=tree_arg(args.tree), cfg_scale=args.cfg or None, temperature=args.temperature,
                    top_k=args.top_k, seed=args.seed, sampled=args.sampled_drafting, tau_pos=args.tau_pos,
                    tau_seq=args.tau_seq, residual=args.residual, num_tokens=args.num_tokens)
    jobs = min(args.jobs, len(args.methods))
    print(f"cascade_lab demo: {len(class_ids)} images x {len(args.methods)} methods on {dev}, "
          f"{args.threads} thread(s) per process, quality runs in {jobs} process(es) "
          f"(backends: {ck.available_backends()})", file=sys.stderr)
    # 1. quality: every method on the same classes and seeds (acceptance, TVD, images)
    if jobs > 1:  # meanwhile, this process builds the timed runs' method tables (if any)
        names = args.methods if args.timing_rounds else []
        runs = quality_runs_in_workers(args, settings, class_ids, jobs, prepare=lambda: [
            build_method(name, vq.embedding, args.tau_pos, args.tau_seq) for name in names])
    else:
        runs = {}
        for name in args.methods:
            runs[name] = run_method(target, drafter, vq.embedding, name, class_ids, progress=True, **settings)
            print(quality_line(runs[name]), file=sys.stderr)
    # 2. speed: batch-1 wall clock, methods interleaved, best of the rounds (one run each would put load
    #    changes between methods into the speedup column; the fastest round is the one least disturbed by
    #    other processes, as timeit reports)
    timing = dict(settings, num_tokens=args.timing_tokens)
    walls = {}
    if args.timing_rounds:
        print(f"  timing: {args.timing_rounds} interleaved rounds x {len(args.methods)} methods, batch 1, "
              f"{args.timing_tokens} tokens", file=sys.stderr)
        walls = interleaved_walls(target, drafter, vq.embedding, list(args.methods), args.classes[0],
                                  args.timing_rounds, **timing)
    best = {n: min(w) for n, w in walls.items()}
    ar_wall = best.get("ar")
    summaries, rows = [], []
    for name in args.methods:
        summary = runs[name].summary()
        summary.pop("wall_s")
        summary["batch1_wall_s"] = walls.get(name)
        summary["speedup"] = (ar_wall / best[name]) if ar_wall and name in best else None
        summaries.append(summary)
        images = vq.decode(runs[name].tokens.clamp(0, target.cfg.vocab_size - 1))
        rows.append((f"{name}\nalpha={summary['alpha']:.2f}\nspeedup={fmt_speedup(summary['speedup'])}\n"
                     f"tvd={summary['mean_tvd_per_image']:.3f}", images))
        print(f"  {name:<10} alpha={summary['alpha']:.2f} speedup={fmt_speedup(summary['speedup'])} "
              f"tvd/image={summary['mean_tvd_per_image']:.3f}", file=sys.stderr)
    grid_path = os.path.join(args.out, "grid.png")
    label_grid(rows, grid_path, columns=[CLASS_NAMES[c] for c in class_ids.tolist()])
    result = {
        "command": "python -m cascade_lab.demo " + " ".join(sys.argv[1:] if argv is None else argv),
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "device": str(dev)},
        "versions": {"torch": torch.__version__, "cascade_kernels": ck.__version__},
        "classes": class_ids.tolist(), "settings": {k: (v if not isinstance(v, (list, tuple, ck.DynamicTree))
                                                        else args.tree) for k, v in settings.items()},
        "threads": args.threads,
        "alpha_note": "alpha = image tokens per target forward (prefill included)",
        "speedup_note": (f"best-of-rounds batch-1 wall clock of AR / the method's, {args.timing_rounds} rounds with the "
                         f"methods interleaved in rotated order, {args.timing_tokens} tokens per image"),
        "methods": summaries,
        "grid": grid_path,
    }
    if args.continuous_methods:
        result["continuous"] = continuous_section(args, dev)
    with open(os.path.join(args.out, "stats.json"), "w") as f:
        json.dump(result, f, indent=2)
    print(f"wrote {grid_path} and {os.path.join(args.out, 'stats.json')}", file=sys.stderr)
    return result


def quality_line(run) -> str:
    return f"  {run.name:<10} alpha={run.summary()['alpha']:.2f} ({run.wall:.1f}s)"


_WORKER: dict = {}  # a quality worker's models (quality_runs_in_workers)


def _worker_init(weights: str, drafter_name: str, device: str, threads: int) -> None:
    torch.set_num_threads(threads)
    _WORKER.update(vq=load_vq(weights, device=device), target=load_target(weights, device=device),
                   drafter=load_drafter(weights, device=device, name=drafter_name))


def _worker_run(name: str, class_ids: torch.Tensor, settings: dict):
    return run_method(_WORKER["target"], _WORKER["drafter"], _WORKER["vq"].embedding, name, class_ids, **settings)


def quality_runs_in_workers(args, settings: dict, class_ids: torch.Tensor, jobs: int, prepare) -> dict:
    """The quality runs of ``args.methods`` in ``jobs`` spawned processes (each loads the weights and runs
    ``args.threads`` intra-op threads). Decoding is deterministic given the seeds, so the runs, their α and
    images are the ones a single process gives; only the wall time of this section changes. ``prepare()``
    runs here meanwhile (the timed section's method tables). Returns name -> MethodRun in ``args.methods``
    order."""
    from tqdm import tqdm

    runs = {}
    ctx = multiprocessing.get_context("spawn")  # no fork of a process whose torch may hold threads
    with ProcessPoolExecutor(jobs, mp_context=ctx, initializer=_worker_init,
                             initargs=(args.weights, args.drafter, args.device, args.threads)) as pool:
        pending = {pool.submit(_worker_run, name, class_ids, settings): name for name in args.methods}
        prepare()
        with tqdm(total=len(pending), unit="method", desc="quality runs", leave=False) as bar:
            for done in as_completed(pending):
                name = pending[done]
                runs[name] = done.result()
                bar.write(quality_line(runs[name]), file=sys.stderr)
                bar.update(1)
    return {name: runs[name] for name in args.methods}


def continuous_section(args, dev) -> dict:
    """AR / exact chain SD / CSpD on the continuous-token stack: α, interleaved batch-1 wall clock, a grid."""
    cvae, target = load_cvae(args.weights, device=dev), load_ctarget(args.weights, device=dev)
    drafter = load_cdrafter(args.weights, device=dev)
    names = list(args.continuous_methods)
    ids = torch.tensor(args.classes, device=dev)
    kw = dict(draft_len=args.draft_len, temperature=args.temperature, seed=args.seed)
    runs = {n: run_continuous(target, drafter, n, ids, **kw) for n in names}
    walls = interleaved(lambda n: run_continuous(target, drafter, n, ids[:1], **kw), names,
                        args.continuous_timing_rounds)
    best = {n: min(w) for n, w in walls.items() if w}  # best of the rounds, as the discrete section
    rows, summaries = [], []
    for n in names:
        summary = {k: v for k, v in runs[n].summary().items() if "tvd" not in k and k != "residual"}
        summary["batch1_wall_s"] = walls.get(n)
        summary["speedup"] = best["ar"] / best[n] if "ar" in best and n in best else None
        summaries.append(summary)
        rows.append((f"{n}\nalpha={summary['alpha']:.2f}\nspeedup={fmt_speedup(summary['speedup'])}",
                     cvae.decode(runs[n].tokens)))
        print(f"  continuous {n:<6} alpha={summary['alpha']:.2f} speedup={fmt_speedup(summary['speedup'])}",
              file=sys.stderr)
    grid = os.path.join(args.out, "continuous_grid.png")
    label_grid(rows, grid, columns=[CLASS_NAMES[c] for c in args.classes])
    return {"methods": summaries, "grid": grid, "draft_len": args.draft_len,
            "cspd": {"inner_temperature": ck.ops.verify_continuous.INNER_TEMPERATURE,
                     "prefill_len": ck.cspd_prefill_len(target.cfg.max_seq_len - 1)},
            "speedup_note": (f"best-of-rounds batch-1 wall clock of AR / the method's, {args.continuous_timing_rounds} rounds "
                             f"with the methods interleaved in rotated order, {target.cfg.max_seq_len - 1} tokens")}


def cli() -> None:
    """Console-script entry point (``cascade-demo``)."""
    main()


if __name__ == "__main__":
    cli()
