"""Public entry points: validate once at the boundary, then route to a backend."""
import torch

from . import backends
from .methods import Exact
from .reference.logits import process_logits as _process_logits_reference
from .types import SimilaritySets, TreeBuffers, VerifyOutput
from .validation import (FLOAT_DTYPES, check_number, check_parents, check_sampling, check_tensor,
                         check_verify_inputs)


def verify(tokens, parents, target_logits, *, method=Exact(), draft_logits=None, hidden=None,
           residual="transport", eps=None, temperature=1.0, top_k=0, top_p=1.0, cfg_scale=None, seed=0,
           backend="auto") -> VerifyOutput:
    """Verify a batch of draft trees against the target (SPEC §3-6; choices in docs/SEMANTICS.md).

    tokens [B,N] int64, parents [B,N] int32, target_logits [B,N,V] (or [2B,N,V] with ``cfg_scale``);
    ``draft_logits`` [B,N,V] switches to sampled drafting; ``hidden`` [B,N,D] feeds ck.Cascade.
    Returns accept_len [B], accepted_nodes [B, L] (root first, -1 padded), next_token [B],
    tvd [B], status [B] (see ``cascade_kernels.types.STATUS_*``) and the backend used.
    """
    args = check_verify_inputs(tokens, parents, target_logits, method, draft_logits, hidden, residual, eps,
                               temperature, top_k, top_p, cfg_scale, seed)
    name, module = backends.resolve(backend, args["target_logits"].device)
    return module.verify(**args)._replace(backend=name)


def process_logits(logits, temperature=1.0, top_k=0, top_p=1.0, cfg_scale=None) -> torch.Tensor:
    """SPEC §2: guidance, temperature, top-k, top-p, float32 softmax over the last dim.

    ``logits [..., V]`` (``[2B, ...]`` with ``cfg_scale``). ``temperature == 0`` returns the T = 1
    masses used by greedy mode. Rows that are not distributions (NaN, +inf, all -inf) come back NaN.
    """
    if not isinstance(logits, torch.Tensor):
        raise TypeError(f"logits must be a torch.Tensor, got {type(logits).__name__}")
    check_tensor(logits, "logits", ndim=logits.dim(), dtypes=FLOAT_DTYPES)
    if logits.dim() == 0 or logits.shape[-1] == 0:
        raise ValueError(f"logits must have a non-empty last (vocabulary) dimension, got {tuple(logits.shape)}")
    if cfg_scale is not None and logits.shape[0] % 2:
        raise ValueError(f"logits with cfg_scale must have an even first dimension [2B, ...], got {tuple(logits.shape)}")
    check_sampling(temperature, top_k, top_p, cfg_scale, logits.shape[-1])
    return _process_logits_reference(logits, temperature, top_k, top_p, cfg_scale)


def tree_buffers(parents, prefix_len=0, *, max_depth=None, backend="auto") -> TreeBuffers:
    """SPEC §1 buffers for a batch of trees: mask, position_ids, retrieve, packed_mask.

    ``parents`` [B,N] (or [N] for one tree); ``prefix_len`` an int or an integer tensor [B].
    """
    was_1d = isinstance(parents, torch.Tensor) and parents.dim() == 1
    parents = check_parents(parents, max_depth=max_depth)
    B = parents.shape[0]
    if isinstance(prefix_len, torch.Tensor):
        if prefix_len.dtype.is_floating_point or prefix_len.dim() > 1 or prefix_len.numel() not in (1, B):
            raise ValueError(f"prefix_len must be an int or an integer tensor [B={B}], got "
                             f"{prefix_len.dtype} {tuple(prefix_len.shape)}")
        prefix = prefix_len.to(device=parents.device, dtype=torch.int64).reshape(-1).expand(B).contiguous()
    else:
        check_number(prefix_len, "prefix_len", lo=0, integer=True)
        prefix = torch.full((B,), int(prefix_len), dtype=torch.int64, device=parents.device)
    if bool((prefix < 0).any()):
        raise ValueError("prefix_len must be >= 0")
    _, module = backends.resolve(backend, parents.device, op="tree_buffers")
    out = module.tree_buffers(parents, prefix)
    if was_1d:
        out = TreeBuffers(*(t[0] for t in out))
    return out


def similarity_sets(parents, hidden, tau_pos=0.85, tau_seq=0.5, *, backend="auto") -> SimilaritySets:
    """CASCADE's interchangeable (siblings, cos >= tau_pos) and convergence (children, cos >= tau_seq)
    sets of every node (SPEC §4), as bool [B,N,N] and packed int32 [B,N,ceil(N/32)] (types.SimilaritySets)."""
    hidden = check_tensor(hidden, "hidden", ndim=3, dtypes=FLOAT_DTYPES + (torch.float64,))
    parents = check_parents(parents, device=hidden.device)
    if tuple(hidden.shape[:2]) != tuple(parents.shape) or hidden.shape[2] == 0:
        raise ValueError(f"hidden must have shape [B, N, D>0] matching parents {tuple(parents.shape)}, "
                         f"got {tuple(hidden.shape)}")
    check_number(tau_pos, "tau_pos")
    check_number(tau_seq, "tau_seq")
    _, module = backends.resolve(backend, hidden.device, op="similarity_sets")
    return module.similarity_sets(parents, hidden.contiguous(), float(tau_pos), float(tau_seq))
