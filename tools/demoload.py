"""Demo traffic and a status view for ``voltana up``.

The load is Poisson arrivals of streaming ``/generate`` requests with random
prompt and output lengths; the status view folds what the bus carries (GPU
telemetry, request records) into one summary every few seconds.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field

import aiohttp
import msgspec
import numpy as np
from voltana.bus.client import Bus
from voltana.common.logs import get_logger
from voltana.schemas import GpuTelemetry, RequestRecord, subjects

log = get_logger("up")

_WORDS = ("energy", "clock", "token", "prefill", "decode", "latency", "budget", "watt")


class LoadSpec(msgspec.Struct, frozen=True, kw_only=True):
    """Poisson arrivals at ``rate_rps``; prompt and output lengths uniform in the ranges."""

    rate_rps: float = 2.0
    prompt_words: tuple[int, int] = (64, 1024)
    output_tokens: tuple[int, int] = (16, 256)
    seed: int = 0


async def run_load(router_url: str, spec: LoadSpec, stop: asyncio.Event) -> None:
    """Send requests until ``stop`` is set; waits for those in flight before returning."""
    rng = np.random.default_rng(spec.seed)
    tasks: set[asyncio.Task[None]] = set()
    timeout = aiohttp.ClientTimeout(total=300)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        while not stop.is_set():
            try:
                await asyncio.wait_for(
                    stop.wait(), timeout=float(rng.exponential(1.0 / spec.rate_rps))
                )
                break
            except TimeoutError:
                pass
            words = int(rng.integers(*spec.prompt_words))
            body = {
                "text": " ".join(_WORDS[i % len(_WORDS)] for i in rng.integers(0, 8, words)),
                "sampling_params": {
                    "max_new_tokens": int(rng.integers(*spec.output_tokens)),
                    "ignore_eos": True,
                },
                "stream": True,
            }
            task = asyncio.create_task(_one(session, router_url, body))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
        if tasks:
            await asyncio.wait(tasks, timeout=30)


async def _one(session: aiohttp.ClientSession, url: str, body: dict[str, object]) -> None:
    try:
        async with session.post(url + "/generate", json=body) as resp:
            async for _ in resp.content:
                pass
    except (aiohttp.ClientError, TimeoutError) as exc:
        log.warning("demo_request_failed", error=str(exc))


@dataclass
class StatusView:
    """Latest GPU telemetry per GPU and request records since the last summary."""

    gpus: dict[tuple[str, int], GpuTelemetry] = field(default_factory=dict)
    first_energy_j: dict[tuple[str, int], float] = field(default_factory=dict)
    records: list[RequestRecord] = field(default_factory=list)
    total_requests: int = 0
    total_met: int = 0

    async def attach(self, bus: Bus) -> None:
        await bus.subscribe(subjects.TELEMETRY_GPU_ALL, GpuTelemetry, self._on_gpu)
        await bus.subscribe(subjects.REQUEST_DONE, RequestRecord, self._on_record)

    def _on_gpu(self, msg: GpuTelemetry, subject: str) -> None:
        key = (msg.node, msg.gpu)
        self.gpus[key] = msg
        self.first_energy_j.setdefault(key, msg.energy_j)

    def _on_record(self, msg: RequestRecord, subject: str) -> None:
        self.records.append(msg)
        self.total_requests += 1
        self.total_met += bool(msg.slo_met)

    def summary(self) -> dict[str, object]:
        recs, self.records = self.records, []
        ttfts = [r.ttft_s for r in recs if r.ttft_s is not None]
        itls = [r.itl_mean_s for r in recs if r.itl_mean_s is not None]
        energy = sum(g.energy_j - self.first_energy_j[k] for k, g in self.gpus.items())
        return {
            "requests": len(recs),
            "slo_met_total": f"{self.total_met}/{self.total_requests}",
            "ttft_p50_ms": round(1000 * float(np.median(ttfts)), 1) if ttfts else None,
            "itl_mean_ms": round(1000 * float(np.mean(itls)), 2) if itls else None,
            "gpus": {
                f"{g.instance or g.gpu}": f"{g.sm_clock_mhz} MHz {g.power_w:.0f} W"
                for g in sorted(self.gpus.values(), key=lambda g: g.gpu)
            },
            "energy_j": round(energy, 1),
        }


async def report_status(view: StatusView, stop: asyncio.Event, every_s: float = 5.0) -> None:
    start = time.monotonic()
    while not stop.is_set():
        try:
            await asyncio.wait_for(stop.wait(), timeout=every_s)
        except TimeoutError:
            log.info("status", uptime_s=round(time.monotonic() - start), **view.summary())
