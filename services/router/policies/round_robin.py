"""Round robin over healthy instances, in view order.

The cursor moves in ``on_dispatch`` (not in ``select``), so asking without
dispatching changes nothing and replays reach the same decisions.
"""

from __future__ import annotations

import numpy as np
from voltana.services.router.policies.base import (
    ClusterView,
    PolicyBase,
    RouteRequest,
    Selection,
    healthy,
)


class RoundRobinPolicy(PolicyBase):
    name = "round-robin"

    def __init__(self) -> None:
        self._last: str | None = None

    def select(
        self, view: ClusterView, request: RouteRequest, now: float, rng: np.random.Generator
    ) -> Selection | None:
        names = [v.instance for v in view]
        ok = {v.instance for v in healthy(view)}
        if not ok:
            return None
        start = names.index(self._last) + 1 if self._last in names else 0
        for k in range(len(names)):
            cand = names[(start + k) % len(names)]
            if cand in ok:
                return Selection(cand, "round-robin")
        return None  # pragma: no cover - ok is non-empty

    def on_dispatch(self, instance: str, request: RouteRequest, now: float) -> None:
        self._last = instance
