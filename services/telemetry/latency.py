"""Windowed latency quantiles from cumulative Prometheus histogram buckets.

SGLang exports TTFT and ITL as cumulative histograms. The observations made
between two scrapes are the bucket deltas; quantiles are interpolated
linearly inside a bucket, as Prometheus' ``histogram_quantile`` does. Pure:
snapshots and times in, a ``LatencyWindow`` out.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass

from voltana.schemas.telemetry import LatencyWindow

QUANTILES = (0.5, 0.9, 0.99)


@dataclass(frozen=True, slots=True)
class HistogramSnapshot:
    """Cumulative counts per upper bound (ascending, last may be +Inf), plus sum and count."""

    bounds: tuple[float, ...]
    cumulative: tuple[float, ...]
    sum: float
    count: float


def quantile_from_buckets(bounds: tuple[float, ...], counts: list[float], q: float) -> float:
    """The ``q`` quantile of non-cumulative bucket ``counts`` (total must be > 0).

    Observations in the +Inf bucket are reported at the largest finite bound.
    """
    total = sum(counts)
    rank = q * total
    seen = 0.0
    for i, (upper, n) in enumerate(zip(bounds, counts, strict=True)):
        if n <= 0:
            continue
        if seen + n >= rank:
            lower = bounds[i - 1] if i > 0 else 0.0
            if math.isinf(upper):
                return _largest_finite(bounds)
            if math.isinf(lower):  # pragma: no cover - bounds ascend
                return upper
            return lower + (upper - lower) * max(0.0, rank - seen) / n
        seen += n
    return _largest_finite(bounds)


def _largest_finite(bounds: tuple[float, ...]) -> float:
    finite = [b for b in bounds if not math.isinf(b)]
    return finite[-1] if finite else 0.0


def window_between(
    old: HistogramSnapshot | None, new: HistogramSnapshot, window_s: float
) -> LatencyWindow:
    """Statistics of the observations made between ``old`` and ``new``.

    When ``old`` is None, or the counter went backwards (the engine restarted),
    or the bucket layout changed, everything in ``new`` counts as the window.
    """
    if (
        old is None
        or old.bounds != new.bounds
        or new.count < old.count
        or any(n < o for n, o in zip(new.cumulative, old.cumulative, strict=True))
    ):
        cum, total_sum, count = list(new.cumulative), new.sum, new.count
    else:
        cum = [n - o for n, o in zip(new.cumulative, old.cumulative, strict=True)]
        total_sum, count = new.sum - old.sum, new.count - old.count
    per_bucket = [c - (cum[i - 1] if i else 0.0) for i, c in enumerate(cum)]
    per_bucket = [max(0.0, c) for c in per_bucket]
    n_obs = round(count)
    if n_obs <= 0 or sum(per_bucket) <= 0:
        return LatencyWindow(count=0, window_s=window_s)
    p50, p90, p99 = (quantile_from_buckets(new.bounds, per_bucket, q) for q in QUANTILES)
    top = max(i for i, c in enumerate(per_bucket) if c > 0)
    upper = new.bounds[top]
    return LatencyWindow(
        count=n_obs,
        window_s=window_s,
        mean_s=total_sum / count,
        p50_s=p50,
        p90_s=p90,
        p99_s=p99,
        max_s=_largest_finite(new.bounds) if math.isinf(upper) else upper,
    )


class HistogramWindow:
    """Keeps recent snapshots of one histogram; reports the last ``window_s`` seconds.

    ``update(t_s, snap)`` returns the window from the newest snapshot at least
    ``window_s`` old (or the oldest kept) to ``snap``.
    """

    def __init__(self, window_s: float = 5.0) -> None:
        if window_s <= 0:
            raise ValueError("window_s must be > 0")
        self.window_s = window_s
        self._history: deque[tuple[float, HistogramSnapshot]] = deque()

    def update(self, t_s: float, snap: HistogramSnapshot) -> LatencyWindow:
        hist = self._history
        if hist and (snap.count < hist[-1][1].count or snap.bounds != hist[-1][1].bounds):
            hist.clear()  # engine restarted: old snapshots no longer apply
        base: tuple[float, HistogramSnapshot] | None = None
        for item in hist:
            if t_s - item[0] >= self.window_s:
                base = item
            else:
                break
        if base is None and hist:
            base = hist[0]
        if base is None:
            result = LatencyWindow(count=0, window_s=0.0)
        else:
            result = window_between(base[1], snap, t_s - base[0])
        hist.append((t_s, snap))
        while len(hist) > 1 and t_s - hist[1][0] >= self.window_s:
            hist.popleft()
        return result
