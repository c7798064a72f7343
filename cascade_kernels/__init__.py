"""cascade_kernels: fused kernels for relaxed speculative decoding of AR image models.

Contract: SPEC.md (shared) and docs/SEMANTICS.md. ``import cascade_kernels as ck``.
"""
from .api import process_logits, similarity_sets, tree_buffers, verify
from .backends import available_backends
from .decode import DynamicTree, GenerateOutput, SequenceStats, generate
from .methods import GSD, Cascade, Cool, Exact, Lantern
from .ops.drafter_loss import cascade_drafter_loss
from .trees import DEEP_CHOICES, MC_SIM_7B_63, lantern_neighbors, tree_from_choices
from .types import (STATUS_EMPTY_RESIDUAL, STATUS_NONFINITE_DRAFT, STATUS_NONFINITE_TARGET, STATUS_OK,
                    SimilaritySets, TreeBuffers, VerifyOutput)

__version__ = "0.1.0"

__all__ = [
    "verify", "process_logits", "tree_buffers", "similarity_sets", "available_backends",
    "generate", "DynamicTree", "GenerateOutput", "SequenceStats", "cascade_drafter_loss",
    "Exact", "Lantern", "GSD", "Cascade", "Cool",
    "tree_from_choices", "lantern_neighbors", "MC_SIM_7B_63", "DEEP_CHOICES",
    "VerifyOutput", "TreeBuffers", "SimilaritySets",
    "STATUS_OK", "STATUS_NONFINITE_TARGET", "STATUS_EMPTY_RESIDUAL", "STATUS_NONFINITE_DRAFT",
]
