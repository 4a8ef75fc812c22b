"""The project's controller: minimum predicted energy within the SLO budget, closed loop.

Past the published method (see docs/freqctl-core.md):

- picks the clock with the lowest predicted energy among those that fit the
  budget, over the whole clock table, counting energy the way the meter does:
  a decode instance runs back to back, so at a given token throughput a slower
  clock means fewer, larger iterations (Little's law: the batch grows until
  batch / ITL matches the throughput) and what matters is its steady-state
  power; a prefill instance idles between bursts, so what matters is the
  energy above the parked idle baseline;
- corrects decode predictions online with a per-instance multiplicative EWMA
  of observed/predicted ITL, and scales each budget by SLO-slack feedback
  (tightened fast when observed latency exceeds its target, relaxed slowly);
- parks an idle instance at the lowest clock at once and wakes it at the
  first sign of work (raises are never delayed);
- damps lowering with hysteresis and a minimum dwell, never holding a clock
  predicted to miss the budget;
- knows the power cap: when speed is what is needed (queue, no clock fits) it
  takes the lowest-energy clock among those within ``flat_tol`` of the fastest
  predicted latency, since clocks above the power-capped effective clock buy
  nothing.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from voltana.schemas.config import ControllerConfig
from voltana.services.freqctl.controllers.base import (
    ControlDecision,
    ControlInput,
    ControllerCore,
    DecisionRule,
    FloatArray,
)
from voltana.services.freqctl.profile import Profile

__all__ = ["VoltanaController", "VoltanaTuning"]


@dataclass(frozen=True, slots=True)
class VoltanaTuning:
    """Feedback gains; the defaults suit telemetry every 50-200 ms.

    The slack scale works as a quantile tracker: it shrinks by ``slack_tighten``
    on each observation above the target and grows by ``slack_relax_step`` on
    each one below ``slack_relax_below`` x target, so at equilibrium about one
    observation in ten exceeds the target (which already holds the SLO margin).
    """

    ewma_alpha: float = 0.3
    correction_min: float = 0.5
    correction_max: float = 3.0
    slack_tighten: float = 0.9
    slack_relax_step: float = 0.01
    slack_relax_below: float = 1.0
    slack_min: float = 0.5
    flat_tol: float = 0.005
    steady_state_decode: bool = True
    """Judge decode clocks at the batch they settle at (see ``predict``); False: at the
    current batch, like EcoFreq."""
    steady_state_iters: int = 10
    prefill_queue_lookahead: bool = False
    """Prefill with a waiting queue: instead of the safe (fastest) clock, require the
    whole backlog (queued + running prompt tokens) to finish within the oldest
    request's remaining TTFT budget, and pick the cheapest clock that does."""


@dataclass(slots=True)
class _State:
    decode_correction: float = 1.0
    itl_scale: float = 1.0
    ttft_scale: float = 1.0
    last_obs_t: float = float("-inf")
    last_clock_mhz: int | None = None
    last_change_t: float = float("-inf")


class VoltanaController:
    """Energy-minimising, SLO-bounded clock controller with online correction.

    Args:
        config: SLO, clock range, hysteresis (MHz), minimum dwell (s), staleness.
        profile: the fitted predictor.
        tuning: feedback gains.
    """

    name = "voltana"

    def __init__(
        self, config: ControllerConfig, profile: Profile, tuning: VoltanaTuning | None = None
    ) -> None:
        self.core = ControllerCore(config, profile)
        self.tuning = tuning or VoltanaTuning()
        self._state: dict[str, _State] = {}
        self._idle_floor_w = profile.idle_power_w(self.core.floor_clock_mhz)
        # Decode coefficients of every bucket at the allowed clocks, one flat array per
        # column ([bucket * n + clock]), so the steady-state solver looks a bucket up per
        # clock with one ``take`` instead of a [n, 6] fancy index (same values).
        n = len(self.core.index)
        rows = [
            profile.decode_coef_rows(np.full(n, float(bk)), self.core.index)
            for bk in profile.buckets
        ]
        self._coef_cols = tuple(np.concatenate([r[:, j] for r in rows]) for j in range(6))
        self._itl_cols = self._coef_cols[:3]
        self._idle_w = profile.idle_power_table_w()[self.core.index]
        self._bucket_arr = np.array(profile.buckets, dtype=np.float64)
        self._clock_pos = np.arange(n, dtype=np.int64)

    def reset(self) -> None:
        self._state.clear()

    def state_of(self, instance: str) -> _State:
        st = self._state.get(instance)
        if st is None:
            st = self._state[instance] = _State()
        return st

    # -- feedback -----------------------------------------------------------------------

    def _observe(self, st: _State, inp: ControlInput) -> None:
        """Fold the input's observed latencies into the corrections, once per telemetry."""
        if inp.t <= st.last_obs_t:
            return
        st.last_obs_t = inp.t
        tu, core = self.tuning, self.core
        itl = inp.observed_itl_s
        if itl is not None and itl > 0 and inp.role != "prefill":
            clock = inp.current_clock_mhz or st.last_clock_mhz
            if clock is not None and (inp.batch_size or 0) > 0:
                pred = core.profile.decode_latency_s(
                    clock, float(inp.batch_size or 0), float(inp.kv_tokens or 0)
                )
                ratio = min(max(itl / pred, tu.correction_min), tu.correction_max)
                st.decode_correction += tu.ewma_alpha * (ratio - st.decode_correction)
            st.itl_scale = self._slack(st.itl_scale, itl, core.itl_target_s)
        ttft = inp.observed_ttft_s
        if ttft is not None and ttft > 0 and inp.role != "decode":
            st.ttft_scale = self._slack(st.ttft_scale, ttft, core.ttft_target_s)

    def _slack(self, scale: float, observed_s: float, target_s: float) -> float:
        tu = self.tuning
        if observed_s > target_s:
            return max(tu.slack_min, scale * tu.slack_tighten)
        if observed_s < tu.slack_relax_below * target_s:
            return min(1.0, scale + tu.slack_relax_step)
        return scale

    # -- decision -----------------------------------------------------------------------

    def _fastest(self, lat: FloatArray, energy: FloatArray) -> int:
        """Lowest-energy clock among those within ``flat_tol`` of the fastest latency."""
        if not np.isfinite(lat).any():
            return len(lat) - 1  # no clock sustains the load: the top one
        near = lat <= float(lat.min()) * (1.0 + self.tuning.flat_tol)
        e = np.where(near, energy, np.inf)
        return int(np.argmin(e))  # ties: the lowest such clock

    def predict(
        self, inp: ControlInput, st: _State | None = None
    ) -> tuple[FloatArray, FloatArray, FloatArray]:
        """(decode latency, prefill latency, energy cost) at every allowed clock.

        Decode latency is the corrected ITL at the larger of the current batch
        and the steady-state batch a clock would settle at (infinite where the
        clock cannot sustain the current throughput); the decode cost is the
        steady-state power (W). The prefill cost is the energy of the pending
        prefill above the parked idle power over its duration (J). A unified
        instance adds the prefill cost spread over the TTFT target.
        """
        core = self.core
        st = st if st is not None else self.state_of(inp.instance)
        prof, idx = core.profile, core.index
        n = len(idx)
        dec_l, pre_l, cost = np.zeros(n), np.zeros(n), np.zeros(n)
        if inp.role != "prefill":
            dec_l, cost = self._decode_steady(inp, st)
        if inp.role != "decode":
            t = float(inp.prefill_tokens or 0.0)
            pre_l = prof.prefill_latency_table_s(t)[idx]
            extra = prof.prefill_energy_table_j(t)[idx] - self._idle_floor_w * pre_l
            cost = cost + (extra if inp.role == "prefill" else extra / core.ttft_target_s)
        return dec_l, pre_l, cost

    def _decode_steady(self, inp: ControlInput, st: _State) -> tuple[FloatArray, FloatArray]:
        core = self.core
        prof, idx = core.profile, core.index
        b0, k0 = float(inp.batch_size or 0.0), float(inp.kv_tokens or 0.0)
        kv_per = k0 / b0 if b0 > 0 else 0.0
        corr = st.decode_correction
        b_ss = self._steady_batch(inp, st, b0, k0, kv_per)
        ok = np.isfinite(b_ss)
        b_ss = np.where(ok, np.maximum(b_ss, min(b0, 1.0)), b0)
        # Batches are whole requests: a batch that grows grows to the next integer.
        # ... and never assume it shrinks before it has.
        b_eff = np.where(b_ss > b0, np.maximum(np.ceil(b_ss - 1e-9), b0), b0)
        if not math.isfinite(b0):  # what decode_coef_rows would refuse
            raise ValueError("batch_sizes must be finite")
        c = self._coef_cols
        at = self._rows_at(b_eff)
        lat = corr * np.maximum(
            c[0].take(at) * b_eff + c[1].take(at) * kv_per * b_eff + c[2].take(at), 1e-6
        )
        # A larger batch is never faster at the same clock, whatever two bucket fits say.
        lat = np.maximum(lat, corr * prof.decode_latency_table_s(b0, k0)[idx])
        at = self._rows_at(b_ss)
        lat_ss = np.maximum(
            c[0].take(at) * b_ss + c[1].take(at) * kv_per * b_ss + c[2].take(at), 1e-6
        )
        en_ss = np.maximum(
            c[3].take(at) * b_ss + c[4].take(at) * kv_per * b_ss + c[5].take(at),
            self._idle_w * lat_ss,
        )
        return np.where(ok, lat, np.inf), en_ss / lat_ss

    def _rows_at(self, b: FloatArray) -> npt.NDArray[np.intp]:
        """Flat positions in ``_coef_cols`` of ``decode_coef_rows(b, index)``'s rows.

        The bucket of ceil(b) at each allowed clock; its max(1, .) is left out: buckets
        are >= 1, so searchsorted maps any size <= 1 to the first bucket either way.
        """
        pos = self._clock_pos
        bi = np.minimum(self._bucket_arr.searchsorted(np.ceil(b)), len(self._bucket_arr) - 1)
        at: npt.NDArray[np.intp] = bi * len(pos) + pos
        return at

    def _steady_batch(
        self, inp: ControlInput, st: _State, b0: float, k0: float, kv_per: float
    ) -> FloatArray:
        """Batch size each clock settles at for the current token throughput (inf: never).

        Throughput comes from the current batch at the clock that ran it:
        ``rate = b0 / ITL(now)``; at clock f the batch solves ``B = rate * ITL(f, B)``,
        found by bisection (ITL grows with B). Without a known current clock or
        batch, and on unified instances (whose iterations mix in prefill chunks),
        the current batch is assumed everywhere.
        """
        core = self.core
        n = len(core.index)
        cur = inp.current_clock_mhz if inp.current_clock_mhz is not None else st.last_clock_mhz
        if cur is None or b0 <= 0 or inp.role != "decode" or not self.tuning.steady_state_decode:
            return np.full(n, b0)
        corr = st.decode_correction
        rate = b0 / (corr * core.profile.decode_latency_s(cur, b0, k0))
        cap = max(float(core.profile.buckets[-1]), 2.0 * b0)
        c0, c1, c2 = self._itl_cols
        c1 = c1 * kv_per  # the same products as c1[at] * kv_per, taken once per call
        bkt, pos, last = self._bucket_arr, self._clock_pos, len(self._bucket_arr) - 1

        def excess(b: FloatArray) -> FloatArray:
            # decode_coef_rows(b, index) column by column: the bucket of ceil(b). Its
            # max(1, .) is left out: buckets are >= 1, so searchsorted maps any size
            # <= 1 to the first bucket either way.
            at = np.minimum(bkt.searchsorted(np.ceil(b)), last) * n + pos
            itl = np.maximum(c0.take(at) * b + c1.take(at) * b + c2.take(at), 1e-6)
            return rate * (corr * itl) - b

        # Bracket the root on the right side of the current batch, so a clock at least
        # as fast as the current one never gets a (rounded-up) larger batch than now.
        grows = excess(np.full(n, b0)) > 1e-9 * b0
        lo = np.where(grows, b0, 0.0)
        hi = np.where(grows, cap, b0)
        ok = ~grows
        if grows.any():
            # ITL is piecewise linear in B (one piece per bucket, steps between): the
            # first point past b0 where the batch stops growing brackets the root.
            pts = [b0]
            for bk in core.profile.buckets:
                if b0 < bk < cap:
                    pts += [float(bk), bk + 1e-6]
            pts.append(cap)
            grid = np.array(pts)
            gi = np.minimum(bkt.searchsorted(np.ceil(grid)), last)
            at2 = (gi * n)[:, None] + pos
            bb = grid[:, None]
            itl2 = np.maximum(c0[at2] * bb + c1[at2] * bb + c2[at2], 1e-6)
            ex = rate * (corr * itl2) - bb
            stop = ex <= 0
            found = stop.any(axis=0)
            first = np.argmax(stop, axis=0)
            ok = ok | (grows & found)
            j = np.maximum(first, 1)
            lo = np.where(grows & found, grid[j - 1], lo)
            hi = np.where(grows & found, grid[j], hi)
        for _ in range(self.tuning.steady_state_iters):
            mid = 0.5 * (lo + hi)
            up = excess(mid) > 0
            lo = np.where(up, mid, lo)
            hi = np.where(up, hi, mid)
        return np.where(ok, hi, np.inf)

    def _power_w(self, inp: ControlInput, i: int) -> float:
        """Predicted instance power while running the current work at allowed clock ``i``."""
        prof = self.core.profile
        clock = int(self.core.clocks[i])
        p = 0.0
        if inp.role != "prefill" and (inp.batch_size or 0) > 0:
            b, k = float(inp.batch_size or 0), float(inp.kv_tokens or 0)
            p = max(p, prof.decode_power_w(clock, b, k))
        if inp.role != "decode" and (inp.prefill_tokens or 0) > 0:
            p = max(p, prof.prefill_power_w(clock, float(inp.prefill_tokens or 0)))
        return p or prof.idle_power_w(clock)

    def decide(self, inp: ControlInput, now: float) -> ControlDecision:
        core = self.core
        st = self.state_of(inp.instance)
        safe = core.fail_safe(inp, now)
        if safe is not None:
            self._applied(st, safe.clock_mhz, now)
            return safe
        self._observe(st, inp)
        if core.is_idle(inp):
            i_target = 0
            return self._finish(inp, st, now, i_target, None, "idle", "idle: park at lowest clock")
        dec_l, pre_l, energy = self.predict(inp, st)
        itl_b, pre_b = core.budgets(inp, st.itl_scale, st.ttft_scale)
        fits = (dec_l <= itl_b) & (pre_l <= pre_b)
        pred = (dec_l, pre_l, energy, itl_b, pre_b, fits)
        lat = np.maximum(dec_l, pre_l) if inp.role == "unified" else dec_l + pre_l
        lookahead = self.tuning.prefill_queue_lookahead and inp.role == "prefill"
        if inp.queue_reqs and not lookahead:
            i = self._fastest(lat, energy)
            return self._finish(
                inp, st, now, i, pred, "queue", f"{inp.queue_reqs} requests waiting: fastest clock"
            )
        if fits.any():
            i = int(np.argmin(np.where(fits, energy, np.inf)))
            why = "lowest predicted energy within budget"
            if inp.queue_reqs:
                why += f" (whole backlog of {inp.queue_reqs} queued)"
            return self._finish(inp, st, now, i, pred, "feasible", why)
        i = self._fastest(lat, energy)
        return self._finish(inp, st, now, i, pred, "infeasible", "no clock fits: fastest clock")

    def _finish(
        self,
        inp: ControlInput,
        st: _State,
        now: float,
        i_target: int,
        pred: tuple[FloatArray, FloatArray, FloatArray, float, float, FloatArray] | None,
        rule: DecisionRule,
        why: str,
    ) -> ControlDecision:
        """Apply hysteresis and dwell to the target, then build the decision."""
        core, cfg = self.core, self.core.config
        clocks = core.clocks
        target = int(clocks[i_target])
        cur = inp.current_clock_mhz if inp.current_clock_mhz is not None else st.last_clock_mhz
        i = i_target
        # A queue is served at once; an idle instance parks at once (parking is free to
        # undo: the first sign of work raises the clock at the next decision).
        if cur is not None and cur != target and rule not in ("queue", "idle"):
            hits = np.nonzero(clocks == cur)[0]
            if len(hits):
                ic = int(hits[0])
                cur_ok = bool(pred[5][ic]) if pred is not None else True
                raise_needed = target > cur and not cur_ok
                small = abs(target - cur) < cfg.hysteresis_mhz
                dwelling = now - st.last_change_t < cfg.min_dwell_s
                if pred is not None and not pred[5].any():
                    cur_ok = False  # nothing fits: go where the target says (fastest)
                if cur_ok and not raise_needed and (small or dwelling):
                    i, rule = ic, "hold"
                    why = f"hold {cur} MHz (target {target} MHz: " + (
                        "within hysteresis)" if small else "minimum dwell)"
                    )
        clock = int(clocks[i])
        self._applied(st, clock, now)
        if pred is None:
            return ControlDecision(
                clock_mhz=clock,
                rule=rule,
                reason=why,
                predicted_latency_s=0.0,
                predicted_power_w=core.profile.idle_power_w(clock),
            )
        dec_l, pre_l, _cost, itl_b, pre_b, _fits = pred
        d_lat = float(dec_l[i])
        if not np.isfinite(d_lat):  # the load outgrows every clock: report the next iteration
            d_lat = st.decode_correction * core.profile.decode_latency_s(
                clock, float(inp.batch_size or 0), float(inp.kv_tokens or 0)
            )
        lat = core.latency_for_report(inp, d_lat, float(pre_l[i]))
        budget = core.budget_for_report(inp, itl_b, pre_b)
        power = self._power_w(inp, i)
        eff = core.profile.prefill_effective_clock_mhz(clock) if inp.role != "decode" else clock
        cap = f"; effective ~{eff:.0f} MHz (power cap)" if eff < clock - 15 else ""
        return ControlDecision(
            clock_mhz=clock,
            rule=rule,
            reason=f"{why}: {lat * 1e3:.2f} ms vs {budget * 1e3:.2f} ms{cap}",
            predicted_latency_s=lat,
            budget_s=budget,
            predicted_power_w=power,
        )

    @staticmethod
    def _applied(st: _State, clock: int, now: float) -> None:
        if clock != st.last_clock_mhz:
            st.last_clock_mhz = clock
            st.last_change_t = now
