"""cascade_kernels: fused kernels for relaxed speculative decoding of AR image models.

Contract: docs/CONTRACT.md. ``import cascade_kernels as ck``.
"""
from . import presets
from ._backend import available_backends
from .decode import DynamicTree, GenerateOutput, SequenceStats, generate
from .decode_continuous import ContinuousGenerateOutput, generate_continuous
from .methods import GSD, Cascade, Cool, Exact, Lantern
from .ops.drafter_loss import cascade_drafter_loss
from .ops.process_logits import process_logits
from .ops.similarity_sets import similarity_sets
from .ops.tree_buffers import tree_buffers
from .ops.verify import verify
from .ops.verify_continuous import (ContinuousVerifyOutput, GaussianMixture, cspd_prefill_len, verify_continuous,
                                   verify_cspd)
from .trees import (DEEP_CHOICES, MC_SIM_7B_63, NAMED_TREES, SMALL_CHOICES, Tree, lantern_neighbors, named_tree,
                    prepare_tree, tree_from_choices)
from .types import (STATUS_BAD_TOKEN, STATUS_EMPTY_RESIDUAL, STATUS_NONFINITE_DRAFT, STATUS_NONFINITE_TARGET,
                    STATUS_OK, SimilaritySets, TreeBuffers, VerifyOutput)

__version__ = "0.2.0"

__all__ = [
    "verify", "verify_continuous", "GaussianMixture", "ContinuousVerifyOutput", "process_logits", "tree_buffers", "similarity_sets", "available_backends",
    "verify_cspd", "cspd_prefill_len", "generate_continuous", "ContinuousGenerateOutput",
    "prepare_tree", "Tree", "generate", "DynamicTree", "GenerateOutput", "SequenceStats", "cascade_drafter_loss",
    "Exact", "Lantern", "GSD", "Cascade", "Cool",
    "tree_from_choices", "named_tree", "lantern_neighbors", "MC_SIM_7B_63", "DEEP_CHOICES", "SMALL_CHOICES",
    "NAMED_TREES", "presets", "VerifyOutput", "TreeBuffers", "SimilaritySets",
    "STATUS_OK", "STATUS_NONFINITE_TARGET", "STATUS_EMPTY_RESIDUAL", "STATUS_NONFINITE_DRAFT", "STATUS_BAD_TOKEN",
]
