"""Train the continuous tokenizer (a conv VAE, ``cvae.py``).
python -m cascade_lab.train_cvae [--steps N] [--time-budget S] [--run-dir DIR]"""
from __future__ import annotations

import argparse
import os

import torch

from . import data
from .cvae import SCENE_STYLE, ContinuousVAE
from .tokens import train_images
from .train_loop import run_training
from .vq import psnr
from .weights import DEFAULT_RUN_DIR, record_training, save_weights


@torch.no_grad()
def eval_psnr(model: ContinuousVAE) -> float:
    """Held-out PSNR of decode(encode(x)) (the posterior means, as the AR model sees them)."""
    model.eval()
    x, _ = data.heldout_crops(SCENE_STYLE)
    rec = torch.cat([model.decode(model.encode(x[i:i + 100])) for i in range(0, len(x), 100)])
    return psnr(rec, x)


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=1500)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--latent-dim", type=int, default=8)
    ap.add_argument("--ch", type=int, default=32)
    ap.add_argument("--kl-weight", type=float, default=1e-3)
    ap.add_argument("--n-train", type=int, default=6144, help="training images (rendered once, cached in the run dir; "
                    "train_ctarget encodes the same set)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--time-budget", type=float, default=0)
    ap.add_argument("--run-dir", default=os.path.join(DEFAULT_RUN_DIR, "cvae"))
    ap.add_argument("--no-export", action="store_true")
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    torch.manual_seed(a.seed)
    cfg = dict(latent_dim=a.latent_dim, ch=a.ch)
    model = ContinuousVAE(**cfg)
    opt = torch.optim.Adam(model.parameters(), lr=a.lr)
    gen = torch.Generator().manual_seed(a.seed)

    images, _ = train_images(a.n_train, a.seed, os.path.join(DEFAULT_RUN_DIR, "images"), SCENE_STYLE)

    def step_loss(step):
        x = images[torch.randint(0, len(images), (a.batch,), generator=gen)]
        rec, kl = model(x, gen)
        mse = (rec - x).pow(2).mean()
        return mse + a.kl_weight * kl, dict(mse=float(mse.detach()), kl=float(kl.detach()))

    res = run_training(model, opt, step_loss, steps=a.steps, lr=a.lr, run_dir=a.run_dir, generator=gen,
                       desc="cvae", warmup=20, time_budget=a.time_budget)
    model.eval()
    model.fit_normalisation(images[:2048])
    p = eval_psnr(model)
    print(f"held-out PSNR {p:.2f} dB (posterior means), wall {res.wall_time_s:.0f}s")
    if not a.no_export:
        save_weights("cvae.pt", model.state_dict(), cfg)
        record_training("cvae", dict(steps_done=res.steps_done, steps_planned=a.steps, batch=a.batch, lr=a.lr,
                                     seed=a.seed, n_train_images=a.n_train, kl_weight=a.kl_weight, config=cfg, wall_time_s=res.wall_time_s,
                                     final_parts=res.parts, loss_history=res.history, heldout_psnr_db=round(p, 3),
                                     latent_scale=[round(v, 4) for v in model.latent_scale.tolist()]))


if __name__ == "__main__":
    main()
