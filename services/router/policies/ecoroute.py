"""EcoRoute with a true what-if: the energy one more request adds to each candidate.

For every healthy candidate the policy asks the fitted profile (never the
emulator's ground truth) two questions: at which clock would this instance
have to run to keep its SLO without and with this request, and how much more
power does it then draw. The candidate that keeps the SLO and adds the least
energy wins; ties go to the least loaded. The clock considered is the one that
minimises energy among those meeting the budget (below the bottom of the U a
lower clock costs more energy, not less).

- Decode: batch ``b`` -> ``b+1``, KV ``kv`` -> ``kv + input_tokens``; budget =
  ITL SLO minus margin. Added energy = (P_after - P_before) x the request's
  expected decode time. An idle instance pays its wake-up (idle -> active power),
  so light load consolidates onto busy instances until a tile bucket or the
  SLO makes another instance cheaper.
- Prefill: the request waits behind the prompt tokens already queued there;
  budget = TTFT SLO minus margin minus the time the request already waited.
  Added energy = active energy of (queue + request) at its clock minus that of
  the queue alone at the clock it needed before.

When no candidate can meet its budget, the policy falls back to the one with
the lowest predicted latency at the top clock (fail safe toward the SLO).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np
from voltana.schemas.config import SloConfig
from voltana.services.router.policies.base import (
    ClusterView,
    InstanceView,
    PolicyBase,
    RouteRequest,
    Selection,
    healthy,
)


class ProfileLike(Protocol):
    """The part of ``voltana.services.freqctl.profile.Profile`` this policy uses."""

    @property
    def clocks_mhz(self) -> list[int]: ...
    @property
    def max_clock_mhz(self) -> int: ...
    @property
    def min_clock_mhz(self) -> int: ...
    def prefill_latency_s(self, clock_mhz: float, batched_tokens: int) -> float: ...
    def prefill_power_w(self, clock_mhz: float, batched_tokens: int) -> float: ...
    def decode_latency_s(self, clock_mhz: float, batch_size: int, kv_tokens: int) -> float: ...
    def decode_power_w(self, clock_mhz: float, batch_size: int, kv_tokens: int) -> float: ...
    def idle_power_w(self, clock_mhz: float) -> float: ...


@dataclass(frozen=True, slots=True)
class WhatIf:
    """One candidate's answer: clocks before/after, predicted latency, added energy."""

    instance: str
    feasible: bool
    clock_before_mhz: int
    clock_after_mhz: int
    latency_after_s: float
    latency_at_max_s: float
    added_energy_j: float
    load: int


def candidate_clocks(clocks_mhz: list[int], max_levels: int) -> list[int]:
    """An ascending subset of the clock table (always with the top clock) to keep decisions cheap."""
    cl = sorted(set(clocks_mhz))
    if len(cl) <= max_levels:
        return cl
    step = (len(cl) - 1) / (max_levels - 1)
    picked = {cl[round(i * step)] for i in range(max_levels)}
    picked.add(cl[-1])
    return sorted(picked)


class EcoRoutePolicy(PolicyBase):
    name = "ecoroute"

    def __init__(self, profile: ProfileLike, slo: SloConfig | None = None, max_levels: int = 24):
        self.profile = profile
        self.slo = slo or SloConfig()
        self.clocks = candidate_clocks(list(profile.clocks_mhz), max(2, max_levels))
        self.idle_w = float(profile.idle_power_w(profile.min_clock_mhz))

    # -- decode -------------------------------------------------------------

    def _decode_clock(self, b: int, kv: int, budget_s: float) -> tuple[int, float, float, bool]:
        """(clock, latency_s, power_w, feasible) of the cheapest clock meeting ``budget_s``."""
        p = self.profile
        best: tuple[float, int, float, float] | None = None
        for f in self.clocks:
            t = p.decode_latency_s(f, b, kv)
            if t > budget_s:
                continue
            w = p.decode_power_w(f, b, kv)
            if best is None or w * t < best[0]:
                best = (w * t, f, t, w)
        if best is None:
            f = self.clocks[-1]
            return f, p.decode_latency_s(f, b, kv), p.decode_power_w(f, b, kv), False
        return best[1], best[2], best[3], True

    def _decode_whatif(self, v: InstanceView, req: RouteRequest) -> WhatIf:
        budget = self.slo.itl_s * (1.0 - self.slo.margin)
        b, kv = v.batch_size, v.kv_tokens_est
        if b <= 0:
            f0, p0 = self.profile.min_clock_mhz, self.idle_w
        else:
            f0, _, p0, _ = self._decode_clock(b, kv, budget)
        kv1 = kv + max(req.input_tokens, 0)
        f1, t1, p1, ok = self._decode_clock(b + 1, kv1, budget)
        t_max = self.profile.decode_latency_s(self.clocks[-1], b + 1, kv1)
        added = (p1 - p0) * max(req.max_new_tokens, 1) * t1
        return WhatIf(v.instance, ok, f0, f1, t1, t_max, added, b)

    # -- prefill ------------------------------------------------------------

    def _prefill_clock(self, tokens: int, budget_s: float) -> tuple[int, float, float, bool]:
        """(clock, latency_s, active energy_j, feasible) for prefilling ``tokens`` within budget."""
        p = self.profile
        if tokens <= 0:
            return self.profile.min_clock_mhz, 0.0, 0.0, True
        best: tuple[float, int, float] | None = None
        for f in self.clocks:
            t = p.prefill_latency_s(f, tokens)
            if t > budget_s:
                continue
            e = (p.prefill_power_w(f, tokens) - self.idle_w) * t
            if best is None or e < best[0]:
                best = (e, f, t)
        if best is None:
            f = self.clocks[-1]
            t = p.prefill_latency_s(f, tokens)
            return f, t, (p.prefill_power_w(f, tokens) - self.idle_w) * t, False
        return best[1], best[2], best[0], True

    def _prefill_whatif(self, v: InstanceView, req: RouteRequest, now: float) -> WhatIf:
        full = self.slo.ttft_s * (1.0 - self.slo.margin)
        q = max(v.queued_prefill_tokens, 0)
        f0, _, e0, _ = self._prefill_clock(q, full - v.oldest_wait_s)
        budget = full - max(now - req.arrival_t, 0.0)
        tokens = q + max(req.input_tokens, 1)
        f1, t1, e1, ok = self._prefill_clock(tokens, budget)
        if f1 < f0:  # the queue ahead still needs its own clock
            f1 = f0
            t1 = self.profile.prefill_latency_s(f1, tokens)
            e1 = (self.profile.prefill_power_w(f1, tokens) - self.idle_w) * t1
            ok = t1 <= budget
        t_max = self.profile.prefill_latency_s(self.clocks[-1], tokens)
        return WhatIf(v.instance, ok, f0, f1, t1, t_max, e1 - e0, q)

    # -- policy -------------------------------------------------------------

    def evaluate(self, view: ClusterView, request: RouteRequest, now: float) -> list[WhatIf]:
        """The what-if of every healthy candidate (exposed for tests, replay and logs)."""
        out = []
        for v in healthy(view):
            if v.role == "prefill":
                out.append(self._prefill_whatif(v, request, now))
            else:
                out.append(self._decode_whatif(v, request))
        return out

    def select(
        self, view: ClusterView, request: RouteRequest, now: float, rng: np.random.Generator
    ) -> Selection | None:
        whatifs = self.evaluate(view, request, now)
        if not whatifs:
            return None
        ok = [w for w in whatifs if w.feasible]
        if ok:
            # round energy to 1 mJ so float noise does not beat the load tie-break
            pick = min(ok, key=lambda w: (round(w.added_energy_j, 3), w.load, w.instance))
            return Selection(
                pick.instance,
                f"what-if +{pick.added_energy_j:.3f}J clock {pick.clock_before_mhz}"
                f"->{pick.clock_after_mhz}MHz lat {pick.latency_after_s * 1e3:.1f}ms",
            )
        pick = min(whatifs, key=lambda w: (w.latency_at_max_s, w.load, w.instance))
        return Selection(
            pick.instance,
            f"no candidate meets SLO; fastest at max {pick.latency_at_max_s * 1e3:.1f}ms",
        )
