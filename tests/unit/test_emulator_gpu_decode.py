"""The memoised decode path gives bit-identical costs to the general one."""

from __future__ import annotations

import itertools

import pytest
from voltana.groundtruth.gpu_model import GPUS, MODELS, GpuModel


@pytest.mark.parametrize(
    ("gpu", "model", "tp"),
    [("h100", "llama-3.1-8b", 1), ("a100", "llama-3.1-8b", 1), ("h100", "llama-3.1-70b", 4)],
)
def test_memoised_decode_is_bit_identical(gpu: str, model: str, tp: int) -> None:
    fast = GpuModel(GPUS[gpu], MODELS[model], tp, noise=0.02, seed=7)
    slow = GpuModel(GPUS[gpu], MODELS[model], tp, noise=0.02, seed=7)
    clocks = [*fast.supported_clocks_mhz[::7], fast.max_clock_mhz, 1000.5, 50, 5000]
    capped = 0
    for clock, b, ctx in itertools.product(clocks, (1, 3, 8, 9, 64, 129, 256, 512), (0, 700, 4000)):
        for _ in range(2):  # the second call hits the memo
            got = fast.decode(clock, b, b * ctx)
            want = slow._cost(slow._decode_work(b, b * ctx), clock)
            assert got == want
            capped += got.power_capped
    assert capped > 0  # the throttled path was taken too
