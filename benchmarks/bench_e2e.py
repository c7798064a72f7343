"""pytest-benchmark entry for end-to-end decoding on the shipped model (short images, batch 1).

The full comparison (quality, sweep, drafters) is ``python benchmarks/e2e.py``; this suite times a
32-token generation per method so regressions in the decode loop show up in ``--benchmark-only``.
"""
import pytest
import torch

cascade_lab = pytest.importorskip("cascade_lab")
from cascade_lab.compare import run_method  # noqa: E402
from cascade_lab.weights import WeightsError  # noqa: E402


@pytest.fixture(scope="module")
def shipped():
    try:
        pre = cascade_lab.load_pretrained()
    except WeightsError as e:
        pytest.skip(f"shipped weights unavailable: {e}")
    return pre


@pytest.mark.parametrize("method", ["ar", "exact", "cascade", "lantern"])
def test_decode_32_tokens(benchmark, shipped, method):
    torch.set_num_threads(1)
    cid = torch.tensor([0])

    def run():
        return run_method(shipped.target, shipped.drafter, shipped.vq.embedding, method, cid, num_tokens=32,
                          cfg_scale=3.0, seed=0)

    out = benchmark.pedantic(run, rounds=3, iterations=1, warmup_rounds=1)
    stats = out.stats[0]
    benchmark.extra_info.update(alpha=stats.alpha, target_forwards=stats.target_forwards, tokens=stats.tokens)
    assert out.tokens.shape == (1, 32) and stats.alpha >= 1.0
