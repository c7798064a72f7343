"""Retrain every shipped component, in order, with the settings the shipped weights were made with.

    python -m cascade_lab.retrain [--only vq target classifier drafter_eagle drafter_eq4 evaluate cvae ctarget cdrafter] [--dry-run]

Each step is one training script (they share ``train_loop.run_training``) and is resumable: its run dir
(``runs/<component>``, git-ignored) keeps a checkpoint, so an interrupted retrain picks up where it
stopped. Steps run one after another on one thread each (about 2 hours on 2 cores in all: the classifier
and the eq4 drafter may run beside the target and the EAGLE drafter in a second process with
``--only``). Every step records its command, wall time and measurements in ``weights/training_log.json``.
"""
from __future__ import annotations

import argparse
import importlib
import os
import sys

from .weights import DEFAULT_RUN_DIR

STEPS = {
    # the VQ codebook is re-fitted by k-means to the moving encoder at steps 100, 250 and 450
    # the VQ was trained on the "photo" scenes (data.STYLES) and tokenises the "object" scenes as well
    "vq": ("train_vq", ["--steps", "900", "--time-budget", "1260", "--codes", "4096", "--style", "photo",
                        "--kmeans-refresh", "100,250,450", "--run-dir", os.path.join(DEFAULT_RUN_DIR, "vq4096")]),
    "target": ("train_target", ["--steps", "3000", "--time-budget", "4500", "--threads", "2", "--layers", "4",
                                "--dim", "256", "--batch", "32", "--n-train", "24576", "--codebook-init", "--class-bias",
                                "--abs-pos-emb", "--run-dir", os.path.join(DEFAULT_RUN_DIR, "target_object")]),
    "classifier": ("train_classifier", ["--steps", "400", "--run-dir", os.path.join(DEFAULT_RUN_DIR, "classifier10")]),
    # the drafters read the target's training tokens (same --n-train and seed: one cached encoding)
    "drafter_eagle": ("train_drafter", ["--loss", "eagle", "--steps", "900", "--time-budget", "900", "--n-train", "24576",
                                        "--run-dir", os.path.join(DEFAULT_RUN_DIR, "drafter_eagle_object")]),
    "drafter_eq4": ("train_drafter", ["--loss", "eq4", "--steps", "900", "--time-budget", "900", "--n-train", "24576",
                                      "--run-dir", os.path.join(DEFAULT_RUN_DIR, "drafter_eq4_object")]),
    "evaluate": ("evaluate", ["--per-class", "16"]),
    # the continuous-token stack (about 25 minutes of one core in all, the 6144 training images rendered once)
    "cvae": ("train_cvae", ["--steps", "1500", "--time-budget", "480"]),
    "ctarget": ("train_ctarget", ["--steps", "3000", "--time-budget", "720"]),
    "cdrafter": ("train_cdrafter", ["--steps", "3000", "--time-budget", "300"]),
}


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python -m cascade_lab.retrain", description=__doc__.splitlines()[0])
    ap.add_argument("--only", nargs="+", choices=list(STEPS), default=list(STEPS))
    ap.add_argument("--dry-run", action="store_true", help="print the commands only")
    a = ap.parse_args(argv)
    for name in [s for s in STEPS if s in a.only]:
        module, args = STEPS[name]
        print(f"== {name}: python -m cascade_lab.{module} {' '.join(args)}", flush=True)
        if not a.dry_run:
            saved, sys.argv = sys.argv, [module, *args]  # weights.record_training logs sys.argv as the command
            try:
                importlib.import_module(f"cascade_lab.{module}").main(args)
            finally:
                sys.argv = saved


if __name__ == "__main__":
    main()
