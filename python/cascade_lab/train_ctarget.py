"""Train the continuous-token target (``ctarget.ContinuousTransformer``) on the VAE's latents.
python -m cascade_lab.train_ctarget [--steps N] [--time-budget S] [--run-dir DIR]"""
from __future__ import annotations

import argparse
import os

import torch

from . import data
from .ctarget import ContinuousTargetConfig, ContinuousTransformer, mixture_nll
from .cvae import SCENE_STYLE
from .loaders import load_cvae
from .tokens import encode_batches, heldout_tokens, train_images
from .train_loop import run_training
from .weights import DEFAULT_RUN_DIR, WEIGHTS_DIR, record_training, save_weights


def training_latents(cvae, n: int, seed: int):
    """The VAE's latents [n, 64, D] of the n cached training images (``tokens.train_images``) and classes."""
    images, cls = train_images(n, seed, os.path.join(DEFAULT_RUN_DIR, "images"), SCENE_STYLE)
    return encode_batches(cvae, images), cls


@torch.no_grad()
def evaluate(model: ContinuousTransformer, lat: torch.Tensor, cls: torch.Tensor, bs: int = 100) -> dict:
    """Held-out NLL (nats per token) with the true class and with every class shifted by one (how much
    the model uses its class), and the mean of the predicted standard deviation."""
    model.eval()
    nll = wrong = scale = 0.0
    for i in range(0, len(lat), bs):
        x, c = lat[i:i + bs], cls[i:i + bs]
        dist, _ = model(c, x[:, :-1])
        nll += float(mixture_nll(dist, x)) * len(x)
        other, _ = model((c + 1) % model.cfg.num_classes, x[:, :-1])
        wrong += float(mixture_nll(other, x)) * len(x)
        scale += float(dist.log_scales.exp().mean()) * len(x)
    n = len(lat)
    return dict(val_nll=nll / n, val_nll_wrong_class=wrong / n, mean_component_std=scale / n)


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=3000)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--warmup", type=int, default=50)
    ap.add_argument("--n-train", type=int, default=6144)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--dim", type=int, default=128)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--components", type=int, default=8)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--time-budget", type=float, default=0)
    ap.add_argument("--run-dir", default=os.path.join(DEFAULT_RUN_DIR, "ctarget"))
    ap.add_argument("--weights", default=None, help="where the VAE is loaded from (default: shipped)")
    ap.add_argument("--no-export", action="store_true")
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    torch.manual_seed(a.seed)
    cvae = load_cvae(a.weights or WEIGHTS_DIR)
    lat, cls = training_latents(cvae, a.n_train, a.seed)
    vlat, vcls = heldout_tokens(cvae, SCENE_STYLE)
    cfg = ContinuousTargetConfig(num_classes=data.NUM_CLASSES, dim=a.dim, n_layers=a.layers, n_heads=a.heads,
                                 mlp_hidden=int(round(a.dim * 8 / 3 / 16)) * 16, max_seq_len=lat.shape[1] + 1,
                                 latent_dim=lat.shape[2], mixture_components=a.components)
    model = ContinuousTransformer(cfg)
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
    nodecay = [p for n, p in model.named_parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.05}, {"params": nodecay, "weight_decay": 0.0}],
                            lr=a.lr, betas=(0.9, 0.95))
    gen = torch.Generator().manual_seed(a.seed + 1)

    def step_loss(step):
        idx = torch.randint(0, len(lat), (a.batch,), generator=gen)
        x = lat[idx]
        dist, _ = model(cls[idx], x[:, :-1])
        return mixture_nll(dist, x), {}

    res = run_training(model, opt, step_loss, steps=a.steps, lr=a.lr, run_dir=a.run_dir, generator=gen,
                       desc="ctarget", warmup=a.warmup, time_budget=a.time_budget)
    ev = evaluate(model, vlat, vcls)
    print(f"held-out NLL {ev['val_nll']:.3f} nats/token (wrong class {ev['val_nll_wrong_class']:.3f}), "
          f"mean component std {ev['mean_component_std']:.3f}, wall {res.wall_time_s:.0f}s")
    if not a.no_export:
        save_weights("ctarget.pt", model.state_dict(), cfg.to_dict())
        record_training("ctarget", dict(steps_done=res.steps_done, steps_planned=a.steps, batch=a.batch, lr=a.lr,
                                        n_train_images=a.n_train, seed=a.seed,
                                        params=sum(p.numel() for p in model.parameters()), config=cfg.to_dict(),
                                        wall_time_s=res.wall_time_s, final_train_loss_ema=res.loss_ema,
                                        loss_history=res.history, **ev))


if __name__ == "__main__":
    main()
