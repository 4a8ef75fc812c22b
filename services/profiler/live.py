"""Profiling running workers over HTTP: an emulated worker now, SGLang on a GPU node later.

The prober locks each instance's GPUs through a GPU device (:mod:`voltana.gpu`,
one per instance: the emulator's admin endpoint or NVML), drives the worker
with the requests a serving engine sees, and reads energy from the same
device's cumulative counters:

- decode: ``B`` concurrent streaming ``/generate`` requests with ``ignore_eos``,
  random prompt token ids (no prefix-cache hits) and, in PD mode, SGLang's fake
  KV transfer (``bootstrap_host`` 2.2.2.2) so no prefill partner is needed. The
  window runs from the moment every request has produced a token (all ``B`` are
  in the batch) to the first completion; iteration latency is the median time
  per token within it, energy per iteration the mean power in it times that.
- prefill: ``repeats`` sequential one-token requests of ``T`` prompt tokens;
  latency is the median client-side time, energy the counter delta per request
  (the short gaps between requests add a little idle energy).
- prefill over a cached prefix (``measure_prefill_context``): per repeat, the
  prefix of ``C`` tokens is sent first (untimed), then the same prefix with ``T``
  new tokens, timed and metered alone; a worker whose answer does not report the
  prefix as cached (``meta_info.cached_tokens``; radix cache off) gives no sample.
- idle: the counter delta over ``idle_window_s`` with nothing running.
"""

from __future__ import annotations

import asyncio
import json
import statistics
import time
from collections.abc import Sequence
from typing import Any, Literal

import aiohttp
import msgspec
import numpy as np
from voltana.common.errors import UpstreamError
from voltana.gpu.device import GpuDevice, GpuReader
from voltana.gpu.open import open_device
from voltana.predictor.measurements import (
    DecodeSample,
    HardwareInfo,
    IdleSample,
    PrefillSample,
)

__all__ = ["FAKE_BOOTSTRAP_HOST", "LiveProber", "LiveTarget"]

FAKE_BOOTSTRAP_HOST = "2.2.2.2"
_TOKEN_ID_RANGE = (100, 30_000)  # valid ids of any Llama-family vocabulary


class LiveTarget(msgspec.Struct, frozen=True, kw_only=True):
    """One worker: its base URL and the node-global indices of its GPUs."""

    url: str
    gpus: list[int]


class _Energy:
    """Cumulative energy (J) and mean SM clock of one target's GPUs."""

    def __init__(self, device: GpuReader) -> None:
        self.device = device

    def read(self) -> tuple[float, float, float]:
        samples = self.device.sample()
        t = time.monotonic()
        energy = sum(s.energy_j for s in samples)
        clock = sum(s.sm_clock_mhz for s in samples) / max(len(samples), 1)
        return energy, clock, t


class LiveProber:
    """A :class:`~voltana.predictor.measurements.Prober` for running workers.

    Args:
        gpu: GPU kind written into the profile.
        model: model name written into the profile.
        prefill: the prefill worker (PD) or the single worker (unified).
        decode: the decode worker (may be the same as ``prefill`` when unified).
        devices: one GPU device per target URL: locks its GPUs and reads their energy.
        decode_tokens: tokens generated per decode request (the window's length).
        prefill_repeats: prefills timed per sample.
        disaggregated: send the PD bootstrap fields (fake transfer).
        idle_window_s: how long idle power is measured.
        timeout_s: per-request HTTP timeout.
        seed: seed of the random prompt token ids.
    """

    source: Literal["simulated", "live", "synthetic"] = "live"

    def __init__(
        self,
        *,
        gpu: str,
        model: str,
        prefill: LiveTarget,
        decode: LiveTarget,
        devices: dict[str, GpuDevice],
        decode_tokens: int = 48,
        prefill_repeats: int = 3,
        disaggregated: bool = True,
        idle_window_s: float = 0.5,
        timeout_s: float = 120.0,
        seed: int = 0,
    ) -> None:
        if len(prefill.gpus) != len(decode.gpus):
            raise ValueError("prefill and decode instances must have the same TP size")
        self.gpu, self.model = gpu, model
        self.prefill, self.decode = prefill, decode
        self._devices = devices
        self._energy = {url: _Energy(dev) for url, dev in devices.items()}
        self.decode_tokens = max(8, decode_tokens)
        self.prefill_repeats = max(1, prefill_repeats)
        self.disaggregated = disaggregated
        self.idle_window_s = idle_window_s
        self.timeout_s = timeout_s
        self._rng = np.random.default_rng(seed)
        self._locked: dict[int, int] = {}

    @classmethod
    def build(
        cls,
        *,
        gpu: str,
        model: str,
        prefill: LiveTarget,
        decode: LiveTarget,
        backend: str = "emulated",
        **kwargs: Any,
    ) -> LiveProber:
        """A prober with one device of the named backend per worker.

        ``emulated``: clocks and energy through each worker's admin HTTP;
        ``nvml``: clocks and energy through NVML on this host (needs root to lock).
        """
        gpus_at: dict[str, list[int]] = {}
        for t in (prefill, decode):
            gpus_at[t.url] = sorted({*gpus_at.get(t.url, ()), *t.gpus})
        devices: dict[str, GpuDevice] = {}
        try:
            for url, gpus in gpus_at.items():
                devices[url] = open_device(backend, gpus=gpus, emulator_urls=[url])
        except BaseException:
            for dev in devices.values():
                dev.close()
            raise
        return cls(
            gpu=gpu,
            model=model,
            prefill=prefill,
            decode=decode,
            devices=devices,
            **kwargs,
        )

    # -- Prober -------------------------------------------------------------------------

    def hardware(self) -> HardwareInfo:
        g = self.decode.gpus[0]
        clocks = sorted(set(self._devices[self.decode.url].supported_sm_clocks_mhz(g)))
        samples = self._devices[self.decode.url].sample()
        limits = [s.power_limit_w for s in samples if s.power_limit_w is not None]
        return HardwareInfo(
            gpu=self.gpu,
            model=self.model,
            tp=len(self.decode.gpus),
            supported_clocks_mhz=clocks,
            power_limit_w=sum(limits) if limits else None,
        )

    def measure_prefill(self, clock_mhz: int, batched_tokens: int) -> PrefillSample:
        self._lock(self.prefill, clock_mhz)
        return asyncio.run(self._prefill(clock_mhz, batched_tokens))

    def measure_prefill_context(
        self, clock_mhz: int, batched_tokens: int, context_tokens: int
    ) -> PrefillSample | None:
        """``batched_tokens`` new tokens over ``context_tokens`` cached ones (None: not cached)."""
        self._lock(self.prefill, clock_mhz)
        return asyncio.run(self._prefill_context(clock_mhz, batched_tokens, context_tokens))

    def measure_decode(self, clock_mhz: int, batch_size: int, context_tokens: int) -> DecodeSample:
        self._lock(self.decode, clock_mhz)
        return asyncio.run(self._decode(clock_mhz, batch_size, context_tokens))

    def measure_idle(self, clock_mhz: int) -> IdleSample:
        self._lock(self.decode, clock_mhz)
        meter = self._energy[self.decode.url]
        time.sleep(0.05)
        e0, _, t0 = meter.read()
        time.sleep(self.idle_window_s)
        e1, _, t1 = meter.read()
        return IdleSample(clock_mhz=clock_mhz, power_w=(e1 - e0) / max(t1 - t0, 1e-6))

    def close(self) -> None:
        """Reset every GPU to default clocks, then release the devices."""
        try:
            for t in (self.prefill, self.decode):
                for g in t.gpus:
                    self._devices[t.url].reset_locked_clocks(g)
        finally:
            self._locked.clear()
            for dev in self._devices.values():
                dev.close()

    # -- internals ----------------------------------------------------------------------

    def _lock(self, target: LiveTarget, clock_mhz: int) -> None:
        for g in target.gpus:
            if self._locked.get(g) != clock_mhz:
                self._devices[target.url].set_locked_sm_clock_mhz(g, clock_mhz)
                self._locked[g] = clock_mhz

    def _body(self, tokens: int, max_new: int, stream: bool) -> dict[str, Any]:
        ids = self._rng.integers(*_TOKEN_ID_RANGE, size=max(1, tokens)).tolist()
        body: dict[str, Any] = {
            "input_ids": ids,
            "sampling_params": {"max_new_tokens": max_new, "ignore_eos": True, "temperature": 0},
            "stream": stream,
        }
        if self.disaggregated:
            body.update(
                bootstrap_host=FAKE_BOOTSTRAP_HOST,
                bootstrap_port=None,
                bootstrap_room=int(self._rng.integers(0, 2**63 - 1)),
            )
        return body

    def _session(self) -> aiohttp.ClientSession:
        return aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=self.timeout_s),
            connector=aiohttp.TCPConnector(limit=0),
        )

    async def _generate(self, s: aiohttp.ClientSession, body: dict[str, Any], what: str) -> Any:
        url = self.prefill.url.rstrip("/") + "/generate"
        async with s.post(url, json=body) as resp:
            text = await resp.text()
            if resp.status != 200:
                raise UpstreamError(
                    f"{what}: HTTP {resp.status}: {text[:200]}", url=url, status=resp.status
                )
        try:
            return json.loads(text)
        except ValueError:
            return None

    async def _prefill_context(
        self, clock_mhz: int, tokens: int, context: int
    ) -> PrefillSample | None:
        meter = self._energy[self.prefill.url]
        what = f"prefill {tokens} tokens over {context} cached"
        lat: list[float] = []
        energy = 0.0
        async with self._session() as s:
            for _ in range(self.prefill_repeats):
                warm = self._body(context, 1, stream=False)
                await self._generate(s, warm, what + " (warming the prefix)")
                body = self._body(tokens, 1, stream=False)
                body["input_ids"] = warm["input_ids"] + body["input_ids"]
                e0, _, _ = await asyncio.to_thread(meter.read)
                t0 = time.monotonic()
                out = await self._generate(s, body, what)
                lat.append(time.monotonic() - t0)
                e1, _, _ = await asyncio.to_thread(meter.read)
                energy += e1 - e0
                meta = (out[0] if isinstance(out, list) and out else out) or {}
                cached = (
                    meta.get("meta_info", {}).get("cached_tokens")
                    if isinstance(meta, dict)
                    else None
                )
                if isinstance(cached, int) and cached < 0.9 * context:
                    return None  # the prefix was not served from a cache: no such point
        return PrefillSample(
            clock_mhz=clock_mhz,
            batched_tokens=tokens,
            latency_s=statistics.median(lat),
            energy_j=energy / self.prefill_repeats,
            context_tokens=context,
        )

    async def _prefill(self, clock_mhz: int, tokens: int) -> PrefillSample:
        meter = self._energy[self.prefill.url]
        url = self.prefill.url.rstrip("/") + "/generate"
        lat: list[float] = []
        async with self._session() as s:
            e0, _, _ = await asyncio.to_thread(meter.read)
            for _ in range(self.prefill_repeats):
                body = self._body(tokens, 1, stream=False)
                t0 = time.monotonic()
                async with s.post(url, json=body) as resp:
                    text = await resp.text()
                    if resp.status != 200:
                        raise UpstreamError(
                            f"prefill {tokens} tokens: HTTP {resp.status}: {text[:200]}",
                            url=url,
                            status=resp.status,
                        )
                lat.append(time.monotonic() - t0)
            e1, _, _ = await asyncio.to_thread(meter.read)
        return PrefillSample(
            clock_mhz=clock_mhz,
            batched_tokens=tokens,
            latency_s=statistics.median(lat),
            energy_j=(e1 - e0) / self.prefill_repeats,
        )

    async def _decode(self, clock_mhz: int, batch: int, context: int) -> DecodeSample:
        meter = self._energy[self.decode.url]
        url = self.decode.url.rstrip("/") + "/generate"
        marks: list[list[tuple[float, int]]] = [[] for _ in range(batch)]
        started = asyncio.Event()
        first_done = asyncio.Event()
        n_started = 0
        reads: dict[str, tuple[float, float, float]] = {}

        async def one(i: int, s: aiohttp.ClientSession) -> None:
            nonlocal n_started
            async with s.post(url, json=self._body(context, self.decode_tokens, True)) as resp:
                if resp.status != 200:
                    text = await resp.text()
                    raise UpstreamError(
                        f"decode: HTTP {resp.status}: {text[:200]}", url=url, status=resp.status
                    )
                async for raw in resp.content:
                    line = raw.strip()
                    if not line.startswith(b"data:") or line == b"data: [DONE]":
                        continue
                    chunk = json.loads(line[5:])
                    if "error" in chunk:
                        raise UpstreamError(f"decode: {chunk['error']}", url=url)
                    n = int(chunk.get("meta_info", {}).get("completion_tokens", 0))
                    if not marks[i]:
                        n_started += 1
                        if n_started == batch:
                            started.set()
                    marks[i].append((time.monotonic(), n))
            first_done.set()

        async def meter_window() -> None:
            await started.wait()
            reads["start"] = await asyncio.to_thread(meter.read)
            await first_done.wait()
            reads["end"] = await asyncio.to_thread(meter.read)

        async with self._session() as s:
            watcher = asyncio.create_task(meter_window())
            try:
                await asyncio.gather(*(one(i, s) for i in range(batch)))
                await asyncio.wait_for(watcher, timeout=self.timeout_s)
            finally:
                watcher.cancel()
        return self._decode_sample(clock_mhz, batch, context, marks, reads)

    def _decode_sample(
        self,
        clock_mhz: int,
        batch: int,
        context: int,
        marks: Sequence[Sequence[tuple[float, int]]],
        reads: dict[str, tuple[float, float, float]],
    ) -> DecodeSample:
        (e1, _, t1), (e2, clock, t2) = reads["start"], reads["end"]
        per_token: list[float] = []
        kv = 0.0
        for m in marks:
            inside = [(t, n) for t, n in m if t1 <= t <= t2]
            if len(inside) >= 2 and inside[-1][1] > inside[0][1]:
                per_token.append((inside[-1][0] - inside[0][0]) / (inside[-1][1] - inside[0][1]))
                kv += context + (inside[0][1] + inside[-1][1]) / 2
            else:
                kv += context + (m[-1][1] if m else 0) / 2
        if not per_token or t2 <= t1:
            raise UpstreamError(
                f"decode B={batch}: no steady window (the requests never ran together: "
                f"is B above the worker's max running requests? else raise --decode-tokens "
                f"above {self.decode_tokens})",
                url=self.decode.url,
            )
        latency = statistics.median(per_token)
        power = (e2 - e1) / (t2 - t1)
        return DecodeSample(
            clock_mhz=clock_mhz,
            batch_size=batch,
            kv_tokens=kv,
            latency_s=latency,
            energy_j=power * latency,
            effective_clock_mhz=clock,
        )
