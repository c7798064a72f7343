"""Train the evaluation classifier on real training crops (held-out crops for accuracy).
python -m cascade_lab.train_classifier [--steps N]"""
from __future__ import annotations

import argparse
import os

import torch
import torch.nn.functional as F

from . import data
from .quality import Classifier, classify
from .train_loop import run_training
from .weights import DEFAULT_RUN_DIR, record_training, save_weights


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=400)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--run-dir", default=os.path.join(DEFAULT_RUN_DIR, "classifier"))
    ap.add_argument("--vq-aug", type=float, default=0.5,
                    help="fraction of each batch replaced by its VQ round trip (generated images are VQ decodings)")
    ap.add_argument("--init-from", default=None, help="start from this checkpoint's model weights")
    ap.add_argument("--no-export", action="store_true")
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    torch.manual_seed(a.seed)
    cfg = dict(num_classes=data.NUM_CLASSES, ch=32, feat_dim=128)
    model = Classifier(**cfg)
    opt = torch.optim.AdamW(model.parameters(), lr=a.lr, weight_decay=1e-4)
    gen = torch.Generator().manual_seed(a.seed + 7)
    vq = None
    if a.vq_aug > 0:
        from .loaders import load_vq

        vq = load_vq()

    def step_loss(step):
        x, c = data.random_crops(a.batch, gen)
        if vq is not None:
            k = int(round(a.vq_aug * a.batch))
            if k:
                x[:k] = vq.decode(vq.encode(x[:k]))
        # light colour/brightness jitter so the classifier does not key on exact pixel stats
        x = (x * (1 + 0.1 * torch.randn(a.batch, 1, 1, 1, generator=gen))
             + 0.1 * torch.randn(a.batch, 3, 1, 1, generator=gen)).clamp(-1, 1)
        return F.cross_entropy(model(x), c), {}

    def init_weights():
        model.load_state_dict(torch.load(a.init_from, map_location="cpu", weights_only=False)["model"])

    res = run_training(model, opt, step_loss, steps=a.steps, lr=a.lr, run_dir=a.run_dir, generator=gen,
                       desc="classifier", clip=0.0,
                       fresh_start=init_weights if a.init_from else None)
    xv, cv = data.heldout_crops()
    lo, _ = classify(model, xv)
    acc = float((lo.argmax(-1) == cv).float().mean())
    extra = {}
    try:  # accuracy on VQ reconstructions of held-out crops (upper bound for generated images)
        from .loaders import load_vq

        vq = vq or load_vq()
        lo2, _ = classify(model, vq.decode(vq.encode(xv)))
        extra["heldout_vq_recon_accuracy"] = float((lo2.argmax(-1) == cv).float().mean())
    except Exception as e:  # noqa: BLE001
        print("no VQ for recon accuracy:", e)
    print(f"held-out accuracy {acc:.3f} {extra} wall {res.wall_time_s:.0f}s")
    if not a.no_export:
        save_weights("classifier.pt", model.state_dict(), cfg)
        record_training("classifier", dict(steps=a.steps, batch=a.batch, lr=a.lr, seed=a.seed, wall_time_s=res.wall_time_s,
                                           final_train_loss=res.loss_ema, heldout_accuracy=acc, vq_aug=a.vq_aug,
                                           init_from=a.init_from, **extra))


if __name__ == "__main__":
    main()
