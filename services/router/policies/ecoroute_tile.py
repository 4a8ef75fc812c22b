"""The published EcoRoute as released: a request-count bucket packer (baseline).

Decode batches get slower and costlier each time the batch crosses a kernel
tile bucket (128 requests). Below one bucket everywhere, take the instance at
the lowest clock (ties: fewest requests). Otherwise, among the instances using
the fewest buckets, take the fullest one to which one more request opens no
new bucket; if every such instance sits exactly on a boundary, the fullest
instance anywhere with room left in its open bucket; else the emptiest (the
published description does not cover that case; this is our reading).
"""

from __future__ import annotations

import math

import numpy as np
from voltana.services.router.policies.base import (
    InstanceView,
    PolicyBase,
    RouteRequest,
    Selection,
)

BUCKET_REQS = 128


def buckets_used(n_reqs: int, bucket: int = BUCKET_REQS) -> int:
    """Tile buckets a batch of ``n_reqs`` occupies (0 for an empty instance)."""
    return math.ceil(max(n_reqs, 0) / bucket)


class EcoRouteTilePolicy(PolicyBase):
    name = "ecoroute-tile"

    def __init__(self, bucket_reqs: int = BUCKET_REQS) -> None:
        if bucket_reqs < 1:
            raise ValueError("bucket_reqs must be >= 1")
        self.bucket_reqs = bucket_reqs

    def _n(self, v: InstanceView) -> int:
        return max(v.in_flight_requests, v.batch_size)

    def pick(
        self, cands: list[InstanceView], request: RouteRequest, now: float, rng: np.random.Generator
    ) -> Selection:
        b = self.bucket_reqs
        if all(self._n(v) < b for v in cands):
            # unknown clock sorts last: it may be the top clock (fail-safe reading)
            pick = min(
                cands,
                key=lambda v: (v.clock_mhz if v.clock_mhz is not None else 1 << 30, self._n(v)),
            )
            return Selection(pick.instance, f"below bucket; clock={pick.clock_mhz}")
        fewest = min(buckets_used(self._n(v), b) for v in cands)
        group = [v for v in cands if buckets_used(self._n(v), b) == fewest]
        fits = [v for v in group if buckets_used(self._n(v) + 1, b) == fewest]
        if fits:
            pick = max(fits, key=self._n)
            return Selection(pick.instance, f"pack into bucket {fewest} ({self._n(pick)} reqs)")
        # the least-bucket instances all sit on a boundary: fill any open bucket first
        anywhere = [v for v in cands if self._n(v) % b > 0]
        if anywhere:
            pick = max(anywhere, key=self._n)
            return Selection(pick.instance, f"pack into open bucket ({self._n(pick)} reqs)")
        pick = min(group, key=self._n)
        return Selection(pick.instance, f"open bucket {fewest + 1} ({self._n(pick)} reqs)")
