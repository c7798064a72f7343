"""Philox-4x32-10 (CONTRACT §6): known answers and bit-exact parity with Triton's tl.rand."""
import pytest
import torch

from cascade_kernels import philox
from conftest import HAS_TRITON


def test_known_answer_zero_key_zero_counter():
    # Random123's philox4x32-10 known-answer vector: key (0, 0), counter (0, 0, 0, 0) -> 0x6627e8d5, ...
    assert int(philox.philox_uint32(torch.tensor(0), torch.tensor(0), torch.tensor(0))) == 0x6627E8D5


def test_uniform_range_and_determinism():
    u = philox.uniform(torch.tensor(123), philox.ACCEPT, torch.arange(100_000))
    assert u.dtype == torch.float32
    assert float(u.min()) >= 0.0 and float(u.max()) < 1.0
    assert torch.equal(u, philox.uniform(torch.tensor(123), philox.ACCEPT, torch.arange(100_000)))
    assert abs(float(u.mean()) - 0.5) < 0.005
    assert not torch.equal(u[:1000], philox.uniform(torch.tensor(123), philox.SAMPLE, torch.arange(1000)))


def test_uint_to_uniform_edges():
    x = torch.tensor([0, 1, 2**31 - 1, 2**31, 2**32 - 1], dtype=torch.int64)
    u = philox.uint32_to_uniform(x)
    assert float(u[0]) == 0.0 and float(u[-1]) == 0.0  # 0xffffffff is int32 -1 -> ~(-1) = 0
    assert float(u.max()) < 1.0


@pytest.mark.skipif(not HAS_TRITON, reason="triton is not installed")
@pytest.mark.parametrize("seed", [0, 1, 12345, -7, 2**40 + 3, -(2**62), 2**63 - 1])
@pytest.mark.parametrize("stream", [philox.ACCEPT, philox.SAMPLE])
def test_matches_triton_tl_rand(seed, stream):
    import triton
    import triton.language as tl

    @triton.jit
    def rand_kernel(seed_ptr, out_ptr, start, stream, BLOCK: tl.constexpr):
        s = tl.load(seed_ptr)
        offs = tl.arange(0, BLOCK).to(tl.int64) + start
        u = tl.rand(s, offs + (stream.to(tl.int64) << 32))
        tl.store(out_ptr + tl.arange(0, BLOCK), u)

    device = "cuda" if torch.cuda.is_available() else "cpu"
    for start in (0, 2**31 - 32):
        out = torch.empty(64, device=device)
        rand_kernel[(1,)](torch.tensor([seed], device=device), out, start, stream, BLOCK=64)
        ref = philox.uniform(torch.tensor(seed), stream, torch.arange(start, start + 64))
        assert torch.equal(out.cpu(), ref)


def test_mulhilo_matches_limb_product():
    """The wrapped int64 product gives the exact 64-bit product's halves, extremes included."""
    b = torch.cat([torch.randint(0, 2**32, (20000,), generator=torch.Generator().manual_seed(0), dtype=torch.int64),
                   torch.tensor([0, 1, 2**31 - 1, 2**31, 2**32 - 1])])
    for a in (philox._ROUND_A, philox._ROUND_B, 1, 2**32 - 1):
        a_hi, a_lo, b_hi, b_lo = a >> 16, a & 0xFFFF, b >> 16, b & 0xFFFF  # 16-bit limbs: no overflow
        cross = ((a_lo * b_lo) >> 16) + ((a_hi * b_lo) & 0xFFFF) + ((a_lo * b_hi) & 0xFFFF)
        hi = (a_hi * b_hi + ((a_hi * b_lo) >> 16) + ((a_lo * b_hi) >> 16) + (cross >> 16)) & 0xFFFFFFFF
        lo = (((cross & 0xFFFF) << 16) | ((a_lo * b_lo) & 0xFFFF)) & 0xFFFFFFFF
        got_hi, got_lo = philox._mulhilo(a, b)
        assert torch.equal(got_hi, hi) and torch.equal(got_lo, lo), a
        assert int(got_hi[-1]) * 2**32 + int(got_lo[-1]) == a * (2**32 - 1)
