"""Verification methods (docs/CONTRACT.md §4) as frozen dataclasses carrying their parameters.

``pack(method)`` turns any method into the one form every backend reads: a method code, integer and
float parameter slots (their names and order are in :mod:`cascade_kernels.codes`) and the LANTERN
neighbour table. Defaults live only in the dataclasses below.
"""
import functools
import math
from dataclasses import dataclass, field
from typing import NamedTuple, Optional, Tuple

import numpy as np
import torch

from . import codes
from .types import Method


class HostParams(NamedTuple):
    """The parameter slots as host arrays (int64, float64) that the C++ backend reads by address: made
    once with the packed method, which keeps them alive (a call reads no tensor for them). ``whole_call``:
    whether the C++ backend's whole-call entry may take the method (it has no reference-only option)."""

    ints: np.ndarray
    floats: np.ndarray
    ints_ptr: int
    floats_ptr: int
    whole_call: bool


def host_params(code: int, iparams, fparams) -> HostParams:
    ints, floats = np.array(iparams, dtype=np.int64), np.array(fparams, dtype=np.float64)
    return HostParams(ints, floats, ints.ctypes.data, floats.ctypes.data,
                      _reference_only(code, iparams, fparams) is None)


class PackedMethod(NamedTuple):
    """A method as the backends read it (``codes.INT_PARAMS`` / ``codes.FLOAT_PARAMS`` slots)."""

    code: int
    iparams: Tuple[int, ...]
    fparams: Tuple[float, ...]
    neighbors: Optional[torch.Tensor]  # LANTERN's [V, n_neighbors] int64 table, else None
    host: HostParams  # the same slots for the C++ backend
    # Reference-only extras (docs/METHODS.md): LANTERN's [V, min(K, n_neighbors + 1)] table (its released code
    # zeroes the first k + 1 neighbours in the residual) and GSD's codebook embeddings [V, D] for group="peer".
    peer_neighbors: Optional[torch.Tensor] = None
    embeddings: Optional[torch.Tensor] = None

    def i(self, slot: str) -> int:
        return self.iparams[codes.INT_PARAMS.index(slot)]

    def f(self, slot: str) -> float:
        return self.fparams[codes.FLOAT_PARAMS.index(slot)]


_BY_VALUE: dict = {}


def pack(method: Method) -> PackedMethod:
    """The packed form of ``method``: made once per method object, and shared by equal methods (a decode
    loop that builds ``ck.Cascade(...)`` anew every step packs it once)."""
    packed = method.__dict__.get("packed")
    if packed is not None:
        return packed
    if any(isinstance(v, torch.Tensor) for v in method.__dict__.values()):
        return method.packed  # tensor fields (tables, embeddings) are not part of equality: no sharing
    packed = _BY_VALUE.get(method)
    if packed is None:
        if len(_BY_VALUE) >= 256:
            _BY_VALUE.clear()
        packed = _BY_VALUE[method] = method.packed
    method.__dict__["packed"] = packed
    return packed


def _pack(method: Method, neighbors=None, peer_neighbors=None, embeddings=None, **slots) -> PackedMethod:
    unknown = set(slots) - set(codes.INT_PARAMS) - set(codes.FLOAT_PARAMS)
    assert not unknown, unknown
    ip = tuple(int(slots.get(k, 0)) for k in codes.INT_PARAMS)
    fp = tuple(float(slots.get(k, 0.0)) for k in codes.FLOAT_PARAMS)
    code = codes.METHODS[method.name]
    return PackedMethod(code, ip, fp, neighbors, host_params(code, ip, fp), peer_neighbors, embeddings)


def reference_only_reason(m: PackedMethod) -> Optional[str]:
    """Why a packed method can only run on the reference backend this round (None when any backend can)."""
    return _reference_only(m.code, m.iparams, m.fparams)


def _reference_only(code: int, iparams, fparams) -> Optional[str]:
    if code == codes.METHODS["gsd"] and iparams[codes.INT_PARAMS.index("gsd_group")] == codes.GSD_GROUPS["peer"]:
        return "ck.GSD(group='peer')"
    if code == codes.METHODS["cool"] and fparams[codes.FLOAT_PARAMS.index("cool_wmin")] < 1.0:
        return "ck.Cool with w_min < 1 (omega below 1 and the paper's residual)"
    return None


def _param(method, attr: str, **bounds):
    """Check one method parameter (numpy scalars count, bools do not); the error names ``Class.attr``."""
    from .validation import check_number  # validation imports this module

    check_number(getattr(method, attr), f"{type(method).__name__}.{attr}", **bounds)


def cool_scale(fparams, depth: int) -> float:
    """COOL's w_d = max(w_min, delta e^{-nu (d - 1)}) from packed float parameters.

    The packed ``cool_delta`` is the effective ``Cool.delta * exp(-Cool.mu)`` (``Cool.packed``), so this is
    the paper's omega_i = delta exp(-nu i - mu) with i = d - 1, clamped below at w_min."""
    f = dict(zip(codes.FLOAT_PARAMS, fparams))
    return max(f["cool_wmin"], f["cool_delta"] * math.exp(-f["cool_nu"] * (depth - 1)))


@dataclass(frozen=True)
class Exact(Method):
    """EAGLE/SpecInfer tree verification: lossless."""

    name = "exact"

    @functools.cached_property
    def packed(self) -> PackedMethod:
        return _pack(self)


@dataclass(frozen=True, eq=False)
class Lantern(Method):
    """LANTERN (``lam=None``) or LANTERN++ (``lam > 1``) latent-neighbour relaxation.

    ``neighbors [V, K]`` int64: each token's nearest codebook entries, nearest first, ``-1`` padded,
    never the token itself, no duplicates (checked here, once). ``k=None`` uses ``min(K, 1000)``
    neighbours for LANTERN and ``min(K, 10)`` for LANTERN++.
    """

    neighbors: torch.Tensor
    k: Optional[int] = None
    delta: float = 0.1
    lam: Optional[float] = None
    name = "lantern"

    def __post_init__(self):
        nb = self.neighbors
        if not isinstance(nb, torch.Tensor):
            raise TypeError("Lantern.neighbors must be a torch.Tensor [V, K]")
        if nb.dim() != 2 or nb.dtype not in (torch.int32, torch.int64):
            raise ValueError(f"Lantern.neighbors must be an int64 tensor [V, K], got {tuple(nb.shape)} {nb.dtype}")
        if nb.device.type == "meta" or nb.layout != torch.strided:
            raise ValueError(f"Lantern.neighbors must be a dense tensor holding values, got a {nb.layout} tensor "
                             f"on {nb.device}")
        V = nb.shape[0]
        if nb.numel() and (int(nb.min()) < -1 or int(nb.max()) >= V):
            raise ValueError("Lantern.neighbors holds ids outside [-1, V)")
        own = torch.arange(V, device=nb.device).unsqueeze(1)
        if bool((nb == own).any()):
            raise ValueError("Lantern.neighbors: a row lists its own token")
        srt = nb.sort(dim=1).values
        if bool(((srt[:, 1:] == srt[:, :-1]) & (srt[:, 1:] >= 0)).any()):
            raise ValueError("Lantern.neighbors: a row lists a token twice")
        if self.k is not None:
            _param(self, "k", lo=0, integer=True)
        _param(self, "delta", lo=0.0)
        if self.lam is not None:
            _param(self, "lam", lo=1.0, allow_inf=True)
        # a private copy: later edits of the caller's tensor cannot make the backends disagree
        object.__setattr__(self, "neighbors", nb.to(torch.int64, copy=True).contiguous())

    @property
    def n_neighbors(self) -> int:
        default = 10 if self.lam is not None else 1000
        return min(self.neighbors.shape[1], self.k if self.k is not None else default)

    @functools.cached_property
    def packed(self) -> PackedMethod:
        n = self.n_neighbors
        pp = self.lam is not None
        peer = self.neighbors[:, : min(self.neighbors.shape[1], n + 1)].contiguous()
        return _pack(self, self.neighbors[:, :n].contiguous(), peer_neighbors=peer, n_neighbors=n, lantern_pp=pp,
                     lantern_delta=self.delta, lantern_lam_m1=(self.lam - 1.0) if pp else 0.0)


@dataclass(frozen=True)
class GSD(Method):
    """Grouped acceptance.

    ``group="nearest"`` (default): up to ``G`` tokens within ``dp`` of q(x) in target probability, nearest
    first; r(x) = q(x) + their mass, ratio r(x) / p(x). ``group="peer"`` (GSD's released code,
    junhyukso/GSD @4216c7c ``scheduler/jacobi_iteration_lumina_mgpt.py``): the group is the ``±window``
    (7) ranks around x in target order, x included, kept when ``|q(y) - q(x)| < dp`` and the squared
    distance of the tokens' ``embeddings [V, D]`` is ``< embed_d2`` (0.5); acceptance min(1, q(G) / p(G)).
    ``G`` is unused by ``group="peer"``. Reference backend only for ``group="peer"``.
    """

    G: int = 14
    dp: float = 0.15
    group: str = "nearest"
    embeddings: Optional[torch.Tensor] = field(default=None, compare=False, repr=False)
    window: int = 7
    embed_d2: float = 0.5
    name = "gsd"

    def __post_init__(self):
        _param(self, "G", lo=0, integer=True)
        _param(self, "dp", lo=0.0, allow_inf=True)
        if self.group not in codes.GSD_GROUPS:
            raise ValueError(f"GSD.group must be one of {tuple(codes.GSD_GROUPS)}, got {self.group!r}")
        _param(self, "window", lo=1, integer=True)
        _param(self, "embed_d2", lo=0.0, allow_inf=True)
        emb = self.embeddings
        if self.group == "peer":
            if not isinstance(emb, torch.Tensor) or emb.dim() != 2 or not emb.is_floating_point() or emb.shape[1] == 0:
                raise ValueError("GSD.embeddings must be a float tensor [V, D] (the codebook / token embeddings) "
                                 "when group='peer'")
            if not bool(torch.isfinite(emb).all()):
                raise ValueError("GSD.embeddings holds NaN or inf entries")
            object.__setattr__(self, "embeddings", emb.detach().to(torch.float64, copy=True).contiguous())
        elif emb is not None:
            raise ValueError("GSD.embeddings is only read by group='peer'")

    @functools.cached_property
    def packed(self) -> PackedMethod:
        return _pack(self, embeddings=self.embeddings, gsd_G=min(self.G, 2**31 - 1), gsd_dp=self.dp,
                     gsd_group=codes.GSD_GROUPS[self.group], gsd_window=min(self.window, 2**31 - 1),
                     gsd_embed_d2=self.embed_d2)


@dataclass(frozen=True)
class Cascade(Method):
    """CASCADE: interchangeable siblings and converging children by hidden-state cosine."""

    tau_pos: float = 0.85
    tau_seq: float = 0.5
    eps: float = 0.5
    use_interchange: bool = True
    use_convergence: bool = True
    name = "cascade"

    def __post_init__(self):
        _param(self, "tau_pos", allow_inf=True)  # > 1 empties the set
        _param(self, "tau_seq", allow_inf=True)
        _param(self, "eps", lo=0.0, allow_inf=True)
        for attr in ("use_interchange", "use_convergence"):
            if not isinstance(getattr(self, attr), (bool, np.bool_)):
                raise TypeError(f"Cascade.{attr} must be a bool, got {getattr(self, attr)!r}")

    @property
    def default_eps(self) -> float:
        return self.eps

    @functools.cached_property
    def packed(self) -> PackedMethod:
        return _pack(self, tau_pos=self.tau_pos, tau_seq=self.tau_seq, use_interchange=self.use_interchange,
                     use_convergence=self.use_convergence)


@dataclass(frozen=True)
class Cool(Method):
    """COOL-SD annealed relaxation (arXiv 2601.09212): r(x) = min(1, w_d q(x)) with the paper's schedule
    w_d = max(w_min, delta exp(-nu (d - 1) - mu)) at draft depth d (i = d - 1 = 0 for the first drafted token).

    ``w_min=1`` (default) clamps w_d >= 1 (every backend). ``w_min < 1`` (e.g. 0: no clamp) lets w_d fall
    below 1 as in the paper, where its residual Norm([q - p min(1, w q/p)]+) makes that position lossless;
    reference backend only. ``mu`` folds into the packed delta (``delta * exp(-mu)``).
    """

    delta: float = 2.0
    nu: float = 0.7
    w_min: float = 1.0
    mu: float = 0.0
    name = "cool"

    def __post_init__(self):
        _param(self, "w_min", lo=0.0)
        _param(self, "delta", lo=0.0)
        _param(self, "nu", lo=0.0)
        _param(self, "mu", lo=-700.0)

    @functools.cached_property
    def packed(self) -> PackedMethod:
        return _pack(self, cool_delta=self.delta * math.exp(-self.mu), cool_nu=self.nu, cool_wmin=self.w_min)


METHODS = {m.name: m for m in (Exact, Lantern, GSD, Cascade, Cool)}
