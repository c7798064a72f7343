"""End-to-end rows of the continuous-token stack: AR, exact chain speculative decoding and the CSpD criterion.

    python benchmarks/e2e_continuous.py [--images-per-class 50] [--speed-images 8] [--draft-len 4] [--out benchmarks/results]

The shipped VAE / mixture-head target / drafter (``cascade_lab.ctarget``), ``ck.generate_continuous``.

* Quality run: every method generates ``images_per_class`` images of every class, batched, the same classes
  and seeds; α (tokens per target forward, prefill included), our FID (Fréchet distance of the shipped
  classifier's features, generated vs the 500 held-out real crops, bootstrap interval) and class fidelity
  (the classifier's accuracy), each with a 95 % interval; two reference rows: the held-out images' own VAE
  reconstructions (the tokenizer's floor) and the real images' class fidelity.
* Speed run: ``speed_images`` images at batch 1, the methods interleaved in rotated order (``compare.interleaved``);
  the speedup is AR's median wall clock over the method's.
Writes ``e2e_continuous_<device>.json``, ``.md`` and ``e2e_continuous_grid_<device>.png`` (the first image
of every class, one row per method).
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
sys.path.insert(0, HERE)
from e2e import accept_by_depth, fid_ci, mean_ci  # noqa: E402  (the discrete benchmark's statistics)


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images-per-class", type=int, default=50)
    ap.add_argument("--speed-images", type=int, default=8)
    ap.add_argument("--batch", type=int, default=50)
    ap.add_argument("--draft-len", type=int, default=4)
    ap.add_argument("--temperature", type=float, default=1.0)
    ap.add_argument("--methods", nargs="+", default=["ar", "exact", "cspd"])
    ap.add_argument("--weights", default=None)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--out", default=os.path.join(HERE, "results"))
    return ap.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    import cascade_kernels as ck
    from cascade_lab import data
    from cascade_lab.cvae import SCENE_STYLE
    from cascade_lab.compare import CONTINUOUS_METHODS, interleaved, label_grid, run_continuous
    from cascade_lab.loaders import load_continuous
    from cascade_lab.quality import classify
    from cascade_lab.weights import WEIGHTS_DIR

    if any(m not in CONTINUOUS_METHODS for m in args.methods):
        raise SystemExit(f"--methods must be among {CONTINUOUS_METHODS}")
    torch.set_num_threads(args.threads)
    dev = torch.device(args.device)
    load0 = os.getloadavg()
    t_start = time.time()
    m = load_continuous(args.weights or WEIGHTS_DIR, device=dev)
    C = m.target.cfg.num_classes
    class_ids = torch.arange(C, device=dev).repeat_interleave(args.images_per_class)
    real, real_cls = data.heldout_crops(SCENE_STYLE)
    real_logits, real_feats = classify(m.classifier, real.to(dev))
    kw = dict(draft_len=args.draft_len, temperature=args.temperature)

    def quality_row(name):
        t0 = time.perf_counter()
        stats, logits, feats, firsts = [], [], [], []
        for i in range(0, len(class_ids), args.batch):
            run = run_continuous(m.target, m.drafter, name, class_ids[i:i + args.batch], seed=i, **kw)
            stats += run.stats
            images = m.cvae.decode(run.tokens)
            lo, fe = classify(m.classifier, images)
            logits.append(lo)
            feats.append(fe)
            firsts += [images[j - i] for j in range(i, i + len(images)) if j % args.images_per_class == 0]
        logits, feats = torch.cat(logits), torch.cat(feats)
        correct = (logits.argmax(-1) == class_ids).float()
        row = dict(method=name, images=len(class_ids), **mean_ci("alpha", [s.alpha for s in stats]),
                   **fid_ci(feats.cpu(), real_feats.cpu()), **mean_ci("class_fidelity", correct.tolist()),
                   accept_by_depth=accept_by_depth(stats, args.draft_len) if name != "ar" else None,
                   quality_wall_s=round(time.perf_counter() - t0, 1))
        print(f"  {name:<6} alpha={row['alpha']:.2f}±{row['alpha_ci95']:.2f} fid={row['fid']:.2f} "
              f"[{row['fid_boot_lo']:.2f}, {row['fid_boot_hi']:.2f}] fidelity={row['class_fidelity']:.3f}"
              f"±{row['class_fidelity_ci95']:.3f} ({row['quality_wall_s']}s)", file=sys.stderr, flush=True)
        return row, torch.stack(firsts)

    rows, grids = [], {}
    for name in args.methods:
        row, grids[name] = quality_row(name)  # grids: the first image of every class
        rows.append(row)
    recon = torch.cat([m.cvae.decode(m.cvae.encode(real[i:i + 100].to(dev))) for i in range(0, len(real), 100)])
    rl, rf = classify(m.classifier, recon)
    reference = {"vae_reconstructions": dict(images=len(real), **fid_ci(rf.cpu(), real_feats.cpu()),
                                             **mean_ci("class_fidelity", (rl.argmax(-1).cpu() == real_cls).float().tolist())),
                 "real_heldout": mean_ci("class_fidelity", (real_logits.argmax(-1).cpu() == real_cls).float().tolist())}

    # speed: batch 1, methods interleaved
    walls = {n: [] for n in args.methods}
    for i in range(args.speed_images):
        ids = torch.tensor([i % C], device=dev)
        w = interleaved(lambda n: run_continuous(m.target, m.drafter, n, ids, seed=90_000 + i, **kw),
                        args.methods[i % len(args.methods):] + args.methods[:i % len(args.methods)], 1)
        for n, v in w.items():
            walls[n] += v
    med = {n: statistics.median(w) for n, w in walls.items()}
    for row in rows:
        row["batch1_wall_s_median"] = med[row["method"]]
        row["speedup_b1"] = med["ar"] / med[row["method"]] if "ar" in med else None

    log = {}
    log_path = os.path.join(args.weights or WEIGHTS_DIR, "training_log.json")
    if os.path.exists(log_path):
        log = json.load(open(log_path))
    result = {
        "command": "python benchmarks/e2e_continuous.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "machine": {"platform": platform.platform(), "processor": platform.processor(), "cpus": os.cpu_count(),
                    "device": str(dev), "threads": args.threads,
                    "load_avg_1_5_15_start": [round(v, 2) for v in load0],
                    "load_avg_1_5_15_end": [round(v, 2) for v in os.getloadavg()]},
        "versions": {"torch": torch.__version__, "cascade_kernels": ck.__version__},
        "settings": dict(images_per_class=args.images_per_class, classes=C, num_tokens=m.target.cfg.max_seq_len - 1,
                         latent_dim=m.target.cfg.latent_dim, mixture_components=m.target.cfg.mixture_components,
                         draft_len=args.draft_len, temperature=args.temperature, speed_images=args.speed_images,
                         cspd_inner_temperature=ck.ops.verify_continuous.INNER_TEMPERATURE,
                         cspd_prefill_len=ck.cspd_prefill_len(m.target.cfg.max_seq_len - 1)),
        "models": {k: {f: log.get(k, {}).get(f) for f in ("wall_time_s", "val_nll", "val_nll_wrong_class",
                                                          "expected_accept", "heldout_psnr_db")}
                   for k in ("cvae", "ctarget", "cdrafter")},
        "alpha_definition": "image tokens per target forward, the prefill included",
        "methods": rows, "reference": reference, "total_wall_s": round(time.time() - t_start, 1),
    }
    os.makedirs(args.out, exist_ok=True)
    tag = "cpu" if args.device == "cpu" else "gpu"
    with open(os.path.join(args.out, f"e2e_continuous_{tag}.json"), "w") as f:
        json.dump(result, f, indent=2)
    with open(os.path.join(args.out, f"e2e_continuous_{tag}.md"), "w") as f:
        f.write(markdown(result))
    label_grid([(f"{row['method']}\nalpha={row['alpha']:.2f}\nFID={row['fid']:.1f}", grids[row["method"]])
                for row in rows], os.path.join(args.out, f"e2e_continuous_grid_{tag}.png"),
               columns=[data.CLASS_NAMES[c] for c in range(C)])
    print(markdown(result))
    return result


def markdown(r) -> str:
    s, mach = r["settings"], r["machine"]
    lines = [f"# Continuous-token end-to-end ({mach['device']})", "",
             f"`{r['command']}`", "",
             f"Machine: {mach['platform']}, {mach['cpus']} CPUs, {mach['threads']} torch thread(s); load average "
             f"(1/5/15 min) {mach['load_avg_1_5_15_start']} at the start, {mach['load_avg_1_5_15_end']} at the end "
             f"(a shared machine: other jobs ran). torch {r['versions']['torch']}. Total {r['total_wall_s']} s.", "",
             f"{s['classes']} classes x {s['images_per_class']} images per method, {s['num_tokens']} tokens of "
             f"D = {s['latent_dim']} (8x8 VAE latents), mixture of K = {s['mixture_components']}, drafted chain "
             f"L = {s['draft_len']}, temperature {s['temperature']}. CSpD: inner temperature "
             f"{s['cspd_inner_temperature']}, the first {s['cspd_prefill_len']} tokens by the target alone. "
             f"α = {r['alpha_definition']}; ± = 95 % interval (1.96 standard errors over images; FID: bootstrap "
             f"2.5-97.5 % over the generated images). Speed: {s['speed_images']} images at batch 1, methods "
             f"interleaved, medians.", "",
             "| method | α | speedup (batch 1) | median wall s | our FID | class fidelity | accept ≥ d (d = 1..L) |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for m in r["methods"]:
        depth = " / ".join(f"{p:.2f}" for p in m["accept_by_depth"]) if m["accept_by_depth"] else ""
        lines.append(f"| {m['method']} | {m['alpha']:.2f} ± {m['alpha_ci95']:.2f} | {m['speedup_b1']:.2f} | "
                     f"{m['batch1_wall_s_median']:.3f} | {m['fid']:.2f} [{m['fid_boot_lo']:.2f}, {m['fid_boot_hi']:.2f}] | "
                     f"{m['class_fidelity']:.3f} ± {m['class_fidelity_ci95']:.3f} | {depth} |")
    v, real = r["reference"]["vae_reconstructions"], r["reference"]["real_heldout"]
    lines += ["", f"Reference: VAE reconstructions of the {v['images']} held-out images: our FID {v['fid']:.2f} "
              f"[{v['fid_boot_lo']:.2f}, {v['fid_boot_hi']:.2f}], class fidelity {v['class_fidelity']:.3f} ± "
              f"{v['class_fidelity_ci95']:.3f}; the real held-out images: class fidelity {real['class_fidelity']:.3f} ± "
              f"{real['class_fidelity_ci95']:.3f}.", ""]
    models = r["models"]
    lines.append("Models (weights/training_log.json): " + "; ".join(
        f"{k}: " + ", ".join(f"{f} {v}" for f, v in d.items() if v is not None) for k, d in models.items()) + ".")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
