"""The router's bus link: publish what it observes, hear telemetry, survive NATS being down.

Publishing never blocks a request: messages go into a bounded queue drained by
one task; when NATS is unreachable they are dropped and counted. Connection is
retried in the background; the router serves on its own accounting meanwhile
and says so (``voltana_router_nats_connected`` = 0 and a warning log).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from typing import Any

import msgspec
from voltana.bus.client import Bus, BusOptions
from voltana.common.errors import BusError
from voltana.common.guard import supervise
from voltana.common.logs import get_logger
from voltana.common.tasks import cancel_and_wait
from voltana.schemas import subjects
from voltana.schemas.delivery import KEEP, delivery_of
from voltana.schemas.telemetry import GpuTelemetry, InstanceTelemetry
from voltana.services.router.metrics import RouterMetrics
from voltana.services.status import add_status_service

log = get_logger("router.bus")


class RouterBus:
    """Background connection to NATS with a drop-when-down publish queue."""

    def __init__(
        self,
        opts: BusOptions | None,
        metrics: RouterMetrics,
        on_instance: Callable[[InstanceTelemetry], None],
        on_gpu: Callable[[GpuTelemetry], None],
        *,
        node: str = "router",
        status: Callable[[], dict[str, Any]] | None = None,
        queue_size: int = 65536,
        retry_s: float = 1.0,
    ) -> None:
        self.opts = opts
        self.url = ", ".join(opts.servers) if opts else None
        self.metrics = metrics
        self.on_instance = on_instance
        self.on_gpu = on_gpu
        self.queue: asyncio.Queue[tuple[str, msgspec.Struct]] = asyncio.Queue(queue_size)
        self.retry_s = retry_s
        self.bus: Bus | None = None
        self.node = node
        self.status = status
        self._service: Any = None
        self.dropped = 0
        self._tasks: list[asyncio.Task[Any]] = []
        self._down_logged = False
        metrics.nats_connected.set(0)

    @property
    def connected(self) -> bool:
        return self.bus is not None and self.bus.is_connected

    async def start(self) -> None:
        if self.url is None:
            log.info("bus_disabled", reason="no --nats URL; serving on own accounting")
            return
        self._tasks = [
            supervise(asyncio.create_task(self._connect_loop(), name="router-bus-connect"), log),
            supervise(asyncio.create_task(self._drain(), name="router-bus-drain"), log),
        ]

    async def stop(self) -> None:
        await cancel_and_wait(self._tasks)
        if self._service is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._service.stop(), 3.0)
            self._service = None
        if self.bus is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.bus.close(), 6.0)  # the outbox gets 5 s to flush
        self.metrics.nats_connected.set(0)

    def publish(self, subject: str, msg: msgspec.Struct) -> None:
        """Queue one message; dropped (and counted) when the queue is full, or the bus is down
        and the message is sampled (``schemas.delivery``)."""
        if self.url is None:
            return
        if not self.connected and (self.bus is None or delivery_of(subject) != KEEP):
            # sampled state is dropped while NATS is down; KEEP events wait in the bus's outbox
            self._drop(type(msg).__name__)
            return
        try:
            self.queue.put_nowait((subject, msg))
        except asyncio.QueueFull:
            self._drop(type(msg).__name__)

    def _drop(self, kind: str) -> None:
        self.dropped += 1
        self.metrics.bus_dropped.labels(kind).inc()

    def _mark(self, up: bool) -> None:
        self.metrics.nats_connected.set(1 if up else 0)
        if up:
            if self._down_logged:
                log.info("nats_up", url=self.url, note="telemetry and publishing resumed")
            self._down_logged = False
        elif not self._down_logged:
            log.warning("nats_down", url=self.url, note="serving on own accounting")
            self._down_logged = True

    async def _connect_loop(self) -> None:
        assert self.opts is not None
        opts = msgspec.structs.replace(self.opts, connect_timeout_s=1.0, reconnect_max_s=1.0)
        while self.bus is None:
            try:
                bus = await Bus.connect(opts)
            except BusError as exc:
                self._mark(False)
                log.debug("nats_connect_failed", error=str(exc))
                await asyncio.sleep(self.retry_s)
                continue
            bus.on_disconnect(lambda: self._mark(False))
            bus.on_reconnect(lambda: self._mark(True))
            await bus.subscribe(
                subjects.TELEMETRY_ENGINE_ALL, InstanceTelemetry, lambda m, s: self.on_instance(m)
            )
            await bus.subscribe(
                subjects.TELEMETRY_GPU_ALL, GpuTelemetry, lambda m, s: self.on_gpu(m)
            )
            if self.status is not None:  # nats.micro discovery ($SRV.PING) and status
                self._service = await add_status_service(
                    bus,
                    name="voltana-router",
                    description="SGLang PD router with energy-aware routing",
                    metadata={"node": self.node},
                    status_subject=subjects.router_status(self.node),
                    status=self.status,
                    counts=lambda: {"bus_dropped": self.dropped},
                )
            self.bus = bus
            self._mark(True)
        # watch the link: nats-py reconnects by itself; keep the gauge true
        while True:
            await asyncio.sleep(0.5)
            self._mark(self.connected)

    async def _drain(self) -> None:
        while True:
            subject, msg = await self.queue.get()
            bus = self.bus
            if bus is None or (not bus.is_connected and delivery_of(subject) != KEEP):
                self._drop(type(msg).__name__)
                continue
            try:
                await bus.publish(subject, msg)
            except Exception as exc:
                self._drop(type(msg).__name__)
                log.debug("bus_publish_failed", subject=subject, error=str(exc))
