"""Windowed TTFT/ITL statistics from histogram bucket deltas."""

from __future__ import annotations

import math

import numpy as np
import pytest
from sglang_buckets import ITL_BOUNDS
from voltana.services.telemetry.latency import (
    HistogramSnapshot,
    HistogramWindow,
    quantile_from_buckets,
    window_between,
)

BOUNDS = (0.01, 0.02, 0.04, 0.08, math.inf)


def snap(per_bucket: list[float], total_s: float) -> HistogramSnapshot:
    cum = tuple(float(x) for x in np.cumsum(per_bucket))
    return HistogramSnapshot(bounds=BOUNDS, cumulative=cum, sum=total_s, count=cum[-1])


@pytest.mark.parametrize(
    ("counts", "q", "expected"),
    [
        ([10, 0, 0, 0, 0], 0.5, 0.005),  # halfway into the first bucket, from 0
        ([0, 10, 0, 0, 0], 0.5, 0.015),
        ([0, 10, 0, 0, 0], 1.0, 0.02),
        ([5, 5, 0, 0, 0], 0.5, 0.01),
        ([5, 5, 0, 0, 0], 0.9, 0.018),
        ([0, 0, 0, 0, 4], 0.5, 0.08),  # +Inf bucket: the largest finite bound
        ([0, 0, 0, 1, 99], 0.01, 0.08),
    ],
)
def test_quantile_from_buckets(counts: list[float], q: float, expected: float) -> None:
    assert quantile_from_buckets(BOUNDS, counts, q) == pytest.approx(expected)


def test_window_is_the_delta_between_scrapes() -> None:
    old = snap([100, 0, 0, 0, 0], 0.5)  # 100 old fast observations
    new = snap([100, 10, 0, 10, 0], 0.5 + 10 * 0.015 + 10 * 0.06)
    w = window_between(old, new, 2.0)
    assert w.count == 20 and w.window_s == 2.0
    assert w.mean_s == pytest.approx((0.15 + 0.6) / 20)
    assert w.p50_s == pytest.approx(0.02)  # the old fast ones are not in this window
    assert w.p90_s == pytest.approx(0.04 + 0.04 * 0.8)
    assert w.max_s == 0.08


def test_empty_window() -> None:
    s = snap([3, 0, 0, 0, 0], 0.01)
    w = window_between(s, s, 1.0)
    assert w.count == 0 and w.p50_s is None and w.mean_s is None


def test_counter_reset_takes_the_new_counts() -> None:
    old = snap([500, 500, 0, 0, 0], 10.0)
    new = snap([0, 4, 0, 0, 0], 0.06)  # engine restarted
    w = window_between(old, new, 1.0)
    assert w.count == 4 and w.p50_s == pytest.approx(0.015)


def test_quantiles_track_a_known_distribution() -> None:
    """Draw ITL samples, bucket them like a server would; quantiles land in the right bucket."""
    rng = np.random.default_rng(7)
    bounds = (*ITL_BOUNDS, math.inf)  # SGLang's inter-token latency layout
    x = rng.gamma(9.0, 0.0025, size=20000)
    idx = np.searchsorted(np.array(bounds[:-1]), x, side="left")
    per = np.bincount(idx, minlength=len(bounds)).astype(float)
    cum = tuple(np.cumsum(per))
    hs = HistogramSnapshot(bounds=bounds, cumulative=cum, sum=float(x.sum()), count=float(len(x)))
    w = window_between(None, hs, 1.0)
    for got, q in ((w.p50_s, 0.5), (w.p90_s, 0.9), (w.p99_s, 0.99)):
        true = float(np.quantile(x, q))
        k = int(np.searchsorted(np.array(bounds), true))
        lo = bounds[k - 1] if k else 0.0
        assert got is not None and lo <= got <= bounds[k], (q, got, true)
    assert w.mean_s == pytest.approx(float(x.mean()))


def test_rolling_window_uses_snapshot_at_least_window_old() -> None:
    hw = HistogramWindow(window_s=2.0)
    first = hw.update(0.0, snap([0, 0, 0, 0, 0], 0.0))
    assert first.count == 0  # nothing to compare with yet
    hw.update(1.0, snap([10, 0, 0, 0, 0], 0.05))
    w2 = hw.update(2.0, snap([10, 10, 0, 0, 0], 0.2))
    assert w2.count == 20 and w2.window_s == 2.0  # since t=0
    w3 = hw.update(3.0, snap([10, 10, 10, 0, 0], 0.5))
    assert w3.count == 20 and w3.window_s == 2.0  # since t=1: the first 10 fast ones dropped
    assert w3.p50_s == pytest.approx(0.02)


def test_rolling_window_restart_clears_history() -> None:
    hw = HistogramWindow(window_s=1.0)
    hw.update(0.0, snap([50, 0, 0, 0, 0], 0.2))
    w = hw.update(1.0, snap([0, 0, 3, 0, 0], 0.09))
    assert w.count == 0  # a restart: no baseline for the new counter yet
    w = hw.update(2.0, snap([0, 0, 5, 0, 0], 0.15))
    assert w.count == 2 and w.p50_s is not None and 0.02 <= w.p50_s <= 0.04


def test_bad_window() -> None:
    with pytest.raises(ValueError):
        HistogramWindow(0.0)
