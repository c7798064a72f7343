"""Argument and result containers and status codes shared by every backend."""
from typing import Any, NamedTuple, Optional

import torch

from .codes import STATUS

STATUS_OK = STATUS["OK"]
STATUS_NONFINITE_TARGET = STATUS["NONFINITE_TARGET"]
STATUS_EMPTY_RESIDUAL = STATUS["EMPTY_RESIDUAL"]
STATUS_NONFINITE_DRAFT = STATUS["NONFINITE_DRAFT"]
STATUS_BAD_TOKEN = STATUS["BAD_TOKEN"]


class VerifyOutput(NamedTuple):
    """What ``ck.verify`` returns (CONTRACT §3 outputs); ``backend`` names who computed it."""

    accept_len: torch.Tensor  # [B] int32
    accepted_nodes: torch.Tensor  # [B, L] int32, root first, -1 padded
    next_token: torch.Tensor  # [B] int64, bonus or correction token in [0, V)
    tvd: torch.Tensor  # [B] float32
    status: torch.Tensor  # [B] int32, bit-or of the STATUS_* flags
    backend: str = "reference"

    @classmethod
    def empty(cls, B: int, L: int, device, backend: str) -> "VerifyOutput":
        """Fresh outputs for B sequences (every backend writes every output whole)."""
        return cls(torch.empty(B, dtype=torch.int32, device=device),
                   torch.empty((B, L), dtype=torch.int32, device=device),
                   torch.empty(B, dtype=torch.int64, device=device),
                   torch.empty(B, dtype=torch.float32, device=device),
                   torch.empty(B, dtype=torch.int32, device=device), backend)


class VerifyArgs(NamedTuple):
    """``ck.verify``'s arguments after the boundary checks: what every backend's ``verify(args, out)`` reads."""

    tokens: torch.Tensor  # [B, N] int64, contiguous
    tree: Any  # trees.Tree with batch 1 (shared) or B
    target_logits: torch.Tensor  # [B or 2B, N, V] contiguous
    draft_logits: Optional[torch.Tensor]  # [B, N, V] in sampled drafting (None when greedy)
    hidden: Optional[torch.Tensor]  # [B, N, D], CASCADE only
    method: Any  # methods.PackedMethod
    transport: bool  # residual == "transport"
    eps: float  # TVD budget (inf = unbounded)
    temperature: float  # 0 = greedy
    top_k: int
    top_p: float
    cfg_scale: Optional[float]
    seed: torch.Tensor  # [B] int64 on the logits' device
    residual: str = "transport"  # "transport" | "standard" | "peer" ("peer": reference backend only)
    draft_sampling: str = "iid"  # "iid" | "without_replacement" (the latter: reference backend only)


class TreeBuffers(NamedTuple):
    """Derived tree buffers (CONTRACT §1)."""

    mask: torch.Tensor  # [B, N, N] bool: mask[b, i, j] iff j is an ancestor of i or j == i
    position_ids: torch.Tensor  # [B, N] int64: prefix_len + depth
    retrieve: torch.Tensor  # [B, n_leaves, max_depth + 1] int64: root->leaf node paths, -1 padded
    packed_mask: torch.Tensor  # [B, N, ceil(N/32)] int32: bit j of word j//32 = mask[b, i, j]


class SimilaritySets(NamedTuple):
    """CASCADE's per-node sets (CONTRACT §4) as boolean matrices and as packed int32 bit words.

    ``interchange[b, i, j]``: j is a sibling of i (same parent, j != i) with cos(H_i, H_j) >= tau_pos.
    ``convergence[b, i, j]``: j is a child of i with cos(H_i, H_j) >= tau_seq.
    The packed forms hold bit ``j % 32`` of word ``j // 32``.
    """

    interchange: torch.Tensor  # [B, N, N] bool
    convergence: torch.Tensor  # [B, N, N] bool
    interchange_packed: torch.Tensor  # [B, N, ceil(N/32)] int32
    convergence_packed: torch.Tensor  # [B, N, ceil(N/32)] int32


def pack_bits(mask: torch.Tensor) -> torch.Tensor:
    """[..., N] bool -> [..., ceil(N/32)] int32 words (bit j % 32 of word j // 32)."""
    n = mask.shape[-1]
    words = (n + 31) // 32
    padded = torch.zeros(*mask.shape[:-1], words * 32, dtype=torch.int64, device=mask.device)
    padded[..., :n] = mask.to(torch.int64)
    weights = (1 << torch.arange(32, dtype=torch.int64, device=mask.device))
    packed = (padded.view(*mask.shape[:-1], words, 32) * weights).sum(-1)
    packed = torch.where(packed >= 2**31, packed - 2**32, packed)
    return packed.to(torch.int32)


def unpack_bits(packed: torch.Tensor, n: int) -> torch.Tensor:
    """Inverse of :func:`pack_bits`."""
    bits = torch.arange(32, dtype=torch.int64, device=packed.device)
    words = packed.to(torch.int64) & 0xFFFFFFFF
    out = ((words.unsqueeze(-1) >> bits) & 1).bool()
    return out.reshape(*packed.shape[:-1], -1)[..., :n]


class Method:
    """Base of the method objects; ``name`` is the CONTRACT §4 identifier."""

    name: str = ""
    default_eps: Optional[float] = None
