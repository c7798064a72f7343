"""Every check at the Python boundary, in one place (docs/CONTRACT.md).

Each failure is a ``ValueError`` (or ``TypeError`` for a wrong type) whose message starts with the
argument's name. These checks read only shapes, dtypes, devices and Python scalars, never tensor
values, so they never synchronise a GPU; value errors (token ids out of range, non-finite logits) are
reported by the kernels in ``status`` (``check="full"`` adds an eager value check, for debugging).
The tree's structure is checked once, by ``ck.prepare_tree``.
"""
import math
import numbers
from typing import Optional

import numpy as np
import torch

from . import codes
from .methods import pack, reference_only_reason
from .trees import INT_DTYPES, prepare_tree
from .types import Method, VerifyArgs

FLOAT_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
RESIDUALS = ("transport", "standard", "peer")
DRAFT_SAMPLINGS = ("iid", "without_replacement")
_CASCADE = codes.METHODS["cascade"]


def check_tensor(x, name: str, *, ndim: int, dtypes, device: Optional[torch.device] = None) -> torch.Tensor:
    """Type, rank, dtype and device of one tensor argument."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.dim() != ndim:
        raise ValueError(f"{name} must have {ndim} dimensions, got shape {tuple(x.shape)}")
    if x.dtype not in dtypes:
        names = ", ".join(str(d).replace("torch.", "") for d in dtypes)
        raise TypeError(f"{name} must have dtype in ({names}), got {x.dtype}")
    if device is not None:  # the reference tensor's device was checked (not meta) by its own call
        if x.device != device:
            raise ValueError(f"{name} is on {x.device} but the other inputs are on {device}")
    elif x.device.type == "meta":
        raise ValueError(f"{name} is on the meta device: cascade_kernels needs real tensors")
    if x.layout != torch.strided:
        raise ValueError(f"{name} must be a dense (strided) tensor, got layout {x.layout}")
    if not torch.compiler.is_compiling() and x.is_neg():  # a lazily negated view (torch._neg_view): the
        x = x.resolve_neg()  # kernels read the memory as it is (a compiled graph hands them materialised tensors)
    return x


def check_shape(x: torch.Tensor, name: str, shape) -> None:
    if tuple(x.shape) != tuple(shape):
        raise ValueError(f"{name} must have shape {tuple(shape)}, got {tuple(x.shape)}")


def check_number(value, name: str, *, lo=None, hi=None, lo_open=False, hi_open=False, allow_inf=False,
                 integer=False):
    """A real (or integer) scalar within bounds; numpy scalars count, bools do not."""
    if type(value) is float and not integer and lo is None and hi is None and value == value \
            and (allow_inf or abs(value) != math.inf):  # the common case, without the generic checks
        return value
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a number, got {type(value).__name__}")
    if integer and not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an int, got {value!r}")
    if math.isnan(value) or (math.isinf(value) and not allow_inf):
        raise ValueError(f"{name} must be finite, got {value!r}")
    if lo is not None and (value < lo or (lo_open and value == lo)):
        raise ValueError(f"{name} must be {'>' if lo_open else '>='} {lo}, got {value!r}")
    if hi is not None and (value > hi or (hi_open and value == hi)):
        raise ValueError(f"{name} must be {'<' if hi_open else '<='} {hi}, got {value!r}")
    return value


# A positive temperature must stay positive and finite in float32, where every backend divides by it: below
# float32's smallest subnormal it would round to 0 (0 / 0 = NaN at the row's max), above its largest finite
# value to inf (-inf / inf = NaN). 0 is greedy mode.
TEMPERATURE_MIN = 2.0 ** -149
TEMPERATURE_MAX = float(torch.finfo(torch.float32).max)


def temperature_in_range(t: float) -> bool:
    return t == 0.0 or TEMPERATURE_MIN <= t <= TEMPERATURE_MAX


def check_sampling(temperature, top_k, top_p, cfg_scale, V: int):
    if temperature.__class__ is float and top_k.__class__ is int and top_p.__class__ is float \
            and temperature_in_range(temperature) and 0 <= top_k <= V and 0.0 < top_p <= 1.0 and cfg_scale is None:
        return  # the common case, plain Python scalars in range
    check_number(temperature, "temperature", lo=0.0)
    if not temperature_in_range(temperature):
        raise ValueError(f"temperature must be 0 (greedy) or within float32's positive range "
                         f"[2**-149, {TEMPERATURE_MAX!r}], got {temperature!r}")
    check_number(top_k, "top_k", lo=0, integer=True)
    if top_k > V:
        raise ValueError(f"top_k = {top_k} exceeds the vocabulary size V = {V}")
    check_number(top_p, "top_p", lo=0.0, hi=1.0, lo_open=True)
    if cfg_scale is not None:
        check_number(cfg_scale, "cfg_scale")


_seed_cache = {}


def check_seed(seed, B: int, device) -> torch.Tensor:
    """int or int64 tensor ``[B]`` (or ``[1]``) -> int64 ``[B]`` on ``device`` (read-only for the backends).

    Int seeds map to small cached tensors, so a decode loop passing ints does not allocate every call."""
    if isinstance(seed, torch.Tensor):
        if seed.dtype == torch.int64 and seed.shape == (B,) and seed.device == device and seed.is_contiguous():
            return seed  # already the backends' form
        if seed.dtype != torch.int64:
            raise TypeError(f"seed tensor must be int64, got {seed.dtype}")
        if seed.device.type == "meta" or seed.layout != torch.strided:
            raise ValueError(f"seed must be a dense tensor holding values, got a {seed.layout} tensor on {seed.device}")
        seed = seed.resolve_neg()
        if seed.dim() == 0:
            seed = seed.view(1)
        if seed.dim() != 1 or seed.shape[0] not in (1, B):
            raise ValueError(f"seed must be an int or an int64 tensor [B={B}], got shape {tuple(seed.shape)}")
        return seed.to(device).expand(B).contiguous()
    if isinstance(seed, (bool, np.bool_)) or not isinstance(seed, numbers.Integral):
        raise TypeError(f"seed must be an int or an int64 tensor [B], got {type(seed).__name__}")
    if not (-(2**63) <= int(seed) < 2**63):
        raise ValueError(f"seed = {seed} does not fit in int64")
    key = (int(seed), B, device)
    hit = _seed_cache.get(key)
    if hit is None:
        if len(_seed_cache) > 256:
            _seed_cache.clear()
        hit = _seed_cache[key] = torch.full((B,), int(seed), dtype=torch.int64, device=device)
    return hit


def check_verify_inputs(tokens, parents, target_logits, method, draft_logits, hidden, residual, eps,
                        temperature, top_k, top_p, cfg_scale, seed, draft_sampling="iid") -> VerifyArgs:
    """Validate ``ck.verify``'s arguments without reading tensor values; returns them normalized."""
    target_logits = check_tensor(target_logits, "target_logits", ndim=3, dtypes=FLOAT_DTYPES)
    device = target_logits.device
    tokens = check_tensor(tokens, "tokens", ndim=2, dtypes=INT_DTYPES, device=device)
    B, N = tokens.shape
    if B == 0:
        raise ValueError("tokens must hold at least one sequence (B >= 1)")
    rows = 2 * B if cfg_scale is not None else B
    if target_logits.shape[0] != rows or target_logits.shape[1] != N:
        what = "[2B, N, V] (cfg_scale given)" if cfg_scale is not None else "[B, N, V]"
        raise ValueError(f"target_logits must be {what} with B={B}, N={N}, got {tuple(target_logits.shape)}")
    V = target_logits.shape[2]
    if V == 0:
        raise ValueError("target_logits has an empty vocabulary (V = 0)")
    if V >= 2**31 - 1:
        raise ValueError(f"target_logits: V = {V} overflows the kernels' int32 token ids")
    if B * N >= 2**31 - 1:
        raise ValueError(f"tokens: B * N = {B * N} overflows the kernels' int32 node indices")
    tree = prepare_tree(parents, device=device)
    if tree.num_nodes != N or tree.batch not in (1, B):
        raise ValueError(f"parents must have shape [N={N}] or [B={B}, N={N}], got "
                         f"{(tree.batch, tree.num_nodes)}")
    if not isinstance(method, Method) or not method.name:
        raise TypeError(f"method must be ck.Exact(), ck.Lantern(...), ck.GSD(), ck.Cascade() or ck.Cool(), "
                        f"got {type(method).__name__}")
    packed = pack(method)
    if packed.neighbors is not None:
        if packed.neighbors.shape[0] != V:
            raise ValueError(f"method.neighbors has {packed.neighbors.shape[0]} rows but V = {V}")
        if packed.neighbors.device != device:
            raise ValueError(f"method.neighbors is on {packed.neighbors.device} but target_logits on {device}")
    if packed.embeddings is not None and packed.embeddings.shape[0] != V:
        raise ValueError(f"method.embeddings has {packed.embeddings.shape[0]} rows but V = {V}")
    if draft_logits is not None:
        draft_logits = check_tensor(draft_logits, "draft_logits", ndim=3, dtypes=FLOAT_DTYPES, device=device)
        check_shape(draft_logits, "draft_logits", (B, N, V))
    if packed.code == _CASCADE and hidden is None:
        raise ValueError("hidden [B, N, D] is required by ck.Cascade (the target's hidden states)")
    if hidden is not None:
        hidden = check_tensor(hidden, "hidden", ndim=3, dtypes=FLOAT_DTYPES + (torch.float64,), device=device)
        if hidden.shape[:2] != (B, N) or hidden.shape[2] == 0:
            raise ValueError(f"hidden must have shape [B={B}, N={N}, D>0], got {tuple(hidden.shape)}")
    if not isinstance(residual, str) or residual not in RESIDUALS:
        raise ValueError(f"residual must be one of {RESIDUALS}, got {residual!r}")
    if not isinstance(draft_sampling, str) or draft_sampling not in DRAFT_SAMPLINGS:
        raise ValueError(f"draft_sampling must be one of {DRAFT_SAMPLINGS}, got {draft_sampling!r}")
    if eps is None:
        eps = method.default_eps
        eps = math.inf if eps is None else float(eps)
    else:
        eps = float(check_number(eps, "eps", lo=0.0, allow_inf=True))
    check_sampling(temperature, top_k, top_p, cfg_scale, V)
    greedy = temperature == 0
    return VerifyArgs(  # positional (a NamedTuple made from keywords costs more): the fields' order
        _contiguous(tokens if tokens.dtype == torch.int64 else tokens.to(torch.int64)), tree,
        _contiguous(target_logits), None if draft_logits is None or greedy else _contiguous(draft_logits),
        None if hidden is None or packed.code != _CASCADE else _contiguous(hidden), packed,
        residual == "transport", eps, float(temperature), int(top_k), float(top_p),
        None if cfg_scale is None else float(cfg_scale), check_seed(seed, B, device), residual, draft_sampling)


def needs_reference(args: VerifyArgs) -> Optional[str]:
    """What in ``args`` only the reference backend implements this round (None: every backend can run it).

    ``backend="auto"`` sends such calls to the reference backend; an explicit ``"cpu"`` / ``"triton"``
    rejects them (docs/METHODS.md lists the reference-only options)."""
    if args.residual == "peer":
        return "residual='peer'"
    if args.draft_sampling == "without_replacement" and args.draft_logits is not None:
        return "draft_sampling='without_replacement'"
    return reference_only_reason(args.method)


def _contiguous(x: torch.Tensor) -> torch.Tensor:
    if x.requires_grad:
        x = x.detach()
    return x if x.is_contiguous() else x.contiguous()


def check_verify_values(args: VerifyArgs) -> None:
    """``check="full"``: the eager (synchronising) value checks, raising instead of setting ``status``."""
    B, N = args.tokens.shape
    V = args.target_logits.shape[2]
    real = args.tree.parents.expand(B, N) >= 0
    real[:, 0] = False  # the root's token is never read
    bad = real & ((args.tokens < -1) | (args.tokens >= V))
    if bool(bad.any()):
        b, i = torch.nonzero(bad)[0].tolist()
        raise ValueError(f"tokens[{b}, {i}] = {int(args.tokens[b, i])} is outside [0, V={V}) (and not -1)")
