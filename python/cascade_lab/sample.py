"""Plain autoregressive sampler for the target (KV cache, temperature / top-k / top-p / CFG, seeded).
python -m cascade_lab.sample --out samples.png"""
from __future__ import annotations

import argparse

import torch

from .model import Transformer


def process_logits(logits: torch.Tensor, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0):
    """Temperature / top-k / top-p filtering -> probabilities [..., V]."""
    logits = logits.float() / max(temperature, 1e-6)
    if top_k and top_k < logits.shape[-1]:
        kth = logits.topk(top_k, -1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        sl, si = logits.sort(-1, descending=True)
        cp = sl.softmax(-1).cumsum(-1)
        remove = cp - sl.softmax(-1) > top_p
        sl = sl.masked_fill(remove, float("-inf"))
        logits = torch.full_like(logits, float("-inf")).scatter(-1, si, sl)
    return logits.softmax(-1)


def cfg_logits(lc: torch.Tensor, lu: torch.Tensor, scale: float) -> torch.Tensor:
    """Classifier-free guidance: l_u + s * (l_c - l_u)."""
    return lu + scale * (lc - lu)


@torch.no_grad()
def sample_tokens(model: Transformer, class_ids: torch.Tensor, num_tokens: int = 256, temperature: float = 1.0,
                  top_k: int = 0, top_p: float = 1.0, cfg_scale: float = 1.0, seed: int = 0,
                  generator: torch.Generator | None = None) -> torch.Tensor:
    """class_ids [B] -> token ids [B, num_tokens]. With cfg_scale != 1 the batch is doubled
    (conditional rows then null-class rows) and logits are combined as l_u + s(l_c - l_u)."""
    gen = generator or torch.Generator(device=class_ids.device).manual_seed(seed)
    b = class_ids.shape[0]
    use_cfg = cfg_scale != 1.0
    cls = torch.cat([class_ids, torch.full_like(class_ids, model.null_class)]) if use_cfg else class_ids
    cache, logits, _ = model.prefill(cls)
    out = torch.empty(b, num_tokens, dtype=torch.long, device=class_ids.device)
    for t in range(num_tokens):
        lg = cfg_logits(logits[:b], logits[b:], cfg_scale) if use_cfg else logits
        probs = process_logits(lg, temperature, top_k, top_p)
        tok = torch.multinomial(probs, 1, generator=gen)[:, 0]
        out[:, t] = tok
        if t + 1 < num_tokens:
            nxt = torch.cat([tok, tok]) if use_cfg else tok
            lgs, _ = model.decode_step(cache, nxt[:, None])
            logits = lgs[:, 0]
    return out


@torch.no_grad()
def sample_images(model: Transformer, vq, class_ids: torch.Tensor, **kw) -> torch.Tensor:
    """class ids [B] -> images [B,3,64,64] in [-1,1]."""
    return vq.decode(sample_tokens(model, class_ids, **kw))


def main(argv=None):
    from . import data
    from .loaders import load_target, load_vq

    ap = argparse.ArgumentParser()
    ap.add_argument("--per-class", type=int, default=4)
    ap.add_argument("--temperature", type=float, default=1.0)
    ap.add_argument("--top-k", type=int, default=0)
    ap.add_argument("--top-p", type=float, default=1.0)
    ap.add_argument("--cfg", type=float, default=3.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--weights", default=None, help="weights dir (default: the shipped cascade_lab/weights)")
    ap.add_argument("--out", default="samples_ar.png")
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    from .weights import WEIGHTS_DIR

    wd = a.weights or WEIGHTS_DIR
    vq, target = load_vq(wd), load_target(wd)
    cls = torch.arange(data.NUM_CLASSES).repeat_interleave(a.per_class)
    imgs = sample_images(target, vq, cls, temperature=a.temperature, top_k=a.top_k, top_p=a.top_p,
                         cfg_scale=a.cfg, seed=a.seed)
    # one row per class: per_class samples
    data.save_grid(imgs, a.out, nrow=a.per_class, row_labels=data.CLASS_NAMES)
    print("saved", a.out)


if __name__ == "__main__":
    main()
