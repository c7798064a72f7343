"""Train the class-conditional target transformer on VQ tokens.
python -m cascade_lab.train_target [--steps N] [--batch B] [--run-dir DIR]"""
from __future__ import annotations

import argparse
import math
import os
import time

import torch
import torch.nn.functional as F
from tqdm import tqdm

from .loaders import load_vq
from .model import TargetConfig, Transformer
from .tokens import heldout_tokens, train_tokens
from .weights import DEFAULT_RUN_DIR, Checkpointer, record_training, save_weights, set_cosine_lr


@torch.no_grad()
def evaluate(model: Transformer, ids: torch.Tensor, cls: torch.Tensor, bs: int = 64):
    """Val loss with true class and with the null class, and per-position entropy [256]."""
    model.eval()
    tot_c = tot_u = 0.0
    ent = torch.zeros(ids.shape[1])
    for i in range(0, len(ids), bs):
        x, c = ids[i:i + bs], cls[i:i + bs]
        lg, _ = model(c, x[:, :-1])
        tot_c += float(F.cross_entropy(lg.reshape(-1, lg.shape[-1]), x.reshape(-1), reduction="sum"))
        lp = lg.float().log_softmax(-1)
        ent += -(lp.exp() * lp).sum(-1).sum(0)
        lu, _ = model(torch.full_like(c, model.null_class), x[:, :-1])
        tot_u += float(F.cross_entropy(lu.reshape(-1, lu.shape[-1]), x.reshape(-1), reduction="sum"))
    n = ids.numel()
    return dict(val_loss=tot_c / n, val_ppl=math.exp(tot_c / n), val_loss_null_class=tot_u / n,
                entropy_per_position=(ent / len(ids)).tolist())


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=1500)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--warmup", type=int, default=50)
    ap.add_argument("--n-train", type=int, default=24576)
    ap.add_argument("--layers", type=int, default=6)
    ap.add_argument("--dim", type=int, default=256)
    ap.add_argument("--heads", type=int, default=8)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--time-budget", type=float, default=0, help="wall-time budget in seconds: LR schedule follows max(step, time) progress and training stops when spent (0=off)")
    ap.add_argument("--run-dir", default=os.path.join(DEFAULT_RUN_DIR, "target"))
    ap.add_argument("--no-export", action="store_true")
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    torch.manual_seed(a.seed)
    vq = load_vq()
    ids, cls = train_tokens(vq, a.n_train, a.seed, os.path.join(DEFAULT_RUN_DIR, "tokens"))
    vids, vcls = heldout_tokens(vq)
    cfg = TargetConfig(vocab_size=vq.num_codes, dim=a.dim, n_layers=a.layers, n_heads=a.heads,
                       mlp_hidden=int(round(a.dim * 8 / 3 / 16)) * 16)
    model = Transformer(cfg)
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
    nodecay = [p for n, p in model.named_parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.05}, {"params": nodecay, "weight_decay": 0.0}],
                            lr=a.lr, betas=(0.9, 0.95))
    ck = Checkpointer(a.run_dir)
    gen = torch.Generator().manual_seed(a.seed + 1)
    step, wall, hist = 0, 0.0, []
    st = ck.load()
    if st is not None:
        model.load_state_dict(st["model"]); opt.load_state_dict(st["opt"]); gen.set_state(st["gen"])
        step, wall, hist = st["step"], st["wall"], st["hist"]
        print(f"resumed from step {step}")
    t0 = time.time() - wall
    bar = tqdm(range(step, a.steps), initial=step, total=a.steps, desc="target")
    ema = None
    done = step
    for step in bar:
        model.train()
        lr = set_cosine_lr(opt, a.lr, step, a.steps, a.warmup, t0, a.time_budget)
        idx = torch.randint(0, len(ids), (a.batch,), generator=gen)
        x, c = ids[idx], model.drop_classes(cls[idx], gen)
        lg, _ = model(c, x[:, :-1])
        loss = F.cross_entropy(lg.reshape(-1, lg.shape[-1]), x.reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        ema = float(loss) if ema is None else 0.95 * ema + 0.05 * float(loss)
        bar.set_postfix(loss=f"{ema:.3f}", lr=f"{lr:.1e}")
        done = step + 1
        if done % 25 == 0:
            hist.append((done, round(ema, 4)))
        stop = bool(a.time_budget) and time.time() - t0 > a.time_budget
        if done % 50 == 0 or done == a.steps or stop:
            ck.save(dict(model=model.state_dict(), opt=opt.state_dict(), gen=gen.get_state(),
                         step=done, wall=time.time() - t0, hist=hist))
        if stop:
            print(f"time budget reached at step {done}")
            break
    wall = time.time() - t0
    ev = evaluate(model, vids, vcls)
    e = torch.tensor(ev["entropy_per_position"])
    print(f"val loss {ev['val_loss']:.4f} (ppl {ev['val_ppl']:.1f}), null-class val loss {ev['val_loss_null_class']:.4f}, "
          f"mean entropy {e.mean():.3f} nats (min {e.min():.3f}, max {e.max():.3f}), wall {wall:.0f}s")
    if not a.no_export:
        save_weights("target.pt", model.state_dict(), cfg.to_dict())
        record_training("target", dict(steps_done=done, steps_planned=a.steps, batch=a.batch, lr=a.lr,
                                       n_train_crops=a.n_train, seed=a.seed, params=sum(p.numel() for p in model.parameters()),
                                       config=cfg.to_dict(), wall_time_s=round(wall, 1), final_train_loss_ema=ema,
                                       val_loss=ev["val_loss"], val_ppl=ev["val_ppl"],
                                       val_loss_null_class=ev["val_loss_null_class"],
                                       mean_entropy_nats=float(e.mean()), entropy_per_position=[round(v, 3) for v in ev["entropy_per_position"]],
                                       loss_history=hist))


if __name__ == "__main__":
    main()
