"""Train the evaluation classifier on real training crops (held-out crops for accuracy).
python -m cascade_lab.train_classifier [--steps N]"""
from __future__ import annotations

import argparse
import math
import os
import time

import torch
import torch.nn.functional as F
from tqdm import tqdm

from . import data
from .quality import Classifier, classify
from .weights import DEFAULT_RUN_DIR, Checkpointer, record_training, save_weights


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=400)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
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
    ck = Checkpointer(a.run_dir)
    gen = torch.Generator().manual_seed(a.seed + 7)
    step, wall = 0, 0.0
    st = ck.load()
    if st is not None:
        model.load_state_dict(st["model"]); opt.load_state_dict(st["opt"]); gen.set_state(st["gen"])
        step, wall = st["step"], st["wall"]
    if st is None and a.init_from:
        model.load_state_dict(torch.load(a.init_from, map_location="cpu", weights_only=False)["model"])
    vq = None
    if a.vq_aug > 0:
        from .loaders import load_vq

        vq = load_vq()
    t0 = time.time() - wall
    loss = float("nan")
    bar = tqdm(range(step, a.steps), initial=step, total=a.steps, desc="classifier")
    for step in bar:
        model.train()
        for g in opt.param_groups:
            g["lr"] = a.lr * 0.5 * (1 + math.cos(math.pi * step / a.steps))
        x, c = data.random_crops(a.batch, gen)
        if vq is not None:
            k = int(round(a.vq_aug * a.batch))
            if k:
                x[:k] = vq.decode(vq.encode(x[:k]))
        # light colour/brightness jitter so the classifier does not key on exact pixel stats
        x = (x * (1 + 0.1 * torch.randn(a.batch, 1, 1, 1, generator=gen))
             + 0.1 * torch.randn(a.batch, 3, 1, 1, generator=gen)).clamp(-1, 1)
        l = F.cross_entropy(model(x), c)
        opt.zero_grad(set_to_none=True); l.backward(); opt.step()
        loss = float(l)
        bar.set_postfix(loss=f"{loss:.3f}")
        if (step + 1) % 100 == 0 or step + 1 == a.steps:
            ck.save(dict(model=model.state_dict(), opt=opt.state_dict(), gen=gen.get_state(),
                         step=step + 1, wall=time.time() - t0))
    wall = time.time() - t0
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
    print(f"held-out accuracy {acc:.3f} {extra} wall {wall:.0f}s")
    if not a.no_export:
        save_weights("classifier.pt", model.state_dict(), cfg)
        record_training("classifier", dict(steps=a.steps, batch=a.batch, lr=a.lr, seed=a.seed, wall_time_s=round(wall, 1),
                                           final_train_loss=loss, heldout_accuracy=acc, vq_aug=a.vq_aug,
                                           init_from=a.init_from, **extra))


if __name__ == "__main__":
    main()
