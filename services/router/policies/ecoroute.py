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
from voltana.services.router.policies.ecoroute_rows import RowCache, answer, cheapest_rows

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
        # per-state clock tables, kept across requests (they depend on the state only)
        self._decode_rows = RowCache(self._decode_tables)
        self._prefill_rows = RowCache(self._prefill_tables)
        self._has_context = getattr(profile, "prefill_context_tables", None) is not None

    # -- decode -------------------------------------------------------------

    def _decode_tables(self, keys: list[tuple[int, int]]) -> tuple[FloatArray, FloatArray]:
        """(latency, energy) [len(keys), clock] of decode states (batch, KV tokens)."""
        arr = np.array(keys, dtype=np.float64)
        return self.profile.decode_tables(arr[:, 0], arr[:, 1])

    def _decode_whatifs(self, views: list[InstanceView], req: RouteRequest) -> list[WhatIf]:
        """Every decode candidate: batch b -> b+1, KV kv -> kv + input tokens."""
        budget = self.slo.itl_s * (1.0 - self.slo.margin)
        add_kv = max(req.input_tokens, 0)
        states = [(v.batch_size, v.kv_tokens_est) for v in views]
        n = len(views)
        # with the request, then as they are (both asked for, so bad states raise as before)
        keys = [(b + 1, kv + add_kv) for b, kv in states] + states
        rows = self._decode_rows.rows(keys)
        # the idle ones' rows as they are go unused: asked only of the busy ones
        asked = [j for j in range(n) if states[j][0] > 0]
        got = answer(rows[:n] + [rows[n + j] for j in asked], [budget] * (n + len(asked)))
        before = dict(zip(asked, got[n:], strict=True))
        tokens = max(req.max_new_tokens, 1)
        # a decode server reserves prompt + output tokens before it takes the KV: where they
        # do not fit next to what is in flight there, the request would wait for memory
        need = max(req.input_tokens, 0) + max(req.max_new_tokens, 0)
        out = []
        for j, v in enumerate(views):
            row1, (i1, ok) = rows[j], got[j]
            l1 = float(row1.lat[i1])
            if states[j][0] <= 0:  # idle: the request's iterations replace idle time
                e0, f0 = self.idle_w * l1, self.profile.min_clock_mhz
            else:
                row0, i0 = rows[n + j], before[j][0]
                e0, f0 = float(row0.en[i0]), self.clocks[i0]
            fits = v.kv_capacity_tokens is None or v.in_flight_tokens + need <= v.kv_capacity_tokens
            # the others need the same number of iterations either way: each one now costs more
            added = (float(row1.en[i1]) - e0) * tokens
            out.append(
                WhatIf(
                    v.instance,
                    ok and fits,
                    f0,
                    self.clocks[i1],
                    l1,
                    float(row1.lat[-1]),
                    added,
                    v.batch_size,
                    fits,
                )
            )
        return out

    # -- prefill ------------------------------------------------------------

    def _prefill_tables(
        self, keys: list[tuple[float, float, float]]
    ) -> tuple[FloatArray, FloatArray]:
        """(latency, active energy above idle) [len(keys), clock] of prefills of (tokens,
        new, cached): the new tokens of a hit also attend to the cached ones (the
        profile's T x C term, where it has one)."""
        arr = np.array(keys, dtype=np.float64)
        lat, en = self.profile.prefill_tables(arr[:, 0])
        en = en - self.idle_w * lat
        if self._has_context and (arr[:, 2] > 0).any():
            # rows without a hit add exact zeros (new tokens x 0 cached)
            context = self.profile.prefill_context_tables  # type: ignore[attr-defined]
            xl, xe = context(arr[:, 1], arr[:, 2])
            lat, en = lat + xl, en + xe - self.idle_w * xl
        return lat, en

    def _prefill_whatifs(
        self, views: list[InstanceView], req: RouteRequest, now: float
    ) -> list[WhatIf]:
        """Every prefill candidate: the request waits behind the queued tokens."""
        full = self.slo.ttft_s * (1.0 - self.slo.margin)
        qs = [max(v.queued_prefill_tokens, 0) for v in views]
        new, hit = self._uncached_tokens(views, req)
        after = [q + t for q, t in zip(qs, new, strict=True)]
        # rows of (tokens, new, cached): the queue alone, then the queue and the request
        if self._has_context and any(h > 0 for h in hit):
            after_keys = list(zip(after, new, hit, strict=True))
        else:
            after_keys = [(t, 0.0, 0.0) for t in after]
        queued = [j for j, q in enumerate(qs) if q > 0]
        rows = self._prefill_rows.rows([(float(qs[j]), 0.0, 0.0) for j in queued] + after_keys)
        # the queue alone, at the clock it needs within its own budget
        i0 = [0] * len(views)
        e0 = [0.0] * len(views)
        if queued:
            got = answer(rows[: len(queued)], [full - views[j].oldest_wait_s for j in queued])
            for j, row0, (i, _) in zip(queued, rows, got, strict=False):
                i0[j], e0[j] = i, float(row0.en[i])
        # the queue ahead still needs the clock it needed before: only clocks >= f0
        after_rows = rows[len(queued) :]
        budgets = [full - max(now - req.arrival_t, 0.0)] * len(views)
        after_answers = [
            (row, *a) for row, a in zip(after_rows, answer(after_rows, budgets, i0), strict=True)
        ]
        return [
            WhatIf(
                v.instance,
                ok,
                self.clocks[i0[j]],
                self.clocks[i1],
                float(row1.lat[i1]),
                float(row1.lat[-1]),
                float(row1.en[i1]) - e0[j],
                qs[j],
            )
            for j, (v, (row1, i1, ok)) in enumerate(zip(views, after_answers, strict=True))
        ]

    def _uncached_tokens(
        self, views: list[InstanceView], req: RouteRequest
    ) -> tuple[list[float], list[float]]:
        """(tokens to prefill, predicted cached tokens) of the request on each candidate."""
        n_in = max(req.input_tokens, 1)
        if not req.prefix_keys:
            return [float(n_in)] * len(views), [0.0] * len(views)
        names = [v.instance for v in views]
        self._prefill.update(names)
        blocks = self.tree.match_each(req.prefix_keys, names)
        hit = [min(float(b) * req.prefix_block_tokens, float(n_in - 1)) for b in blocks]
        return [n_in - h for h in hit], hit

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
