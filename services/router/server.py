"""The router service: HTTP front, admission control, health checks, state publishing.

``Router`` owns one shared aiohttp ``ClientSession``, the :class:`ClusterState`,
one policy per side and the bus link. It hands dispatch only what dispatch needs:
a :class:`~voltana.services.router.routing.Routing` (decisions and their books)
and the session, with which :class:`~voltana.services.router.dispatch.Pd` does the
PD exchange for each request. Use it as an async context manager or through
``voltana router``.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from typing import Any

import aiohttp
import numpy as np
from aiohttp import web
from prometheus_client import generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from voltana.bus.client import BusOptions
from voltana.common.errors import ConfigError
from voltana.common.guard import LogThrottle, supervise
from voltana.common.logs import get_logger
from voltana.schemas import subjects
from voltana.schemas.base import now_ns
from voltana.schemas.config import SloConfig
from voltana.schemas.telemetry import GpuTelemetry, InstanceTelemetry
from voltana.services.router import gateway
from voltana.services.router import protocol as proto
from voltana.services.router.admission import Admission, Refused, auth_middleware, error_response
from voltana.services.router.attribution import AttributionRule
from voltana.services.router.busio import RouterBus
from voltana.services.router.config import RouterConfig, cache_aware_config
from voltana.services.router.dispatch import Pd
from voltana.services.router.energy import EnergyLink
from voltana.services.router.metrics import RouterMetrics
from voltana.services.router.policies import make_policy
from voltana.services.router.routing import Routing
from voltana.services.router.state import ClusterState, WorkerState
from voltana.services.router.unified import Unified
from voltana.services.router.upstream_http import LeanClient, worker_client
from voltana.services.router.validate import parse_request
from voltana.services.runner import ServiceContext

log = get_logger("router")

GENERATE_PATHS = ("/generate", "/v1/completions", "/v1/chat/completions")


class Router(ServiceContext):
    """One running router. ``await start()`` binds; ``await stop()`` drains and closes."""

    def __init__(self, cfg: RouterConfig) -> None:
        self.cfg = cfg.validate()
        self.metrics = RouterMetrics()
        self.state = ClusterState(
            [*cfg.prefill, *cfg.decode, *cfg.workers],
            breaker_failures=cfg.breaker_failures,
            breaker_open_s=cfg.breaker_open_s,
            health_failure_threshold=cfg.health_failure_threshold,
            telemetry_stale_s=cfg.telemetry_stale_s,
            latency_window_s=cfg.latency_window_s,
        )
        self.slo = SloConfig(ttft_s=cfg.slo_ttft_s, itl_s=cfg.slo_itl_s, margin=cfg.slo_margin)
        profile = None
        if "ecoroute" in (cfg.prefill_policy, cfg.decode_policy):
            from voltana.predictor.profile import default_profile, load_profile

            profile = (
                load_profile(cfg.profile)
                if cfg.profile
                else default_profile(cfg.profile_gpu, cfg.profile_model)
            )
        ca = cache_aware_config(cfg)
        self.prefill_policy = make_policy(
            cfg.prefill_policy, profile=profile, slo=self.slo, cache_aware=ca
        )
        self.decode_policy = make_policy(
            cfg.decode_policy, profile=profile, slo=self.slo, cache_aware=ca
        )
        self.rng = np.random.default_rng(cfg.seed)
        self.pyrng = random.Random(cfg.seed)
        bus_opts = cfg.bus_options
        if bus_opts is None and cfg.nats:
            bus_opts = BusOptions(servers=[cfg.nats], name="voltana-router")
        self.bus = RouterBus(bus_opts, self.metrics, self._on_instance, self._on_gpu)
        self.bus.node = cfg.node
        self._changed = asyncio.Event()
        rule = AttributionRule(
            attention_tokens=cfg.energy_attention_tokens,
            kv_tokens=cfg.energy_kv_tokens,
            idle="spread" if cfg.energy_idle == "spread" else "overhead",
        )
        self.energy = EnergyLink(
            rule,
            self.metrics,
            lambda rec: self.bus.publish(subjects.REQUEST_DONE, rec),
            wait_s=cfg.energy_wait_s,
        )
        self.routing = Routing(
            state=self.state,
            prefill_policy=self.prefill_policy,
            decode_policy=self.decode_policy,
            rng=self.rng,
            metrics=self.metrics,
            bus=self.bus,
            slo=self.slo,
            changed=self._changed,
            energy=self.energy,
        )
        self.admission = Admission(self.cfg, self.metrics)
        self._log_throttle = LogThrottle()
        self.bus.status = lambda: gateway.status(
            self.admission.active, self.admission.waiting, self.state
        )
        self._tasks: list[asyncio.Task[Any]] = []
        self._runner: web.AppRunner | None = None
        self._stopping = False
        self.session: aiohttp.ClientSession
        self.pd: Pd  # needs the session: built in start()
        self.port = cfg.port

    # -- lifecycle -----------------------------------------------------------

    def app(self) -> web.Application:
        # without a key the middleware would only pass through: one coroutine less a request
        auth = (
            [auth_middleware(self.cfg.api_key, self.metrics)]
            if self.cfg.api_key is not None
            else []
        )
        app = web.Application(client_max_size=self.cfg.max_request_bytes, middlewares=auth)
        for path in GENERATE_PATHS:
            app.router.add_post(path, self._generate)
        app.router.add_get("/health", self._health)
        app.router.add_get("/health_generate", self._health)
        app.router.add_get("/metrics", self._metrics)
        app.router.add_get("/get_server_info", self._server_info)
        app.router.add_post("/flush_cache", self._flush_cache)
        app.router.add_get("/voltana/router/state", self._state_json)
        gateway.add_gateway_routes(  # model info, /server_info; the JSON 404 last
            app,
            first_available=self._first_available,
            session=lambda: self.session,
            server_info=self._server_info,
        )
        return app

    async def start(self) -> Router:
        connector = aiohttp.TCPConnector(
            limit=self.cfg.upstream_connections,
            limit_per_host=0,
            ttl_dns_cache=300,
            keepalive_timeout=60,
        )
        timeout = aiohttp.ClientTimeout(
            total=self.cfg.request_timeout_s,
            sock_connect=self.cfg.connect_timeout_s,
            sock_read=self.cfg.read_timeout_s,
        )
        # no cookies between router and workers: skip the jar's per-request work
        self.session = aiohttp.ClientSession(
            connector=connector,
            timeout=timeout,
            auto_decompress=False,
            cookie_jar=aiohttp.DummyCookieJar(),
            # the workers need none of these; auto_decompress is off, so no Accept-Encoding
            skip_auto_headers=("User-Agent", "Accept", "Accept-Encoding"),
        )
        self.upstream = worker_client(self.cfg, self.session)  # the calls of each request
        self.pd = (Unified if self.cfg.mode == "unified" else Pd)(
            self.routing,
            self.upstream,
            self.pyrng,
            prefill_retries=self.cfg.prefill_retries,
            retry_backoff_s=self.cfg.retry_backoff_s,
        )
        self._runner = web.AppRunner(
            self.app(),
            handler_cancellation=True,
            access_log=None,
            shutdown_timeout=self.cfg.shutdown_timeout_s,
            keepalive_timeout=self.cfg.idle_timeout_s,  # also bounds a slow header read
            lingering_time=1.0,  # unread rest of a refused body: drained at most 1 s, then closed
        )
        await self._runner.setup()
        site = web.TCPSite(
            self._runner,
            self.cfg.host,
            self.cfg.port,
            backlog=4096,
            reuse_port=self.cfg.reuse_port or None,  # --processes: several share the port
        )
        try:
            await site.start()  # before the bus: a taken port ends start-up with nothing running
        except OSError as exc:
            raise ConfigError(
                f"router cannot listen on {self.cfg.host}:{self.cfg.port}: {exc.strerror or exc}"
            ) from exc
        if self.cfg.port == 0:
            self.port = int(self._runner.addresses[0][1])
        await self.bus.start()
        self._tasks = [supervise(asyncio.create_task(self._state_loop(), name="router-state"), log)]
        if self.cfg.health_check_interval_s > 0:
            task = asyncio.create_task(self._health_loop(), name="router-health")
            self._tasks.append(supervise(task, log))
        log.info(
            "router_started",
            host=self.cfg.host,
            port=self.port,
            prefill=[w.url for w in self.cfg.prefill],
            decode=[w.url for w in self.cfg.decode],
            mode=self.cfg.mode,
            workers=[w.url for w in self.cfg.workers],
            prefill_policy=self.prefill_policy.name,
            decode_policy=self.decode_policy.name,
            nats=self.cfg.bus_options.servers if self.cfg.bus_options else self.cfg.nats,
        )
        return self

    async def stop(self) -> None:
        self._stopping = True
        for t in self._tasks:
            t.cancel()
        if self._tasks:
            _, pending = await asyncio.wait(self._tasks, timeout=2.0)
            if pending:
                log.warning("router_tasks_did_not_stop", tasks=[t.get_name() for t in pending])
        if self._runner is not None:
            t0 = time.monotonic()
            await self._runner.cleanup()
            if time.monotonic() - t0 > 1.0:
                log.warning(
                    "router_slow_shutdown",
                    waited_s=round(time.monotonic() - t0, 2),
                    in_flight=self.admission.active,
                )
        await self.bus.stop()
        if isinstance(self.upstream, LeanClient):  # aiohttp's session is closed below
            await self.upstream.close()
        await self.session.close()
        log.info("router_stopped")

    @property
    def url(self) -> str:
        return f"http://{self.cfg.host}:{self.port}"

    # -- telemetry -------------------------------------------------------------

    def _on_instance(self, msg: InstanceTelemetry) -> None:
        if self.state.on_instance_telemetry(msg, time.monotonic()):
            self._changed.set()

    def _on_gpu(self, msg: GpuTelemetry) -> None:
        self.state.on_gpu_telemetry(msg, time.monotonic())
        name = self.state.worker_name(msg.instance)
        if name is not None:
            self.energy.on_gpu(msg, name)

    def _bad_input(self, where: str, exc: Exception) -> None:
        """One log line per place and error kind per interval; the loop goes on."""
        suppressed = self._log_throttle.allow((where, type(exc).__name__))
        if suppressed is not None:
            log.warning("router_bad_input", where=where, error=repr(exc), suppressed=suppressed)

    # -- background loops ------------------------------------------------------

    async def _state_loop(self) -> None:
        """Publish InstanceState on change (coalesced, <= 100 Hz) and at least at state_publish_hz."""
        period = 0.9 / self.cfg.state_publish_hz  # 10% margin: late wake-ups keep the rate
        m = self.metrics
        next_due = time.monotonic()
        while not self._stopping:
            # asyncio.timeout, not wait_for: Python 3.11's wait_for can swallow a cancel
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(max(next_due - time.monotonic(), 0)):
                    await self._changed.wait()
            self._changed.clear()
            now = time.monotonic()
            next_due = now + period
            t_ns = now_ns()
            for w in self.state.workers.values():
                try:
                    self._publish_worker(w, now, t_ns)
                except Exception as exc:  # one worker's bad data must not stop the others
                    self._bad_input(f"state:{w.name}", exc)
            self.energy.tick()
            m.in_flight.set(self.admission.active)
            m.queued.set(self.admission.waiting)
            await asyncio.sleep(0.01)

    def _worker_gauges(self, w: WorkerState, now: float) -> None:
        age = self.state.telemetry_age_s(w, now)
        self.metrics.set_worker(
            w.name,
            w.published_name,
            w.spec.role,
            w.load.in_flight_requests,
            w.healthy,
            w.breaker.is_open(now),
            age,
        )

    def _publish_worker(self, w: WorkerState, now: float, t_ns: int) -> None:
        self._worker_gauges(w, now)
        if self.bus.connected:
            msg = self.state.instance_state(w.name, now, t_ns)
            self.bus.publish(subjects.router_state(msg.role, msg.instance), msg)

    async def _check(self, w: WorkerState) -> None:
        url = w.spec.url + self.cfg.health_check_path
        try:
            timeout = aiohttp.ClientTimeout(total=self.cfg.health_check_timeout_s)
            async with self.session.get(url, timeout=timeout) as resp:
                await resp.read()
                ok, err = resp.status == 200, None if resp.status == 200 else f"HTTP {resp.status}"
        except (aiohttp.ClientError, TimeoutError) as exc:
            ok, err = False, f"{type(exc).__name__}: {exc}"
        if self.state.health_result(w.name, ok, err):
            log.warning("worker_health_changed", instance=w.name, healthy=ok, error=err)
            self._changed.set()

    async def _health_loop(self) -> None:
        while not self._stopping:
            await asyncio.gather(*(self._check(w) for w in self.state.workers.values()))
            await asyncio.sleep(self.cfg.health_check_interval_s)

    # -- handlers --------------------------------------------------------------

    _err = staticmethod(error_response)

    async def _generate(self, request: web.Request) -> web.StreamResponse:
        path = request.path
        try:
            async with self.admission.admit(request) as grant:
                raw = await grant.read()
                try:
                    body, info = parse_request(
                        path,
                        raw,
                        max_depth=self.cfg.max_json_depth,
                        max_batch=self.cfg.max_batch_items,
                    )
                except proto.ProtocolError as exc:
                    self.metrics.rejected.labels("bad_request").inc()
                    return self._err(400, str(exc))
                del raw  # the decoded body is what dispatch keeps
                return await self.pd.serve(request, path, body, info)
        except Refused as exc:
            return exc.response()

    async def _health(self, request: web.Request) -> web.Response:
        now = time.monotonic()
        roles = ("unified",) if self.cfg.mode == "unified" else ("prefill", "decode")
        ok = all(any(w.available(now) for w in self.state.role(r)) for r in roles)
        return web.Response(status=200 if ok else 503, text="" if ok else "no healthy workers")

    async def _metrics(self, request: web.Request) -> web.Response:
        return web.Response(
            body=generate_latest(self.metrics.registry),
            headers={"Content-Type": CONTENT_TYPE_LATEST},
        )

    def _first_available(self) -> WorkerState | None:
        now = time.monotonic()
        for role in ("decode", "prefill", "unified"):
            for w in self.state.role(role):
                if w.available(now):
                    return w
        return None

    async def _server_info(self, request: web.Request) -> web.Response:
        roles = ("unified",) if self.cfg.mode == "unified" else ("prefill", "decode")
        out = await gateway.workers_info(self.session, self.state, roles)
        out["router"] = {
            "name": "voltana-router",
            "prefill_policy": self.prefill_policy.name,
            "decode_policy": self.decode_policy.name,
        }
        return web.json_response(out)

    async def _flush_cache(self, request: web.Request) -> web.Response:
        ok = await gateway.flush_all(self.session, list(self.state.workers.values()))
        return web.Response(status=200 if ok else 502)

    async def _state_json(self, request: web.Request) -> web.Response:
        now = time.monotonic()
        from voltana.schemas.codec import to_json

        views = [self.state.instance_state(n, now, now_ns()) for n in self.state.workers]
        body = b'{"nats_connected":' + (b"true" if self.bus.connected else b"false")
        body += b',"instances":[' + b",".join(to_json(v) for v in views) + b"]}"
        return web.Response(body=body, content_type="application/json")
