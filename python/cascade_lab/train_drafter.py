"""Train the EAGLE-1 drafter on the (frozen) target's features.
python -m cascade_lab.train_drafter [--loss eagle|eq4] [--steps N] [--time-budget S]"""
from __future__ import annotations

import argparse
import os

import torch

from .drafter import LOSSES, Drafter
from .loaders import load_target, load_vq
from .tokens import heldout_tokens, train_tokens
from .train_loop import run_training
from .weights import WEIGHTS_DIR, DEFAULT_RUN_DIR, record_training, save_weights


def batch_io(target, ids, cls):
    """Target features/logits for tokens ids [B,256] -> drafter training tensors.
    Drafter position p = 0..254: inputs (x_{p+1} = ids[:, p], f_p); targets f_{p+1}, logits_{p+1}."""
    with torch.no_grad():
        lg, h = target(cls, ids)  # [B,257,*]
    return ids[:, :255], h[:, :255], h[:, 1:256], lg[:, 1:256]


@torch.no_grad()
def evaluate(drafter, target, ids, cls, bs=64):
    """Top-1 agreement (argmax drafter == argmax target) and mean sum_v min(p, q) (expected
    acceptance of one standard speculative-sampling step at temperature 1), teacher-forced."""
    agree = accept = n = 0.0
    for i in range(0, len(ids), bs):
        tok, f, ft, lt = batch_io(target, ids[i:i + bs], cls[i:i + bs])
        ld, _ = drafter(tok, f)
        agree += float((ld.argmax(-1) == lt.argmax(-1)).float().sum())
        accept += float(torch.minimum(ld.softmax(-1), lt.softmax(-1)).sum(-1).sum())
        n += tok.numel()
    return dict(top1_agreement=agree / n, mean_min_pq=accept / n)


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--loss", choices=sorted(LOSSES), default="eagle")
    ap.add_argument("--steps", type=int, default=600)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--warmup", type=int, default=30)
    ap.add_argument("--n-train", type=int, default=8192)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--time-budget", type=float, default=0)
    ap.add_argument("--run-dir", default=None)
    ap.add_argument("--weights", default=None, help="where the target/vq are loaded from (default: shipped)")
    ap.add_argument("--no-export", action="store_true")
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    torch.manual_seed(a.seed)
    run_dir = a.run_dir or os.path.join(DEFAULT_RUN_DIR, f"drafter_{a.loss}")
    loss_fn = LOSSES[a.loss]
    wd = a.weights or WEIGHTS_DIR
    vq, target = load_vq(wd), load_target(wd)
    target.requires_grad_(False)
    ids, cls = train_tokens(vq, a.n_train, a.seed, os.path.join(DEFAULT_RUN_DIR, "tokens"))
    vids, vcls = heldout_tokens(vq)
    drafter = Drafter.from_target(target)
    opt = torch.optim.AdamW([p for p in drafter.parameters() if p.requires_grad], lr=a.lr,
                            betas=(0.9, 0.95), weight_decay=0.0)
    gen = torch.Generator().manual_seed(a.seed + 2)

    def step_loss(step):
        idx = torch.randint(0, len(ids), (a.batch,), generator=gen)
        tok, f, ft, lt = batch_io(target, ids[idx], target.drop_classes(cls[idx], gen))
        ld, fd = drafter(tok, f)
        loss, parts = loss_fn(fd, ld, ft, lt)
        return loss, {k: float(v) for k, v in parts.items()}

    res = run_training(drafter, opt, step_loss, steps=a.steps, lr=a.lr, run_dir=run_dir, generator=gen,
                       desc=f"drafter[{a.loss}]", warmup=a.warmup, time_budget=a.time_budget)
    drafter.eval()
    ev = evaluate(drafter, target, vids, vcls)
    print(f"held-out top-1 agreement {ev['top1_agreement']:.3f}, mean sum min(p,q) {ev['mean_min_pq']:.3f}, wall {res.wall_time_s:.0f}s")
    if not a.no_export:
        name = f"drafter_{a.loss}.pt"
        save_weights(name, drafter.state_dict(), drafter.cfg.to_dict())
        record_training(f"drafter_{a.loss}", dict(loss=a.loss, steps_done=res.steps_done, steps_planned=a.steps,
                                                  batch=a.batch, lr=a.lr, seed=a.seed, wall_time_s=res.wall_time_s,
                                                  final_loss_parts=res.parts, loss_history=res.history, **ev))


if __name__ == "__main__":
    main()
