"""Decode batch-size buckets: the engine's CUDA-graph sizes, where decode latency steps.

Serving engines capture decode graphs for batch sizes 1, 2, 4, 8, 16, ..., 128
and then every 128 (SGLang's default capture list); a batch runs in the graph of the smallest bucket that holds it. A
lookup therefore rounds a (possibly fractional, e.g. median) batch size UP to a
bucket and never asks for an exact match, so no valid batch size falls into a
gap between buckets.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Sequence

__all__ = ["bucket_index", "default_buckets", "round_up_to_bucket"]


def default_buckets(max_batch_size: int = 512, small: bool = True) -> list[int]:
    """Bucket upper bounds: (1, 2, 4,) 8, 16, ..., 128, then steps of 128 to ``max_batch_size``.

    ``small`` adds the sub-8 graph sizes 1, 2 and 4 that engines also capture.
    """
    if max_batch_size < 1:
        raise ValueError(f"max_batch_size must be >= 1, got {max_batch_size}")
    out = ([1, 2, 4] if small else []) + list(range(8, 129, 8))
    top = 256
    while out[-1] < max_batch_size:
        out.append(top)
        top += 128
    return out


def bucket_index(buckets: Sequence[int], batch_size: float) -> int:
    """Index of the smallest bucket >= ``batch_size`` (the last one beyond the table).

    Fractional sizes round up (a median of 8.5 runs in bucket 16); sizes <= 0
    map to the first bucket. Raises ValueError for NaN.
    """
    if math.isnan(batch_size):
        raise ValueError("batch_size is NaN")
    size = max(1, math.ceil(batch_size))
    i = bisect.bisect_left(buckets, size)
    return min(i, len(buckets) - 1)


def round_up_to_bucket(buckets: Sequence[int], batch_size: float) -> int:
    """The bucket (upper bound) that a batch of ``batch_size`` requests runs in."""
    return buckets[bucket_index(buckets, batch_size)]
