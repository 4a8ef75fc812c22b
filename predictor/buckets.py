"""Decode batch-size buckets: the engine's CUDA-graph sizes, where decode latency steps.

Serving engines capture decode graphs for batch sizes 1, 2, 4, 8, 16, ..., 128
and then every 128 (SGLang's default capture list); a batch runs in the graph of
the smallest bucket that holds it. ``decode_bucket`` is that schedule (the ground
truth pads every decode step with it); ``default_buckets`` lists it up to a batch
size, the table a profile is fitted on. A table lookup rounds a (possibly
fractional, e.g. median) batch size UP to a bucket and never asks for an exact
match, so no valid batch size falls into a gap between buckets.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Sequence

__all__ = ["bucket_index", "decode_bucket", "default_buckets", "round_up_to_bucket"]


def decode_bucket(batch_size: int) -> int:
    """CUDA-graph batch size a decode batch is padded to (1, 2, 4, 8..128 by 8, then by 128).

    Unbounded (0 for an empty batch); the per-step hot path, hence closed-form.
    """
    if batch_size <= 0:
        return 0
    if batch_size <= 4:
        return 1 << (batch_size - 1).bit_length()
    if batch_size <= 128:
        return -(-batch_size // 8) * 8
    return -(-batch_size // 128) * 128


def default_buckets(max_batch_size: int = 512, small: bool = True) -> list[int]:
    """The ``decode_bucket`` schedule as a table: (1, 2, 4,) 8, 16, ..., 128, then by 128.

    It always reaches 128 and goes on until a bucket holds ``max_batch_size``.
    ``small`` adds the sub-8 graph sizes 1, 2 and 4 that engines also capture.
    """
    if max_batch_size < 1:
        raise ValueError(f"max_batch_size must be >= 1, got {max_batch_size}")
    out = [1 if small else 8]
    while out[-1] < max(128, max_batch_size):
        out.append(decode_bucket(out[-1] + 1))
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
