"""Run AR and every verification method on the same classes and seeds; shared by the demo and the
end-to-end benchmark (``benchmarks/e2e.py``)."""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import numpy as np
import torch

import cascade_kernels as ck

METHODS = ["ar", "exact", "lantern", "lantern++", "gsd", "cool", "cascade", "cascade-I", "cascade-C"]
# method name -> the ck.presets entry whose thresholds it uses (docs/METHODS.md gives their sources)
PRESET_OF = {"exact": "eagle1_exact", "lantern": "lantern", "lantern++": "lantern_pp", "gsd": "gsd_cascade_paper",
             "cool": "cool_sd", "cascade": "cascade_llamagen", "cascade-I": "cascade_llamagen",
             "cascade-C": "cascade_llamagen"}


_BUILT: dict = {}  # (name, id(codebook), tau_pos, tau_seq) -> (codebook, method): methods are immutable


def build_method(name: str, codebook: torch.Tensor, tau_pos: float | None = None, tau_seq: float | None = None):
    """The verify method object for a method name (None for plain AR decoding): the thresholds of the
    method's paper preset (``PRESET_OF``); CASCADE-I / -C keep only interchange / convergence, and
    ``tau_pos`` / ``tau_seq`` override CASCADE's thresholds (the threshold sweep). Built once per codebook
    object and reused (LANTERN's neighbour table of a 4096-code codebook takes about a second; the codebook
    is not expected to change in place)."""
    if name == "ar":
        return None
    if name not in PRESET_OF:
        raise ValueError(f"unknown method {name!r}; choose from {METHODS}")
    key = (name, id(codebook), tau_pos, tau_seq)
    if key in _BUILT and _BUILT[key][0] is codebook:
        return _BUILT[key][1]
    method = ck.presets.get(PRESET_OF[name]).method(codebook.float())
    if name.startswith("cascade"):
        method = dataclasses.replace(method, use_interchange=name != "cascade-C", use_convergence=name != "cascade-I",
                                     tau_pos=method.tau_pos if tau_pos is None else tau_pos,
                                     tau_seq=method.tau_seq if tau_seq is None else tau_seq)
    _BUILT[key] = (codebook, method)
    return method


@dataclass
class MethodRun:
    name: str
    residual: str
    tokens: torch.Tensor  # [B, 256]
    stats: list  # ck.SequenceStats per image
    wall: float  # seconds for the batch

    def summary(self, ar_wall: float | None = None) -> dict:
        alpha = [s.alpha for s in self.stats]
        acc = [np.mean(s.accept_lengths) if s.accept_lengths else 0.0 for s in self.stats]
        out = {
            "method": self.name, "residual": self.residual,
            "alpha": float(np.mean(alpha)), "mean_accept_len": float(np.mean(acc)),
            "target_forwards": float(np.mean([s.target_forwards for s in self.stats])),
            "tvd_per_image": [round(s.tvd, 6) for s in self.stats],
            "mean_tvd_per_image": float(np.mean([s.tvd for s in self.stats])),
            "wall_s": self.wall,
        }
        out["speedup"] = (ar_wall / self.wall) if ar_wall else None
        return out


def run_method(target, drafter, codebook, name: str, class_ids: torch.Tensor, *, residual="transport",
               tree="eagle", cfg_scale=3.0, temperature=1.0, top_k=0, top_p=1.0, seed=0, sampled=False,
               draft_sampling="iid", tau_pos=None, tau_seq=None, eps=None, progress=False,
               num_tokens=256) -> MethodRun:
    method = build_method(name, codebook, tau_pos, tau_seq)
    out = ck.generate(target, class_ids, drafter=None if method is None else drafter, method=method or ck.Exact(),
                      num_tokens=num_tokens, tree=tree, sampled_drafting=sampled, cfg_scale=cfg_scale,
                      temperature=temperature, top_k=top_k, top_p=top_p, residual=residual, eps=eps,
                      draft_sampling=draft_sampling if sampled else "iid", seed=[seed + b for b in range(len(class_ids))],
                      progress=progress)
    wall = sum(s.wall_time for s in out.stats)
    return MethodRun(name, residual, out.tokens, out.stats, wall)


TREES = [*ck.NAMED_TREES, "dynamic"]


def tree_arg(name: str):
    """--tree flag: a named static tree (ck.NAMED_TREES) or "dynamic" (EAGLE-2)."""
    if name == "dynamic":
        return ck.DynamicTree(total_tokens=25, depth=6, top_k=4)
    return ck.named_tree(name)


def interleaved(run, names, rounds: int) -> dict:
    """Wall clock of ``run(name)`` (a MethodRun) for each name, interleaved: round r runs every method once,
    in an order rotated by r (ABC, BCA, CAB, ...), so load that comes and goes hits every method alike.
    Returns name -> [s]."""
    walls = {n: [] for n in names}
    for r in range(rounds):
        for name in names[r % len(names):] + names[:r % len(names)]:
            walls[name].append(run(name).wall)
    return walls


def interleaved_walls(target, drafter, codebook, names, class_id: int, rounds: int, **settings) -> dict:
    """Batch-1 wall clock of each method (``interleaved``). Returns name -> [s]."""
    ids = torch.tensor([class_id])
    return interleaved(lambda name: run_method(target, drafter, codebook, name, ids, **settings), names, rounds)


CONTINUOUS_METHODS = ["ar", "exact", "cspd"]  # AR, exact chain SD, the CSpD criterion (ck.generate_continuous)


def run_continuous(target, drafter, name: str, class_ids: torch.Tensor, *, draft_len: int = 4, temperature=1.0,
                   seed=0, num_tokens: int | None = None, progress=False) -> MethodRun:
    """One continuous-token method (``CONTINUOUS_METHODS``) on the mixture-head target; ``tokens`` holds the
    latents [B, N, D]. CSpD runs with the released code's inner temperature and pre-filling fraction."""
    if name not in CONTINUOUS_METHODS:
        raise ValueError(f"unknown continuous method {name!r}; choose from {CONTINUOUS_METHODS}")
    out = ck.generate_continuous(target, class_ids, drafter=None if name == "ar" else drafter,
                                 criterion="cspd" if name == "cspd" else "exact", draft_len=draft_len,
                                 num_tokens=num_tokens or target.cfg.max_seq_len - 1, temperature=temperature,
                                 seed=[seed + b for b in range(len(class_ids))], progress=progress)
    return MethodRun(name, "continuous", out.latents, out.stats, sum(s.wall_time for s in out.stats))


def label_grid(rows: list[tuple[str, torch.Tensor]], path: str, scale: int = 2, columns=None) -> None:
    """PNG grid: one row per (label, images [n,3,64,64] in [-1,1]), the label drawn on the left and
    optional column titles (e.g. class names) on top."""
    from PIL import Image, ImageDraw

    from .data import to_uint8

    n = max(len(im) for _, im in rows)
    h = w = 64 * scale
    label_w, pad = 190, 4
    top = 20 if columns else 0
    canvas = Image.new("RGB", (label_w + n * (w + pad) + pad, top + len(rows) * (h + pad) + pad), "white")
    draw = ImageDraw.Draw(canvas)
    for c, title in enumerate(columns or []):
        draw.text((label_w + pad + c * (w + pad) + 4, 4), str(title)[:20], fill=(0, 0, 0))
    for r, (label, images) in enumerate(rows):
        y = top + pad + r * (h + pad)
        for line_no, line in enumerate(label.split("\n")):
            draw.text((6, y + 8 + 16 * line_no), line, fill=(0, 0, 0))
        for c, arr in enumerate(to_uint8(images)):
            tile = Image.fromarray(arr).resize((w, h), Image.NEAREST)
            canvas.paste(tile, (label_w + pad + c * (w + pad), y))
    canvas.save(path)


def fmt_speedup(x) -> str:
    return "n/a" if x is None or not math.isfinite(x) else f"x{x:.2f}"
