"""Train the VQ-VAE tokenizer.  python -m cascade_lab.train_vq [--steps N] [--run-dir DIR]"""
from __future__ import annotations

import argparse
import math
import os
import time

import torch
from tqdm import tqdm

from . import data
from .vq import VQVAE, psnr
from .weights import DEFAULT_RUN_DIR, Checkpointer, record_training, save_weights


@torch.no_grad()
def eval_psnr(model: VQVAE) -> tuple[float, float]:
    model.eval()
    x, _ = data.heldout_crops()
    recs, used = [], set()
    for i in range(0, len(x), 64):
        ids = model.encode(x[i:i + 64])
        used.update(ids.flatten().tolist())
        recs.append(model.decode(ids))
    return psnr(torch.cat(recs), x), len(used) / model.num_codes


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=600)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--codes", type=int, default=512)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--run-dir", default=os.path.join(DEFAULT_RUN_DIR, "vq"))
    ap.add_argument("--init-from", default=None, help="checkpoint (ckpt.pt) whose model weights start this run; "
                    "the codebook is then re-initialised by k-means on encoder outputs (--kmeans-crops crops)")
    ap.add_argument("--kmeans-crops", type=int, default=1024)
    ap.add_argument("--no-export", action="store_true")
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    torch.manual_seed(a.seed)
    cfg = dict(num_codes=a.codes, code_dim=32, ch=32)
    model = VQVAE(**cfg)
    opt = torch.optim.Adam(model.parameters(), lr=a.lr)
    ck = Checkpointer(a.run_dir)
    gen = torch.Generator().manual_seed(a.seed)
    step, wall = 0, 0.0
    st = ck.load()
    if st is not None:
        model.load_state_dict(st["model"]); opt.load_state_dict(st["opt"])
        gen.set_state(st["gen"]); step, wall = st["step"], st["wall"]
        print(f"resumed from step {step}")
    if st is None and a.init_from:
        model.load_state_dict(torch.load(a.init_from, map_location="cpu", weights_only=False)["model"])
        x, _ = data.random_crops(a.kmeans_crops, gen)
        with torch.no_grad():
            z = torch.cat([model._flat(model.enc(x[i:i + 128])) for i in range(0, len(x), 128)])
        model.codebook.kmeans_init(z[torch.randperm(len(z), generator=gen)[:65536]], generator=gen)
        print("k-means codebook init from", a.init_from, "usage", eval_psnr(model))
    t0 = time.time() - wall
    bar = tqdm(range(step, a.steps), initial=step, total=a.steps, desc="vq")
    rec_l = com_l = float("nan")
    for step in bar:
        model.train()
        lr = a.lr * 0.5 * (1 + math.cos(math.pi * step / a.steps))
        for g in opt.param_groups:
            g["lr"] = lr
        x, _ = data.random_crops(a.batch, gen)
        rec, _, commit = model(x)
        rec_l = (rec - x).pow(2).mean()
        loss = rec_l + 0.25 * commit
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        rec_l, com_l = float(rec_l), float(commit)
        bar.set_postfix(mse=f"{rec_l:.4f}", commit=f"{com_l:.4f}")
        if (step + 1) % 100 == 0 or step + 1 == a.steps:
            ck.save(dict(model=model.state_dict(), opt=opt.state_dict(), gen=gen.get_state(),
                         step=step + 1, wall=time.time() - t0))
    wall = time.time() - t0
    p, usage = eval_psnr(model)
    print(f"held-out PSNR {p:.2f} dB, codebook usage {usage:.2%}, wall {wall:.0f}s")
    if not a.no_export:
        save_weights("vq.pt", model.state_dict(), cfg)
        record_training("vq", dict(steps=a.steps, batch=a.batch, lr=a.lr, seed=a.seed, wall_time_s=round(wall, 1),
                                   final_train_mse=rec_l, final_commit=com_l,
                                   heldout_psnr_db=round(p, 3), codebook_usage=round(usage, 4)))


if __name__ == "__main__":
    main()
