"""EcoRoute with a true what-if: the energy one more request adds to each candidate.

For every healthy candidate the policy asks the fitted profile (never the
emulator's ground truth) two questions: at which clock would this instance
have to run to keep its SLO without and with this request, and how much more
power does it then draw. The candidate that keeps the SLO and adds the least
energy wins; ties go to the least loaded. The clock considered is the one that
minimises energy among those meeting the budget (below the bottom of the U a
lower clock costs more energy, not less).

- Decode: batch ``b`` -> ``b+1``, KV ``kv`` -> ``kv + input_tokens``; budget =
  ITL SLO minus margin. The requests already there need the same number of
  iterations either way, so the added energy is (iteration energy after -
  before, each at its cheapest feasible clock) x the request's output tokens.
  An idle instance pays its wake-up (active instead of idle power), so light
  load consolidates onto busy instances until a tile bucket or the SLO makes
  another instance cheaper.
- Prefill: the request waits behind the prompt tokens already queued there;
  budget = TTFT SLO minus margin minus the time the request already waited.
  Added energy = active energy of (queue + request) at its clock minus that of
  the queue alone at the clock it needed before.

When no candidate can meet its budget, the policy falls back to the one with
the lowest predicted latency at the top clock (fail safe toward the SLO).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

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

FloatArray = np.ndarray[Any, np.dtype[np.float64]]


class ProfileLike(Protocol):
    """The part of ``voltana.services.freqctl.profile.Profile`` this policy uses.

    The ``*_table_*`` methods answer for every clock of ``clocks_mhz`` at once
    (ascending), which keeps one decision well under a millisecond.
    """

    clocks_mhz: tuple[int, ...]
    max_clock_mhz: int
    min_clock_mhz: int

    def prefill_latency_table_s(self, batched_tokens: float) -> FloatArray: ...
    def prefill_energy_table_j(self, batched_tokens: float) -> FloatArray: ...
    def decode_latency_table_s(self, batch_size: float, kv_tokens: float) -> FloatArray: ...
    def decode_energy_table_j(self, batch_size: float, kv_tokens: float) -> FloatArray: ...
    def idle_power_table_w(self) -> FloatArray: ...


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


@dataclass(frozen=True, slots=True)
class ClockChoice:
    """The cheapest clock meeting a budget (or the top clock when none does)."""

    clock_mhz: int
    index: int
    latency_s: float
    energy_j: float
    feasible: bool


def cheapest_within(
    clocks_mhz: tuple[int, ...], latency_s: FloatArray, energy_j: FloatArray, budget_s: float
) -> ClockChoice:
    """Among clocks whose latency fits ``budget_s``, the one with the least energy.

    Ties go to the higher clock (more slack for the same energy). When no clock
    fits, the top clock (fail safe toward the SLO) with ``feasible`` False.
    """
    ok = latency_s <= budget_s
    if not bool(ok.any()):
        i = len(clocks_mhz) - 1
        return ClockChoice(clocks_mhz[i], i, float(latency_s[i]), float(energy_j[i]), False)
    masked = np.where(ok, energy_j, np.inf)
    i = int(len(masked) - 1 - np.argmin(masked[::-1]))
    return ClockChoice(clocks_mhz[i], i, float(latency_s[i]), float(energy_j[i]), True)


class EcoRoutePolicy(PolicyBase):
    name = "ecoroute"

    def __init__(self, profile: ProfileLike, slo: SloConfig | None = None) -> None:
        self.profile = profile
        self.slo = slo or SloConfig()
        self.clocks = tuple(profile.clocks_mhz)
        self.idle_tab_w = np.asarray(profile.idle_power_table_w(), dtype=np.float64)
        self.idle_w = float(self.idle_tab_w.min())

    # -- decode -------------------------------------------------------------

    def _decode_clock(self, b: int, kv: int, budget_s: float) -> ClockChoice:
        """The cheapest clock for one iteration of (b, kv) within the ITL budget."""
        lat = self.profile.decode_latency_table_s(b, kv)
        en = self.profile.decode_energy_table_j(b, kv)
        return cheapest_within(self.clocks, lat, en, budget_s)

    def _decode_whatif(self, v: InstanceView, req: RouteRequest) -> WhatIf:
        budget = self.slo.itl_s * (1.0 - self.slo.margin)
        b, kv = v.batch_size, v.kv_tokens_est
        kv1 = kv + max(req.input_tokens, 0)
        ch1 = self._decode_clock(b + 1, kv1, budget)
        if b <= 0:
            # idle: the request's iterations replace idle time at the parked clock
            f0, e0 = self.profile.min_clock_mhz, self.idle_w * ch1.latency_s
        else:
            ch0 = self._decode_clock(b, kv, budget)
            f0, e0 = ch0.clock_mhz, ch0.energy_j
        t_max = float(self.profile.decode_latency_table_s(b + 1, kv1)[-1])
        # the others need the same number of iterations either way: each one now costs more
        added = (ch1.energy_j - e0) * max(req.max_new_tokens, 1)
        return WhatIf(v.instance, ch1.feasible, f0, ch1.clock_mhz, ch1.latency_s, t_max, added, b)

    # -- prefill ------------------------------------------------------------

    def _prefill_tables(self, tokens: int) -> tuple[FloatArray, FloatArray]:
        """(latency_s, active energy_j above idle) of prefilling ``tokens`` at every clock."""
        lat = self.profile.prefill_latency_table_s(tokens)
        en = self.profile.prefill_energy_table_j(tokens) - self.idle_w * lat
        return lat, en

    def _prefill_whatif(self, v: InstanceView, req: RouteRequest, now: float) -> WhatIf:
        full = self.slo.ttft_s * (1.0 - self.slo.margin)
        q = max(v.queued_prefill_tokens, 0)
        if q > 0:
            lat0, en0 = self._prefill_tables(q)
            ch0 = cheapest_within(self.clocks, lat0, en0, full - v.oldest_wait_s)
            f0, i0, e0 = ch0.clock_mhz, ch0.index, ch0.energy_j
        else:
            f0, i0, e0 = self.profile.min_clock_mhz, 0, 0.0
        budget = full - max(now - req.arrival_t, 0.0)
        tokens = q + max(req.input_tokens, 1)
        lat1, en1 = self._prefill_tables(tokens)
        # the queue ahead still needs the clock it needed before: only clocks >= f0
        ch1 = cheapest_within(self.clocks[i0:], lat1[i0:], en1[i0:], budget)
        t_max = float(lat1[-1])
        return WhatIf(
            v.instance, ch1.feasible, f0, ch1.clock_mhz, ch1.latency_s, t_max, ch1.energy_j - e0, q
        )

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
