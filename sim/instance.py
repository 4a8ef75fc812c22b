"""One simulated serving instance: the shared engine, the ground-truth GPU, its clock and meters.

The scheduler (``groundtruth.engine.Engine``), the GPU model
(``groundtruth.gpu_model.GpuModel``) and the mid-iteration re-timing
(``groundtruth.timing``) are the very ones the emulated worker uses; this class
only paces them in virtual time and keeps the books: energy of every GPU of the
TP group (busy and idle), busy time, clock switches, and the latency
observations telemetry would report.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
from voltana.groundtruth.default_clock import default_idle_energy_j, default_idle_power_w
from voltana.groundtruth.engine import BatchPlan, EngineConfig, Phase, iteration_cost
from voltana.groundtruth.gpu_model import MODELS, GpuModel
from voltana.groundtruth.mixed import make_engine
from voltana.groundtruth.timing import Stretch, retime
from voltana.schemas.base import Role
from voltana.services.freqctl.controllers.base import ControlInput
from voltana.services.freqctl.core import control_input
from voltana.sim.metrics import TimeSeries
from voltana.sim.workload import Workload

if TYPE_CHECKING:
    from voltana.sim.config import SimConfig

__all__ = ["Instance", "IterationRun", "prefix_tokens"]


@dataclass(slots=True)
class IterationRun:
    """An iteration in flight: what runs, when it ends, and what it costs (instance totals).

    ``stretch`` is the run since the last clock change (instance energy), so a
    change that lands mid-iteration re-times the rest (``groundtruth.timing``).
    """

    plan: BatchPlan
    t_start: float
    t_end: float
    energy_j: float
    clock_mhz: int
    power_w: float
    stretch: Stretch


class Instance:
    """A prefill or decode instance of ``tp`` GPUs.

    Args:
        name: instance id (used by routing policies and controllers).
        role: ``prefill`` or ``decode``.
        engine_config: the scheduler's knobs.
        model: ground-truth GPU model of this instance (own noise stream).
        start_clock_mhz: the clock the GPUs hold at t = 0.
        series_min_dt_s: decimation of the recorded time series.
    """

    def __init__(
        self,
        name: str,
        role: str,
        engine_config: EngineConfig,
        model: GpuModel,
        start_clock_mhz: int,
        *,
        series_min_dt_s: float = 0.05,
        observed_window_s: float = 1.0,
    ) -> None:
        self.name = name
        self.role = role
        self.engine = make_engine(engine_config)
        self.model = model
        self.tp = model.tp
        self.clock_mhz = start_clock_mhz
        self.pending: tuple[float, int] | None = None  # (t effective, clock)
        self.running: IterationRun | None = None
        self.idle_since = 0.0
        # default clocks (no lock): idle power follows the driver's hold and decay from the
        # end of the last iteration (idle long before the first one: at the floor after a
        # finite hold; with the GPUs' unbounded hold at the held clock, as after start-up work)
        self.unlocked = False
        self.went_idle_s = -1e9
        self.energy_j = 0.0
        self.busy_s = 0.0
        self.switches = 0
        self.iterations = 0
        self.series = TimeSeries()
        self._series_min_dt = series_min_dt_s
        self._last_series_t = -1e9
        self._last_sample_busy = False
        self.last_iter_end = -1.0
        # latency observations (t, value, weight) for telemetry windows
        self._obs_window_s = observed_window_s
        self._itl_obs: deque[tuple[float, float, int]] = deque()
        self._ttft_obs: deque[tuple[float, float, int]] = deque()
        self._itl_sum = [0.0, 0.0]
        self._ttft_sum = [0.0, 0.0]
        self.last_decision_rule = ""
        self.static_decided = False
        self.obs_t = 0.0
        self.obs_itl_s: float | None = None
        self.obs_ttft_s: float | None = None

    # ----- clocks and energy --------------------------------------------------------
    def _set_clock(self, t: float, clock_mhz: int) -> None:
        if clock_mhz == self.clock_mhz:
            return
        if self.running is None:  # idle: close the idle segment at the old clock
            self.accrue_idle(t)
        self.clock_mhz = clock_mhz
        self.switches += 1
        self._sample(t, self.idle_power_w() if self.running is None else None, force=True)

    def command_clock(self, t_effective: float, clock_mhz: int) -> None:
        """A clock decision that takes effect at ``t_effective`` (replaces any pending one)."""
        if clock_mhz == self.clock_mhz:
            self.pending = None
        elif self.pending is None or self.pending[1] != clock_mhz:
            self.pending = (t_effective, clock_mhz)

    def apply_pending(self, t: float) -> None:
        """Apply a pending clock change due at or before ``t``."""
        if self.pending is not None and self.pending[0] <= t:
            t_c, c = self.pending
            self.pending = None
            self._set_clock(max(t_c, self.idle_since) if self.running is None else t, c)

    def idle_power_w(self) -> float:
        if self.unlocked:
            age = self.idle_since - self.went_idle_s
            return default_idle_power_w(self.model.gpu, age) * self.tp
        return self.model.idle_power_w(self.clock_mhz) * self.tp

    def set_unlocked(self, t: float, unlocked: bool) -> None:
        """Default clocks (no lock: the driver boosts under load and decays when idle) or a lock."""
        if unlocked != self.unlocked:
            if self.running is None:
                self.accrue_idle(t)
            self.unlocked = unlocked

    def accrue_idle(self, t: float) -> None:
        """Idle energy from ``idle_since`` to ``t`` at the current clock (or, unlocked, as the
        driver's idle clock decays)."""
        if t > self.idle_since:
            if self.unlocked:
                age0, age1 = self.idle_since - self.went_idle_s, t - self.went_idle_s
                e = default_idle_energy_j(self.model.gpu, age0, age1)
                self.energy_j += e * self.tp
            else:
                self.energy_j += self.idle_power_w() * (t - self.idle_since)
            self.idle_since = t

    # ----- iterations -----------------------------------------------------------------
    def start_iteration(
        self,
        t: float,
        chooser: Callable[[Instance, BatchPlan, float], int] | None = None,
        on_planned: Callable[[Instance, float], None] | None = None,
    ) -> IterationRun | None:
        """Plan and cost the next iteration starting at ``t``; None when idle.

        A clock change that lands mid-iteration is honoured: the part of the work
        done before it runs at the old clock, the rest at the new one.
        ``chooser`` (the oracle) sets the clock for this very plan, without lag;
        ``on_planned`` (the per-iteration controller) is called once the batch is
        formed (or found empty), as an in-engine controller runs after the
        scheduler picked the batch.
        """
        assert self.running is None
        self.apply_pending(t)
        plan = self.engine.next_batch(t)
        if on_planned is not None:
            on_planned(self, t)
        if plan is None:
            if self._last_sample_busy:  # the series shows the idle stretch from here
                self._sample(t, None, force=True)
            return None
        self.accrue_idle(t)
        if chooser is not None:
            self.pending = None
            self._set_clock(t, chooser(self, plan, t))
        cost = iteration_cost(self.model, plan, self.clock_mhz)
        dur, energy = cost.time_s, cost.energy_j * self.tp
        stretch = Stretch(t, 1.0, dur, energy)
        if self.pending is not None and self.pending[0] < t + dur:
            t_c, new_clock = self.pending
            cost = iteration_cost(self.model, plan, new_clock)
            stretch = retime(stretch, t_c, cost.time_s, cost.energy_j * self.tp)
            energy = stretch.energy_j
            # old clock until t_c, then the rest at the new one; summed as a duration (not
            # stretch.end_s - t) so that t_end and power_w round as they always have
            dur = (t_c - t) + stretch.rest_s
            self.pending = None
            self.clock_mhz = new_clock
            self.switches += 1
        run = IterationRun(plan, t, t + dur, energy, self.clock_mhz, energy / dur, stretch)
        self.running = run
        return run

    def retime(self, t: float) -> bool:
        """Apply a clock change due by ``t`` to the iteration in flight (True: it now ends
        at a new time). The work left runs at the new clock from the change on."""
        run = self.running
        if run is None or self.pending is None or self.pending[0] > t:
            return False
        t_c, new_clock = self.pending
        if t_c >= run.t_end:
            return False  # lands after this iteration: the next one starts at it
        self.pending = None
        if new_clock == self.clock_mhz:
            return False
        cost = iteration_cost(self.model, run.plan, new_clock)
        stretch = run.stretch = retime(run.stretch, t_c, cost.time_s, cost.energy_j * self.tp)
        run.t_end = stretch.end_s
        run.energy_j = stretch.energy_j
        run.power_w = run.energy_j / (run.t_end - run.t_start)
        run.clock_mhz = self.clock_mhz = new_clock
        self.switches += 1
        self._sample(stretch.start_s, run.power_w, batch=run.plan.batch_size, force=True)
        return True

    def finish_iteration(self) -> IterationRun:
        """Book the iteration in flight; the instance becomes idle at its end."""
        run = self.running
        assert run is not None
        self.running = None
        self.energy_j += run.energy_j
        self.busy_s += run.t_end - run.t_start
        self.idle_since = self.went_idle_s = run.t_end
        self.iterations += 1
        self._sample(run.t_start, run.power_w, batch=run.plan.batch_size)
        return run

    def _sample(
        self, t: float, power_w: float | None, *, batch: int = 0, force: bool = False
    ) -> None:
        if force or t - self._last_series_t >= self._series_min_dt:
            p = self.idle_power_w() if power_w is None else power_w
            self.series.add(t, self.clock_mhz, p, batch)
            self._last_series_t = t
            self._last_sample_busy = power_w is not None and batch > 0

    def close(self, t_end: float) -> None:
        """Account idle energy up to the end of the window."""
        if self.running is None:
            self.apply_pending(t_end)
            self.accrue_idle(t_end)
        self._sample(t_end, None if self.running is None else self.running.power_w, force=True)

    # ----- telemetry ------------------------------------------------------------------
    def observe_itl(self, t: float, gap_s: float, count: int) -> None:
        self._itl_obs.append((t, gap_s * count, count))
        self._itl_sum[0] += gap_s * count
        self._itl_sum[1] += count

    def observe_ttft(self, t: float, ttft_s: float) -> None:
        self._ttft_obs.append((t, ttft_s, 1))
        self._ttft_sum[0] += ttft_s
        self._ttft_sum[1] += 1

    def _window_mean(
        self, obs: deque[tuple[float, float, int]], sums: list[float], t: float
    ) -> float | None:
        """Mean of the observations in (t - window, t], with running sums."""
        lo = t - self._obs_window_s
        while obs and obs[0][0] < lo:
            _, v, n = obs.popleft()
            sums[0] -= v
            sums[1] -= n
        if not obs:
            sums[0] = sums[1] = 0.0  # no drift from float round-off
            return None
        return sums[0] / sums[1]

    def sample_observations(self, t: float) -> None:
        """A telemetry sample at ``t``: the latency windows controllers will see until the next."""
        self.obs_t = t
        self.obs_itl_s = self._window_mean(self._itl_obs, self._itl_sum, t)
        self.obs_ttft_s = self._window_mean(self._ttft_obs, self._ttft_sum, t)

    def control_input(self, t: float, obs_t: float | None = None) -> ControlInput:
        """The engine state at ``t`` as a controller input.

        Observed latencies come from the latest telemetry sample when ``obs_t`` is
        given (then ``ControlInput.t`` is that sample's time, so controllers fold
        each observation once, as they do on the bus); else from a window ending at ``t``.
        """
        waiting = running = 0
        prefill_tokens = 0
        oldest = None
        decode_kv = 0
        for r in self.engine.requests.values():
            ph = r.phase
            if ph is Phase.RUNNING:
                running += 1
                decode_kv += r.prefilled_tokens + r.generated_tokens
            elif ph is Phase.WAITING:
                waiting += 1
                if self.role != "decode":
                    prefill_tokens += r.prompt_tokens
                    oldest = r.arrival_s if oldest is None else min(oldest, r.arrival_s)
            elif ph is Phase.PREFILLING:
                running += 1
                prefill_tokens += r.prompt_tokens - r.prefilled_tokens
                oldest = r.arrival_s if oldest is None else min(oldest, r.arrival_s)
        is_decode = self.role == "decode"
        has_itl = self.role != "prefill"  # decode and unified instances emit tokens
        if obs_t is None:
            itl = self._window_mean(self._itl_obs, self._itl_sum, t) if has_itl else None
            ttft = None if is_decode else self._window_mean(self._ttft_obs, self._ttft_sum, t)
            t_inp = t
        else:
            itl = self.obs_itl_s if has_itl else None
            ttft = None if is_decode else self.obs_ttft_s
            t_inp = obs_t
        # the simulated router always knows the queued prompt tokens: the live mapping's
        # fresh-router branch, with the engine's own counts as the telemetry
        return control_input(
            instance=self.name,
            role="unified" if self.role == "unified" else "decode" if is_decode else "prefill",
            t=t_inp,
            queue_reqs=waiting,
            running_reqs=running,
            kv_used_tokens=decode_kv,
            queued_prefill=(float(prefill_tokens), 0.0 if oldest is None else max(t - oldest, 0.0)),
            observed_ttft_s=ttft,
            observed_itl_s=itl,
            current_clock_mhz=self.clock_mhz,
        )


def prefix_tokens(instances: Iterable[Instance], workload: Workload) -> dict[str, tuple[int, int]]:
    """(prompt tokens served from the cache, prompt tokens admitted) per prefill instance;
    empty when no request of the workload has a prefix identity (nothing to report)."""
    if not any(r.prefix is not None for r in workload.requests):
        return {}
    return {
        i.name: (i.engine.cache.hit_tokens, i.engine.cache.query_tokens)
        for i in instances
        if i.engine.cache is not None
    }


def build_instances(
    config: SimConfig, seeds: list[np.random.SeedSequence], kv_cap: int
) -> dict[str, Instance]:
    """The cluster's instances (prefill, decode, then unified), each on its own seeded GPU."""
    c = config.cluster
    instances: dict[str, Instance] = {}
    roles: tuple[tuple[Role, int], ...] = (
        ("prefill", c.n_prefill),
        ("decode", c.n_decode),
        ("unified", c.n_unified),
    )
    i = 0
    spec = config.gpu_spec()
    for role, n in roles:
        for k in range(n):
            model = GpuModel(
                spec,
                MODELS[c.model],
                c.tp,
                noise=config.noise,
                seed=int(seeds[i].generate_state(1)[0]),
            )
            i += 1
            eng = EngineConfig(
                role=role,
                max_running_requests=config.max_running_requests,
                chunked_prefill_size=config.chunked_prefill_size,
                kv_capacity_tokens=kv_cap,
                radix_cache=True,  # SGLang's default; only prompts with a prefix use it
                enable_mixed_chunk=config.enable_mixed_chunk,
            )
            inst = Instance(
                f"{role[0]}{k}",
                role,
                eng,
                model,
                model.max_clock_mhz,
                series_min_dt_s=config.series_min_dt_s,
                observed_window_s=config.observed_window_s,
            )
            instances[inst.name] = inst
    return instances
