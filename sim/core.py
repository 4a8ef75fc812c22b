"""The discrete-event simulator: P prefill + D decode instances in virtual time.

Events (a heap ordered by time, then insertion):

- arrival: the routing policies pick a prefill and a decode instance (as
  SGLang's PD router does, both at dispatch; :class:`~voltana.sim.router.SimRouter`
  keeps the live router's books); the request is submitted to both engines and
  the decode engine preallocates its KV when it can;
- iteration end: the engine applies the iteration (chunked prefill or one
  decode step); finished prefills start their KV transfer once the decode side
  holds the KV reservation; the next iteration starts at once;
- transfer end: the prefill side frees the KV; the decode side receives it and
  emits the first token (TTFT ends here, as a client of SGLang PD sees it);
- telemetry tick: refreshes what the router sees (and, in ``telemetry``
  control mode, feeds the clock controllers);
- clock change: a decision taken while an iteration runs lands mid-iteration
  (as on a GPU); the rest of the iteration runs at the new clock and ends
  earlier or later.

Clock control, per instance, with the very controllers of freqctl:
``control="telemetry"`` (the default: what the NATS deployment does) decides
on telemetry samples and, with ``wake_on_dispatch`` (as the freqctl service
does on the router's state), on each dispatch to a prefill instance;
``control="iteration"`` decides before every engine iteration and on
wake/idle from fresh state (the in-engine placement of the published method).
Either way a decision takes effect ``control_lag_s`` later (bus + NVML),
possibly in the middle of an iteration.
"""

from __future__ import annotations

import heapq
import time
from collections.abc import Callable
from typing import Any

import numpy as np
from voltana.common.errors import ConfigError
from voltana.groundtruth.engine import AdmissionError, BatchPlan, PrefixIdentity
from voltana.groundtruth.gpu_model import GPUS, MODELS
from voltana.schemas.base import Role
from voltana.services.freqctl.controllers.base import ClockController
from voltana.services.router.attribution import AttributionRule
from voltana.services.router.policies.base import RouteRequest, RoutingPolicy
from voltana.sim.config import SimConfig
from voltana.sim.energy import SimEnergy
from voltana.sim.instance import Instance, build_instances, prefix_tokens
from voltana.sim.metrics import ItlRecorder, RequestOutcome, RunMetrics
from voltana.sim.router import SimRouter
from voltana.sim.workload import Workload

__all__ = ["ClockChooser", "Simulator"]

_ARRIVE, _ITER, _XFER, _TICK, _CLOCK = 0, 1, 2, 3, 4


ClockChooser = Callable[[Instance, BatchPlan, float], int]
"""Oracle hook: picks the clock for the iteration about to run (no lag)."""


class Simulator:
    """One run of one policy over one workload.

    Args:
        config: cluster, SLO, seed and timing knobs.
        controllers: one controller object per role ("prefill", "decode"); may be the same.
        prefill_policy / decode_policy: routing policies (from ``make_policy``).
        start_clock_mhz: the clock every GPU holds at t = 0 (default: max, GPU default).
        oracle: optional per-iteration clock chooser used instead of the controllers.
    """

    def __init__(
        self,
        config: SimConfig,
        *,
        controllers: dict[str, ClockController],
        prefill_policy: RoutingPolicy,
        decode_policy: RoutingPolicy,
        name: str,
        oracle: ClockChooser | None = None,
    ) -> None:
        self.cfg = config
        self.name = name
        self.controllers = controllers
        self.oracle = oracle
        c = config.cluster
        if c.gpu not in GPUS or c.model not in MODELS:
            raise ConfigError(f"unknown gpu {c.gpu!r} or model {c.model!r}")
        seeds = np.random.SeedSequence(config.seed).spawn(c.n_instances + 1)
        kv_cap = config.kv_capacity_tokens()
        self.instances = build_instances(config, seeds, kv_cap)
        role_of: dict[str, Role] = {n: inst.role for n, inst in self.instances.items()}
        self.router = SimRouter(
            role_of,
            prefill_policy,
            decode_policy,
            np.random.default_rng(seeds[-1]),
            kv_capacity_tokens=kv_cap,
        )
        self._heap: list[tuple[float, int, int, Any]] = []
        self._seq = 0
        self.outcomes: dict[str, RequestOutcome] = {}
        self._route: dict[str, RouteRequest] = {}
        self._allocated: set[str] = set()
        self._prefilled: set[str] = set()
        self._last_tok: dict[str, float] = {}
        self.itl = ItlRecorder()
        self.now = 0.0
        self._open = 0
        self.energy = SimEnergy(AttributionRule(idle=config.energy_idle))  # docs/energy.md

    # ----- event plumbing -------------------------------------------------------------
    def _push(self, t: float, kind: int, payload: Any) -> None:
        self._seq += 1
        heapq.heappush(self._heap, (t, self._seq, kind, payload))

    # ----- control ----------------------------------------------------------------------
    def _decide(self, inst: Instance, t: float) -> None:
        if self.oracle is not None:
            return
        ctl = self.controllers[inst.role]
        if inst.static_decided:
            return  # a static controller's answer never changes: ask it once
        inst.static_decided = getattr(ctl, "name", "").startswith("static")
        per_iter = self.cfg.control == "iteration" and self.cfg.telemetry_period_s > 0
        dec = ctl.decide(inst.control_input(t, inst.obs_t if per_iter else None), t)
        clock = inst.model.max_clock_mhz if dec.default_clocks else dec.clock_mhz
        inst.set_unlocked(t, dec.default_clocks)
        inst.last_decision_rule = dec.rule
        inst.command_clock(t + self.cfg.control_lag_s, clock)
        run = inst.running
        if run is not None and inst.pending is not None and inst.pending[0] < run.t_end:
            # the GPU changes clock mid-iteration: the rest of it runs at the new clock
            self._push(inst.pending[0], _CLOCK, inst)

    def _kick(self, inst: Instance, t: float) -> None:
        """Start the next iteration on an idle instance (the controller decides once the
        batch is formed, in iteration mode)."""
        if inst.running is not None:
            return
        if self.oracle is not None:
            run = inst.start_iteration(t, self.oracle)
            if run is None:  # idle: the oracle parks at the lowest clock at once
                inst.command_clock(t, inst.model.min_clock_mhz)
                inst.apply_pending(t)
                return
            self._push(run.t_end, _ITER, inst)
            return
        hook = self._decide if self.cfg.control == "iteration" else None
        run = inst.start_iteration(t, on_planned=hook)
        if run is not None:
            self._push(run.t_end, _ITER, inst)

    # ----- telemetry --------------------------------------------------------------------
    def _refresh_telemetry(self, t: float) -> None:
        for inst in self.instances.values():
            inst.sample_observations(t)
            st = inst.engine.stats()
            p = inst.running.power_w if inst.running is not None else inst.idle_power_w()
            self.router.observe(
                inst.name, (st.running_reqs, st.decode_kv_tokens, inst.clock_mhz, p)
            )
            if self.oracle is None and (self.cfg.control == "telemetry" or inst.running is None):
                # telemetry mode: every sample; iteration mode: an idle engine runs no
                # iterations, so its controller is asked on telemetry (to park it).
                self._decide(inst, t)
            if inst.running is None:
                inst.apply_pending(t)

    # ----- request flow -----------------------------------------------------------------
    def _arrive(self, rr: RouteRequest, out: RequestOutcome, t: float) -> None:
        pair = self.router.select(rr, t)
        if pair is None:
            self._open -= 1  # rejected: stays unfinished, counted as a miss
            return
        p, d = self.instances[pair[0]], self.instances[pair[1]]
        prefix = PrefixIdentity(rr.prefix_keys, rr.prefix_block_tokens) if rr.prefix_keys else None
        try:
            p.engine.submit(
                rr.request_id,
                prompt_tokens=rr.input_tokens,
                max_new_tokens=rr.max_new_tokens,
                now=t,
                prefix=prefix,
            )
            d.engine.submit(
                rr.request_id,
                prompt_tokens=rr.input_tokens,
                max_new_tokens=rr.max_new_tokens,
                now=t,
            )
        except AdmissionError:
            p.engine.abort(rr.request_id)
            self._open -= 1  # rejected: never finishes, counted as a miss
            return
        out.prefill, out.decode = p.name, d.name
        self.router.dispatched(p.name, d.name, rr, t)
        self._admit_decode(d, t)
        self._kick(p, t)
        if self.cfg.control == "telemetry" and self.cfg.wake_on_dispatch:
            # the live freqctl decides when the router reports new work for an instance
            # (its queued prefill tokens and waits), a bus hop after the dispatch: by then
            # the engine has taken the request into its batch
            self._decide(p, t)

    def _admit_decode(self, d: Instance, t: float) -> None:
        for ev in d.engine.admit(t):
            self._allocated.add(ev.rid)
            if ev.rid in self._prefilled:
                self._start_transfer(ev.rid, t)

    def _start_transfer(self, rid: str, t: float) -> None:
        out = self.outcomes[rid]
        d = self.instances[out.decode]
        self._push(t + d.model.kv_transfer_s(out.input_tokens), _XFER, rid)

    def _transfer_done(self, rid: str, t: float) -> None:
        out = self.outcomes[rid]
        p, d = self.instances[out.prefill], self.instances[out.decode]
        self._prefilled.discard(rid)
        self._allocated.discard(rid)
        p.engine.transfer_done(rid, t)
        self.router.first_token(p.name, d.name, self._route[rid], t)
        out.first_token_s = t
        self._last_tok[rid] = t
        self.energy.join_decode(d, rid, out.input_tokens + 1)
        for ev in d.engine.kv_arrived(rid, t):
            if ev.kind == "finished":
                self._finish(d, rid, t)
        self._kick(p, t)  # freed KV may unblock waiting prefills
        self._kick(d, t)

    def _finish(self, d: Instance, rid: str, t: float) -> None:
        out = self.outcomes[rid]
        out.finish_s = t
        self._open -= 1
        self._last_tok.pop(rid, None)
        self.energy.finish_decode(rid)
        self.router.decode_done(d.name, self._route[rid], t)

    def _token_gaps(self, inst: Instance, rids: tuple[str, ...], t: float) -> None:
        """Inter-token gaps of the requests in an iteration that ended at ``t`` (those with
        a token already); gaps of requests in back-to-back iterations are booked at once."""
        prev = inst.last_iter_end
        last_tok = self._last_tok
        n_cont = 0
        for rid in rids:
            lt = last_tok.get(rid)
            if lt is None:
                continue
            if lt == prev:
                n_cont += 1
            else:
                self.itl.add(t - lt, 1)
                inst.observe_itl(t, t - lt, 1)
            last_tok[rid] = t
        if n_cont:
            self.itl.add(t - prev, n_cont)
            inst.observe_itl(t, t - prev, n_cont)
        inst.last_iter_end = t

    def _iteration_done(self, inst: Instance, t: float) -> None:
        run = inst.finish_iteration()
        self.energy.iteration(inst, run)
        plan = run.plan
        events = inst.engine.complete(plan, t, tokens=False)
        if plan.kind == "prefill":
            for ev in events:
                if ev.kind == "prefill_done":
                    rid = ev.rid
                    out = self.outcomes[rid]
                    out.prefill_done_s = t
                    inst.observe_ttft(t, t - out.arrival_s)
                    self._prefilled.add(rid)
                    if rid in self._allocated:
                        self._start_transfer(rid, t)
        else:
            self._token_gaps(inst, plan.rids, t)
            finished = False
            for ev in events:
                if ev.kind == "finished":
                    self._finish(inst, ev.rid, t)
                    finished = True
            if finished:
                self._admit_decode(inst, t)
        self._kick(inst, t)

    # ----- the run ----------------------------------------------------------------------
    def run(
        self, workload: Workload, progress: Callable[[float], None] | None = None
    ) -> RunMetrics:
        """Simulate the whole workload; ``progress(sim_t)`` is called now and then."""
        wall0 = time.perf_counter()
        for r in workload.requests:
            rr = RouteRequest(
                request_id=r.request_id,
                input_tokens=r.input_tokens,
                max_new_tokens=r.output_tokens,
                arrival_t=r.arrival_s,
                prefix_keys=() if r.prefix is None else r.prefix.keys,
                prefix_block_tokens=0 if r.prefix is None else r.prefix.block_tokens,
            )
            self._route[r.request_id] = rr
            self.outcomes[r.request_id] = RequestOutcome(
                r.request_id, r.arrival_s, r.input_tokens, r.output_tokens
            )
            self._push(r.arrival_s, _ARRIVE, r.request_id)
        last_arrival = workload.requests[-1].arrival_s if workload.requests else 0.0
        horizon = last_arrival + self.cfg.drain_limit_s
        if self.cfg.telemetry_period_s > 0:
            self._push(0.0, _TICK, None)
        for inst in self.instances.values():
            if self.oracle is None:
                self._decide(inst, 0.0)
            else:
                inst.command_clock(0.0, inst.model.min_clock_mhz)
            inst.apply_pending(0.0)
        self._open = len(workload.requests)
        t_end = 0.0
        next_prog = 0.0
        heap = self._heap
        while heap:
            t, _, kind, payload = heapq.heappop(heap)
            if t > horizon:
                break
            self.now = t
            if kind == _ITER:
                run = payload.running
                if run is None or run.t_end != t:
                    continue  # re-timed by a clock change: a later event ends it
                self._iteration_done(payload, t)
            elif kind == _CLOCK:
                if payload.retime(t):
                    self._push(payload.running.t_end, _ITER, payload)
            elif kind == _ARRIVE:
                self._arrive(self._route[payload], self.outcomes[payload], t)
            elif kind == _XFER:
                self._transfer_done(payload, t)
            else:
                if t > last_arrival and self._open == 0:
                    continue  # done: stop ticking
                self._refresh_telemetry(t)
                self._push(t + self.cfg.telemetry_period_s, _TICK, None)
            if kind != _TICK:
                t_end = max(t_end, t)
            if progress is not None and t >= next_prog:
                progress(t)
                next_prog = t + 10.0
        finished = [o.finish_s for o in self.outcomes.values() if o.finish_s is not None]
        t_end = max(finished) if finished else t_end
        if any(o.finish_s is None for o in self.outcomes.values()):
            t_end = max(t_end, self.now)
        for inst in self.instances.values():
            inst.close(t_end)
        self.energy.close(self.instances)
        return RunMetrics(
            policy=self.name,
            slo_ttft_s=self.cfg.slo.ttft_s,
            slo_itl_s=self.cfg.slo.itl_s,
            requests=list(self.outcomes.values()),
            energy_j_by_instance={n: i.energy_j for n, i in self.instances.items()},
            busy_s_by_instance={n: i.busy_s for n, i in self.instances.items()},
            clock_switches_by_instance={n: i.switches for n, i in self.instances.items()},
            window_s=t_end,
            itl=self.itl,
            series={n: i.series for n, i in self.instances.items()},
            iterations=sum(i.iterations for i in self.instances.values()),
            wall_s=time.perf_counter() - wall0,
            unfinished=sum(1 for o in self.outcomes.values() if o.finish_s is None),
            energy_book=self.energy.book,
            prefix_by_instance=prefix_tokens(self.instances.values(), workload),
        )
