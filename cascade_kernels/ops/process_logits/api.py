"""``ck.process_logits``: guidance, temperature, top-k, top-p and a float32 softmax (docs/CONTRACT.md §2)."""
import torch

from ...validation import FLOAT_DTYPES, check_sampling, check_tensor
from .reference import process_logits as _reference


def process_logits(logits, temperature=1.0, top_k=0, top_p=1.0, cfg_scale=None) -> torch.Tensor:
    """``logits [..., V]`` (``[2B, ..., V]`` with ``cfg_scale``, at least 2-D) -> float32 probabilities.

    ``temperature == 0`` returns the T = 1 masses used by greedy mode. Rows that are not distributions
    (NaN, +inf, all -inf) come back NaN.
    """
    if not isinstance(logits, torch.Tensor):
        raise TypeError(f"logits must be a torch.Tensor, got {type(logits).__name__}")
    check_tensor(logits, "logits", ndim=logits.dim(), dtypes=FLOAT_DTYPES)
    if logits.dim() == 0 or logits.shape[-1] == 0:
        raise ValueError(f"logits must have a non-empty last (vocabulary) dimension, got {tuple(logits.shape)}")
    if cfg_scale is not None and (logits.dim() < 2 or logits.shape[0] % 2):
        raise ValueError(f"logits with cfg_scale must be [2B, ..., V] (at least 2-D, even first dimension), "
                         f"got {tuple(logits.shape)}")
    check_sampling(temperature, top_k, top_p, cfg_scale, logits.shape[-1])
    return _reference(logits.detach(), temperature, top_k, top_p, cfg_scale)
