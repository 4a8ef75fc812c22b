"""The freqctl service shell: telemetry in, clock commands out, one controller per instance.

Decides on every ``InstanceTelemetry`` of its instances (with the router's
``InstanceState`` for prefill waits and queued prompt tokens, and the
actuator's ``ClockState`` for the clock in force), publishes a
``ClockDecision`` and a ``SetClock`` per GPU of the instance when the clock
changes, and renews held clocks at a fraction of the lease. A periodic tick
catches stale or missing telemetry: the controller then answers with its safe
(maximum) clock. Controller configs (policy, SLO) come live from the KV bucket
(:mod:`~voltana.services.freqctl.kvconfig`).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import msgspec
from prometheus_client import Counter as PromCounter
from prometheus_client import Histogram
from voltana.bus.client import Bus
from voltana.common.guard import supervise
from voltana.common.logs import get_logger
from voltana.common.tasks import cancel_and_wait
from voltana.predictor.profile import Profile
from voltana.schemas import subjects
from voltana.schemas.clock import ClockState, ResetClock, SetClock
from voltana.schemas.config import ControllerConfig
from voltana.schemas.router import InstanceState
from voltana.schemas.telemetry import GpuTelemetry, InstanceTelemetry
from voltana.services.freqctl.controllers import (
    ClockController,
    ControlDecision,
    ControlInput,
    make_controller,
    to_event,
)
from voltana.services.freqctl.core import (
    ConfigStore,
    InstanceSpec,
    Sent,
    build_input,
    missing_input,
    needs_send,
    router_brought_work,
)
from voltana.services.freqctl.kvconfig import KvConfigWatcher
from voltana.services.runner import ServiceContext
from voltana.services.status import add_status_service

DECISIONS = PromCounter(
    "voltana_freqctl_decisions", "Controller decisions", ["instance", "policy", "rule"]
)
DECIDE_SECONDS = Histogram(
    "voltana_freqctl_decide_seconds",
    "Time of one controller decision",
    ["policy"],
    buckets=(1e-5, 2e-5, 5e-5, 1e-4, 2e-4, 5e-4, 1e-3, 5e-3),
)


@dataclass(slots=True)
class _Instance:
    spec: InstanceSpec
    node: str | None
    gpus: tuple[int, ...]
    config: ControllerConfig
    controller: ClockController
    tel: InstanceTelemetry | None = None
    tel_rx_s: float = 0.0
    router: InstanceState | None = None
    router_rx_s: float | None = None
    last_sent: Sent | None = None
    last_decision: ControlDecision | None = None
    decisions: int = 0


class FreqctlService(ServiceContext):
    """Drives the clocks of a set of instances from their telemetry.

    Args:
        bus: a connected bus.
        specs: the instances to drive.
        profile: the fitted profile every controller predicts with.
        base_config: the config used where the KV bucket has none.
        name: this controller's name (``issued_by`` of its commands).
        tick_s: period of the staleness/renewal check.
        use_kv: read and watch the KV bucket for live configs.
        wall: the wall clock in seconds (telemetry timestamps are wall-clock).
    """

    def __init__(
        self,
        bus: Bus,
        specs: list[InstanceSpec],
        profile: Profile,
        base_config: ControllerConfig,
        *,
        name: str = "freqctl",
        tick_s: float = 0.1,
        use_kv: bool = True,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self.bus = bus
        self.profile = profile
        self.name = name
        self.tick_s = tick_s
        self.use_kv = use_kv
        self._wall = wall
        self.store = ConfigStore(base_config)
        self.instances: dict[str, _Instance] = {}
        for s in specs:
            cfg = self.store.for_instance(s.name)
            ctl = make_controller(cfg, profile)
            self.instances[s.name] = _Instance(s, s.node, s.gpus, cfg, ctl)
        self._locked: dict[tuple[str, int], int | None] = {}
        self._seq = time.time_ns() // 1000  # grows across restarts too
        self.counts: Counter[str] = Counter()
        self._tasks: list[asyncio.Task[Any]] = []
        self._subs: list[Any] = []
        self._service: Any = None
        self._log = get_logger("freqctl", controller=name)
        self.kv = KvConfigWatcher(
            bus, self.store, self._config_changed, counts=self.counts, log=self._log
        )

    # -- lifecycle ------------------------------------------------------------------------

    async def start(self) -> None:
        if self.use_kv:
            await self.kv.start()
        for subject, typ, handler in (
            (subjects.TELEMETRY_ENGINE_ALL, InstanceTelemetry, self._on_engine),
            (subjects.TELEMETRY_GPU_ALL, GpuTelemetry, self._on_gpu),
            (subjects.ROUTER_STATE_ALL, InstanceState, self._on_router),
            (subjects.CLOCK_STATE_ALL, ClockState, self._on_clock_state),
        ):
            self._subs.append(await self.bus.subscribe(subject, typ, handler))
        tick = asyncio.create_task(self._tick_loop(), name="freqctl-tick")
        self._tasks.append(supervise(tick, self._log))  # renewals and fail-safe: must not stop
        self._service = await add_status_service(
            self.bus,
            name="voltana-freqctl",
            description="per-instance GPU clock controllers",
            metadata={"controller": self.name},
            status_subject=subjects.freqctl_status(self.name),
            status=self.stats,
            counts=lambda: {"counts": dict(self.counts)},
        )
        self._log.info("freqctl_ready", instances=sorted(self.instances))

    async def stop(self) -> None:
        await cancel_and_wait(self._tasks)
        await self.kv.stop()
        for sub in self._subs:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()
        if self._service is not None:
            with contextlib.suppress(Exception):
                await self._service.stop()
        with contextlib.suppress(Exception):
            await self.bus.nc.flush(timeout=1)
        self._log.info("freqctl_stopped", counts=dict(self.counts))

    # -- live config (KV) ------------------------------------------------------------------

    def _config_changed(self, key: str) -> None:
        """Rebuild the controllers whose resolved config the change of ``key`` altered."""
        for inst in self.instances.values():
            cfg = self.store.for_instance(inst.spec.name)
            if cfg == inst.config:
                continue
            try:
                ctl = make_controller(cfg, self.profile)
            except Exception as exc:
                self.kv.config_error(key, "kv_config_unusable", str(exc))
                continue
            inst.config, inst.controller = cfg, ctl
            self.counts["config_changes"] += 1
            self._log.info("controller_config", instance=inst.spec.name, policy=cfg.policy, key=key)

    # -- bus inputs ------------------------------------------------------------------------

    async def _on_engine(self, tel: InstanceTelemetry, subject: str) -> None:
        inst = self.instances.get(tel.instance)
        if inst is None:
            return
        inst.tel, inst.tel_rx_s = tel, self._wall()
        if inst.spec.node is None:
            inst.node = tel.node
            if tel.gpus:
                inst.gpus = tuple(tel.gpus)
        await self._decide(inst, publish_decision=True)

    def _on_gpu(self, g: GpuTelemetry, subject: str) -> None:
        inst = self.instances.get(g.instance or "")
        if inst is not None and inst.spec.node is None and g.gpu not in inst.gpus:
            inst.node = g.node
            inst.gpus = tuple(sorted((*inst.gpus, g.gpu)))
        if self._drives(g.node, g.gpu):  # the table holds our GPUs only: bounded
            self._locked[(g.node, g.gpu)] = g.locked_clock_mhz

    def _drives(self, node: str, gpu: int) -> bool:
        return any(i.node == node and gpu in i.gpus for i in self.instances.values())

    async def _on_router(self, st: InstanceState, subject: str) -> None:
        inst = self.instances.get(st.instance)
        if inst is None:
            return
        prev = inst.router
        inst.router, inst.router_rx_s = st, self._wall()
        if inst.tel is not None and router_brought_work(prev, st):
            # the router dispatched work here: decide now instead of at the next engine
            # scrape, so a parked instance wakes within the bus latency (wake on dispatch)
            self.counts["router_wakes"] += 1
            await self._decide(inst, publish_decision=False)

    def _on_clock_state(self, st: ClockState, subject: str) -> None:
        if not self._drives(st.node, st.gpu):
            return
        self._locked[(st.node, st.gpu)] = st.locked_clock_mhz
        if st.status in ("rejected", "error"):
            self.counts[f"clock_{st.status}"] += 1
        if st.locked_clock_mhz is None and st.status in ("expired", "reset", "error"):
            # the actuator dropped a lock we hold (restart, bus blip, lapse): re-send at the
            # next decision instead of waiting for the renewal
            for inst in self.instances.values():
                held = inst.last_sent is not None and inst.last_sent.clock_mhz is not None
                if held and inst.node == st.node and st.gpu in inst.gpus:
                    inst.last_sent = None
                    self.counts["locks_lost"] += 1

    # -- decisions -------------------------------------------------------------------------

    def _current_clock(self, inst: _Instance) -> int | None:
        if inst.node is None or not inst.gpus:
            return None
        return self._locked.get((inst.node, inst.gpus[0]))

    def _input(self, inst: _Instance, now: float) -> ControlInput:
        if inst.tel is None:
            return missing_input(inst.spec.name)
        return build_input(
            inst.tel,
            received_s=inst.tel_rx_s,
            router=inst.router,
            router_received_s=inst.router_rx_s,
            now_s=now,
            stale_after_s=inst.config.stale_after_s,
            current_clock_mhz=self._current_clock(inst),
        )

    async def _decide(self, inst: _Instance, *, publish_decision: bool) -> None:
        now = self._wall()
        cfg = inst.config
        if not cfg.enabled:
            await self._command(inst, None, now, "controller disabled: default clocks")
            return
        inp = self._input(inst, now)
        t0 = time.perf_counter()
        decision = inst.controller.decide(inp, now)
        DECIDE_SECONDS.labels(cfg.policy).observe(time.perf_counter() - t0)
        prev = inst.last_decision
        inst.last_decision = decision
        inst.decisions += 1
        DECISIONS.labels(inst.spec.name, cfg.policy, decision.rule).inc()
        changed = prev is None or (prev.clock_mhz, prev.rule) != (decision.clock_mhz, decision.rule)
        if publish_decision or changed:
            event = to_event(
                decision, inp, policy=inst.controller.name, t_ns=time.time_ns(), now=now
            )
            if inp.t == float("-inf"):
                event = msgspec.structs.replace(event, telemetry_age_s=None, role="unknown")
            await self.bus.publish(subjects.freqctl_decision(inst.spec.name), event)
        clock = None if decision.default_clocks else decision.clock_mhz
        await self._command(inst, clock, now, f"{decision.rule}: {decision.reason}")

    async def _command(self, inst: _Instance, clock: int | None, now: float, reason: str) -> None:
        if inst.node is None or not inst.gpus:
            self.counts["no_topology"] += 1
            return
        lease_s = inst.config.lease_s
        if not needs_send(inst.last_sent, clock, now, lease_s):
            return
        inst.last_sent = Sent(clock, now)
        for gpu in inst.gpus:
            self._seq += 1
            cmd: SetClock | ResetClock
            if clock is None:
                cmd = ResetClock(
                    t_ns=time.time_ns(),
                    node=inst.node,
                    gpu=gpu,
                    seq=self._seq,
                    issued_by=self.name,
                    instance=inst.spec.name,
                    reason=reason,
                )
            else:
                cmd = SetClock(
                    t_ns=time.time_ns(),
                    node=inst.node,
                    gpu=gpu,
                    sm_clock_mhz=clock,
                    lease_s=lease_s,
                    seq=self._seq,
                    issued_by=self.name,
                    instance=inst.spec.name,
                    reason=reason,
                )
            await self.bus.publish(subjects.clock_set(inst.node, gpu), cmd)
        self.counts["commands"] += len(inst.gpus)

    async def _tick_loop(self) -> None:
        while True:
            await asyncio.sleep(self.tick_s)
            now = self._wall()
            for inst in list(self.instances.values()):
                try:
                    stale = inst.tel is None or now - inst.tel_rx_s > inst.config.stale_after_s
                    if stale or not inst.config.enabled:
                        await self._decide(inst, publish_decision=False)
                    elif inst.last_sent is not None:
                        await self._command(inst, inst.last_sent.clock_mhz, now, "lease renewal")
                except Exception:
                    self._log.exception("freqctl_tick_failed", instance=inst.spec.name)

    # -- status ------------------------------------------------------------------------------

    def stats(self) -> dict[str, Any]:
        now = self._wall()
        out = []
        for inst in self.instances.values():
            d = inst.last_decision
            out.append(
                {
                    "instance": inst.spec.name,
                    "node": inst.node,
                    "gpus": list(inst.gpus),
                    "policy": inst.controller.name,
                    "clock_mhz": d.clock_mhz if d else None,
                    "rule": d.rule if d else None,
                    "reason": d.reason if d else None,
                    "telemetry_age_s": None if inst.tel is None else round(now - inst.tel_rx_s, 3),
                    "decisions": inst.decisions,
                }
            )
        return {
            "controller": self.name,
            "instances": out,
            "counts": dict(self.counts),
            "malformed_dropped": self.bus.decode_error_total(),
        }
