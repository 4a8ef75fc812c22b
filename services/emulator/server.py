"""The emulated SGLang worker's state and request core: engine, GPUs, streams, gauges.

``EmulatorServer`` owns one ``Engine``, one ``GpuModel`` and ``tp`` ``EmulatedGpu``
devices, and the ``IterationLoop`` (runner.py) that runs the engine in real time.
HTTP handlers (api.py, admin.py) talk to it through ``generate()``, an async iterator
of token updates that frees everything the request held when it ends, fails or is
cancelled (client disconnect).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncGenerator
from contextlib import aclosing
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import numpy as np
import structlog
from voltana.groundtruth.engine import (
    AdmissionError,
    EngineConfig,
    EngineEvent,
    EngineStats,
)
from voltana.groundtruth.gpu_model import GPUS, MODELS, GpuModel
from voltana.groundtruth.mixed import make_engine
from voltana.groundtruth.prefix_cache import PrefixIdentity, chain_token_keys
from voltana.services.emulator import pd
from voltana.services.emulator.config import EmulatorConfig, emulated_spec
from voltana.services.emulator.gpu_device import EmulatedGpu
from voltana.services.emulator.metrics import SglangMetrics
from voltana.services.emulator.runner import IterationLoop

__all__ = ["EmulatorServer", "RequestError", "RequestSpec", "TokenUpdate"]

log = structlog.get_logger("voltana.emulator")


class RequestError(Exception):
    """A request failed; ``status`` is the HTTP status SGLang would answer with."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class RequestSpec:
    rid: str
    prompt_tokens: int
    max_new_tokens: int
    ignore_eos: bool = False
    bootstrap_host: str | None = None
    bootstrap_port: int | None = None
    bootstrap_room: int | None = None
    prefix: PrefixIdentity | None = None  # the prompt's block keys (see ``prefix_of``)


@dataclass(frozen=True)
class TokenUpdate:
    """Cumulative output so far; ``finish_reason`` set on the last update."""

    completion_tokens: int
    t_s: float
    finish_reason: dict[str, Any] | None = None
    cached_tokens: int = 0  # prompt tokens served from the prefix cache (SGLang's meta_info)


@dataclass
class _Stream:
    spec: RequestSpec
    arrival_s: float
    events: asyncio.Queue[EngineEvent] = field(default_factory=asyncio.Queue)
    last_token_s: float | None = None
    cached_tokens: int = 0


class EmulatorServer:
    """State and request core of one emulated instance (TP group); ``IterationLoop`` runs it."""

    def __init__(self, config: EmulatorConfig) -> None:
        if config.gpu not in GPUS:
            raise ValueError(f"unknown GPU {config.gpu!r}; known: {sorted(GPUS)}")
        if config.model not in MODELS:
            raise ValueError(f"unknown model {config.model!r}; known: {sorted(MODELS)}")
        self.config = config
        self.model = GpuModel(
            emulated_spec(config), MODELS[config.model], config.tp, config.noise, config.seed
        )
        cap = config.kv_capacity_tokens or self.model.kv_capacity_tokens(config.mem_fraction_static)
        self.engine = make_engine(
            EngineConfig(
                role=config.role,
                max_running_requests=config.max_running_requests,
                chunked_prefill_size=config.chunked_prefill_size,
                kv_capacity_tokens=cap,
                radix_cache=not config.disable_radix_cache,
                enable_mixed_chunk=config.enable_mixed_chunk,
            )
        )
        ids = config.gpu_ids or tuple(range(config.tp))
        if len(ids) != config.tp:
            raise ValueError(f"--gpu-ids names {len(ids)} GPUs but tp is {config.tp}")
        now = time.monotonic()
        self.gpus = [EmulatedGpu(i, self.model, now) for i in ids]
        mem_mib = self.model.gpu.mem_total_gib * 1024 * config.mem_fraction_static + 600
        for g in self.gpus:
            g.mem_used_mib = mem_mib
        self.metrics = SglangMetrics(
            model_name=config.model_name, role=config.role, sglang_version=config.sglang_version
        )
        self.rooms = pd.RoomTable(ttl_s=2 * config.bootstrap_timeout_s)
        self.iteration_loop = _iteration_loop(config, self)
        self.iterations = self.iteration_loop.iterations  # the admin API's iteration log
        self._streams: dict[str, _Stream] = {}
        self._rng = np.random.default_rng(config.seed)
        self._runner: asyncio.Task[None] | None = None
        self._session: aiohttp.ClientSession | None = None
        self.bootstrap_waiting = 0  # prefill requests waiting for their decode partner
        self._detached: set[asyncio.Task[TokenUpdate]] = set()

    # ----- lifecycle ---------------------------------------------------------------
    async def start(self) -> None:
        await self.iteration_loop.prepare()
        self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=None))
        self._runner = asyncio.create_task(self.iteration_loop.run(), name="emulator-runner")

    async def stop(self) -> None:
        for t in list(self._detached):
            t.cancel()
        await asyncio.gather(*self._detached, return_exceptions=True)
        if self._runner is not None:
            self._runner.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._runner
        if self._session is not None:
            await self._session.close()
        self.iteration_loop.close()

    def now(self) -> float:
        return time.monotonic()

    def clocks_changed(self) -> None:
        """A GPU's locked clocks changed: the iteration in flight continues at the new clock."""
        self.iteration_loop.clocks_changed()

    # ----- engine events -----------------------------------------------------------
    def _dispatch(self, events: list[EngineEvent]) -> None:
        for ev in events:
            st = self._streams.get(ev.rid)
            if st is not None:
                st.events.put_nowait(ev)

    def _kick(self) -> None:
        self.iteration_loop.kick()

    # ----- request core ------------------------------------------------------------
    def prefix_of(self, token_ids: list[int]) -> PrefixIdentity | None:
        """The prompt's identity for the prefix cache (None: the cache is off)."""
        if self.engine.cache is None:
            return None
        bt = self.config.page_size
        return PrefixIdentity(chain_token_keys(token_ids, bt), bt)

    def new_rid(self) -> str:
        return uuid.uuid4().hex

    def _output_tokens(self, spec: RequestSpec) -> int:
        if spec.ignore_eos or self.config.role == "prefill":
            return spec.max_new_tokens
        natural = int(self._rng.geometric(1.0 / max(1.0, self.config.eos_mean_tokens)))
        return max(1, min(natural, spec.max_new_tokens))

    async def generate(self, spec: RequestSpec) -> AsyncGenerator[TokenUpdate, None]:
        """Run one request; yields cumulative token updates. Frees everything on exit.

        A prefill runs detached from its HTTP request, as in SGLang: routers drop its
        answer once the decode answers, yet the KV must still be computed and sent.
        """
        if self.config.role != "prefill":
            async with aclosing(self._generate(spec)) as it:
                async for u in it:
                    yield u
            return
        task = asyncio.create_task(self._run_detached(spec))
        self._detached.add(task)
        task.add_done_callback(self._detached_done)
        yield await asyncio.shield(task)

    def _detached_done(self, task: asyncio.Task[TokenUpdate]) -> None:
        self._detached.discard(task)
        if not task.cancelled() and task.exception() is not None:
            # Its HTTP client may be gone (routers drop the prefill's answer): log it here.
            log.info("prefill_failed", error=str(task.exception()))

    async def _run_detached(self, spec: RequestSpec) -> TokenUpdate:
        last: TokenUpdate | None = None
        async with aclosing(self._generate(spec)) as it:
            async for u in it:
                last = u
        if last is None:
            raise RequestError("prefill produced no output", status=500)
        return last

    async def _generate(self, spec: RequestSpec) -> AsyncGenerator[TokenUpdate, None]:
        role = self.config.role
        if role != "unified" and (spec.bootstrap_host is None or spec.bootstrap_room is None):
            raise RequestError(
                f"bootstrap_host and bootstrap_room are required in PD mode ({role} server)"
            )
        if spec.max_new_tokens < 0:
            raise RequestError(f"max_new_tokens must be at least 0, got {spec.max_new_tokens}")
        if spec.rid in self._streams:
            raise RequestError(f"duplicate request id {spec.rid!r}")
        fake = spec.bootstrap_host == pd.FAKE_BOOTSTRAP_HOST
        st = _Stream(spec, time.monotonic())
        self._streams[spec.rid] = st
        room = None
        finished = False
        try:
            if role == "prefill" and not fake:
                assert spec.bootstrap_room is not None
                room = self.rooms.get(spec.bootstrap_room)
                self.bootstrap_waiting += 1
                try:
                    await asyncio.wait_for(
                        room.decode_ready.wait(), self.config.bootstrap_timeout_s
                    )
                except TimeoutError as exc:
                    raise RequestError(
                        f"bootstrap timeout: no decode server joined bootstrap_room "
                        f"{spec.bootstrap_room} in {self.config.bootstrap_timeout_s:g} s",
                        status=500,
                    ) from exc
                finally:
                    self.bootstrap_waiting -= 1
            # max_new_tokens=0 is SGLang's prefill-only request: the engine runs it as one
            # token and _follow ends it, with no output, where that token would appear.
            try:
                self.engine.submit(
                    spec.rid,
                    prompt_tokens=spec.prompt_tokens,
                    max_new_tokens=max(1, spec.max_new_tokens),
                    output_tokens=max(1, self._output_tokens(spec)),
                    now=time.monotonic(),
                    prefix=spec.prefix,
                )
            except AdmissionError as exc:
                raise RequestError(str(exc)) from exc
            self._kick()
            async for upd in self._follow(st, fake, room):
                if upd.finish_reason is not None:
                    finished = True
                yield upd
        finally:
            self._streams.pop(spec.rid, None)
            if self.engine.abort(spec.rid) or not finished:
                self.metrics.on_abort()
            if room is not None:
                assert spec.bootstrap_room is not None
                self.rooms.settle(
                    spec.bootstrap_room, room, None if finished else "prefill aborted"
                )
            self._kick()

    async def _follow(
        self, st: _Stream, fake: bool, room: pd.Room | None
    ) -> AsyncGenerator[TokenUpdate, None]:
        spec = st.spec
        while True:
            ev = await st.events.get()
            if ev.kind == "kv_allocated":  # decode role
                if not fake:
                    assert self._session is not None and spec.bootstrap_room is not None
                    port = spec.bootstrap_port or self.config.bootstrap_port
                    try:
                        await pd.decode_wait_kv(
                            self._session,
                            str(spec.bootstrap_host),
                            port,
                            spec.bootstrap_room,
                            self.config.bootstrap_timeout_s,
                        )
                    except pd.PdError as exc:
                        raise RequestError(str(exc), status=500) from exc
                if spec.max_new_tokens == 0:  # prefill-only: the KV is in, nothing to decode
                    yield self._prefill_only_done(st)
                    return
                self._dispatch(self.engine.kv_arrived(spec.rid, time.monotonic()))
                self._kick()
            elif ev.kind == "prefill_done":  # prefill role: KV stays held while it is sent
                req = self.engine.requests.get(spec.rid)
                st.cached_tokens = req.cached_tokens if req is not None else 0
                if not fake:
                    await asyncio.sleep(self.model.kv_transfer_s(spec.prompt_tokens))
                done = self.engine.transfer_done(spec.rid, time.monotonic())
                self._kick()
                now = time.monotonic()
                self.metrics.on_first_token(now - st.arrival_s)
                self.metrics.on_tokens(1, None)
                self.metrics.on_finish(spec.prompt_tokens, now - st.arrival_s, None)
                if room is not None and spec.bootstrap_room is not None:
                    self.rooms.settle(spec.bootstrap_room, room)
                n = 1 if spec.max_new_tokens else 0
                yield TokenUpdate(n, now, {"type": "length", "length": 0}, st.cached_tokens)
                del done
                return
            elif spec.max_new_tokens == 0 and ev.kind in ("first_token", "token", "finished"):
                yield self._prefill_only_done(st)  # unified: the prefill is done
                return
            elif ev.kind in ("first_token", "token"):
                self._observe_token(st, ev)
                if ev.kind == "first_token" or st.events.empty():
                    yield TokenUpdate(ev.generated_tokens, ev.t_s, None, st.cached_tokens)
            elif ev.kind == "finished":
                if ev.finish_reason == "stop":
                    from voltana.services.emulator.textgen import EOS_TOKEN_ID

                    reason: dict[str, Any] = {"type": "stop", "matched": EOS_TOKEN_ID}
                else:
                    reason = {"type": "length", "length": ev.generated_tokens}
                n = max(1, ev.generated_tokens - 1)
                e2e = ev.t_s - st.arrival_s
                ttft = (st.last_token_s or ev.t_s) - st.arrival_s
                self.metrics.on_finish(spec.prompt_tokens, e2e, (e2e - ttft) / n if n else None)
                yield TokenUpdate(ev.generated_tokens, ev.t_s, reason, st.cached_tokens)
                return

    def _prefill_only_done(self, st: _Stream) -> TokenUpdate:
        """End a max_new_tokens=0 request: free it in the engine, report no output tokens."""
        self.engine.abort(st.spec.rid)
        self._kick()
        now = time.monotonic()
        self.metrics.on_finish(st.spec.prompt_tokens, now - st.arrival_s, None)
        return TokenUpdate(0, now, {"type": "length", "length": 0})

    def _observe_token(self, st: _Stream, ev: EngineEvent) -> None:
        if st.last_token_s is None:
            req = self.engine.requests.get(st.spec.rid)
            st.cached_tokens = req.cached_tokens if req is not None else 0
            self.metrics.on_first_token(ev.t_s - st.arrival_s)
            self.metrics.on_tokens(1, None)
        else:
            self.metrics.on_tokens(1, ev.t_s - st.last_token_s)
        st.last_token_s = ev.t_s

    # ----- state for metrics and loads ---------------------------------------------
    def gen_throughput(self) -> float:
        return self.iteration_loop.gen_throughput()

    def pd_queues(self, s: EngineStats) -> dict[str, int]:
        """SGLang's PD queue lengths (0.5.23 gauges and /v1/loads); zero where the role has none."""
        role = self.config.role
        return {
            "prefill_bootstrap_queue_reqs": self.bootstrap_waiting,  # prefill role only
            "prefill_inflight_queue_reqs": s.transfer_reqs if role == "prefill" else 0,
            "decode_prealloc_queue_reqs": s.waiting_reqs if role == "decode" else 0,
            "decode_transfer_queue_reqs": s.transfer_reqs if role == "decode" else 0,
        }

    def refresh_gauges(self) -> None:
        s = self.engine.stats()
        m = self.metrics
        new = m.new_style
        m.set_gauge("num_running_reqs", s.running_reqs)
        m.set_gauge("num_used_tokens", s.kv_used_tokens)
        m.set_gauge("token_usage", round(s.token_usage, 4))
        m.set_gauge("gen_throughput", self.gen_throughput())
        m.set_gauge("num_queue_reqs", s.waiting_reqs)
        m.set_gauge("cache_hit_rate", round(s.cache_hit_rate, 6))
        m.set_cached_tokens(s.cache_hit_tokens)
        for queue, n in self.pd_queues(s).items():
            m.set_gauge(f"num_{queue}", n if new else 0)  # 0.4.7 has no PD queue gauges
        m.set_gauge("kv_used_tokens", s.kv_used_tokens)
        m.set_gauge("decode_sum_seq_lens", s.decode_kv_tokens)
        m.set_gauge("utilization", self.gpus[0].util_gpu_pct(time.monotonic()) / 100.0)


def _iteration_loop(config: EmulatorConfig, server: EmulatorServer) -> IterationLoop:
    """The model-paced loop, or with ``backend="torch"`` the one that runs on a device."""
    if config.backend != "torch":
        return IterationLoop(
            server.engine, server.model, server.gpus, server._dispatch, config.time_scale
        )
    from voltana.services.emulator.torch_loop import TorchBackend, TorchIterationLoop

    backend = TorchBackend.for_config(config)
    return TorchIterationLoop(server.engine, server.model, server.gpus, server._dispatch, backend)
