"""The actuator shell: the only privileged part of voltana, one per node.

Hears clock commands for its own node only (``voltana.clock.set.<node>.*``),
lets the pure :class:`~voltana.services.actuator.core.LeaseTable` decide,
applies each decision through a GPU device's clock setters (blocking calls in a
worker thread, one ordered queue per GPU so GPUs of a TP group change in
parallel), and publishes a ``ClockState`` for every command, expiry and reset.

Fail-safe paths, all ending in default clocks: start-up (a predecessor may
have crashed holding a lock), lease expiry, bus disconnect, stop (SIGTERM,
SIGINT, an exception: the caller's ``finally`` calls :meth:`Actuator.stop`).
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

from prometheus_client import Counter as PromCounter
from prometheus_client import Gauge, Histogram
from voltana.bus.client import Bus
from voltana.common.errors import GpuError
from voltana.common.guard import LogThrottle, supervise
from voltana.common.logs import get_logger
from voltana.common.tasks import cancel_and_wait
from voltana.gpu.device import ClockSetter, LockReader
from voltana.schemas import subjects
from voltana.schemas.clock import ClockCommand, ClockState, ClockStatus, ResetClock, SetClock
from voltana.services.actuator.core import ActuatorConfig, LeaseTable, Verdict
from voltana.services.status import add_status_service

COMMANDS = PromCounter(
    "voltana_actuator_outcomes", "Clock states published by the actuator", ["node", "status"]
)
APPLY_SECONDS = Histogram(
    "voltana_actuator_apply_seconds",
    "Time of one backend call (lock or reset)",
    ["node", "backend"],
    buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.5, 2.0),
)
LOCKED_MHZ = Gauge(
    "voltana_actuator_locked_clock_mhz", "Locked SM clock (0: default clocks)", ["node", "gpu"]
)

_STATUS_OF: dict[str, ClockStatus] = {
    "renew": "unchanged",
    "deferred": "unchanged",
    "rejected": "rejected",
    "reset": "reset",
    "expired": "expired",
    "released": "reset",
}


class Actuator:
    """Applies leased clock commands for one node's GPUs.

    Args:
        bus: a connected bus.
        backend: the GPU device's clock setters (nvml, emulated or dry-run).
        config: node name and limits.
        monotonic: the clock leases are measured with (seconds).
    """

    def __init__(
        self,
        bus: Bus,
        backend: ClockSetter,
        config: ActuatorConfig,
        *,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.bus = bus
        self.backend = backend
        self.config = config
        self.node = config.node
        self._now = monotonic
        self._log = get_logger("actuator", node=self.node, backend=backend.name)
        self.table: LeaseTable | None = None
        self.outcomes: Counter[str] = Counter()
        self._state_seq = 0
        self._queues: dict[int, asyncio.Queue[Verdict | None]] = {}
        self._workers: list[asyncio.Task[None]] = []
        self._reports: set[asyncio.Task[None]] = set()
        self._timer: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        self._sub: Any = None
        self._service: Any = None
        self._stopped = False
        self._verified_at: dict[int, float] = {}
        self._throttle = LogThrottle()

    # -- lifecycle ------------------------------------------------------------------

    async def start(self) -> None:
        """Read supported clocks, reset every GPU, then start hearing commands."""
        gpus = list(self.backend.indices)
        supported = {
            g: await asyncio.to_thread(self.backend.supported_sm_clocks_mhz, g) for g in gpus
        }
        self.table = LeaseTable(self.config, supported)
        for g in gpus:
            self._queues[g] = asyncio.Queue()
            self._workers.append(asyncio.create_task(self._worker(g), name=f"actuator-gpu{g}"))
        self._log.info(
            "actuator_starting",
            gpus=gpus,
            clocks_mhz={g: [min(c), max(c), len(c)] for g, c in supported.items()},
        )
        self._enqueue(self.table.release_all(self._now(), "start-up: clear any leftover lock"))
        await self._drain()
        self.bus.on_disconnect(self._on_bus_lost)
        self._sub = await self.bus.subscribe(
            subjects.clock_set_node(self.node), ClockCommand, self._on_command
        )
        # lease expiry: a timer that died would hold locks forever; it ends the process instead
        timer = asyncio.create_task(self._tick_loop(), name="actuator-leases")
        self._timer = supervise(timer, self._log)
        self._service = await add_status_service(
            self.bus,
            name="voltana-actuator",
            description=f"clock actuator of node {self.node}",
            metadata={"node": self.node, "backend": self.backend.name},
            status_subject=subjects.actuator_status(self.node),
            status=self.stats,
            counts=lambda: {"outcomes": dict(self.outcomes)},
        )
        self._log.info("actuator_ready", subject=subjects.clock_set_node(self.node))

    async def stop(self, reason: str = "shutdown") -> None:
        """Reset every GPU to default clocks and stop. Safe to call twice."""
        if self._stopped:
            return
        self._stopped = True
        if self._sub is not None:
            with contextlib.suppress(Exception):
                await self._sub.unsubscribe()
        await cancel_and_wait([self._timer])
        if self.table is not None:
            self._enqueue(self.table.release_all(self._now(), reason))
            await self._drain()
        for q in self._queues.values():
            q.put_nowait(None)
        with contextlib.suppress(Exception):
            await asyncio.gather(*self._workers)
        if self._service is not None:
            with contextlib.suppress(Exception):
                await self._service.stop()
        with contextlib.suppress(Exception):
            await self.bus.nc.flush(timeout=1)
        self._log.info("actuator_stopped", reason=reason, outcomes=dict(self.outcomes))

    async def __aenter__(self) -> Actuator:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop("shutdown" if exc[0] is None else f"exception: {exc[0]}")

    # -- inputs ------------------------------------------------------------------------

    async def _on_command(self, cmd: SetClock | ResetClock, subject: str) -> None:
        assert self.table is not None
        if self._stopped:
            return
        token = subject.rsplit(".", 1)[-1]
        # isascii: str.isdigit() also accepts "²", which int() then refuses
        subject_gpu = int(token) if token.isascii() and token.isdigit() else -1
        verdict = self.table.on_command(
            cmd, self._now(), subject_gpu=subject_gpu, wall_ns=time.time_ns()
        )
        self._enqueue([verdict])
        self._wake.set()

    def _on_bus_lost(self) -> None:
        if self.table is None or self._stopped:
            return
        self._log.warning("bus_lost_resetting_clocks")
        self._enqueue(self.table.release_all(self._now(), "bus connection lost"))

    async def _tick_loop(self) -> None:
        assert self.table is not None
        while True:
            deadline = self.table.next_deadline_s()
            timeout = None if deadline is None else max(0.0, deadline - self._now())
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout)
            self._wake.clear()
            self._enqueue(self.table.on_tick(self._now()))

    # -- execution -----------------------------------------------------------------------

    def _enqueue(self, verdicts: list[Verdict]) -> None:
        for v in verdicts:
            q = self._queues.get(v.gpu)
            if q is None:  # a command for a GPU this node does not have: report only
                task = asyncio.get_running_loop().create_task(
                    self._publish(v, _STATUS_OF[v.kind], None)
                )
                self._reports.add(task)
                task.add_done_callback(self._reports.discard)
            else:
                q.put_nowait(v)

    async def _drain(self) -> None:
        await asyncio.gather(*(q.join() for q in self._queues.values()))

    async def _worker(self, gpu: int) -> None:
        q = self._queues[gpu]
        while True:
            v = await q.get()
            try:
                if v is None:
                    return
                await self._execute(v)
            except Exception:
                self._log.exception("actuator_execute_failed", gpu=gpu)
            finally:
                q.task_done()

    async def _execute(self, v: Verdict) -> None:
        if v.kind == "renew" and await self._reapply_if_lost(v):
            return
        if v.kind in ("rejected", "renew", "deferred"):
            await self._publish(v, _STATUS_OF[v.kind], None)
            return
        t0 = time.perf_counter()
        try:
            if v.target_mhz is None:
                changed = await asyncio.to_thread(self.backend.reset_locked_clocks, v.gpu)
            else:
                changed = await asyncio.to_thread(
                    self.backend.set_locked_sm_clock_mhz, v.gpu, v.target_mhz
                )
        except GpuError as exc:
            latency = time.perf_counter() - t0
            self._log.error("clock_apply_failed", gpu=v.gpu, code=exc.code, error=str(exc))
            await self._publish(v, "error", latency, reason=f"{exc.code}: {exc}")
            if v.target_mhz is not None and self.table is not None:
                # the lock failed: fall back to default clocks (queued behind this one)
                self._enqueue([self.table.on_apply_failed(v.gpu, self._now(), str(exc))])
            return
        latency = time.perf_counter() - t0
        APPLY_SECONDS.labels(self.node, self.backend.name).observe(latency)
        if v.target_mhz is None:
            held = await self._hardware_lock(v.gpu)
            if held is not None:  # the reset did not take: once more, then say so
                await asyncio.to_thread(self.backend.reset_locked_clocks, v.gpu)
                held = await self._hardware_lock(v.gpu)
            if held is not None:
                self._log.error("reset_not_effective", gpu=v.gpu, locked_mhz=held)
                await self._publish(
                    v, "error", latency, reason=f"GPU still locked at {held} MHz after reset"
                )
                return
        if v.kind == "apply":
            status: ClockStatus = "applied" if changed else "unchanged"
        else:
            status = _STATUS_OF[v.kind]
        await self._publish(v, status, latency if changed else None)

    async def _hardware_lock(self, gpu: int) -> int | None:
        """The lock the hardware reports now (None: default clocks, or no way to read it)."""
        if not isinstance(self.backend, LockReader):
            return None
        self._verified_at[gpu] = self._now()
        try:
            return await asyncio.to_thread(self.backend.read_locked_clock_mhz, gpu)
        except GpuError as exc:
            self._log.warning("hardware_read_failed", gpu=gpu, error=str(exc))
            return None

    async def _reapply_if_lost(self, v: Verdict) -> bool:
        """On a renewal, every ``verify_interval_s``: re-apply the lease's lock if the
        hardware holds another (or none). True when it re-applied (and published)."""
        due = self._verified_at.get(v.gpu, -math.inf) + self.config.verify_interval_s
        if v.target_mhz is None or self._now() < due or not isinstance(self.backend, LockReader):
            return False
        held = await self._hardware_lock(v.gpu)
        if held == v.target_mhz:
            return False
        self._log.warning("hardware_lock_differs", gpu=v.gpu, held_mhz=held, lease_mhz=v.target_mhz)
        try:
            await asyncio.to_thread(self.backend.reset_locked_clocks, v.gpu)  # clears the cache
            await asyncio.to_thread(self.backend.set_locked_sm_clock_mhz, v.gpu, v.target_mhz)
        except GpuError as exc:
            await self._publish(v, "error", None, reason=f"{exc.code}: {exc}")
            if self.table is not None:
                self._enqueue([self.table.on_apply_failed(v.gpu, self._now(), str(exc))])
            return True
        reason = f"hardware held {held} MHz, not the lease's {v.target_mhz}: re-applied"
        await self._publish(v, "applied", None, reason=reason)
        return True

    async def _publish(
        self, v: Verdict, status: ClockStatus, latency_s: float | None, *, reason: str = ""
    ) -> None:
        self._state_seq += 1
        known = v.gpu in self._queues
        locked = self.backend.locked_clock_mhz(v.gpu) if known else None
        expires_t_ns = None
        if v.lease_expires_s is not None:
            expires_t_ns = time.time_ns() + int(1e9 * (v.lease_expires_s - self._now()))
        reason = reason or v.reason
        if self.backend.name == "dry-run" and status in ("applied", "reset", "expired"):
            reason += " (dry-run: nothing applied)"
        state = ClockState(
            t_ns=time.time_ns(),
            node=self.node,
            gpu=v.gpu,
            seq=self._state_seq,
            status=status,
            locked_clock_mhz=locked,
            requested_clock_mhz=v.requested_mhz,
            command_seq=v.command_seq,
            lease_expires_t_ns=expires_t_ns,
            backend=self.backend.name,
            reason=reason,
            apply_latency_s=latency_s,
        )
        self.outcomes[status] += 1
        COMMANDS.labels(self.node, status).inc()
        if known:
            LOCKED_MHZ.labels(self.node, str(v.gpu)).set(locked or 0)
        if status in ("rejected", "error"):  # forged floods: one line per GPU and kind a while
            suppressed = self._throttle.allow((status, v.gpu if known else "unknown"))
            if suppressed is not None:
                self._log.warning(
                    "clock_state",
                    gpu=v.gpu,
                    status=status,
                    locked_mhz=locked,
                    reason=state.reason,
                    suppressed=suppressed,
                )
        else:
            self._log.debug("clock_state", gpu=v.gpu, status=status, locked_mhz=locked)
        try:
            await self.bus.publish(subjects.clock_state(self.node, v.gpu), state)
        except Exception as exc:  # the bus may be gone: the state is logged above
            self._log.warning("clock_state_not_published", gpu=v.gpu, error=str(exc))

    # -- status ------------------------------------------------------------------------

    def stats(self) -> dict[str, Any]:
        """Counts and per-GPU state, for the micro service and logs."""
        gpus = []
        if self.table is not None:
            now = self._now()
            for g in self.table.gpus:
                exp = self.table.lease_expires_s(g)
                gpus.append(
                    {
                        "gpu": g,
                        "target_mhz": self.table.target_mhz(g),
                        "locked_clock_mhz": self.backend.locked_clock_mhz(g),
                        "pending_mhz": self.table.pending_mhz(g),
                        "lease_left_s": None if exp is None else round(exp - now, 3),
                    }
                )
        return {
            "node": self.node,
            "backend": self.backend.name,
            "gpus": gpus,
            "outcomes": dict(self.outcomes),
            "malformed_dropped": self.bus.decode_error_total(),
            "received": self.bus.received,
        }
