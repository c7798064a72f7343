"""Verification methods (docs/CONTRACT.md §4) as frozen dataclasses carrying their parameters.

``pack(method)`` turns any method into the one form every backend reads: a method code, integer and
float parameter slots (their names and order are in :mod:`cascade_kernels.codes`) and the LANTERN
neighbour table. Defaults live only in the dataclasses below.
"""
import functools
import math
from dataclasses import dataclass
from typing import NamedTuple, Optional, Tuple

import numpy as np
import torch

from . import codes
from .types import Method


class PackedMethod(NamedTuple):
    """A method as the backends read it (``codes.INT_PARAMS`` / ``codes.FLOAT_PARAMS`` slots)."""

    code: int
    iparams: Tuple[int, ...]
    fparams: Tuple[float, ...]
    neighbors: Optional[torch.Tensor]  # LANTERN's [V, n_neighbors] int64 table, else None
    iparams_cpu: torch.Tensor  # the same slots as CPU tensors (int64, float64), made once
    fparams_cpu: torch.Tensor

    def i(self, slot: str) -> int:
        return self.iparams[codes.INT_PARAMS.index(slot)]

    def f(self, slot: str) -> float:
        return self.fparams[codes.FLOAT_PARAMS.index(slot)]


def pack(method: Method) -> PackedMethod:
    """The packed form of ``method`` (made once per method object)."""
    return method.packed


def _pack(method: Method, neighbors=None, **slots) -> PackedMethod:
    unknown = set(slots) - set(codes.INT_PARAMS) - set(codes.FLOAT_PARAMS)
    assert not unknown, unknown
    ip = tuple(int(slots.get(k, 0)) for k in codes.INT_PARAMS)
    fp = tuple(float(slots.get(k, 0.0)) for k in codes.FLOAT_PARAMS)
    return PackedMethod(codes.METHODS[method.name], ip, fp, neighbors,
                        torch.tensor(ip, dtype=torch.int64), torch.tensor(fp, dtype=torch.float64))


def _param(method, attr: str, **bounds):
    """Check one method parameter (numpy scalars count, bools do not); the error names ``Class.attr``."""
    from .validation import check_number  # validation imports this module

    check_number(getattr(method, attr), f"{type(method).__name__}.{attr}", **bounds)


def cool_scale(fparams, depth: int) -> float:
    """COOL's w_d = max(w_min, delta e^{-nu (d - 1)}) from packed float parameters."""
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
        return _pack(self, self.neighbors[:, :n].contiguous(), n_neighbors=n, lantern_pp=pp,
                     lantern_delta=self.delta, lantern_lam_m1=(self.lam - 1.0) if pp else 0.0)


@dataclass(frozen=True)
class GSD(Method):
    """Grouped acceptance: up to ``G`` tokens within ``dp`` of q(x) in target probability."""

    G: int = 14
    dp: float = 0.15
    name = "gsd"

    def __post_init__(self):
        _param(self, "G", lo=0, integer=True)
        _param(self, "dp", lo=0.0, allow_inf=True)

    @functools.cached_property
    def packed(self) -> PackedMethod:
        return _pack(self, gsd_G=min(self.G, 2**31 - 1), gsd_dp=self.dp)


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
    """COOL-SD annealed relaxation: r(x) = min(1, w_d q(x)), w_d = max(w_min, delta e^{-nu(d-1)})."""

    delta: float = 2.0
    nu: float = 0.7
    w_min: float = 1.0
    name = "cool"

    def __post_init__(self):
        _param(self, "w_min", lo=1.0)
        _param(self, "delta", lo=0.0)
        _param(self, "nu", lo=0.0)

    @functools.cached_property
    def packed(self) -> PackedMethod:
        return _pack(self, cool_delta=self.delta, cool_nu=self.nu, cool_wmin=self.w_min)


METHODS = {m.name: m for m in (Exact, Lantern, GSD, Cascade, Cool)}
