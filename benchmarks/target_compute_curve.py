"""Class fidelity of the shipped target against more training compute (issue 16).

Continues the shipped target (``train_target --init-from`` the shipped weights, a fresh AdamW and cosine
schedule, the same 24576 object scenes) in a subprocess, and every ``--eval-every`` seconds evaluates its
latest checkpoint the way ``python -m cascade_lab.evaluate`` does (16 AR samples per class, CFG 3, T 1,
seed 0, the shipped classifier) plus the teacher-forced held-out loss and entropy. Nothing is exported:
the shipped weights stay as they are. Writes ``benchmarks/results/target_compute_curve.{json,md}``.

    python benchmarks/target_compute_curve.py --time-budget 4500 --eval-every 1200
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time

import torch

from cascade_lab import data
from cascade_lab.evaluate import sample_classes
from cascade_lab.loaders import load_classifier, load_target, load_vq
from cascade_lab.quality import classify
from cascade_lab.tokens import heldout_tokens
from cascade_lab.train_target import evaluate
from cascade_lab.weights import DEFAULT_RUN_DIR, TRAINING_LOG, WEIGHTS_DIR

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")


def shipped_run() -> dict:
    """The shipped target's training record (weights/training_log.json): steps_done, wall_time_s, ..."""
    with open(os.path.join(WEIGHTS_DIR, TRAINING_LOG)) as f:
        return json.load(f)["target"]


@torch.no_grad()
def measure(model, vq, clf, vids, vcls, per_class: int) -> dict:
    """AR class fidelity (overall and per class) at CFG 3 and the teacher-forced held-out figures."""
    model.eval()
    toks, cls = sample_classes(model, per_class, cfg_scale=3.0)
    logits, _ = classify(clf, vq.decode(toks))
    hit = (logits.argmax(-1).cpu() == cls).float()
    ev = evaluate(model, vids, vcls)
    ent = torch.tensor(ev["entropy_per_position"])
    return dict(class_fidelity=float(hit.mean()),
                per_class={n: float(hit[c * per_class:(c + 1) * per_class].mean())
                           for c, n in enumerate(data.CLASS_NAMES)},
                val_loss=ev["val_loss"], val_loss_null_class=ev["val_loss_null_class"],
                mean_entropy_heldout_nats=float(ent.mean()), mean_top1_prob=ev["mean_top1_prob"])


def write_md(res: dict, path: str) -> None:
    shipped = shipped_run()
    lines = ["# Shipped target: class fidelity against more training compute (issue 16)", "",
             f"Command: `{res['command']}`  ",
             f"Machine: {res['machine']}  ",
             f"Continuation: {res['continuation']}", "",
             "Each row: the latest checkpoint, 16 AR samples per class (160 images), CFG 3, T 1, seed 0, the shipped "
             "classifier (as `python -m cascade_lab.evaluate`); held-out = the 500 held-out scenes teacher-forced "
             "at CFG 1. Extra compute = this run's wall time with one thread; the shipped run took "
             f"{shipped['wall_time_s']:.0f} s with two threads ({shipped['steps_done']} steps of {shipped['batch']}).",
             "",
             "| extra steps | total steps | extra wall (1 thread) | class fidelity | held-out loss | null-class gap | "
             "held-out entropy | top-1 prob | per class |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in res["points"]:
        per = ", ".join(f"{k} {v:.2f}" for k, v in r["per_class"].items())
        lines.append(f"| {r['extra_steps']} | {r['extra_steps'] + shipped['steps_done']} | {r['extra_wall_s']:.0f} s | "
                     f"{r['class_fidelity']:.3f} | {r['val_loss']:.4f} | "
                     f"{r['val_loss_null_class'] - r['val_loss']:+.4f} | {r['mean_entropy_heldout_nats']:.3f} | "
                     f"{r['mean_top1_prob']:.3f} | {per} |")
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--time-budget", type=float, default=4500.0, help="the continuation's wall-time budget (s)")
    ap.add_argument("--eval-every", type=float, default=1200.0, help="seconds between checkpoint evaluations")
    ap.add_argument("--lr", type=float, default=3e-4)
    ap.add_argument("--per-class", type=int, default=16)
    ap.add_argument("--run-dir", default=os.path.join(DEFAULT_RUN_DIR, "target_continued"))
    ap.add_argument("--out", default=os.path.join(RESULTS, "target_compute_curve"))
    a = ap.parse_args(argv)
    torch.set_num_threads(1)
    train_cmd = [sys.executable, "-m", "cascade_lab.train_target", "--init-from", WEIGHTS_DIR, "--no-export",
                 "--run-dir", a.run_dir, "--threads", "1", "--layers", "4", "--class-bias", "--abs-pos-emb",
                 "--lr", str(a.lr), "--warmup", "50", "--steps", "100000", "--time-budget", str(a.time_budget)]
    res = dict(command="python benchmarks/target_compute_curve.py " + " ".join(argv if argv is not None else sys.argv[1:]),
               machine=f"{platform.platform()}, {os.cpu_count()} CPUs, torch {torch.__version__}, one thread for "
                       "training and one for the evaluations",
               continuation=" ".join(train_cmd[1:]), points=[])
    vq, clf, model = load_vq(), load_classifier(), load_target()
    vids, vcls = heldout_tokens(vq)

    def record(extra_steps: int, extra_wall: float) -> None:
        t0 = time.time()
        point = dict(extra_steps=extra_steps, extra_wall_s=round(extra_wall, 1),
                     **measure(model, vq, clf, vids, vcls, a.per_class))
        point["eval_s"] = round(time.time() - t0, 1)
        res["points"].append(point)
        print(json.dumps(point), flush=True)
        with open(a.out + ".json", "w") as f:
            json.dump(res, f, indent=2)
        write_md(res, a.out + ".md")

    record(0, 0.0)
    ckpt_path = os.path.join(a.run_dir, "ckpt.pt")
    proc = subprocess.Popen(train_cmd)
    last = time.time()
    while True:
        finished = proc.poll() is not None
        if (finished or time.time() - last >= a.eval_every) and os.path.exists(ckpt_path):
            ck = torch.load(ckpt_path, map_location="cpu", weights_only=False)
            model.load_state_dict(ck["model"])
            record(int(ck["step"]), float(ck["wall"]))
            last = time.time()
        if finished:
            break
        time.sleep(10)
    if proc.returncode:
        raise SystemExit(f"training exited with {proc.returncode}")


if __name__ == "__main__":
    main()
