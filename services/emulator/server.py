"""The emulated SGLang worker: engine + GPUs paced in real time, and its request core.

``EmulatorServer`` owns one ``Engine`` (engine.py), one ``GpuModel`` and ``tp``
``EmulatedGpu`` devices. A single runner task plans an iteration, asks the model how
long it takes at the GPUs' current clock, sleeps until then (back-to-back iterations
are timed from the previous end, so host overhead does not stretch ITL) and applies it.
HTTP handlers (api.py, admin.py) talk to it through ``generate()``, an async iterator
of token updates that frees everything the request held when it ends, fails or is
cancelled (client disconnect).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections import deque
from collections.abc import AsyncGenerator
from contextlib import aclosing
from dataclasses import dataclass, field
from typing import Any, Literal

import aiohttp
import numpy as np
import structlog
from voltana.groundtruth.engine import (
    AdmissionError,
    BatchPlan,
    Engine,
    EngineConfig,
    EngineEvent,
    iteration_cost,
)
from voltana.groundtruth.gpu_model import GPUS, MODELS, GpuModel, IterCost
from voltana.schemas.base import Role
from voltana.services.emulator import pd
from voltana.services.emulator.gpu_device import EmulatedGpu
from voltana.services.emulator.metrics import SglangMetrics

__all__ = ["EmulatorConfig", "EmulatorServer", "RequestError", "RequestSpec", "TokenUpdate"]

log = structlog.get_logger("voltana.emulator")
_SPIN_S = 0.0012  # asyncio timers have ms resolution: the last stretch is a precise sleep
_MAX_LAG_S = 0.05  # behind the model's timeline by more than this: restart it


def _resolve(fut: asyncio.Future[bool], value: bool) -> None:
    if not fut.done():
        fut.set_result(value)


@dataclass(frozen=True)
class EmulatorConfig:
    role: Role = "unified"
    gpu: str = "h100"
    model: str = "llama-3.1-8b"
    tp: int = 1
    host: str = "127.0.0.1"
    port: int = 30000
    bootstrap_port: int = 8998
    gpu_ids: tuple[int, ...] = ()
    seed: int | None = 0
    noise: float = 0.0
    max_running_requests: int = 256
    chunked_prefill_size: int = 8192
    kv_capacity_tokens: int | None = None  # default: what fits in memory
    mem_fraction_static: float = 0.88
    sglang_version: Literal["0.4.7", "0.5.23"] = "0.4.7"
    served_model_name: str | None = None
    bootstrap_timeout_s: float = 300.0
    eos_mean_tokens: float = 256.0  # mean natural output length when ignore_eos is false
    time_scale: float = 1.0  # >1 runs faster than the model (for demos); 1 = real time

    @property
    def model_name(self) -> str:
        return self.served_model_name or MODELS[self.model].name


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


@dataclass(frozen=True)
class TokenUpdate:
    """Cumulative output so far; ``finish_reason`` set on the last update."""

    completion_tokens: int
    t_s: float
    finish_reason: dict[str, Any] | None = None


@dataclass
class _Stream:
    spec: RequestSpec
    arrival_s: float
    events: asyncio.Queue[EngineEvent] = field(default_factory=asyncio.Queue)
    last_token_s: float | None = None


class EmulatorServer:
    """State and real-time loop of one emulated instance (TP group)."""

    def __init__(self, config: EmulatorConfig) -> None:
        if config.gpu not in GPUS:
            raise ValueError(f"unknown GPU {config.gpu!r}; known: {sorted(GPUS)}")
        if config.model not in MODELS:
            raise ValueError(f"unknown model {config.model!r}; known: {sorted(MODELS)}")
        self.config = config
        self.model = GpuModel(
            GPUS[config.gpu], MODELS[config.model], config.tp, config.noise, config.seed
        )
        cap = config.kv_capacity_tokens or self.model.kv_capacity_tokens(config.mem_fraction_static)
        self.engine = Engine(
            EngineConfig(
                role=config.role,
                max_running_requests=config.max_running_requests,
                chunked_prefill_size=config.chunked_prefill_size,
                kv_capacity_tokens=cap,
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
        self.iterations: deque[dict[str, Any]] = deque(maxlen=4096)
        self._seq = 0
        self._streams: dict[str, _Stream] = {}
        self._wake = asyncio.Event()
        self._clock_moved: asyncio.Future[bool] | None = None
        self._rng = np.random.default_rng(config.seed)
        self._runner: asyncio.Task[None] | None = None
        self._session: aiohttp.ClientSession | None = None
        self._gen_log: deque[tuple[float, int]] = deque()
        self._bootstrap_waiting = 0
        self._detached: set[asyncio.Task[TokenUpdate]] = set()
        self.wall_offset_s = time.time() - time.monotonic()
        self.started_s = now

    # ----- lifecycle ---------------------------------------------------------------
    async def start(self) -> None:
        self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=None))
        self._runner = asyncio.create_task(self._run(), name="emulator-runner")

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

    def now(self) -> float:
        return time.monotonic()

    # ----- runner ------------------------------------------------------------------
    async def _sleep_until(self, deadline: float) -> bool:
        """Sleep to ``deadline``; True when woken early by a clock change (see ``clocks_changed``)."""
        left = deadline - time.monotonic()
        if left > _SPIN_S:
            loop = asyncio.get_running_loop()
            fut = self._clock_moved = loop.create_future()
            timer = loop.call_later(left - _SPIN_S, _resolve, fut, False)
            try:
                if await fut:
                    return True
            finally:
                timer.cancel()
                self._clock_moved = None
        left = deadline - time.monotonic()
        if left > 0:
            time.sleep(left)
        return False

    def clocks_changed(self) -> None:
        """A GPU's locked clocks changed: the iteration in flight continues at the new clock."""
        if self._clock_moved is not None:
            _resolve(self._clock_moved, True)

    async def _run_iteration(
        self, plan: BatchPlan, start: float, clock: int, cost: IterCost
    ) -> tuple[float, int, float, int]:
        """Run ``plan`` from ``start``; -> (planned end, clock at the end, energy J, changes).

        A GPU changes clock within an iteration: when the locked clock moves while it
        runs, the work left runs at the new clock from then on (as the simulator does).
        """
        scale = self.config.time_scale
        seg_t, left, energy, changes = start, 1.0, 0.0, 0
        planned_end = start + cost.time_s / scale
        for g in self.gpus:
            g.begin_busy(start, cost)
        while await self._sleep_until(planned_end):
            new_clock = self.gpus[0].busy_clock_mhz
            t_c = time.monotonic()
            if new_clock == clock or t_c >= planned_end:
                continue
            used = min((t_c - seg_t) / (cost.time_s / scale), left)
            energy += used * cost.energy_j
            left -= used
            cost = iteration_cost(self.model, plan, new_clock)
            seg_t, clock, changes = t_c, new_clock, changes + 1
            planned_end = t_c + left * cost.time_s / scale
            for g in self.gpus:
                g.switch_busy(t_c, cost, planned_end)
        return planned_end, clock, energy + left * cost.energy_j, changes

    async def _run(self) -> None:
        """Iterations back to back on the model's timeline.

        Each iteration is planned to start where the previous one was planned to end, so
        a late wake-up (host busy, process preempted) delays token delivery but does not
        stretch the emulated GPU's timeline: the next sleep is shorter and catches up.
        When the host falls more than ``_MAX_LAG_S`` behind, the timeline restarts at
        "now" instead of bursting.
        """
        planned_end: float | None = None
        scale = self.config.time_scale
        while True:
            now = time.monotonic()
            self._dispatch(self.engine.admit(now))
            plan = self.engine.next_batch(now)
            if plan is None:
                planned_end = None
                self._wake.clear()
                await self._wake.wait()
                continue
            start = now
            if planned_end is not None and now - planned_end < _MAX_LAG_S:
                start = planned_end
            clock = self.gpus[0].busy_clock_mhz
            cost = iteration_cost(self.model, plan, clock)
            planned_end, end_clock, energy_j, changes = await self._run_iteration(
                plan, start, clock, cost
            )
            end = time.monotonic()
            for g in self.gpus:
                g.end_busy(planned_end)
            self._seq += 1
            self.iterations.append(
                {
                    "seq": self._seq,
                    "t_start_s": start + self.wall_offset_s,
                    "t_end_s": planned_end + self.wall_offset_s,
                    "late_s": end - planned_end,
                    "kind": plan.kind,
                    "batch_size": plan.batch_size,
                    "new_tokens": plan.new_tokens,
                    "kv_tokens": plan.kv_tokens,
                    "clock_mhz": clock,
                    "end_clock_mhz": end_clock,
                    "clock_changes": changes,
                    "effective_clock_mhz": cost.effective_clock_mhz,
                    "model_time_s": (planned_end - start) * scale,
                    "power_w": energy_j / ((planned_end - start) * scale),
                    "energy_j": energy_j,
                }
            )
            if plan.kind == "decode":
                self._gen_log.append((end, plan.batch_size))
                while self._gen_log[0][0] < end - 5.0:  # the window gen_throughput reads
                    self._gen_log.popleft()
            self._dispatch(self.engine.complete(plan, end))

    def _dispatch(self, events: list[EngineEvent]) -> None:
        for ev in events:
            st = self._streams.get(ev.rid)
            if st is not None:
                st.events.put_nowait(ev)

    def _kick(self) -> None:
        self._wake.set()

    # ----- request core ------------------------------------------------------------
    def new_rid(self) -> str:
        return uuid.uuid4().hex

    def _output_tokens(self, spec: RequestSpec) -> int:
        if spec.ignore_eos or self.config.role == "prefill":
            return spec.max_new_tokens
        natural = int(self._rng.geometric(1.0 / max(1.0, self.config.eos_mean_tokens)))
        return max(1, min(natural, spec.max_new_tokens))

    async def generate(self, spec: RequestSpec) -> AsyncGenerator[TokenUpdate, None]:
        """Run one request; yields cumulative token updates. Frees everything on exit.

        On a prefill server the work runs detached from the HTTP request, as in SGLang:
        routers drop the prefill's response once the decode answers, and the KV must
        still be computed and sent (it ends at transfer or at the bootstrap timeout).
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
        if spec.max_new_tokens < 1:
            raise RequestError(f"max_new_tokens must be positive, got {spec.max_new_tokens}")
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
                self._bootstrap_waiting += 1
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
                    self._bootstrap_waiting -= 1
            try:
                self.engine.submit(
                    spec.rid,
                    prompt_tokens=spec.prompt_tokens,
                    max_new_tokens=spec.max_new_tokens,
                    output_tokens=self._output_tokens(spec),
                    now=time.monotonic(),
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
                self._dispatch(self.engine.kv_arrived(spec.rid, time.monotonic()))
                self._kick()
            elif ev.kind == "prefill_done":  # prefill role: KV stays held while it is sent
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
                yield TokenUpdate(1, now, {"type": "length", "length": 0})
                del done
                return
            elif ev.kind in ("first_token", "token"):
                self._observe_token(st, ev)
                if ev.kind == "first_token" or st.events.empty():
                    yield TokenUpdate(ev.generated_tokens, ev.t_s)
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
                yield TokenUpdate(ev.generated_tokens, ev.t_s, reason)
                return

    def _observe_token(self, st: _Stream, ev: EngineEvent) -> None:
        if st.last_token_s is None:
            self.metrics.on_first_token(ev.t_s - st.arrival_s)
            self.metrics.on_tokens(1, None)
        else:
            self.metrics.on_tokens(1, ev.t_s - st.last_token_s)
        st.last_token_s = ev.t_s

    # ----- state for metrics and loads ---------------------------------------------
    def gen_throughput(self) -> float:
        now = time.monotonic()
        while self._gen_log and self._gen_log[0][0] < now - 5.0:
            self._gen_log.popleft()
        if not self._gen_log:
            return 0.0
        return sum(n for _, n in self._gen_log) / 5.0

    def refresh_gauges(self) -> None:
        s = self.engine.stats()
        m = self.metrics
        pd_role = self.config.role != "unified"
        new = m.new_style
        m.set_gauge("num_running_reqs", s.running_reqs)
        m.set_gauge("num_used_tokens", s.kv_used_tokens)
        m.set_gauge("token_usage", round(s.token_usage, 4))
        m.set_gauge("gen_throughput", self.gen_throughput())
        m.set_gauge("num_queue_reqs", s.waiting_reqs)
        m.set_gauge("cache_hit_rate", 0.0)
        bootstrap = self._bootstrap_waiting if new and pd_role else 0
        m.set_gauge("num_prefill_bootstrap_queue_reqs", bootstrap)
        inflight = s.transfer_reqs if new and self.config.role == "prefill" else 0
        m.set_gauge("num_prefill_inflight_queue_reqs", inflight)
        dec = new and self.config.role == "decode"
        m.set_gauge("num_decode_prealloc_queue_reqs", s.waiting_reqs if dec else 0)
        m.set_gauge("num_decode_transfer_queue_reqs", s.transfer_reqs if dec else 0)
        m.set_gauge("kv_used_tokens", s.kv_used_tokens)
        m.set_gauge("decode_sum_seq_lens", s.decode_kv_tokens)
        m.set_gauge("utilization", self.gpus[0].util_gpu_pct(time.monotonic()) / 100.0)
