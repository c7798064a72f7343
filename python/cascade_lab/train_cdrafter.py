"""Train the continuous-token EAGLE-1 drafter (``ctarget.ContinuousDrafter``) on the frozen target's features.
python -m cascade_lab.train_cdrafter [--steps N] [--time-budget S] [--run-dir DIR]"""
from __future__ import annotations

import argparse
import os

import torch

from .cvae import SCENE_STYLE
from .ctarget import ContinuousDrafter, drafter_loss, mixture_nll
from .loaders import load_ctarget, load_cvae
from .tokens import heldout_tokens
from .train_ctarget import training_latents
from .train_loop import run_training
from .weights import DEFAULT_RUN_DIR, WEIGHTS_DIR, record_training, save_weights


@torch.no_grad()
def batch_io(target, lat, cls):
    """latents [B,64,D] -> drafter inputs (x_p, f_p) for p < 63, target features f_{p+1}, next latents x_{p+1}
    and the target's densities of x_{p+1}."""
    q, h = target(cls, lat[:, :-1])  # h[:, p], q[:, p]: the feature and density of x_p
    return lat[:, :-1], h[:, :-1], h[:, 1:], lat[:, 1:], q[:, 1:]


@torch.no_grad()
def evaluate(drafter, target, lat, cls, bs: int = 100, seed: int = 0) -> dict:
    """Held-out drafter NLL and the expected acceptance of one draft, E_{x~p}[min(1, q(x)/p(x))] (one
    Philox draw x per position from the drafter's mixture p; q the target's), teacher-forced."""
    nll = accept = 0.0
    for i in range(0, len(lat), bs):
        tok, f, _, nxt, q = batch_io(target, lat[i:i + bs], cls[i:i + bs])
        p, _ = drafter(tok, f)
        nll += float(mixture_nll(p, nxt)) * len(tok)
        x = p.sample(seed + i)
        accept += float(torch.exp((q.log_prob(x) - p.log_prob(x)).clamp(max=0)).mean()) * len(tok)
    return dict(val_nll=nll / len(lat), expected_accept=accept / len(lat))


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=1500)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--warmup", type=int, default=30)
    ap.add_argument("--n-train", type=int, default=6144)
    ap.add_argument("--draws", type=int, default=4, help="draws from the target's mixture per position (the loss's "
                    "cross-entropy term)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--time-budget", type=float, default=0)
    ap.add_argument("--run-dir", default=os.path.join(DEFAULT_RUN_DIR, "cdrafter"))
    ap.add_argument("--weights", default=None, help="where the VAE and target are loaded from (default: shipped)")
    ap.add_argument("--no-export", action="store_true")
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    torch.manual_seed(a.seed)
    wd = a.weights or WEIGHTS_DIR
    cvae, target = load_cvae(wd), load_ctarget(wd)
    target.requires_grad_(False)
    lat, cls = training_latents(cvae, a.n_train, a.seed)
    vlat, vcls = heldout_tokens(cvae, SCENE_STYLE)
    drafter = ContinuousDrafter.from_target(target)
    opt = torch.optim.AdamW([p for p in drafter.parameters() if p.requires_grad], lr=a.lr, betas=(0.9, 0.95),
                            weight_decay=0.0)
    gen = torch.Generator().manual_seed(a.seed + 2)

    def step_loss(step):
        idx = torch.randint(0, len(lat), (a.batch,), generator=gen)
        tok, f, ft, _, q = batch_io(target, lat[idx], cls[idx])
        dist, fd = drafter(tok, f)
        seed = torch.randint(-2**62, 2**62, (a.draws, *q.batch_shape), generator=gen)
        return drafter_loss(fd, dist, ft, q, seed)

    res = run_training(drafter, opt, step_loss, steps=a.steps, lr=a.lr, run_dir=a.run_dir, generator=gen,
                       desc="cdrafter", warmup=a.warmup, time_budget=a.time_budget)
    drafter.eval()
    ev = evaluate(drafter, target, vlat, vcls)
    print(f"held-out drafter NLL {ev['val_nll']:.3f}, expected acceptance of one draft {ev['expected_accept']:.3f}, "
          f"wall {res.wall_time_s:.0f}s")
    if not a.no_export:
        save_weights("cdrafter.pt", drafter.state_dict(), drafter.cfg.to_dict())
        record_training("cdrafter", dict(steps_done=res.steps_done, steps_planned=a.steps, batch=a.batch, lr=a.lr,
                                         seed=a.seed, draws=a.draws, wall_time_s=res.wall_time_s, final_loss_parts=res.parts,
                                         loss_history=res.history, **ev))


if __name__ == "__main__":
    main()
