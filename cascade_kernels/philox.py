"""Philox-4x32-10 exactly as Triton's ``tl.rand`` computes it (CONTRACT §6, docs/CONTRACT.md).

``uniform(seed, stream, index)`` equals ``tl.rand(seed, offset)`` with the int64 offset
``index + (stream << 32)``: key ``(seed_lo, seed_hi)``, counter ``(index, stream, 0, 0)``.
Arithmetic is done in int64 tensors masked to 32 bits, so it is vectorised and exact.
"""
import torch

from .codes import STREAMS

ACCEPT = STREAMS["ACCEPT"]  # one uniform per tree node: the acceptance U
SAMPLE = STREAMS["SAMPLE"]  # one uniform per sequence and step: the inverse-CDF u of the final token
DRAFT = STREAMS["DRAFT"]  # the decode loop's sampled drafting
# verify_continuous (docs/CONTINUOUS.md); n = position * max_proposals + proposal, D = token size:
CONT_ACCEPT = STREAMS["CONT_ACCEPT"]  # index = position: the U of draft token i
CONT_COMPONENT = STREAMS["CONT_COMPONENT"]  # index = n: the inverse-CDF u choosing proposal n's component
CONT_NORMAL = STREAMS["CONT_NORMAL"]  # index = 2 (n D + d) and 2 (n D + d) + 1: Box-Muller's u1, u2
CONT_RESIDUAL = STREAMS["CONT_RESIDUAL"]  # index = n: the u keeping or refusing proposal n (residual sampler)

_MASK32 = 0xFFFFFFFF
_ROUND_A = 0xD2511F53
_ROUND_B = 0xCD9E8D57
_KEY_A = 0x9E3779B9
_KEY_B = 0xBB67AE85
_N_ROUNDS = 10
_SCALE = 4.6566127342e-10  # tl.rand's int32 -> [0, 1) scale


def _mulhilo(a: int, b: torch.Tensor):
    """(hi, lo) 32-bit halves of the 64-bit product a*b, for a 32-bit constant a and uint32 b. The int64
    product wraps modulo 2**64 (two's complement), which keeps all 64 bits of the unsigned product: the
    masks read them back (checked against a 16-bit-limb product in tests/test_philox.py)."""
    prod = b * a
    return (prod >> 32) & _MASK32, prod & _MASK32


def philox_uint32(seed: torch.Tensor, c0: torch.Tensor, c1: torch.Tensor) -> torch.Tensor:
    """First output word of Philox-4x32-10 for key from int64 ``seed`` and counter (c0, c1, 0, 0).

    All arguments broadcast; returns int64 holding the uint32 result.
    """
    seed = torch.as_tensor(seed, dtype=torch.int64)
    k0 = seed & _MASK32
    k1 = (seed >> 32) & _MASK32
    c0 = torch.as_tensor(c0, dtype=torch.int64) & _MASK32
    c1 = torch.as_tensor(c1, dtype=torch.int64) & _MASK32
    c0, c1, k0, k1 = torch.broadcast_tensors(c0, c1, k0, k1)
    c2 = torch.zeros_like(c0)
    c3 = torch.zeros_like(c0)
    for _ in range(_N_ROUNDS):
        hi_b, lo_b = _mulhilo(_ROUND_B, c2)
        hi_a, lo_a = _mulhilo(_ROUND_A, c0)
        c0, c1, c2, c3 = hi_b ^ c1 ^ k0, lo_b, hi_a ^ c3 ^ k1, lo_a
        k0 = (k0 + _KEY_A) & _MASK32
        k1 = (k1 + _KEY_B) & _MASK32
    return c0


def uint32_to_uniform(x: torch.Tensor) -> torch.Tensor:
    """tl.rand's map: bitcast to int32, negative x -> ~x, then float32(x) * 4.6566127342e-10."""
    x = torch.where(x >= 2**31, x - 2**32, x)
    x = torch.where(x < 0, -x - 1, x)
    return x.to(torch.float32) * torch.tensor(_SCALE, dtype=torch.float32)


def uniform(seed, stream: int, index) -> torch.Tensor:
    """float32 uniforms in [0, 1): ``tl.rand(seed, index + (stream << 32))``; broadcasts seed/index."""
    index = torch.as_tensor(index, dtype=torch.int64)
    return uint32_to_uniform(philox_uint32(seed, index, torch.full_like(index, stream)))
