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

Prefix cache: the policy keeps sglang-router's approximate tree of what it sent to
each prefill instance (``cache_aware.ApproxPrefixTree``), and prices a candidate's
predicted hit: the request adds only its uncached tokens there (at least one), so
a hit is cheaper and faster on the instance that holds the prefix, and the what-if
trades it against that instance's queue and clock like any other cost.

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
from voltana.services.router.policies.cache_aware import ApproxPrefixTree, CacheAwareConfig

FloatArray = np.ndarray[Any, np.dtype[np.float64]]


class ProfileLike(Protocol):
    """The part of ``voltana.predictor.profile.Profile`` this policy uses.

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
    def decode_tables(
        self, batch_sizes: FloatArray, kv_tokens: FloatArray
    ) -> tuple[FloatArray, FloatArray]: ...
    def prefill_tables(self, batched_tokens: FloatArray) -> tuple[FloatArray, FloatArray]: ...
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
    kv_fits: bool = True  # decode: the request's KV reservation fits the pool (if known)


@dataclass(frozen=True, slots=True)
class ClockChoice:
    """The cheapest clock meeting a budget (or the top clock when none does)."""

    clock_mhz: int
    index: int
    latency_s: float
    energy_j: float
    feasible: bool


IndexArray = np.ndarray[Any, np.dtype[np.intp]]
BoolArray = np.ndarray[Any, np.dtype[np.bool_]]


def cheapest_rows(
    latency_s: FloatArray,
    energy_j: FloatArray,
    budget_s: FloatArray,
    first: IndexArray | None = None,
) -> tuple[IndexArray, BoolArray]:
    """Per row of [N, clock] tables: (clock index, feasible) of the least-energy fit.

    Among clocks at or above ``first[i]`` (default: all) whose latency fits
    ``budget_s[i]``, the one with the least energy; ties go to the higher clock
    (more slack for the same energy). When none fits, the top clock (fail safe
    toward the SLO) with feasible False.
    """
    n = latency_s.shape[1]
    ok = latency_s <= np.asarray(budget_s, dtype=np.float64)[:, None]
    if first is not None:
        ok &= np.arange(n) >= np.asarray(first)[:, None]
    masked = np.where(ok, energy_j, np.inf)
    # argmin from the top: ties go up, and a row with no fit (all inf) gets the top clock
    idx: IndexArray = n - 1 - np.argmin(masked[:, ::-1], axis=1)
    return idx, np.asarray(ok.any(axis=1))


def cheapest_within(
    clocks_mhz: tuple[int, ...], latency_s: FloatArray, energy_j: FloatArray, budget_s: float
) -> ClockChoice:
    """``cheapest_rows`` for one table: the least-energy clock fitting ``budget_s``."""
    idx, ok = cheapest_rows(latency_s[None, :], energy_j[None, :], np.array([budget_s]))
    i = int(idx[0])
    return ClockChoice(clocks_mhz[i], i, float(latency_s[i]), float(energy_j[i]), bool(ok[0]))


class EcoRoutePolicy(PolicyBase):
    name = "ecoroute"

    def __init__(self, profile: ProfileLike, slo: SloConfig | None = None) -> None:
        self.profile = profile
        self.slo = slo or SloConfig()
        self.clocks = tuple(profile.clocks_mhz)
        self._clock_arr = np.array(self.clocks, dtype=np.int64)
        self.idle_tab_w = np.asarray(profile.idle_power_table_w(), dtype=np.float64)
        self.idle_w = float(self.idle_tab_w.min())
        self.tree = ApproxPrefixTree()  # what went to each prefill instance
        self._prefill: set[str] = set()
        self._tree_limits = CacheAwareConfig()  # its pruning: sglang-router's interval and size
        self._last_prune: float | None = None

    # -- decode -------------------------------------------------------------

    def _decode_whatifs(self, views: list[InstanceView], req: RouteRequest) -> list[WhatIf]:
        """Every decode candidate at once: batch b -> b+1, KV kv -> kv + input tokens."""
        n = len(views)
        b = np.array([v.batch_size for v in views], dtype=np.float64)
        kv = np.array([v.kv_tokens_est for v in views], dtype=np.float64)
        # rows 0..n-1: with the request; rows n..2n-1: as they are
        lat, en = self.profile.decode_tables(
            np.concatenate([b + 1, b]), np.concatenate([kv + max(req.input_tokens, 0), kv])
        )
        idx, ok = cheapest_rows(lat, en, np.full(2 * n, self.slo.itl_s * (1.0 - self.slo.margin)))
        rows = np.arange(2 * n)
        pick_l, pick_e = lat[rows, idx], en[rows, idx]
        i1, l1, e1 = idx[:n], pick_l[:n], pick_e[:n]
        # idle: the request's iterations replace idle time at the parked clock
        idle = b <= 0
        e0 = np.where(idle, self.idle_w * l1, pick_e[n:])
        f0 = np.where(idle, self.profile.min_clock_mhz, self._clock_arr[idx[n:]])
        # the others need the same number of iterations either way: each one now costs more
        added = (e1 - e0) * max(req.max_new_tokens, 1)
        t_max = lat[:n, -1]
        # a decode server reserves prompt + output tokens before it takes the KV: where they
        # do not fit next to what is in flight there, the request would wait for memory
        need = max(req.input_tokens, 0) + max(req.max_new_tokens, 0)
        fits = [
            v.kv_capacity_tokens is None or v.in_flight_tokens + need <= v.kv_capacity_tokens
            for v in views
        ]
        return [
            WhatIf(
                v.instance,
                bool(ok[j]) and fits[j],
                int(f0[j]),
                self.clocks[i1[j]],
                float(l1[j]),
                float(t_max[j]),
                float(added[j]),
                v.batch_size,
                fits[j],
            )
            for j, v in enumerate(views)
        ]

    # -- prefill ------------------------------------------------------------

    def _prefill_whatifs(
        self, views: list[InstanceView], req: RouteRequest, now: float
    ) -> list[WhatIf]:
        """Every prefill candidate at once: the request waits behind the queued tokens."""
        n = len(views)
        full = self.slo.ttft_s * (1.0 - self.slo.margin)
        q = np.array([max(v.queued_prefill_tokens, 0) for v in views], dtype=np.float64)
        wait = np.array([v.oldest_wait_s for v in views], dtype=np.float64)
        rows = np.arange(n)
        queued = q > 0
        new, hit = self._uncached_tokens(views, req)
        after = q + new
        if queued.any():
            # rows 0..n-1: the queue alone; rows n..2n-1: the queue and the request
            lat, en = self.profile.prefill_tables(np.concatenate([q, after]))
            en = en - self.idle_w * lat  # active energy above idle
            i0, _ = cheapest_rows(lat[:n], en[:n], full - wait)
            i0 = np.where(queued, i0, 0)
            e0 = np.where(queued, en[rows, i0], 0.0)
            lat1, en1 = lat[n:], en[n:]
            first: IndexArray | None = i0
        else:  # nothing queued anywhere: the request alone, from the parked clock up
            lat1, en1 = self.profile.prefill_tables(after)
            en1 = en1 - self.idle_w * lat1
            i0, e0, first = np.zeros(n, dtype=np.intp), np.zeros(n), None
        context = getattr(self.profile, "prefill_context_tables", None)
        if context is not None and hit.any():
            # the new tokens of a hit also attend to the cached ones (the profile's T x C term)
            xl, xe = context(new, hit)
            lat1, en1 = lat1 + xl, en1 + xe - self.idle_w * xl
        budget = np.full(n, full - max(now - req.arrival_t, 0.0))
        # the queue ahead still needs the clock it needed before: only clocks >= f0
        i1, ok1 = cheapest_rows(lat1, en1, budget, first=first)
        l1, added = lat1[rows, i1], en1[rows, i1] - e0
        t_max = lat1[:, -1]
        return [
            WhatIf(
                v.instance,
                bool(ok1[j]),
                self.clocks[i0[j]],
                self.clocks[i1[j]],
                float(l1[j]),
                float(t_max[j]),
                float(added[j]),
                int(q[j]),
            )
            for j, v in enumerate(views)
        ]

    def _uncached_tokens(
        self, views: list[InstanceView], req: RouteRequest
    ) -> tuple[FloatArray, FloatArray]:
        """(tokens to prefill, predicted cached tokens) of the request on each candidate."""
        n_in = max(req.input_tokens, 1)
        if not req.prefix_keys:
            return np.full(len(views), float(n_in)), np.zeros(len(views))
        names = [v.instance for v in views]
        self._prefill.update(names)
        blocks = np.array(self.tree.match_each(req.prefix_keys, names), dtype=np.float64)
        hit = np.minimum(blocks * req.prefix_block_tokens, n_in - 1)
        return n_in - hit, hit

    def on_dispatch(self, instance: str, request: RouteRequest, now: float) -> None:
        if request.prefix_keys and instance in self._prefill:
            self.tree.insert(request.prefix_keys, request.prefix_block_tokens, instance)
            lim = self._tree_limits
            if self._last_prune is None:
                self._last_prune = now
            elif now - self._last_prune >= lim.eviction_interval_secs:
                self._last_prune = now
                self.tree.evict_to(lim.max_tree_size)

    # -- policy -------------------------------------------------------------

    def evaluate(self, view: ClusterView, request: RouteRequest, now: float) -> list[WhatIf]:
        """The what-if of every healthy candidate (exposed for tests, replay and logs)."""
        return self._whatifs(healthy(view), request, now)

    def _whatifs(
        self, cands: list[InstanceView], request: RouteRequest, now: float
    ) -> list[WhatIf]:
        pre = [v for v in cands if v.role == "prefill"]
        dec = [v for v in cands if v.role != "prefill"]
        found = {
            w.instance: w
            for w in (self._prefill_whatifs(pre, request, now) if pre else [])
            + (self._decode_whatifs(dec, request) if dec else [])
        }
        return [found[v.instance] for v in cands]

    def pick(
        self, cands: list[InstanceView], request: RouteRequest, now: float, rng: np.random.Generator
    ) -> Selection:
        whatifs = self._whatifs(cands, request, now)
        ok = [w for w in whatifs if w.feasible]
        if ok:
            # round energy to 1 mJ so float noise does not beat the load tie-break
            # among equals, the smallest prefix tree: new conversations spread out (as
            # cache_aware's does) instead of piling up on the first instance by name
            size = self.tree.size
            pick = min(
                ok, key=lambda w: (round(w.added_energy_j, 3), w.load, size(w.instance), w.instance)
            )
            return Selection(
                pick.instance,
                f"what-if +{pick.added_energy_j:.3f}J clock {pick.clock_before_mhz}"
                f"->{pick.clock_after_mhz}MHz lat {pick.latency_after_s * 1e3:.1f}ms",
            )
        pick = min(whatifs, key=lambda w: (not w.kv_fits, w.latency_at_max_s, w.load, w.instance))
        return Selection(
            pick.instance,
            f"no candidate meets SLO; fastest at max {pick.latency_at_max_s * 1e3:.1f}ms",
        )
