"""Train the VQ-VAE tokenizer.
python -m cascade_lab.train_vq [--steps N] [--codes K] [--init-from FILE] [--time-budget S] [--run-dir DIR]"""
from __future__ import annotations

import argparse
import os

import torch

from . import data
from .train_loop import run_training
from .vq import VQVAE, psnr
from .weights import DEFAULT_RUN_DIR, record_training, save_weights


@torch.no_grad()
def eval_psnr(model: VQVAE, style: str = data.DEFAULT_STYLE) -> tuple[float, float]:
    model.eval()
    x, _ = data.heldout_crops(style)
    recs, used = [], set()
    for i in range(0, len(x), 64):
        ids = model.encode(x[i:i + 64])
        used.update(ids.flatten().tolist())
        recs.append(model.decode(ids))
    return psnr(torch.cat(recs), x), len(used) / model.num_codes


def load_encoder_decoder(model: VQVAE, path: str) -> None:
    """Start from the encoder/decoder of a checkpoint (``ckpt.pt``, key "model") or a shipped weight
    file (key "state"); codebook tensors are skipped (the codebook size may differ)."""
    obj = torch.load(path, map_location="cpu", weights_only=False)
    sd = obj.get("model", obj.get("state"))
    sd = {k: v.float() for k, v in sd.items() if not k.startswith("codebook.")}
    missing = [k for k in model.load_state_dict(sd, strict=False).missing_keys if not k.startswith("codebook.")]
    if missing:
        raise ValueError(f"--init-from {path}: missing encoder/decoder tensors {missing}")


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=600)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--codes", type=int, default=4096)
    ap.add_argument("--style", default=data.DEFAULT_STYLE, choices=sorted(data.STYLES), help="training scenes")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--time-budget", type=float, default=0)
    ap.add_argument("--run-dir", default=os.path.join(DEFAULT_RUN_DIR, "vq"))
    ap.add_argument("--init-from", default=None, help="checkpoint or weight file whose encoder/decoder start this "
                    "run (default: random init); either way the codebook starts as k-means centroids of encoder "
                    "outputs on --kmeans-crops images")
    ap.add_argument("--kmeans-crops", type=int, default=1024)
    ap.add_argument("--kmeans-refresh", default="100,250",
                    help="steps at which the codebook is re-fitted by k-means to the (still moving) encoder: an "
                         "EMA codebook fitted to the untrained encoder collapses onto a few codes once the encoder's "
                         "outputs grow")
    ap.add_argument("--no-export", action="store_true")
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    torch.manual_seed(a.seed)
    cfg = dict(num_codes=a.codes, code_dim=32, ch=32)
    model = VQVAE(**cfg)
    opt = torch.optim.Adam(model.parameters(), lr=a.lr)
    gen = torch.Generator().manual_seed(a.seed)

    refresh = {int(s) for s in a.kmeans_refresh.split(",") if s}

    def fit_codebook():
        x, _ = data.random_crops(a.kmeans_crops, gen, style=a.style)
        with torch.no_grad():
            z = torch.cat([model._flat(model.enc(x[i:i + 128])) for i in range(0, len(x), 128)])
        model.codebook.kmeans_init(z[torch.randperm(len(z), generator=gen)[:65536]], iters=10, generator=gen)

    def fresh_start():
        if a.init_from:
            load_encoder_decoder(model, a.init_from)
        fit_codebook()

    def step_loss(step):
        if step in refresh:
            fit_codebook()
            psnr_db, usage = eval_psnr(model, a.style)
            print(f"step {step}: codebook re-fitted by k-means: held-out PSNR {psnr_db:.2f} dB, usage {usage:.1%}")
            model.train()
        x, _ = data.random_crops(a.batch, gen, style=a.style)
        rec, _, commit = model(x)
        mse = (rec - x).pow(2).mean()
        return mse + 0.25 * commit, dict(mse=float(mse), commit=float(commit))

    res = run_training(model, opt, step_loss, steps=a.steps, lr=a.lr, run_dir=a.run_dir, generator=gen,
                       desc="vq", time_budget=a.time_budget, fresh_start=fresh_start)
    p, usage = eval_psnr(model, a.style)
    print(f"held-out PSNR {p:.2f} dB, codebook usage {usage:.2%}, wall {res.wall_time_s:.0f}s")
    if not a.no_export:
        save_weights("vq.pt", model.state_dict(), cfg)
        record_training("vq", dict(style=a.style, steps_done=res.steps_done, steps_planned=a.steps, batch=a.batch, lr=a.lr,
                                   seed=a.seed, codes=a.codes, init_from=a.init_from, wall_time_s=res.wall_time_s,
                                   final_parts=res.parts, loss_history=res.history,
                                   heldout_psnr_db=round(p, 3), codebook_usage=round(usage, 4)))


if __name__ == "__main__":
    main()
