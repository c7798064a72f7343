"""Train the class-conditional target transformer on VQ tokens.
python -m cascade_lab.train_target [--steps N] [--batch B] [--time-budget S] [--run-dir DIR]"""
from __future__ import annotations

import argparse
import math
import os

import torch
import torch.nn.functional as F

from . import data
from .loaders import load_vq
from .model import TargetConfig, Transformer
from .tokens import heldout_tokens, train_tokens
from .train_loop import run_training
from .weights import DEFAULT_RUN_DIR, record_training, save_weights


@torch.no_grad()
def codebook_init(model: Transformer, codebook: torch.Tensor, generator: torch.Generator) -> None:
    """Start the token embedding and the LM head as one random projection of the standardised VQ codebook,
    at the default init's scale: codes that decode alike start alike, so what the model learns about a
    code carries over to its near-synonyms from the first step (a 4096-code book holds many of them)."""
    cb = codebook.float()
    cb = (cb - cb.mean(0)) / cb.std(0).clamp_min(1e-6)
    e = cb @ torch.randn(cb.shape[1], model.cfg.dim, generator=generator) / math.sqrt(cb.shape[1])
    for w in (model.tok_emb.weight, model.head.weight):
        w.copy_(e * (w.std() / e.std()))


@torch.no_grad()
def evaluate(model: Transformer, ids: torch.Tensor, cls: torch.Tensor, bs: int = 64):
    """Val loss with true class and with the null class, per-position entropy [256] and mean top-1
    probability (class-conditional, CFG 1, T 1)."""
    model.eval()
    tot_c = tot_u = top1 = 0.0
    ent = torch.zeros(ids.shape[1])
    for i in range(0, len(ids), bs):
        x, c = ids[i:i + bs], cls[i:i + bs]
        lg, _ = model(c, x[:, :-1])
        tot_c += float(F.cross_entropy(lg.reshape(-1, lg.shape[-1]), x.reshape(-1), reduction="sum"))
        lp = lg.float().log_softmax(-1)
        ent += -(lp.exp() * lp).sum(-1).sum(0)
        top1 += float(lp.max(-1).values.exp().sum())
        lu, _ = model(torch.full_like(c, model.null_class), x[:, :-1])
        tot_u += float(F.cross_entropy(lu.reshape(-1, lu.shape[-1]), x.reshape(-1), reduction="sum"))
    n = ids.numel()
    return dict(val_loss=tot_c / n, val_ppl=math.exp(tot_c / n), val_loss_null_class=tot_u / n,
                mean_top1_prob=top1 / n, entropy_per_position=(ent / len(ids)).tolist())


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
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--class-bias", action="store_true", help="add the class embedding to every position's input "
                    "(default: class as a prefix token only, LlamaGen's layout)")
    ap.add_argument("--abs-pos-emb", action="store_true", help="add a learned absolute position embedding (default: RoPE only)")
    ap.add_argument("--codebook-init", action="store_true", help="start the token embedding and LM head from the "
                    "VQ codebook (codebook_init) instead of random")
    ap.add_argument("--style", default=data.DEFAULT_STYLE, choices=sorted(data.STYLES), help="training scenes")
    ap.add_argument("--time-budget", type=float, default=0, help="wall-time budget in seconds: LR schedule follows "
                    "max(step, time) progress and training stops when spent (0=off)")
    ap.add_argument("--run-dir", default=os.path.join(DEFAULT_RUN_DIR, "target"))
    ap.add_argument("--init-from", default=None, help="weights dir whose target.pt starts this run (continue "
                    "training the shipped target with a fresh optimiser and LR schedule)")
    ap.add_argument("--no-export", action="store_true")
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    torch.manual_seed(a.seed)
    vq = load_vq()
    ids, cls = train_tokens(vq, a.n_train, a.seed, os.path.join(DEFAULT_RUN_DIR, "tokens"), a.style)
    vids, vcls = heldout_tokens(vq, a.style)
    cfg = TargetConfig(vocab_size=vq.num_codes, num_classes=data.NUM_CLASSES, dim=a.dim, n_layers=a.layers, n_heads=a.heads,
                       mlp_hidden=int(round(a.dim * 8 / 3 / 16)) * 16, class_bias=a.class_bias,
                       abs_pos_emb=a.abs_pos_emb)
    model = Transformer(cfg)
    if a.codebook_init and not a.init_from:
        codebook_init(model, vq.embedding, torch.Generator().manual_seed(a.seed + 2))
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
    nodecay = [p for n, p in model.named_parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.05}, {"params": nodecay, "weight_decay": 0.0}],
                            lr=a.lr, betas=(0.9, 0.95))
    gen = torch.Generator().manual_seed(a.seed + 1)

    def step_loss(step):
        idx = torch.randint(0, len(ids), (a.batch,), generator=gen)
        x, c = ids[idx], model.drop_classes(cls[idx], gen)
        lg, _ = model(c, x[:, :-1])
        return F.cross_entropy(lg.reshape(-1, lg.shape[-1]), x.reshape(-1)), {}

    def init_weights():
        from .loaders import load_target

        start = load_target(a.init_from)
        optional = ("class_bias", "abs_pos_emb")  # zero-initialised paths a start without them gains
        theirs, ours = start.cfg.to_dict(), cfg.to_dict()
        if any(theirs[k] != ours[k] for k in ours if k not in optional) or any(theirs[k] and not ours[k] for k in optional):
            raise ValueError(f"--init-from {a.init_from}: its target config {theirs} does not fit this run's {ours}")
        missing, unexpected = model.load_state_dict(start.state_dict(), strict=False)
        if unexpected or any(k.split(".")[0] not in ("cls_bias", "pos_emb") for k in missing):
            raise ValueError(f"--init-from {a.init_from}: state does not fit (missing {missing}, unexpected {unexpected})")

    res = run_training(model, opt, step_loss, steps=a.steps, lr=a.lr, run_dir=a.run_dir, generator=gen,
                       desc="target", warmup=a.warmup, time_budget=a.time_budget,
                       fresh_start=init_weights if a.init_from else None)
    ev = evaluate(model, vids, vcls)
    e = torch.tensor(ev["entropy_per_position"])
    print(f"val loss {ev['val_loss']:.4f} (ppl {ev['val_ppl']:.1f}), null-class val loss {ev['val_loss_null_class']:.4f}, "
          f"mean entropy {e.mean():.3f} nats (min {e.min():.3f}, max {e.max():.3f}), "
          f"mean top-1 prob {ev['mean_top1_prob']:.3f}, wall {res.wall_time_s:.0f}s")
    if not a.no_export:
        save_weights("target.pt", model.state_dict(), cfg.to_dict())
        record_training("target", dict(init_from=a.init_from, steps_done=res.steps_done, steps_planned=a.steps, batch=a.batch, lr=a.lr,
                                       n_train_images=a.n_train, seed=a.seed, style=a.style,
                                       codebook_init=a.codebook_init,
                                       params=sum(p.numel() for p in model.parameters()), config=cfg.to_dict(),
                                       wall_time_s=res.wall_time_s, final_train_loss_ema=res.loss_ema,
                                       val_loss=ev["val_loss"], val_ppl=ev["val_ppl"],
                                       val_loss_null_class=ev["val_loss_null_class"],
                                       mean_top1_prob=ev["mean_top1_prob"], mean_entropy_nats=float(e.mean()),
                                       entropy_per_position=[round(v, 3) for v in ev["entropy_per_position"]],
                                       loss_history=res.history))


if __name__ == "__main__":
    main()
