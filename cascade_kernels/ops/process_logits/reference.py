"""CONTRACT §2 in plain PyTorch: guidance, temperature, top-k, top-p, float32 softmax."""
import numpy as np
import torch


def guide(logits: torch.Tensor, cfg_scale) -> torch.Tensor:
    """float32 logits; with ``cfg_scale`` the input is ``[2B, ...]`` and ``l_u + s (l_c - l_u)`` is returned."""
    logits = logits.float()
    if cfg_scale is None:
        return logits
    half = logits.shape[0] // 2
    cond, uncond = logits[:half], logits[half:]
    return uncond + float(cfg_scale) * (cond - uncond)


def row_is_distribution(scaled: torch.Tensor) -> torch.Tensor:
    """False for rows with a NaN or +inf logit, or no finite logit at all (docs/CONTRACT.md): exactly the rows
    whose max (NaN propagates through ``amax``) is not finite; one pass over the row."""
    return torch.isfinite(scaled.amax(-1))


def nan_safe_argmax(logits: torch.Tensor) -> torch.Tensor:
    """argmax with NaN read as -inf, lowest index on ties (torch.argmax returns the first maximum)."""
    return torch.nan_to_num(logits.float(), nan=-float("inf")).argmax(-1)


def probs_from_guided(guided: torch.Tensor, temperature: float, top_k: int, top_p: float) -> torch.Tensor:
    """Steps 2-5 of CONTRACT §2 on already-guided float32 logits ``[..., V]``.

    Temperature is applied as ``(l - max l) / T`` (the max over the row's non-NaN logits), so a tiny ``T``
    tends to greedy instead of overflowing; ``T == 1`` leaves the logits as they are. Greedy mode
    (``temperature == 0``) takes masses at T = 1. Rows that are not distributions come back as NaN.
    """
    valid = row_is_distribution(guided)  # judged before temperature and top-k touch anything
    T = 1.0 if temperature == 0 else float(temperature)
    scaled = guided
    if T != 1.0:
        top = torch.nan_to_num(guided, nan=-float("inf")).amax(-1, keepdim=True)
        scaled = torch.where(valid.unsqueeze(-1), (guided - top) / T, guided)
    if top_k:
        kth = torch.topk(scaled, int(top_k), dim=-1).values[..., -1:]
        scaled = torch.where(scaled >= kth, scaled, torch.full_like(scaled, -float("inf")))
    probs = torch.softmax(scaled, dim=-1)
    if top_p < 1.0:
        probs = _top_p(probs, float(top_p))
    return torch.where(valid.unsqueeze(-1), probs, torch.full_like(probs, float("nan")))


def _top_p(probs: torch.Tensor, top_p: float) -> torch.Tensor:
    """Keep every token with probability >= the one at which the descending running sum
    (float32, in order) first reaches ``top_p``; renormalize."""
    srt = torch.sort(probs, dim=-1, descending=True).values
    running = torch.from_numpy(np.cumsum(srt.cpu().numpy(), axis=-1)).to(probs.device)
    first = (running < np.float32(top_p)).sum(-1, keepdim=True).clamp(max=probs.shape[-1] - 1)
    kept = torch.where(probs >= srt.gather(-1, first), probs, torch.zeros_like(probs))
    return kept / kept.sum(-1, keepdim=True)


def process_logits(logits, temperature=1.0, top_k=0, top_p=1.0, cfg_scale=None) -> torch.Tensor:
    """Reference ``ck.process_logits``: float32 probabilities (NaN rows where not a distribution)."""
    return probs_from_guided(guide(logits, cfg_scale), temperature, top_k, top_p)
