"""The one training loop every cascade_lab training script runs.

Resumable (``run_dir/ckpt.pt`` holds model, optimiser, generator, step, wall time and loss history),
linear warm-up then cosine LR whose progress is max(step fraction, wall-time fraction of
``time_budget``) so a time-boxed run on a shared CPU still completes its decay, gradient clipping,
an EMA of the loss on the progress bar, a checkpoint every ``ckpt_every`` steps and when it stops.
"""
from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass, field
from typing import Callable

import torch
from tqdm import tqdm


def set_cosine_lr(opt, base_lr: float, step: int, steps: int, warmup: int = 1, t0: float = 0.0,
                  time_budget: float = 0.0) -> float:
    """Linear warm-up then cosine decay. Progress is max(step fraction, wall-time fraction of
    ``time_budget``) so a time-boxed run on a shared CPU still completes its decay. Returns the lr."""
    prog = step / steps
    if time_budget:
        prog = max(prog, (time.time() - t0) / time_budget)
    lr = base_lr * min(1.0, (step + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * min(prog, 1.0)))
    for g in opt.param_groups:
        g["lr"] = lr
    return lr


class Checkpointer:
    """Resumable checkpoints in a run dir (outside the package)."""

    def __init__(self, run_dir: str):
        self.run_dir = run_dir
        os.makedirs(run_dir, exist_ok=True)
        self.path = os.path.join(run_dir, "ckpt.pt")

    def load(self):
        if os.path.exists(self.path):
            return torch.load(self.path, map_location="cpu", weights_only=False)
        return None

    def save(self, obj):
        tmp = self.path + ".tmp"
        torch.save(obj, tmp)
        os.replace(tmp, self.path)


@dataclass
class TrainResult:
    steps_done: int
    wall_time_s: float
    loss_ema: float | None
    parts: dict = field(default_factory=dict)
    history: list = field(default_factory=list)  # (step, loss EMA) every 25 steps


def run_training(model: torch.nn.Module, opt: torch.optim.Optimizer,
                 step_loss: Callable[[int], tuple[torch.Tensor, dict]], *, steps: int, lr: float,
                 run_dir: str, generator: torch.Generator, desc: str, warmup: int = 1,
                 time_budget: float = 0.0, clip: float = 1.0, ckpt_every: int = 50,
                 fresh_start: Callable[[], None] | None = None) -> TrainResult:
    """Train ``model`` for ``steps`` optimiser steps (or until ``time_budget`` seconds are spent).

    ``step_loss(step) -> (loss, parts)`` draws its batch from ``generator`` and returns the scalar loss
    and a dict of floats for the progress bar. ``fresh_start()`` runs only when no checkpoint exists
    (e.g. a k-means codebook initialisation). ``model.train()`` is set before every step."""
    ck = Checkpointer(run_dir)
    step, wall, hist, ema = 0, 0.0, [], None
    state = ck.load()
    if state is not None:
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["opt"])
        generator.set_state(state["gen"])
        step, wall, hist, ema = state["step"], state["wall"], state["hist"], state.get("ema")
        print(f"{desc}: resumed from step {step}")
    elif fresh_start is not None:
        fresh_start()
    t0 = time.time() - wall
    parts: dict = {}
    done = step
    bar = tqdm(range(step, steps), initial=step, total=steps, desc=desc)
    for step in bar:
        model.train()
        cur_lr = set_cosine_lr(opt, lr, step, steps, warmup, t0, time_budget)
        loss, parts = step_loss(step)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if clip:
            torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
        opt.step()
        value = float(loss)
        ema = value if ema is None else 0.95 * ema + 0.05 * value
        bar.set_postfix(loss=f"{ema:.4f}", lr=f"{cur_lr:.1e}", **{k: f"{v:.4f}" for k, v in parts.items()})
        done = step + 1
        if done % 25 == 0:
            hist.append((done, round(ema, 4)))
        stop = bool(time_budget) and time.time() - t0 > time_budget
        if done % ckpt_every == 0 or done == steps or stop:
            ck.save(dict(model=model.state_dict(), opt=opt.state_dict(), gen=generator.get_state(),
                         step=done, wall=time.time() - t0, hist=hist, ema=ema))
        if stop:
            print(f"{desc}: time budget reached at step {done}")
            break
    bar.close()
    return TrainResult(done, round(time.time() - t0, 1), ema, parts, hist)
