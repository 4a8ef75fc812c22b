"""Uniform random choice among healthy instances (SGLang's default for prefill)."""

from __future__ import annotations

import numpy as np
from voltana.services.router.policies.base import (
    ClusterView,
    PolicyBase,
    RouteRequest,
    Selection,
    healthy,
)


class RandomPolicy(PolicyBase):
    name = "random"

    def select(
        self, view: ClusterView, request: RouteRequest, now: float, rng: np.random.Generator
    ) -> Selection | None:
        cands = healthy(view)
        if not cands:
            return None
        pick = cands[int(rng.integers(len(cands)))]
        return Selection(pick.instance, f"random of {len(cands)}")
