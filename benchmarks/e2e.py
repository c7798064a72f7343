"""End-to-end comparison of every method on the shipped image model (issue 7, issue 8's table).

    python benchmarks/e2e.py [--images-per-class 24] [--speed-images 4] [--tree small] [--out benchmarks/results]
    (or in two processes: --part methods / --part extras, then --merge)

* Quality run: every method generates ``images_per_class`` images for every class, batched, same
  classes and seeds; reports α (image tokens per target forward), TVD per image, our FID (Fréchet
  distance of the shipped classifier's features, generated vs held-out real crops) and class
  fidelity (the classifier's accuracy), next to AR's.
* Speed run: ``speed_images`` images one at a time (batch 1, like a latency-bound user), AR and each
  method in the same process, interleaved; the wall-clock speedup is the ratio of median times.
* CASCADE threshold sweep (tau_pos, tau_seq) as the paper's Fig. 4, and the drafter comparison
  (standard EAGLE loss vs Eq. 4) under Exact and CASCADE when both drafters are shipped.
Writes ``e2e_<device>.json``, ``e2e_<device>.md`` and ``e2e_speedup_fid_<device>.png``.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time

import torch

HERE = os.path.dirname(os.path.abspath(__file__))


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images-per-class", type=int, default=24)
    ap.add_argument("--speed-images", type=int, default=4)
    ap.add_argument("--batch", type=int, default=48)
    import cascade_kernels as ck

    ap.add_argument("--tree", default="small", choices=[*ck.NAMED_TREES, "dynamic"],
                    help="small (6 drafted nodes) by default: the CPU target is compute bound, so every drafted "
                         "node costs a target token's FLOPs")
    ap.add_argument("--cfg", type=float, default=2.0)
    ap.add_argument("--temperature", type=float, default=1.0)
    ap.add_argument("--top-k", type=int, default=0)
    ap.add_argument("--methods", nargs="+", default=["exact", "lantern", "lantern++", "gsd", "cool", "cascade",
                                                     "cascade-I", "cascade-C"])
    ap.add_argument("--sweep", default="0.85:0.625,0.85:0.5,0.8:0.5,0.7:0.4")
    ap.add_argument("--drafters", nargs="+", default=["drafter_eagle.pt", "drafter_eq4.pt"])
    ap.add_argument("--weights", default=None)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--out", default=os.path.join(HERE, "results"))
    ap.add_argument("--num-tokens", type=int, default=256)
    ap.add_argument("--part", choices=["all", "methods", "extras"], default="all",
                    help="methods = main table + speed run, extras = sweep + drafters (run both in parallel, "
                         "one thread each, then --merge)")
    ap.add_argument("--merge", action="store_true", help="combine the two parts' JSON into the final table")
    return ap.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    tag = "cpu" if args.device == "cpu" else "gpu"
    if args.merge:
        parts = [json.load(open(os.path.join(args.out, f"e2e_{tag}_{p}.json"))) for p in ("methods", "extras")]
        result = dict(parts[0], cascade_sweep=parts[1]["cascade_sweep"], drafters=parts[1]["drafters"],
                      command=parts[0]["command"] + " ; " + parts[1]["command"] + " ; python benchmarks/e2e.py --merge")
        return finish(result, args.out, tag)
    torch.set_num_threads(args.threads)
    import cascade_kernels as ck
    from cascade_lab import quality
    from cascade_lab.compare import run_method, tree_arg
    from cascade_lab.data import heldout_crops
    from cascade_lab.loaders import load_classifier, load_drafter, load_target, load_vq
    from cascade_lab.weights import WEIGHTS_DIR, WeightsError

    wdir = args.weights or WEIGHTS_DIR
    dev = torch.device(args.device)
    vq, target, clf = load_vq(wdir, device=dev), load_target(wdir, device=dev), load_classifier(wdir, device=dev)
    drafters = {}
    for name in args.drafters:
        try:
            drafters[name] = load_drafter(wdir, device=dev, name=name)
        except WeightsError as e:
            print(f"skipping drafter {name}: {e}", file=sys.stderr)
    main_drafter_name = args.drafters[0]
    drafter = drafters[main_drafter_name]
    C = target.cfg.num_classes
    class_ids = torch.arange(C, device=dev).repeat_interleave(args.images_per_class)
    real, _ = heldout_crops()
    common = dict(tree=tree_arg(args.tree), cfg_scale=args.cfg or None, temperature=args.temperature,
                  top_k=args.top_k, num_tokens=args.num_tokens)

    def quality_run(name, residual="transport", drafter_=drafter, **kw):
        toks, stats = [], []
        t0 = time.perf_counter()
        for start in range(0, len(class_ids), args.batch):
            part = class_ids[start:start + args.batch]
            run = run_method(target, drafter_, vq.embedding, name, part, residual=residual, seed=1000 + start,
                             **common, **kw)
            toks.append(run.tokens)
            stats += run.stats
        images = vq.decode(torch.cat(toks).clamp(0, target.cfg.vocab_size - 1))
        row = {
            "method": name, "residual": residual,
            "alpha": statistics.mean(s.alpha for s in stats),
            "mean_accept_len": statistics.mean(statistics.mean(s.accept_lengths) if s.accept_lengths else 0.0
                                               for s in stats),
            "tvd_per_image": statistics.mean(s.tvd for s in stats),
            "fid": quality.our_fid(clf, images, real),
            "class_fidelity": quality.class_fidelity(clf, images, class_ids),
            "quality_run_s": time.perf_counter() - t0,
        }
        row.update({k: v for k, v in kw.items() if k in ("tau_pos", "tau_seq")})
        print(f"  {name:<10} {residual:<9} alpha={row['alpha']:.2f} fid={row['fid']:.2f} "
              f"fidelity={row['class_fidelity']:.3f} tvd/img={row['tvd_per_image']:.3f} "
              f"({row['quality_run_s']:.0f}s)", file=sys.stderr)
        return row

    def speed_run(configs):
        """Median batch-1 wall time per image of each config, interleaved with AR in one loop."""
        times = {key: [] for key in configs}
        for i in range(args.speed_images):
            cid = torch.tensor([i % C], device=dev)
            for key, (name, residual, kw) in configs.items():
                run = run_method(target, drafter, vq.embedding, name, cid, residual=residual, seed=50_000 + i,
                                 **common, **kw)
                times[key].append(run.wall)
        return {key: statistics.median(v) for key, v in times.items()}

    print(f"e2e: {len(class_ids)} images per method, classes {C}, tree {args.tree}, part {args.part}, backends "
          f"{ck.available_backends()}", file=sys.stderr)
    rows, sweep, drafter_rows = [], [], []
    if args.part in ("all", "methods"):
        rows = [quality_run("ar")]
        configs = {("ar", "-"): ("ar", "transport", {})}
        for name in args.methods:
            residuals = ["transport"] if name == "exact" else ["transport", "standard"]
            for residual in residuals:
                rows.append(quality_run(name, residual))
                configs[(name, residual)] = (name, residual, {})
        print("speed run (batch 1) ...", file=sys.stderr)
        medians = speed_run(configs)
        ar_time = medians[("ar", "-")]
        for row in rows:
            key = (row["method"], "-" if row["method"] == "ar" else row["residual"])
            row["median_s_per_image_b1"] = medians[key]
            row["speedup_b1"] = ar_time / medians[key]
    if args.part in ("all", "extras"):
        for pair in filter(None, args.sweep.split(",")):
            tp, ts = (float(x) for x in pair.split(":"))
            sweep.append(quality_run("cascade", tau_pos=tp, tau_seq=ts))
        if len(drafters) > 1:
            for dname, d in drafters.items():
                for name in ("exact", "cascade"):
                    row = quality_run(name, drafter_=d)
                    row["drafter"] = dname
                    drafter_rows.append(row)

    device_name = "cpu" if dev.type == "cpu" else torch.cuda.get_device_name(dev)
    result = {
        "command": "python benchmarks/e2e.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "machine": {"platform": platform.platform(), "processor": platform.processor(), "cpus": os.cpu_count(),
                    "device": device_name, "torch_threads": args.threads},
        "versions": {"torch": torch.__version__, "cascade_kernels": ck.__version__},
        "settings": {k: v for k, v in vars(args).items() if k not in ("out",)},
        "images_per_method": len(class_ids), "drafter": main_drafter_name,
        "alpha_definition": "image tokens per target forward, prefill included (AR = 1)",
        "methods": rows, "cascade_sweep": sweep, "drafters": drafter_rows,
    }
    os.makedirs(args.out, exist_ok=True)
    if args.part != "all":
        with open(os.path.join(args.out, f"e2e_{tag}_{args.part}.json"), "w") as f:
            json.dump(result, f, indent=2)
        return result
    return finish(result, args.out, tag)


def finish(result, out, tag):
    """Write the final JSON, markdown table and speedup-vs-FID plot."""
    with open(os.path.join(out, f"e2e_{tag}.json"), "w") as f:
        json.dump(result, f, indent=2)
    with open(os.path.join(out, f"e2e_{tag}.md"), "w") as f:
        f.write(markdown(result))
    plot(result["methods"], result["cascade_sweep"], os.path.join(out, f"e2e_speedup_fid_{tag}.png"))
    print(markdown(result))
    return result


def markdown(r) -> str:
    ar = r["methods"][0]
    lines = [f"# End-to-end comparison ({r['machine']['device']}, {r['images_per_method']} images per method)", "",
             f"Command: `{r['command']}`  ", f"Machine: {r['machine']['platform']}, {r['machine']['cpus']} CPUs, "
             f"torch {r['versions']['torch']} ({r['machine']['torch_threads']} thread(s))  ",
             f"α = {r['alpha_definition']}; speedup = AR's median batch-1 wall time per image / the method's, "
             "same process, interleaved.", "",
             "| method | residual | α | α / Exact α | speedup (B=1) | TVD / image | our FID | FID vs AR | class fidelity |",
             "|---|---|---|---|---|---|---|---|---|"]
    exact_alpha = next((m["alpha"] for m in r["methods"] if m["method"] == "exact"), float("nan"))
    for m in r["methods"]:
        lines.append(f"| {m['method']} | {m['residual'] if m['method'] != 'ar' else '-'} | {m['alpha']:.2f} | "
                     f"{m['alpha'] / exact_alpha:.2f} | {m['speedup_b1']:.2f} | {m['tvd_per_image']:.3f} | "
                     f"{m['fid']:.2f} | {100 * (m['fid'] / ar['fid'] - 1):+.1f}% | {m['class_fidelity']:.3f} |")
    if r["cascade_sweep"]:
        lines += ["", "CASCADE threshold sweep (transport residual, eps 0.5):", "",
                  "| tau_pos | tau_seq | α | TVD / image | our FID | class fidelity |", "|---|---|---|---|---|---|"]
        for m in r["cascade_sweep"]:
            lines.append(f"| {m['tau_pos']} | {m['tau_seq']} | {m['alpha']:.2f} | {m['tvd_per_image']:.3f} | "
                         f"{m['fid']:.2f} | {m['class_fidelity']:.3f} |")
    if r["drafters"]:
        lines += ["", "Drafters (standard EAGLE loss vs CASCADE Eq. 4):", "",
                  "| drafter | method | α | our FID | class fidelity |", "|---|---|---|---|---|"]
        for m in r["drafters"]:
            lines.append(f"| {m['drafter']} | {m['method']} | {m['alpha']:.2f} | {m['fid']:.2f} | "
                         f"{m['class_fidelity']:.3f} |")
    return "\n".join(lines) + "\n"


def plot(rows, sweep, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for m in rows:
        marker = "o" if m["residual"] == "transport" or m["method"] == "ar" else "s"
        ax.scatter(m["fid"], m["speedup_b1"], marker=marker)
        ax.annotate(f"{m['method']}{'' if m['method'] in ('ar', 'exact') else '/' + m['residual'][:5]}",
                    (m["fid"], m["speedup_b1"]), fontsize=7, xytext=(3, 3), textcoords="offset points")
    ax.set_xlabel("our FID (lower is better)")
    ax.set_ylabel("wall-clock speedup vs AR (batch 1)")
    ax.set_title("Speedup vs quality (o transport, s standard residual)")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    main()
