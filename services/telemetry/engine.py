"""Engine source: scrape one SGLang server and turn scrapes into ``InstanceTelemetry``.

:class:`EngineScraper` is the I/O shell (aiohttp, one shared session): it reads
``/metrics`` and the load endpoint concurrently, detecting on first contact
whether the server has ``/v1/loads`` (0.5.23) or ``/get_load`` (0.4.7).
:class:`EngineState` is pure: readings and times in, messages out.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Any

import aiohttp
import msgspec
from voltana.common.errors import UpstreamError
from voltana.schemas.telemetry import InstanceTelemetry, LatencyWindow
from voltana.services.telemetry.config import InstanceConfig
from voltana.services.telemetry.engine_metrics import (
    TTFT,
    LoadSnapshot,
    MetricsSnapshot,
    parse_get_load,
    parse_metrics,
    parse_v1_loads,
)
from voltana.services.telemetry.latency import HistogramWindow

V1_LOADS = "/v1/loads?include=core,queues,disagg"
GET_LOAD = "/get_load"
_UNKNOWN = "?"


@dataclass(frozen=True, slots=True)
class EngineReading:
    """One successful scrape."""

    t_ns: int
    mono_s: float
    latency_s: float
    metrics: MetricsSnapshot
    load: LoadSnapshot | None
    version: str


class EngineScraper:
    """Reads one SGLang server. ``scrape()`` raises ``UpstreamError`` when it does not answer."""

    def __init__(self, session: aiohttp.ClientSession, url: str, timeout_s: float = 1.0) -> None:
        self.url = url.rstrip("/")
        self._session = session
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)
        self.load_path: str | None = _UNKNOWN

    async def _get(self, path: str) -> tuple[int, bytes]:
        try:
            async with self._session.get(self.url + path, timeout=self._timeout) as resp:
                return resp.status, await resp.read()
        except TimeoutError as exc:
            raise UpstreamError(f"{self.url}{path}: no answer in time", url=self.url) from exc
        except aiohttp.ClientError as exc:
            raise UpstreamError(f"{self.url}{path}: {exc}", url=self.url) from exc

    async def _load(self) -> LoadSnapshot | None:
        if self.load_path == _UNKNOWN:
            for path in (V1_LOADS, GET_LOAD):
                status, body = await self._get(path)
                if status == 200:
                    self.load_path = path
                    return self._parse_load(path, body)
                if status not in (404, 405):
                    raise UpstreamError(
                        f"{self.url}{path} answered {status}", url=self.url, status=status
                    )
            self.load_path = None  # neither endpoint: gauges only
            return None
        if self.load_path is None:
            return None
        status, body = await self._get(self.load_path)
        if status != 200:
            self.load_path = _UNKNOWN  # the server changed under us: detect again next time
            raise UpstreamError(
                f"{self.url}{self.load_path} answered {status}", url=self.url, status=status
            )
        return self._parse_load(self.load_path, body)

    def _parse_load(self, path: str, body: bytes) -> LoadSnapshot:
        try:
            doc: Any = decode_answer(body)
            return parse_v1_loads(doc) if path == V1_LOADS else parse_get_load(doc)
        except ValueError as exc:
            raise UpstreamError(f"{self.url}{path}: malformed answer: {exc}", url=self.url) from exc

    async def _metrics(self) -> MetricsSnapshot:
        status, body = await self._get("/metrics")
        if status == 404:
            raise UpstreamError(
                f"{self.url}/metrics not found: start SGLang with --enable-metrics",
                url=self.url,
                status=404,
            )
        if status != 200:
            raise UpstreamError(
                f"{self.url}/metrics answered {status}", url=self.url, status=status
            )
        try:
            return parse_metrics(body.decode("utf-8", errors="replace"))
        except ValueError as exc:
            raise UpstreamError(
                f"{self.url}/metrics: unparsable text: {exc}", url=self.url
            ) from exc

    async def scrape(self) -> EngineReading:
        t_ns, m0 = time.time_ns(), time.monotonic()
        try:
            metrics, load = await asyncio.gather(self._metrics(), self._load())
        except UpstreamError:
            if self.load_path is not None:
                self.load_path = _UNKNOWN
            raise
        m1 = time.monotonic()
        if self.load_path == V1_LOADS:
            version = "0.5.23"
        elif self.load_path == GET_LOAD:
            version = "0.4.7"
        else:
            version = metrics.looks_like
        return EngineReading(
            t_ns=t_ns,
            mono_s=(m0 + m1) / 2,
            latency_s=m1 - m0,
            metrics=metrics,
            load=load,
            version=version,
        )


def decode_answer(body: bytes) -> Any:
    """A server's JSON answer; ValueError for anything that is not JSON (deep nesting included)."""
    try:
        return msgspec.json.decode(body)
    except msgspec.DecodeError as exc:
        raise ValueError(str(exc)) from exc
    except RecursionError:
        raise ValueError("JSON nested too deeply") from None


def _first(*values: float | int | None) -> float:
    for v in values:
        if v is not None:
            return float(v)
    return 0.0


class EngineState:
    """Per-instance state between scrapes: sequence number, latency windows, last values."""

    def __init__(self, inst: InstanceConfig, node: str, window_s: float = 5.0) -> None:
        self.inst = inst
        self.node = node
        self.seq = 0
        self._ttft = HistogramWindow(window_s)
        self._itl = HistogramWindow(window_s)
        self._last: InstanceTelemetry | None = None

    def _next_seq(self) -> int:
        self.seq += 1
        return self.seq

    def on_reading(self, r: EngineReading) -> InstanceTelemetry:
        """The message for one successful scrape."""
        m, ld = r.metrics, r.load or LoadSnapshot(endpoint="none")
        ttft: LatencyWindow | None = None
        itl: LatencyWindow | None = None
        if TTFT in m.histograms:
            ttft = self._ttft.update(r.mono_s, m.histograms[TTFT])
        itl_snap = m.itl()
        if itl_snap is not None:
            itl = self._itl.update(r.mono_s, itl_snap)
        prealloc = m.gauge("num_decode_prealloc_queue_reqs") + m.gauge(
            "num_prefill_prealloc_queue_reqs"
        )
        msg = InstanceTelemetry(
            t_ns=r.t_ns,
            instance=self.inst.name,
            role=self.inst.role,
            node=self.node,
            url=self.inst.url,
            seq=self._next_seq(),
            gpus=list(self.inst.gpus),
            healthy=True,
            num_running_reqs=int(_first(ld.running_reqs, m.gauges.get("num_running_reqs"))),
            num_queue_reqs=int(_first(ld.waiting_reqs, m.gauges.get("num_queue_reqs"))),
            kv_used_tokens=int(
                _first(
                    ld.used_tokens, m.gauges.get("kv_used_tokens"), m.gauges.get("num_used_tokens")
                )
            ),
            kv_capacity_tokens=ld.capacity_tokens,
            token_usage=_first(ld.token_usage, m.gauges.get("token_usage")),
            gen_throughput_tps=_first(m.gauges.get("gen_throughput"), ld.gen_throughput_tps),
            prompt_tokens_total=m.counters.get("prompt_tokens", 0.0),
            generation_tokens_total=m.counters.get("generation_tokens", 0.0),
            requests_total=m.counters.get("num_requests", 0.0),
            cache_hit_rate=m.gauge("cache_hit_rate"),
            cached_tokens_total=m.counters.get("cached_tokens", 0.0),
            num_bootstrap_queue_reqs=int(
                _first(ld.bootstrap_queue_reqs, m.gauges.get("num_prefill_bootstrap_queue_reqs"))
            ),
            num_prealloc_queue_reqs=int(_first(ld.prealloc_queue_reqs, prealloc)),
            num_transfer_queue_reqs=int(
                _first(ld.transfer_queue_reqs, m.gauges.get("num_decode_transfer_queue_reqs"))
            ),
            num_inflight_queue_reqs=int(
                _first(ld.inflight_queue_reqs, m.gauges.get("num_prefill_inflight_queue_reqs"))
            ),
            ttft=ttft,
            itl=itl,
            scrape_latency_s=r.latency_s,
            engine_version=r.version,
        )
        self._last = msg
        return msg

    def on_failure(self, t_ns: int, error: str) -> InstanceTelemetry:
        """The message for a failed scrape: unhealthy, last known engine values kept."""
        seq = self._next_seq()
        if self._last is not None:
            return msgspec.structs.replace(
                self._last,
                t_ns=t_ns,
                seq=seq,
                healthy=False,
                error=error,
                ttft=None,
                itl=None,
                scrape_latency_s=None,
            )
        return InstanceTelemetry(
            t_ns=t_ns,
            instance=self.inst.name,
            role=self.inst.role,
            node=self.node,
            url=self.inst.url,
            seq=seq,
            gpus=list(self.inst.gpus),
            healthy=False,
            error=error,
        )
