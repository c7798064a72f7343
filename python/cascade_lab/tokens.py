"""Token datasets (VQ-encoded crops) cached in the run dir."""
from __future__ import annotations

import hashlib
import os

import torch
from tqdm import tqdm

from . import data


@torch.no_grad()
def encode_batches(vq, images, bs=128, desc=None):
    out = []
    for i in tqdm(range(0, len(images), bs), desc=desc, disable=desc is None):
        out.append(vq.encode(images[i:i + bs]))
    return torch.cat(out)


def vq_fingerprint(vq) -> str:
    """Short hash of the tokenizer's weights: token caches made by another tokenizer are never reused."""
    h = hashlib.sha256()
    for v in vq.state_dict().values():
        h.update(v.detach().float().cpu().numpy().tobytes())
    return h.hexdigest()[:12]


def train_tokens(vq, n: int, seed: int, run_dir: str, style: str = data.DEFAULT_STYLE):
    """n random training images (seeded, scene style ``style``), VQ-encoded. Returns (ids [n,256], class_ids [n])."""
    path = os.path.join(run_dir, f"train_tokens_{style}_n{n}_s{seed}_vq{vq_fingerprint(vq)}.pt")
    if os.path.exists(path):
        d = torch.load(path)
        return d["ids"], d["cls"]
    gen = torch.Generator().manual_seed(seed)
    ids, cls = [], []
    for i in tqdm(range(0, n, 512), desc="encode training images"):
        x, c = data.random_crops(min(512, n - i), gen, style=style)
        ids.append(encode_batches(vq, x)); cls.append(c)
    ids, cls = torch.cat(ids), torch.cat(cls)
    os.makedirs(run_dir, exist_ok=True)
    torch.save({"ids": ids, "cls": cls}, path)
    return ids, cls


def train_images(n: int, seed: int, run_dir: str, style: str = data.DEFAULT_STYLE):
    """n random training images (seeded, scene style ``style``, rendered once and cached as uint8 in
    run_dir). Returns (images [n,3,64,64] float32 in [-1,1], class_ids [n])."""
    path = os.path.join(run_dir, f"train_images_{style}_n{n}_s{seed}.pt")
    if os.path.exists(path):
        d = torch.load(path)
    else:
        gen = torch.Generator().manual_seed(seed)
        xs, cls = [], []
        for i in tqdm(range(0, n, 512), desc="render training images"):
            x, c = data.random_crops(min(512, n - i), gen, style=style)
            xs.append(((x + 1) * 127.5).round().to(torch.uint8)); cls.append(c)
        d = {"images": torch.cat(xs), "cls": torch.cat(cls)}
        os.makedirs(run_dir, exist_ok=True)
        torch.save(d, path)
    return d["images"].float() / 127.5 - 1, d["cls"]


def heldout_tokens(vq, style: str = data.DEFAULT_STYLE):
    x, c = data.heldout_crops(style)
    return encode_batches(vq, x), c
