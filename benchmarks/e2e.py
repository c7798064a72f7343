"""End-to-end comparison of every method on the shipped image model, in the CASCADE paper's configuration.

    python benchmarks/e2e.py [--images-per-class 26] [--speed-images 4] [--tree eagle] [--out benchmarks/results]
    (or in two processes: --part methods / --part extras, then --merge)

Paper configuration (CASCADE §5.1, the defaults here): EAGLE-1 static tree ("eagle"), sampled drafting,
top-k 2000 of LlamaGen's 16384 codes scaled to this codebook, top-p 1, temperature 1, CFG 3, each method's
thresholds from its ``ck.presets`` entry (``compare.PRESET_OF``), TVD budget 0.5, our transport residual
(its TVD is a bound, so the TVD column means something). One deviation, by default: children are drawn
i.i.d. from the drafter row (``--drafting iid``), not without replacement as EAGLE-1's code does, because
drafting without replacement is verified by the reference backend only this round (0.7-0.9 s per call at
B=52 on this CPU against 7-13 ms for the C++ backend); ``--drafting without_replacement`` runs the exact
EAGLE-1 rule.

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
    ap.add_argument("--images-per-class", type=int, default=26)
    ap.add_argument("--speed-images", type=int, default=4)
    ap.add_argument("--batch", type=int, default=52)
    import cascade_kernels as ck

    ap.add_argument("--tree", default="eagle", choices=[*ck.NAMED_TREES, "dynamic"],
                    help="eagle = EAGLE-1's static tree (mc_sim_7b_63, 26 drafted nodes), the paper's")
    ap.add_argument("--drafting", choices=["without_replacement", "iid", "greedy"], default="iid",
                    help="i.i.d. sampled drafting (default; C++ backend), sampled without replacement (EAGLE-1's "
                         "rule; reference backend, ~70x slower verify), or deterministic top-k children")
    ap.add_argument("--cfg", type=float, default=3.0)
    ap.add_argument("--temperature", type=float, default=1.0)
    ap.add_argument("--top-k", type=int, default=None,
                    help="default: the papers' 2000 of 16384 codes scaled to the codebook (ck.presets)")
    ap.add_argument("--residuals", nargs="+", default=["transport"], choices=["transport", "standard", "peer"])
    ap.add_argument("--methods", nargs="+", default=["exact", "lantern", "lantern++", "gsd", "cool", "cascade",
                                                     "cascade-I", "cascade-C"])
    ap.add_argument("--sweep", default="0.85:0.625,0.85:0.5,0.8:0.5,0.7:0.4",
                    help="CASCADE settings tau_pos:tau_seq[:eps], comma-separated (eps: the TVD budget, default 0.5)")
    ap.add_argument("--drafters", nargs="+", default=["drafter_eagle.pt", "drafter_eq4.pt"])
    ap.add_argument("--weights", default=None)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--out", default=os.path.join(HERE, "results"))
    ap.add_argument("--num-tokens", type=int, default=256)
    ap.add_argument("--part", choices=["all", "methods", "extras", "speed"], default="all",
                    help="methods = main table (AR + --methods) + speed run, extras = sweep + drafters, speed = the "
                         "speed run alone (its speedups replace the methods parts' at --merge, e.g. after a change to "
                         "the decode loop that leaves the tokens as they were); run parts in parallel (one thread "
                         "each, --part-name to tell them apart), then --merge")
    ap.add_argument("--part-name", default=None, help="file tag of this part (default: --part)")
    ap.add_argument("--extras-images-per-class", type=int, default=None,
                    help="images per class of the sweep and drafter rows (default: --images-per-class)")
    ap.add_argument("--merge", nargs="+", default=None, metavar="PART",
                    help="combine these parts' JSON (e2e_<tag>_<PART>.json) into the final table")
    return ap.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    tag = "cpu" if args.device == "cpu" else "gpu"
    if args.merge:
        parts = [json.load(open(os.path.join(args.out, f"e2e_{tag}_{p}.json"))) for p in args.merge]
        command = " ; ".join([p["command"] for p in parts] + ["python benchmarks/e2e.py --merge " + " ".join(args.merge)])
        speed = {(m["method"], m["residual"]): m for part in parts if part["settings"]["part"] == "speed"
                 for m in part["methods"]}
        parts = [part for part in parts if part["settings"]["part"] != "speed"]
        methods = [m for part in parts for m in part["methods"] if m["method"] != "ar"]
        ar = next(m for part in parts for m in part["methods"] if m["method"] == "ar")
        for m in [ar, *methods]:
            m.update(speed.get((m["method"], m["residual"]), {}))
        result = dict(parts[0], methods=[ar, *methods],
                      cascade_sweep=[m for part in parts for m in part["cascade_sweep"]],
                      drafters=[m for part in parts for m in part["drafters"]],
                      command=command)
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
    V = target.cfg.vocab_size
    if args.top_k is None:
        args.top_k = ck.presets.get("cascade_llamagen").scaled_top_k(V)
    common = dict(tree=tree_arg(args.tree), cfg_scale=args.cfg or None, temperature=args.temperature,
                  top_k=args.top_k, num_tokens=args.num_tokens, sampled=args.drafting != "greedy",
                  draft_sampling="iid" if args.drafting == "greedy" else args.drafting)
    real_feats = quality.classify(clf, real)[1]

    extras_ids = class_ids if args.extras_images_per_class is None else \
        torch.arange(C, device=dev).repeat_interleave(args.extras_images_per_class)

    def quality_run(name, residual="transport", drafter_=drafter, ids=class_ids, **kw):
        toks, stats = [], []
        t0 = time.perf_counter()
        with SiblingSets() as sets:
            for start in range(0, len(ids), args.batch):
                part = ids[start:start + args.batch]
                run = run_method(target, drafter_, vq.embedding, name, part, residual=residual, seed=1000 + start,
                                 **common, **kw)
                toks.append(run.tokens)
                stats += run.stats
        images = vq.decode(torch.cat(toks).clamp(0, V - 1))
        logits, feats = quality.classify(clf, images)
        correct = (logits.argmax(-1).cpu() == ids.cpu()).float()
        row = {
            "method": name, "residual": residual,
            **mean_ci("alpha", [s.alpha for s in stats]),
            "mean_accept_len": statistics.mean(statistics.mean(s.accept_lengths) if s.accept_lengths else 0.0
                                               for s in stats),
            **mean_ci("tvd_per_image", [s.tvd for s in stats]),
            "tvd_per_step": statistics.mean(t for s in stats for t in s.step_tvd),
            "steps_near_budget": statistics.mean(t >= 0.45 for s in stats for t in s.step_tvd),
            "accept_by_depth": accept_by_depth(stats),
            **fid_ci(feats, real_feats),
            **mean_ci("class_fidelity", correct.tolist()),
            "images": len(ids), "quality_run_s": time.perf_counter() - t0,
            "sibling_sets": sets.summary(),
        }
        row.update({k: v for k, v in kw.items() if k in ("tau_pos", "tau_seq", "eps")})
        print(f"  {name:<10} {residual:<9} alpha={row['alpha']:.2f}±{row['alpha_ci95']:.2f} fid={row['fid']:.2f} "
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
    if args.part in ("all", "methods", "speed"):
        quality_or_speed = quality_run if args.part != "speed" else lambda name, residual="transport": \
            {"method": name, "residual": residual}
        rows = [quality_or_speed("ar")]
        configs = {("ar", "-"): ("ar", "transport", {})}
        for name in args.methods:
            for residual in args.residuals[:1] if name == "exact" else args.residuals:
                rows.append(quality_or_speed(name, residual))
                configs[(name, residual)] = (name, residual, {})
        print("speed run (batch 1) ...", file=sys.stderr)
        medians = speed_run(configs)
        ar_time = medians[("ar", "-")]
        for row in rows:
            key = (row["method"], "-" if row["method"] == "ar" else row["residual"])
            row["median_s_per_image_b1"] = medians[key]
            row["speedup_b1"] = ar_time / medians[key]
    if args.part in ("all", "extras"):
        for setting in filter(None, args.sweep.split(",")):
            tp, ts, eps = ([float(x) for x in setting.split(":")] + [None])[:3]
            sweep.append(quality_run("cascade", ids=extras_ids, tau_pos=tp, tau_seq=ts, eps=eps))
        if len(drafters) > 1:
            for dname, d in drafters.items():
                for name in ("exact", "cascade"):
                    row = quality_run(name, drafter_=d, ids=extras_ids)
                    row["drafter"] = dname
                    drafter_rows.append(row)

    device_name = "cpu" if dev.type == "cpu" else torch.cuda.get_device_name(dev)
    result = {
        "command": "python benchmarks/e2e.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "machine": {"platform": platform.platform(), "processor": platform.processor(), "cpus": os.cpu_count(),
                    "device": device_name, "torch_threads": args.threads},
        "versions": {"torch": torch.__version__, "cascade_kernels": ck.__version__},
        "settings": {k: v for k, v in vars(args).items() if k not in ("out",)},
        "images_per_method": len(class_ids), "drafter": main_drafter_name, "vocab": V,
        "regime": regime(wdir),
        "alpha_definition": "image tokens per target forward, prefill included (AR = 1)",
        "methods": rows, "cascade_sweep": sweep, "drafters": drafter_rows,
    }
    os.makedirs(args.out, exist_ok=True)
    if args.part != "all":
        with open(os.path.join(args.out, f"e2e_{tag}_{args.part_name or args.part}.json"), "w") as f:
            json.dump(result, f, indent=2)
        return result
    return finish(result, args.out, tag)


class SiblingSets:
    """Records, while a CASCADE-family method decodes, what its interchange rule sees at the root of every
    draft tree: the root's children, how many distinct tokens they are, and the first child's sibling set
    (itself plus the siblings whose target hidden states have cosine >= tau_pos with it). Wraps the decode
    loop's ``verify`` for the duration of a ``with`` block; the verify results are untouched."""

    def __init__(self):
        import cascade_kernels.decode as decode

        self.decode, self.steps = decode, []

    def __enter__(self):
        inner = self.verify = self.decode.verify

        def recording(tokens, parents, *args, **kw):
            res = inner(tokens, parents, *args, **kw)
            method, hidden = kw.get("method"), kw.get("hidden")
            tau = getattr(method, "tau_pos", None)
            if hidden is not None and tau is not None and getattr(method, "use_interchange", True):
                par = (parents.parents if hasattr(parents, "parents") else parents).long()
                for b in range(tokens.shape[0]):
                    kids = torch.nonzero(par[min(b, par.shape[0] - 1)] == 0).flatten()
                    if len(kids) == 0:
                        continue
                    h = torch.nn.functional.normalize(hidden[b, kids].float(), dim=-1)
                    cos = h[1:] @ h[0]
                    self.steps.append((len(kids), len(set(tokens[b, kids].tolist())), 1 + int((cos >= tau).sum()),
                                       int(res.accept_len[b])))
            return res

        self.decode.verify = recording
        return self

    def __exit__(self, *exc):
        self.decode.verify = self.verify

    def summary(self) -> dict:
        if not self.steps:
            return {}
        k, distinct, size, acc = (torch.tensor(c, dtype=torch.float64) for c in zip(*self.steps))
        return {"root_children": float(k.mean()), "root_children_distinct_tokens": float(distinct.mean()),
                "first_child_set_size": float(size.mean()), "steps_first_set_gt1": float((size > 1).double().mean()),
                "steps_root_rejected": float((acc == 0).double().mean())}


def regime(weights_dir) -> dict:
    """The shipped target's and drafter's measured regime, from weights/training_log.json."""
    path = os.path.join(weights_dir, "training_log.json")
    log = json.load(open(path)) if os.path.exists(path) else {}
    t, d = log.get("target", {}), log.get("drafter_eagle", {})
    out = {"target mean per-position entropy (nats)": t.get("mean_entropy_nats"),
           "target mean top-1 probability": t.get("mean_top1_prob"),
           "drafter top-1 agreement": d.get("top1_agreement"), "drafter mean Σ min(p, q)": d.get("mean_min_pq")}
    return {k: round(v, 3) for k, v in out.items() if isinstance(v, float)}


def mean_ci(key: str, values) -> dict:
    """{key: mean, key_ci95: 1.96 standard errors} over per-image values."""
    values = [float(v) for v in values]
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return {key: statistics.mean(values), f"{key}_ci95": 1.96 * sd / len(values) ** 0.5}


def fid_ci(feats: torch.Tensor, real_feats: torch.Tensor, resamples: int = 20, seed: int = 0) -> dict:
    """Our FID of the generated images' classifier features against the held-out real ones, and the
    2.5 / 97.5 percentiles over bootstrap resamples of the generated images."""
    from cascade_lab.quality import frechet_distance

    fid = frechet_distance(feats.numpy(), real_feats.numpy())
    g = torch.Generator().manual_seed(seed)
    boot = sorted(frechet_distance(feats[torch.randint(0, len(feats), (len(feats),), generator=g)].numpy(),
                                   real_feats.numpy()) for _ in range(resamples))
    return {"fid": fid, "fid_boot_lo": boot[int(0.025 * resamples)], "fid_boot_hi": boot[int(0.975 * resamples) - 1]}


def accept_by_depth(stats, max_depth: int = 8) -> list:
    """Fraction of verification steps that accepted at least d draft tokens, d = 1 .. max_depth."""
    lengths = [a for s in stats for a in s.accept_lengths]
    return [round(sum(a >= d for a in lengths) / max(1, len(lengths)), 4) for d in range(1, max_depth + 1)]


def finish(result, out, tag):
    """Write the final JSON, markdown table and speedup-vs-FID plot."""
    with open(os.path.join(out, f"e2e_{tag}.json"), "w") as f:
        json.dump(result, f, indent=2)
    with open(os.path.join(out, f"e2e_{tag}.md"), "w") as f:
        f.write(markdown(result))
    plot(result, os.path.join(out, f"e2e_speedup_fid_{tag}.png"))
    print(markdown(result))
    return result


def goal_verdict(r) -> str:
    """The project's goal: CASCADE α / Exact α >= 2 at our FID within 3 % of AR's."""
    by = {m["method"]: m for m in r["methods"] if m["residual"] in ("transport", r["methods"][1]["residual"])}
    if not {"ar", "exact", "cascade"} <= set(by):
        return "Goal (CASCADE α / Exact α ≥ 2 at FID within 3 % of AR): not evaluated (a method is missing)."
    ratio = by["cascade"]["alpha"] / by["exact"]["alpha"]
    fid_gap = by["cascade"]["fid"] / by["ar"]["fid"] - 1
    met = ratio >= 2 and fid_gap <= 0.03
    return (f"Goal (CASCADE α / Exact α ≥ 2 at FID within 3 % of AR): **{'met' if met else 'missed'}** — "
            f"CASCADE α / Exact α = {ratio:.2f}, CASCADE FID {by['cascade']['fid']:.2f} vs AR {by['ar']['fid']:.2f} "
            f"({100 * fid_gap:+.1f} %).")


def sweep_reference(r):
    """The lossless run the CASCADE sweep's FID is read against, or None. FID grows as the image count
    falls, so a sweep row is compared with Exact decoding on the same classes and seeds (the drafter
    rows' Exact run with the main drafter), not with the main table."""
    if not r["cascade_sweep"]:
        return None
    return next((m for m in r["drafters"] if m["method"] == "exact" and m["drafter"] == r["drafter"]
                 and m["images"] == r["cascade_sweep"][0]["images"]), None)


def markdown(r) -> str:
    ar = r["methods"][0]
    lines = [f"# End-to-end comparison ({r['machine']['device']}, {r['images_per_method']} images per method)", "",
             f"Command: `{r['command']}`  ", f"Machine: {r['machine']['platform']}, {r['machine']['cpus']} CPUs, "
             f"torch {r['versions']['torch']} ({r['machine']['torch_threads']} thread(s))  ",
             f"Configuration: tree `{r['settings']['tree']}`, drafting `{r['settings']['drafting']}`, top-k "
             f"{r['settings']['top_k']} of {r['vocab']} codes, CFG {r['settings']['cfg']}, temperature "
             f"{r['settings']['temperature']}, drafter `{r['drafter']}`  ",
             f"α = {r['alpha_definition']}; ± = 95 % interval (1.96 standard errors over images; FID: bootstrap "
             "2.5–97.5 % of the generated set); speedup = AR's median batch-1 wall time per image / the method's, "
             "same process, interleaved.", "",
             "| method | residual | α | α / Exact α | speedup (B=1) | TVD / image | TVD / step | steps ≥ 0.45 TVD "
             "| our FID | FID vs AR | class fidelity | P(accept ≥ 1, 2, 3, 4) |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    exact_alpha = next((m["alpha"] for m in r["methods"] if m["method"] == "exact"), float("nan"))
    for m in r["methods"]:
        depth = ", ".join(f"{x:.2f}" for x in m["accept_by_depth"][:4])
        lines.append(f"| {m['method']} | {m['residual'] if m['method'] != 'ar' else '-'} | "
                     f"{m['alpha']:.2f} ± {m['alpha_ci95']:.2f} | {m['alpha'] / exact_alpha:.2f} | "
                     f"{m['speedup_b1']:.2f} | {m['tvd_per_image']:.2f} ± {m['tvd_per_image_ci95']:.2f} | "
                     f"{m['tvd_per_step']:.3f} | {m['steps_near_budget']:.2f} | {m['fid']:.2f} [{m['fid_boot_lo']:.2f}, {m['fid_boot_hi']:.2f}] | "
                     f"{100 * (m['fid'] / ar['fid'] - 1):+.1f}% | {m['class_fidelity']:.3f} ± "
                     f"{m['class_fidelity_ci95']:.3f} | {depth} |")
    lines += ["", goal_verdict(r)]
    sets = [m for m in r["methods"] if m.get("sibling_sets")]
    if sets:
        lines += ["", "What the interchange rule sees at the root of each draft tree (means over steps): the root's "
                  "children, their distinct tokens, the first child's sibling set (itself and the siblings with "
                  "hidden-state cosine ≥ tau_pos), the share of steps whose set holds more than the first child, "
                  "and the share of steps that accept nothing (the root's children all rejected):", "",
                  "| method | children | distinct tokens | first child's set | steps with set > 1 | steps accepting 0 |",
                  "|---|---|---|---|---|---|"]
        for m in sets:
            s = m["sibling_sets"]
            lines.append(f"| {m['method']} | {s['root_children']:.2f} | {s['root_children_distinct_tokens']:.2f} | "
                         f"{s['first_child_set_size']:.2f} | {s['steps_first_set_gt1']:.2f} | "
                         f"{s['steps_root_rejected']:.2f} |")
    if r.get("regime"):
        lines += ["", "Regime of the shipped model: " + ", ".join(f"{k} {v}" for k, v in r["regime"].items())]
    if r["cascade_sweep"]:
        ref = sweep_reference(r)
        exact_alpha = next((m["alpha"] for m in r["methods"] if m["method"] == "exact"), None)
        lines += ["", f"CASCADE threshold and budget sweep ({r['cascade_sweep'][0]['images']} images each; FID vs the "
                  "lossless Exact run on the same images and seeds"
                  + (f", FID {ref['fid']:.2f}" if ref else ": not run") + "):", "",
                  "| tau_pos | tau_seq | TVD budget | α | α / Exact α | TVD / image | our FID | FID vs Exact | class fidelity |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for m in r["cascade_sweep"]:
            vs_exact = f"{100 * (m['fid'] / ref['fid'] - 1):+.1f}%" if ref else "—"
            ratio = f"{m['alpha'] / exact_alpha:.2f}" if exact_alpha else "—"
            lines.append(f"| {m['tau_pos']} | {m['tau_seq']} | {m.get('eps') or 0.5} | {m['alpha']:.2f} ± "
                         f"{m['alpha_ci95']:.2f} | {ratio} | {m['tvd_per_image']:.2f} | {m['fid']:.2f} | {vs_exact} | "
                         f"{m['class_fidelity']:.3f} |")
    if r["drafters"]:
        lines += ["", f"Drafters (standard EAGLE loss vs CASCADE Eq. 4, {r['drafters'][0]['images']} images each):", "",
                  "| drafter | method | α | our FID | class fidelity |", "|---|---|---|---|---|"]
        for m in r["drafters"]:
            lines.append(f"| {m['drafter']} | {m['method']} | {m['alpha']:.2f} ± {m['alpha_ci95']:.2f} | "
                         f"{m['fid']:.2f} | {m['class_fidelity']:.3f} |")
    return "\n".join(lines) + "\n"


def plot(r, path):
    """Left: wall-clock speedup vs our FID per method. Right: α / Exact α vs the FID cost relative to a
    lossless run on the same images (methods: AR; sweep rows: the drafter comparison's Exact run)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = r["methods"]
    exact_alpha = next((m["alpha"] for m in rows if m["method"] == "exact"), None)
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(12, 4.5))
    for m in rows:
        marker = "o" if m["residual"] == "transport" or m["method"] == "ar" else "s"
        label = f"{m['method']}{'' if m['method'] in ('ar', 'exact') else '/' + m['residual'][:5]}"
        ax.scatter(m["fid"], m["speedup_b1"], marker=marker)
        ax.annotate(label, (m["fid"], m["speedup_b1"]), fontsize=7, xytext=(3, 3), textcoords="offset points")
        if exact_alpha:
            gap = 100 * (m["fid"] / rows[0]["fid"] - 1)
            ax2.scatter(gap, m["alpha"] / exact_alpha, marker=marker)
            ax2.annotate(label, (gap, m["alpha"] / exact_alpha), fontsize=7, xytext=(3, 3),
                         textcoords="offset points")
    ref = sweep_reference(r)
    if exact_alpha and ref:
        for m in r["cascade_sweep"]:
            gap = 100 * (m["fid"] / ref["fid"] - 1)
            ax2.scatter(gap, m["alpha"] / exact_alpha, marker="x", color="k")
            ax2.annotate(f"{m['tau_pos']}/{m['tau_seq']}", (gap, m["alpha"] / exact_alpha), fontsize=7,
                         xytext=(3, -9), textcoords="offset points")
    ax.set_xlabel("our FID (lower is better)")
    ax.set_ylabel("wall-clock speedup vs AR (batch 1)")
    ax.set_title("Speedup vs quality (o transport, s standard residual)")
    ax2.axvline(3, color="g", lw=0.8, ls="--")
    ax2.axhline(2, color="g", lw=0.8, ls="--")
    ax2.set_xlabel("FID vs a lossless run on the same images (%)")
    ax2.set_ylabel("α / Exact α")
    ax2.set_title("Acceptance vs quality cost (x: CASCADE tau_pos/tau_seq sweep; goal: upper left of the lines)")
    ax2.title.set_fontsize(9)
    for a_ in (ax, ax2):
        a_.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    main()
