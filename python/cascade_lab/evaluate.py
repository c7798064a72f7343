"""Sample with the plain AR sampler and measure class fidelity / our FID / entropy.
python -m cascade_lab.evaluate [--per-class N] [--cfg S] [--grid PATH]"""
from __future__ import annotations

import argparse
import json
import os
import time

import torch

from . import data
from .loaders import load_classifier, load_target, load_vq
from .quality import class_fidelity, our_fid, per_position_entropy
from .sample import sample_tokens
from .tokens import heldout_tokens
from .weights import WEIGHTS_DIR


def sample_classes(target, per_class: int, *, cfg_scale: float, temperature: float = 1.0, top_k: int = 0,
                   seed: int = 0):
    """``per_class`` AR samples of every class (class-major) in batches of 32, batch ``i`` seeded ``seed + i``.
    Returns (tokens [C * per_class, 256], class_ids)."""
    cls = torch.arange(data.NUM_CLASSES).repeat_interleave(per_class)
    toks = torch.cat([sample_tokens(target, cls[i:i + 32], cfg_scale=cfg_scale, temperature=temperature,
                                    top_k=top_k, seed=seed + i) for i in range(0, len(cls), 32)])
    return toks, cls


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--per-class", type=int, default=16)
    ap.add_argument("--cfg", type=float, default=3.0)
    ap.add_argument("--temperature", type=float, default=1.0)
    ap.add_argument("--top-k", type=int, default=0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--weights", default=None, help="weights dir (default: the shipped cascade_lab/weights)")
    ap.add_argument("--grid", default=os.path.join(WEIGHTS_DIR, "samples_ar.png"))
    ap.add_argument("--grid-per-class", type=int, default=6)
    ap.add_argument("--out", default=os.path.join(WEIGHTS_DIR, "quality.json"))
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    wd = a.weights or WEIGHTS_DIR
    vq, target, clf = load_vq(wd), load_target(wd), load_classifier(wd)
    t0 = time.time()
    toks, cls = sample_classes(target, a.per_class, cfg_scale=a.cfg, temperature=a.temperature, top_k=a.top_k,
                               seed=a.seed)
    t_sample = time.time() - t0
    imgs = vq.decode(toks)
    real, rcls = data.heldout_crops()
    vids, vcls = heldout_tokens(vq)
    res = dict(
        cfg_scale=a.cfg, temperature=a.temperature, top_k=a.top_k, seed=a.seed, n_generated=len(cls),
        sample_wall_s=round(t_sample, 1),
        class_fidelity_generated=class_fidelity(clf, imgs, cls),
        class_fidelity_heldout_real=class_fidelity(clf, real, rcls),
        class_fidelity_heldout_vq_recon=class_fidelity(clf, vq.decode(vids), vcls),
        our_fid_generated_vs_heldout=our_fid(clf, imgs, real),
        our_fid_vq_recon_vs_heldout=our_fid(clf, vq.decode(vids), real),
        mean_entropy_generated_nats=float(per_position_entropy(target, cls, toks, a.cfg).mean()),
        mean_entropy_heldout_nats=float(per_position_entropy(target, vcls, vids).mean()),
    )
    print(json.dumps(res, indent=2))
    allres = json.load(open(a.out)) if os.path.exists(a.out) else {}
    allres[f"cfg{a.cfg}_t{a.temperature}_k{a.top_k}"] = res
    with open(a.out, "w") as f:
        json.dump(allres, f, indent=2)
    if a.grid:
        g = torch.cat([imgs[c * a.per_class: c * a.per_class + a.grid_per_class] for c in range(data.NUM_CLASSES)])
        data.save_grid(g, a.grid, nrow=a.grid_per_class, row_labels=data.CLASS_NAMES)
        print("grid:", a.grid)


if __name__ == "__main__":
    main()
