"""Least load and power-of-two choices.

Load of a prefill instance is the prompt tokens it still has to prefill (its
cost is proportional to tokens); load of a decode instance is its request
count (what its batch and ITL follow), tokens breaking ties.
"""

from __future__ import annotations

import numpy as np
from voltana.services.router.policies.base import (
    InstanceView,
    PolicyBase,
    RouteRequest,
    Selection,
)


def load_key(v: InstanceView) -> tuple[int, int]:
    """Sort key: smaller is less loaded."""
    if v.role == "prefill":
        return (v.queued_prefill_tokens, v.in_flight_requests)
    return (max(v.in_flight_requests, v.batch_size), v.in_flight_tokens)


class LeastLoadPolicy(PolicyBase):
    name = "least-load"

    def pick(
        self, cands: list[InstanceView], request: RouteRequest, now: float, rng: np.random.Generator
    ) -> Selection:
        best = min(load_key(v) for v in cands)
        ties = [v for v in cands if load_key(v) == best]
        pick = ties[int(rng.integers(len(ties)))] if len(ties) > 1 else ties[0]
        return Selection(pick.instance, f"least-load {best[0]}")


class PowerOfTwoPolicy(PolicyBase):
    name = "power-of-two"

    def pick(
        self, cands: list[InstanceView], request: RouteRequest, now: float, rng: np.random.Generator
    ) -> Selection:
        if len(cands) == 1:
            return Selection(cands[0].instance, "only healthy")
        i, j = rng.choice(len(cands), size=2, replace=False)
        a, b = cands[int(i)], cands[int(j)]
        pick = a if load_key(a) <= load_key(b) else b
        other = b if pick is a else a
        return Selection(pick.instance, f"p2c {load_key(pick)[0]}<={load_key(other)[0]}")
