"""The telemetry service: sample GPUs and engines on schedule, publish on the bus.

One asyncio task per GPU source (per instance) at ``rates.gpu_hz`` and one per
engine at ``rates.engine_hz``; the tasks never wait on each other, so a GPU
source or an instance that hangs delays only itself. Blocking source reads
(NVML, the emulator's admin HTTP) run in worker threads.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Protocol

import aiohttp
import msgspec
from aiohttp import web
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from voltana.bus.client import Bus
from voltana.common.errors import GpuError, UpstreamError
from voltana.common.logs import get_logger
from voltana.common.tasks import cancel_and_wait
from voltana.gpu.device import GpuReader
from voltana.gpu.emulated import EmulatedDevice
from voltana.gpu.nvml import NvmlDevice
from voltana.schemas import subjects
from voltana.services.runner import ServiceContext
from voltana.services.status import add_status_service
from voltana.services.telemetry.config import InstanceConfig, NodeConfig
from voltana.services.telemetry.engine import EngineScraper, EngineState
from voltana.services.telemetry.gpu_messages import GpuMessageBuilder

log = get_logger("telemetry")

_LAG_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
SAMPLING_LAG = Histogram(
    "voltana_telemetry_sampling_lag_seconds",
    "Time from a sample's scheduled tick to its publication",
    ["kind"],
    buckets=_LAG_BUCKETS,
)
SAMPLE_DURATION = Histogram(
    "voltana_telemetry_sample_duration_seconds",
    "Time one read of a source took (all GPUs of a source, or one engine scrape)",
    ["kind"],
    buckets=_LAG_BUCKETS,
)
ERRORS = Counter(
    "voltana_telemetry_errors", "Failed source reads and publications", ["kind", "source"]
)
PUBLISHED = Counter(
    "voltana_telemetry_messages_published", "Telemetry messages published", ["kind"]
)
MISSED_TICKS = Counter(
    "voltana_telemetry_missed_ticks", "Ticks skipped because a loop fell behind", ["kind"]
)
HEALTHY = Gauge("voltana_telemetry_instance_healthy", "1 while the instance answers", ["instance"])


class Publisher(Protocol):
    """What the service publishes through (``voltana.bus.client.Bus`` fits)."""

    async def publish(self, subject: str, msg: msgspec.Struct) -> None: ...


def make_source(inst: InstanceConfig, timeout_s: float, energy_hz: float = 2.0) -> GpuReader | None:
    """The GPU device an instance's config asks for (None for ``gpu_backend = "none"``)."""
    if inst.gpu_backend == "none" or not inst.gpus:
        return None
    if inst.gpu_backend == "nvml":
        return NvmlDevice(inst.gpus, energy_period_s=1.0 / energy_hz)
    return EmulatedDevice.serving(inst.gpu_admin_url, inst.gpus, timeout_s=timeout_s)


def build_sources(cfg: NodeConfig) -> dict[str, GpuReader]:
    """Open every instance's GPU source; on failure close those already open.

    Raises:
        GpuError: NVML missing, an index out of range, a bad admin URL.
    """
    sources: dict[str, GpuReader] = {}
    try:
        for inst in cfg.instances:
            src = make_source(inst, cfg.rates.http_timeout_s, cfg.rates.energy_hz)
            if src is not None:
                sources[inst.name] = src
    except BaseException:
        for s in sources.values():
            s.close()
        raise
    return sources


@dataclass
class _Status:
    """The last error per loop, so logs say when things break and recover, not every tick."""

    errors: dict[str, str | None] = field(default_factory=dict)

    def report(self, key: str, error: str | None, **kw: object) -> None:
        before = self.errors.get(key)
        self.errors[key] = error
        if error is not None and error != before:
            log.warning("telemetry_source_failing", source=key, error=error, **kw)
        elif error is None and before is not None:
            log.info("telemetry_source_recovered", source=key, **kw)


class TelemetryService(ServiceContext):
    """Runs every sampling loop of one node until stopped.

    Args:
        cfg: the node config.
        publisher: where messages go (a connected ``Bus``).
        sources: GPU sources per instance name; default built from ``cfg`` (and then
            closed by ``stop``; given ones stay open: their owner closes them).
        clock: monotonic time in seconds (injectable for tests of scheduling).

    ``start`` starts the loops and the metrics endpoint; ``stop`` ends them (and
    closes the sources built here); ``done`` returns only if a loop failed.
    """

    def __init__(
        self,
        cfg: NodeConfig,
        publisher: Publisher,
        *,
        sources: dict[str, GpuReader] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.cfg = cfg
        self.publisher = publisher
        self.clock = clock
        self._status = _Status()
        self.published: dict[str, int] = {"gpu": 0, "engine": 0}
        self._published_metric = {k: PUBLISHED.labels(k) for k in self.published}
        self.metrics_port: int | None = None
        self._runner: web.AppRunner | None = None
        self._executor: ThreadPoolExecutor | None = None
        self._session: aiohttp.ClientSession | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._service: Any = None
        self._owns_sources = sources is None
        if sources is None:
            sources = build_sources(cfg)
        self.sources = sources

    # -- loops ------------------------------------------------------------

    async def _publish(self, kind: str, subject: str, msg: msgspec.Struct, source: str) -> None:
        key = f"publish:{source}"
        try:
            await self.publisher.publish(subject, msg)
        except Exception as exc:
            ERRORS.labels("publish", source).inc()
            self._status.report(key, f"{type(exc).__name__}: {exc}")
            return
        if self._status.errors.get(key) is not None:
            self._status.report(key, None)
        self.published[kind] += 1
        self._published_metric[kind].inc()

    async def _ticks(self, hz: float, kind: str, body: Callable[[float], Awaitable[None]]) -> None:
        """Call ``await body(tick_time)`` at ``hz`` on an absolute schedule; never burst."""
        period = 1.0 / hz
        next_t = self.clock()
        while True:
            await body(next_t)
            next_t += period
            now = self.clock()
            if now > next_t:
                missed = int((now - next_t) / period)
                if missed:
                    MISSED_TICKS.labels(kind).inc(missed)
                    next_t += missed * period
            await asyncio.sleep(max(0.0, next_t - now))

    async def _gpu_loop(self, inst: InstanceConfig | None, src: GpuReader) -> None:
        name = inst.name if inst else "node"
        builder = GpuMessageBuilder(
            self.cfg.node, inst.name if inst else None, inst.role if inst else None
        )
        key = f"gpu:{name}"
        subject_of: dict[int, str] = {}

        async def tick(t_sched: float) -> None:
            t0 = self.clock()
            try:
                loop = asyncio.get_running_loop()
                samples = await loop.run_in_executor(self._executor, src.sample)
            except GpuError as exc:
                ERRORS.labels("gpu", name).inc()
                self._status.report(key, str(exc), instance=name)
                return
            SAMPLE_DURATION.labels("gpu").observe(self.clock() - t0)
            self._status.report(key, None, instance=name)
            for s in samples:
                subject = subject_of.get(s.index)
                if subject is None:
                    subject = subject_of[s.index] = subjects.telemetry_gpu(self.cfg.node, s.index)
                await self._publish("gpu", subject, builder.build(s), name)
            SAMPLING_LAG.labels("gpu").observe(self.clock() - t_sched)

        await self._ticks(self.cfg.rates.gpu_hz, "gpu", tick)

    async def _engine_loop(self, inst: InstanceConfig, session: aiohttp.ClientSession) -> None:
        scraper = EngineScraper(session, inst.url, self.cfg.rates.http_timeout_s)
        state = EngineState(inst, self.cfg.node, self.cfg.rates.latency_window_s)
        subject = subjects.telemetry_engine(inst.role, inst.name)
        key = f"engine:{inst.name}"

        async def tick(t_sched: float) -> None:
            try:
                reading = await scraper.scrape()
            except UpstreamError as exc:
                ERRORS.labels("engine", inst.name).inc()
                HEALTHY.labels(inst.name).set(0)
                self._status.report(key, str(exc), instance=inst.name)
                msg = state.on_failure(time.time_ns(), str(exc))
            else:
                SAMPLE_DURATION.labels("engine").observe(reading.latency_s)
                HEALTHY.labels(inst.name).set(1)
                self._status.report(key, None, instance=inst.name)
                msg = state.on_reading(reading)
            await self._publish("engine", subject, msg, inst.name)
            SAMPLING_LAG.labels("engine").observe(self.clock() - t_sched)

        await self._ticks(self.cfg.rates.engine_hz, "engine", tick)

    # -- metrics endpoint ---------------------------------------------------

    async def _start_metrics(self) -> None:
        mc = self.cfg.metrics
        if mc.port < 0:
            return

        async def metrics(_: web.Request) -> web.Response:
            return web.Response(
                body=generate_latest(REGISTRY), headers={"Content-Type": CONTENT_TYPE_LATEST}
            )

        async def health(_: web.Request) -> web.Response:
            failing = {k: v for k, v in self._status.errors.items() if v}
            return web.json_response({"ok": True, "published": self.published, "failing": failing})

        app = web.Application()
        app.router.add_get("/metrics", metrics)
        app.router.add_get("/healthz", health)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, mc.host, mc.port)
        await site.start()
        server = site._server
        sockets = getattr(server, "sockets", None) or []
        self.metrics_port = sockets[0].getsockname()[1] if sockets else mc.port

    # -- lifecycle ------------------------------------------------------------

    async def start(self) -> None:
        """Serve metrics, then start one loop per GPU source and one per engine."""
        by_name = {i.name: i for i in self.cfg.instances}
        self._session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))
        # one worker per source: a source stuck in a read never holds up another's
        self._executor = ThreadPoolExecutor(
            max_workers=max(1, len(self.sources)), thread_name_prefix="gpu-source"
        )
        await self._start_metrics()
        for name, src in self.sources.items():
            self._tasks.append(asyncio.create_task(self._gpu_loop(by_name.get(name), src)))
        for inst in self.cfg.instances:
            if inst.engine:
                HEALTHY.labels(inst.name).set(0)
                self._tasks.append(asyncio.create_task(self._engine_loop(inst, self._session)))
        if isinstance(self.publisher, Bus):  # nats.micro discovery ($SRV.PING) and status
            self._service = await add_status_service(
                self.publisher,
                name="voltana-telemetry",
                description="GPU and engine state of one node onto NATS",
                metadata={"node": self.cfg.node},
                status_subject=subjects.telemetry_status(self.cfg.node),
                status=self.stats,
                counts=lambda: {"published": dict(self.published)},
            )
        log.info(
            "telemetry_started",
            node=self.cfg.node,
            gpus=sum(len(s.indices) for s in self.sources.values()),
            instances=[i.name for i in self.cfg.instances],
            gpu_hz=self.cfg.rates.gpu_hz,
            engine_hz=self.cfg.rates.engine_hz,
            metrics_port=self.metrics_port,
        )

    def stats(self) -> dict[str, Any]:
        """What the status endpoint answers: messages published and the sources failing now."""
        failing = {k: v for k, v in self._status.errors.items() if v}
        return {"node": self.cfg.node, "published": dict(self.published), "failing": failing}

    async def done(self) -> None:
        """Return (raising its error) when a sampling loop ends; they run until stopped."""
        if not self._tasks:
            await asyncio.Event().wait()
        finished, _ = await asyncio.wait(self._tasks, return_when=asyncio.FIRST_COMPLETED)
        for t in finished:
            t.result()

    async def stop(self) -> None:
        """End the loops and the endpoint; close the sources built here. Safe after a failed start."""
        await cancel_and_wait(self._tasks)
        self._tasks.clear()
        if self._service is not None:
            with contextlib.suppress(Exception):
                await self._service.stop()
            self._service = None
        if self._session is not None:
            await self._session.close()
            self._session = None
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        if self._owns_sources:
            self._owns_sources = False  # closed once, however often stop is called
            for s in self.sources.values():
                s.close()
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)
            self._executor = None
        log.info("telemetry_stopped", node=self.cfg.node, published=self.published)
