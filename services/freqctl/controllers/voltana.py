"""The project's controller: minimum predicted energy within the SLO budget, closed loop.

Past the published method (see docs/freqctl-core.md):

- picks the clock with the lowest predicted energy among those that fit the
  budget, over the whole clock table, counting energy the way the meter does:
  a decode instance runs back to back, so at a given token throughput a slower
  clock means fewer, larger iterations (Little's law: the batch grows until
  batch / ITL matches the throughput) and what matters is its steady-state
  power; a prefill instance that idles between bursts would spend time a
  faster prefill saves parked, so what matters there is the energy above the
  parked idle baseline, weighted by how often it is idle (a busy one spends
  the time on the next prompt: then it is the whole energy);
- corrects decode predictions online with a per-instance multiplicative EWMA
  of observed/predicted ITL, and scales each budget by SLO-slack feedback
  (tightened fast when observed latency exceeds the SLO, relaxed slowly);
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
from typing import NamedTuple

import msgspec
import numpy as np
import numpy.typing as npt
from voltana.predictor.profile import Profile
from voltana.schemas.config import ControllerConfig
from voltana.services.freqctl.controllers.base import (
    ControlDecision,
    ControlInput,
    ControllerCore,
    DecisionRule,
    FloatArray,
)
from voltana.services.freqctl.controllers.steady import DecodeSteadyState, SteadyDecode

__all__ = ["VoltanaController", "VoltanaTuning"]


class VoltanaTuning(msgspec.Struct, frozen=True, kw_only=True):
    """Feedback gains; the defaults suit telemetry every 50-200 ms.

    The slack scale works as a quantile tracker: it shrinks by ``slack_tighten``
    on each observation above the SLO itself and grows by ``slack_relax_step`` on
    each one below ``slack_relax_below`` x target (the SLO less its margin), so
    at equilibrium about one observation in ten exceeds the SLO. Observations
    inside the margin leave it alone: the margin is there to absorb them, and
    reacting to them too would pay for the same safety twice.
    """

    ewma_alpha: float = 0.3
    correction_min: float = 0.5
    correction_max: float = 3.0
    slack_tighten: float = 0.9
    slack_relax_step: float = 0.01
    slack_relax_below: float = 1.0
    slack_min: float = 0.5
    busy_alpha: float = 0.1
    """EWMA weight of each telemetry sample in the busy fraction (idle or not)."""
    flat_tol: float = 0.005
    steady_state_decode: bool = True
    """Judge decode clocks at the batch they settle at (see ``predict``); False: at the
    current batch, like EcoFreq."""
    prefill_queue_lookahead: bool = False
    """Prefill with a waiting queue: instead of the safe (fastest) clock, require the
    whole backlog (queued + running prompt tokens) to finish within the oldest
    request's remaining TTFT budget, and pick the cheapest clock that does."""


class _Pred(NamedTuple):
    """Predictions at every allowed clock (prefill energy: None on decode instances)."""

    dec_l: FloatArray
    pre_l: FloatArray
    cost: FloatArray
    pre_e: FloatArray | None


class _Plan(NamedTuple):
    """Predictions with the budgets they were judged against."""

    pred: _Pred
    itl_b: float
    pre_b: float
    fits: npt.NDArray[np.bool_]
    any_fit: bool


@dataclass(slots=True)
class _State:
    decode_correction: float = 1.0
    itl_scale: float = 1.0
    ttft_scale: float = 1.0
    last_obs_t: float = float("-inf")
    last_clock_mhz: int | None = None
    last_change_t: float = float("-inf")
    busy: float = 0.0
    """Fraction of recent telemetry samples with work in hand."""


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
        self._steady = DecodeSteadyState(profile, self.core.index)
        self._clock_pos = {int(c): i for i, c in enumerate(self.core.clocks)}
        self._zeros = np.zeros(len(self.core.index))
        self._zeros.flags.writeable = False

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
        st.busy += tu.busy_alpha * ((0.0 if core.is_idle(inp) else 1.0) - st.busy)
        itl = inp.observed_itl_s
        if itl is not None and itl > 0 and inp.role != "prefill":
            clock = inp.current_clock_mhz or st.last_clock_mhz
            if clock is not None and (inp.batch_size or 0) > 0:
                pred = core.profile.decode_latency_s(
                    clock, float(inp.batch_size or 0), float(inp.kv_tokens or 0)
                )
                ratio = min(max(itl / pred, tu.correction_min), tu.correction_max)
                st.decode_correction += tu.ewma_alpha * (ratio - st.decode_correction)
            st.itl_scale = self._slack(st.itl_scale, itl, core.itl_target_s, core.itl_slo_s)
        ttft = inp.observed_ttft_s
        if ttft is not None and ttft > 0 and inp.role != "decode":
            st.ttft_scale = self._slack(st.ttft_scale, ttft, core.ttft_target_s, core.ttft_slo_s)

    def _slack(self, scale: float, observed_s: float, target_s: float, slo_s: float) -> float:
        tu = self.tuning
        if observed_s > slo_s:
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
        prefill less the parked idle power over its duration, times the chance
        that the time saved is spent idle (1 - busy fraction) (J). A unified
        instance adds the prefill cost spread over the TTFT target.
        """
        p = self._predict(inp, st if st is not None else self.state_of(inp.instance))
        return p.dec_l, p.pre_l, p.cost

    def _predict(self, inp: ControlInput, st: _State) -> _Pred:
        core = self.core
        zeros = self._zeros
        dec_l, pre_l, cost, pre_e = zeros, zeros, zeros, None
        if inp.role != "prefill":
            dec_l, cost = self._decode_steady(inp, st)
        if inp.role != "decode":
            prof, idx = core.profile, core.index
            t = float(inp.prefill_tokens or 0.0)
            pre_l = prof.prefill_latency_table_s(t)[idx]
            pre_e = prof.prefill_energy_table_j(t)[idx]
            # Time a faster prefill saves is spent parked only as often as the
            # instance idles; otherwise it goes to the next prompt.
            extra = pre_e - (1.0 - st.busy) * self._idle_floor_w * pre_l
            cost = cost + (extra if inp.role == "prefill" else extra / core.ttft_target_s)
        return _Pred(dec_l, pre_l, cost, pre_e)

    def steady_decode(self, inp: ControlInput, st: _State | None = None) -> SteadyDecode:
        """The batch each allowed clock settles at for the current token throughput.

        Throughput comes from the current batch at the clock that runs it
        (``b0 / ITL(now)``); see :mod:`.steady`. Without a known current clock or
        batch, on unified instances (whose iterations mix in prefill chunks) and
        with ``steady_state_decode`` off, the current batch is assumed everywhere.
        """
        st = st if st is not None else self.state_of(inp.instance)
        b0, k0 = float(inp.batch_size or 0.0), float(inp.kv_tokens or 0.0)
        if not math.isfinite(b0) or not math.isfinite(k0):
            raise ValueError("batch_size and kv_tokens must be finite")
        cur = inp.current_clock_mhz if inp.current_clock_mhz is not None else st.last_clock_mhz
        itl_cur = None
        if cur is not None and b0 > 0 and inp.role == "decode" and self.tuning.steady_state_decode:
            itl_cur = self.core.profile.decode_latency_s(cur, b0, k0)
        return self._steady.solve(b0, k0, itl_cur)

    def _decode_steady(self, inp: ControlInput, st: _State) -> tuple[FloatArray, FloatArray]:
        """(corrected ITL, steady-state power) per clock; ITL is inf where unsustainable.

        ITL is judged at the larger of the current batch and the settled one, and a
        batch that grows grows to the next whole request: it never assumes the
        batch shrinks before it has.
        """
        b0 = float(inp.batch_size or 0.0)
        ss = self.steady_decode(inp, st)
        b, now = ss.batch, ss.itl_now_s
        finite = np.isfinite(b)
        grown = finite & (b > b0)
        if grown.any():
            b_eff = np.where(grown, np.maximum(np.ceil(b - 1e-9), b0), b0)
            # A larger batch is never faster at the same clock, whatever two bucket fits say.
            later = np.maximum(ss.seg_slope * b_eff + ss.seg_const, now)
            itl = np.where(grown, later, now)
        else:
            itl = now
        lat = st.decode_correction * itl
        if not finite.all():
            lat = np.where(finite, lat, np.inf)
        return lat, ss.power_w

    def _power_w(self, inp: ControlInput, i: int, pre: _Pred) -> float:
        """Predicted instance power while running the current work at allowed clock ``i``."""
        p = 0.0
        if inp.role != "prefill" and (inp.batch_size or 0) > 0:
            b, k = float(inp.batch_size or 0), float(inp.kv_tokens or 0)
            p = self._steady.power_now_w(i, b, k)
        if pre.pre_e is not None and (inp.prefill_tokens or 0) > 0:
            p = max(p, float(pre.pre_e[i] / pre.pre_l[i]))
        return p or self._steady.idle_w(i)

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
        pred = self._predict(inp, st)
        dec_l, pre_l, energy = pred.dec_l, pred.pre_l, pred.cost
        itl_b, pre_b = core.budgets(inp, st.itl_scale, st.ttft_scale)
        if inp.role == "decode":  # no prefill part: its latency is 0, its budget inf
            fits, lat = dec_l <= itl_b, dec_l
        elif inp.role == "prefill":
            fits, lat = pre_l <= pre_b, pre_l
        else:
            fits, lat = (dec_l <= itl_b) & (pre_l <= pre_b), np.maximum(dec_l, pre_l)
        plan = _Plan(pred, itl_b, pre_b, fits, bool(fits.any()))
        lookahead = self.tuning.prefill_queue_lookahead and inp.role == "prefill"
        if inp.queue_reqs and not lookahead:
            i = self._fastest(lat, energy)
            return self._finish(
                inp, st, now, i, plan, "queue", f"{inp.queue_reqs} requests waiting: fastest clock"
            )
        if plan.any_fit:
            i = int(np.where(fits, energy, np.inf).argmin())
            why = "lowest predicted energy within budget"
            if inp.queue_reqs:
                why += f" (whole backlog of {inp.queue_reqs} queued)"
            return self._finish(inp, st, now, i, plan, "feasible", why)
        i = self._fastest(lat, energy)
        return self._finish(inp, st, now, i, plan, "infeasible", "no clock fits: fastest clock")

    def _finish(
        self,
        inp: ControlInput,
        st: _State,
        now: float,
        i_target: int,
        plan: _Plan | None,
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
            ic = self._clock_pos.get(cur)
            if ic is not None:
                cur_ok = bool(plan.fits[ic]) if plan is not None else True
                raise_needed = target > cur and not cur_ok
                small = abs(target - cur) < cfg.hysteresis_mhz
                dwelling = now - st.last_change_t < cfg.min_dwell_s
                if plan is not None and not plan.any_fit:
                    cur_ok = False  # nothing fits: go where the target says (fastest)
                if cur_ok and not raise_needed and (small or dwelling):
                    i, rule = ic, "hold"
                    why = f"hold {cur} MHz (target {target} MHz: " + (
                        "within hysteresis)" if small else "minimum dwell)"
                    )
        clock = int(clocks[i])
        self._applied(st, clock, now)
        if plan is None:
            return ControlDecision(
                clock_mhz=clock,
                rule=rule,
                reason=why,
                predicted_latency_s=0.0,
                predicted_power_w=self._steady.idle_w(i),
            )
        pred = plan.pred
        d_lat = float(pred.dec_l[i])
        if not math.isfinite(d_lat):  # the load outgrows every clock: report the next iteration
            d_lat = st.decode_correction * core.profile.decode_latency_s(
                clock, float(inp.batch_size or 0), float(inp.kv_tokens or 0)
            )
        lat = core.latency_for_report(inp, d_lat, float(pred.pre_l[i]))
        budget = core.budget_for_report(inp, plan.itl_b, plan.pre_b)
        power = self._power_w(inp, i, pred)
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
