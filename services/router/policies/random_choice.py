"""Uniform random choice among healthy instances (SGLang's default for prefill)."""

from __future__ import annotations

import numpy as np
from voltana.services.router.policies.base import (
    InstanceView,
    PolicyBase,
    RouteRequest,
    Selection,
)


class RandomPolicy(PolicyBase):
    name = "random"

    def pick(
        self, cands: list[InstanceView], request: RouteRequest, now: float, rng: np.random.Generator
    ) -> Selection:
        pick = cands[int(rng.integers(len(cands)))]
        return Selection(pick.instance, f"random of {len(cands)}")
