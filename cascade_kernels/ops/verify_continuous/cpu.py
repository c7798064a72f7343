"""``backend="cpu"``: the C++ walk of ``csrc/continuous_cpu.cpp`` in ``cascade_kernels._C``.

Raw addresses of contiguous float32 / int64 CPU tensors (validated by api.py) go to the extension,
which writes the preallocated outputs in place; the GIL is released and OpenMP spreads the
sequences over ``torch.get_num_threads()`` threads.
"""
from __future__ import annotations

import torch

from .mixture import ContinuousVerifyOutput, GaussianMixture

from ... import _C

__all__ = ["verify_continuous_cpu"]


def verify_continuous_cpu(draft: torch.Tensor, draft_dist: GaussianMixture, target_dist: GaussianMixture,
                          seed: torch.Tensor, max_proposals: int,
                          inv_temperature: float = 1.0) -> ContinuousVerifyOutput:
    """Validated inputs (float32 contiguous CPU tensors, see api.py) -> ContinuousVerifyOutput."""
    B, L, D = draft.shape
    p, q = draft_dist, target_dist
    seed = seed.contiguous()
    out = ContinuousVerifyOutput(torch.empty(B, dtype=torch.int32), torch.empty(B, D, dtype=torch.float32),
                                 torch.empty(B, dtype=torch.int32), torch.empty(B, dtype=torch.int32))
    _C.verify_continuous(B, L, D, max_proposals, draft.data_ptr(),
                         p.K, p.logits.data_ptr(), p.means.data_ptr(), p.log_scales.data_ptr(),
                         q.K, q.logits.data_ptr(), q.means.data_ptr(), q.log_scales.data_ptr(),
                         seed.data_ptr(), *(t.data_ptr() for t in out), torch.get_num_threads(), inv_temperature)
    return out
