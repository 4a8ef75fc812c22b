"""The router's picture of its workers: own accounting merged with telemetry, each with its age.

Pure bookkeeping: every method takes ``now`` (monotonic seconds) and does no I/O.
The load counters are :class:`~voltana.services.router.accounting.InstanceLoad`
(shared with the simulator). The shell calls ``dispatched``, ``prefill_done``,
``first_token`` and ``decode_done`` around each request,
``health_result`` from the health checker, ``request_result`` for the circuit
breaker, and ``on_*_telemetry`` from the bus; ``view(role, now)`` builds the
:class:`ClusterView` a policy sees.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

import numpy as np
from voltana.schemas.base import Role
from voltana.schemas.router import InstanceState
from voltana.schemas.telemetry import GpuTelemetry, InstanceTelemetry, LatencyWindow
from voltana.services.router.accounting import InstanceLoad
from voltana.services.router.config import WorkerSpec
from voltana.services.router.policies.base import ClusterView, InstanceView

__all__ = ["Breaker", "ClusterState", "WorkerState"]

WINDOW_REFRESH_S = 0.25


@dataclass(slots=True)
class Breaker:
    """Consecutive-failure circuit breaker: closed -> open (cool-down) -> half-open -> closed."""

    failures_to_open: int
    open_s: float
    failures: int = 0
    opened_at: float | None = None
    trial_in_flight: bool = False

    def allows(self, now: float) -> bool:
        """True when a request may go to this worker now (half-open allows one trial)."""
        if self.opened_at is None:
            return True
        return now - self.opened_at >= self.open_s and not self.trial_in_flight

    def is_open(self, now: float) -> bool:
        return self.opened_at is not None and now - self.opened_at < self.open_s

    def on_dispatch(self, now: float) -> None:
        if self.opened_at is not None and now - self.opened_at >= self.open_s:
            self.trial_in_flight = True

    def record(self, ok: bool, now: float) -> bool:
        """Count one outcome; returns True when the breaker changed state."""
        was_open = self.opened_at is not None
        self.trial_in_flight = False
        if ok:
            self.failures = 0
            self.opened_at = None
            return was_open
        self.failures += 1
        if self.failures >= self.failures_to_open or was_open:
            self.opened_at = now
            return not was_open
        return False


@dataclass(slots=True)
class WorkerState:
    """Everything known about one worker."""

    spec: WorkerSpec
    breaker: Breaker
    healthy: bool = True
    health_failures: int = 0
    last_health_error: str | None = None
    load: InstanceLoad = field(default_factory=InstanceLoad)
    completed: int = 0
    failed: int = 0
    engine: InstanceTelemetry | None = None
    engine_at: float | None = None
    gpus: dict[int, tuple[GpuTelemetry, float]] = field(default_factory=dict)
    ttft_samples: deque[tuple[float, float]] = field(default_factory=lambda: deque(maxlen=4096))
    itl_samples: deque[tuple[float, float]] = field(default_factory=lambda: deque(maxlen=4096))
    seq: int = 0
    windows: tuple[float, LatencyWindow | None, LatencyWindow | None] | None = None
    bus_name: str | None = None  # the instance's name in telemetry, once learnt

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def published_name(self) -> str:
        """The name the rest of the system knows this instance by (telemetry's, else ours)."""
        return self.bus_name or self.spec.name

    def available(self, now: float) -> bool:
        return self.healthy and self.breaker.allows(now)


def _view_role(role: str) -> Role:
    """A worker's role as policies and the bus see it (unknown roles count as decode)."""
    return "prefill" if role == "prefill" else "unified" if role == "unified" else "decode"


def _window(
    samples: deque[tuple[float, float]], now: float, window_s: float
) -> LatencyWindow | None:
    vals = [v for t, v in samples if now - t <= window_s]
    if not vals:
        return None
    a = np.asarray(vals, dtype=np.float64)
    p50, p90, p99 = np.percentile(a, [50, 90, 99])
    return LatencyWindow(
        count=len(vals),
        window_s=window_s,
        mean_s=float(a.mean()),
        p50_s=float(p50),
        p90_s=float(p90),
        p99_s=float(p99),
        max_s=float(a.max()),
    )


class ClusterState:
    """All workers, by name, with URL lookup for telemetry matching."""

    def __init__(
        self,
        workers: list[WorkerSpec],
        *,
        breaker_failures: int = 5,
        breaker_open_s: float = 10.0,
        health_failure_threshold: int = 3,
        telemetry_stale_s: float = 2.0,
        latency_window_s: float = 10.0,
    ) -> None:
        self.workers: dict[str, WorkerState] = {
            w.name: WorkerState(w, Breaker(breaker_failures, breaker_open_s)) for w in workers
        }
        self.by_url = {w.url.rstrip("/"): w.name for w in workers}
        # telemetry may name an instance differently (e.g. "decode-0"): learnt from
        # InstanceTelemetry, which carries both its name and the worker URL
        self.aliases: dict[str, str] = {}
        self.health_failure_threshold = max(1, health_failure_threshold)
        self.telemetry_stale_s = telemetry_stale_s
        self.latency_window_s = latency_window_s

    def role(self, role: str) -> list[WorkerState]:
        return [w for w in self.workers.values() if w.spec.role == role]

    # -- request accounting (the counters live in accounting.InstanceLoad) ---------

    def dispatched(
        self,
        prefill: str,
        decode: str,
        request_id: str,
        input_tokens: int,
        out_tokens: int,
        now: float,
    ) -> None:
        p, d = self.workers[prefill], self.workers[decode]
        p.load.prefill_dispatched(request_id, input_tokens, now)
        p.breaker.on_dispatch(now)
        d.load.decode_dispatched(request_id, input_tokens, out_tokens, now)
        d.breaker.on_dispatch(now)

    def unified_dispatched(
        self, name: str, request_id: str, input_tokens: int, out_tokens: int, now: float
    ) -> None:
        """A colocated worker got the whole request (prompt queued, then decode)."""
        w = self.workers[name]
        w.load.unified_dispatched(request_id, input_tokens, out_tokens, now)
        w.breaker.on_dispatch(now)

    def prefill_done(self, prefill: str, request_id: str, input_tokens: int) -> None:
        """The prefill side of a request ended (answered, failed or cancelled)."""
        self.workers[prefill].load.prefill_done(request_id, input_tokens)

    def first_token(self, decode: str, request_id: str, ttft_s: float, now: float) -> None:
        d = self.workers[decode]
        d.load.first_token(request_id)
        d.ttft_samples.append((now, ttft_s))

    def decode_done(
        self,
        decode: str,
        request_id: str,
        input_tokens: int,
        out_tokens: int,
        itl_s: list[float],
        now: float,
    ) -> None:
        d = self.workers[decode]
        d.load.decode_done(request_id, input_tokens, out_tokens)
        for gap in itl_s[-256:]:
            d.itl_samples.append((now, gap))

    def request_result(self, name: str, ok: bool, now: float) -> bool:
        """Feed the worker's circuit breaker; True when it opened or closed."""
        w = self.workers[name]
        if ok:
            w.completed += 1
        else:
            w.failed += 1
        return w.breaker.record(ok, now)

    def health_result(self, name: str, ok: bool, error: str | None) -> bool:
        """Record one health check; True when the worker's health flipped."""
        w = self.workers[name]
        before = w.healthy
        if ok:
            w.health_failures = 0
            w.healthy = True
            w.last_health_error = None
        else:
            w.health_failures += 1
            w.last_health_error = error
            if w.health_failures >= self.health_failure_threshold:
                w.healthy = False
        return before != w.healthy

    # -- telemetry ---------------------------------------------------------

    def _match(self, instance: str | None, url: str | None) -> WorkerState | None:
        if url and url.rstrip("/") in self.by_url:
            return self.workers[self.by_url[url.rstrip("/")]]
        if instance and instance in self.workers:
            return self.workers[instance]
        if instance and instance in self.aliases:
            return self.workers[self.aliases[instance]]
        return None

    def worker_name(self, instance: str | None) -> str | None:
        """The router's name of the worker telemetry calls ``instance`` (None: not ours)."""
        w = self._match(instance, None)
        return None if w is None else w.name

    def on_instance_telemetry(self, msg: InstanceTelemetry, now: float) -> bool:
        w = self._match(msg.instance, msg.url)
        if w is None:
            return False
        if msg.instance != w.name and msg.instance != w.bus_name:
            if w.bus_name is not None:  # one alias per worker: the table stays bounded
                self.aliases.pop(w.bus_name, None)
            self.aliases[msg.instance] = w.name
            w.bus_name = msg.instance
        w.engine, w.engine_at = msg, now
        return True

    def on_gpu_telemetry(self, msg: GpuTelemetry, now: float) -> bool:
        w = self._match(msg.instance, None)
        if w is None:
            return False
        w.gpus[msg.gpu] = (msg, now)
        return True

    def _fresh_gpus(self, w: WorkerState, now: float) -> list[GpuTelemetry]:
        return [g for g, at in w.gpus.values() if now - at <= self.telemetry_stale_s]

    def telemetry_age_s(self, w: WorkerState, now: float) -> float | None:
        ages = [now - at for _, at in w.gpus.values()]
        if w.engine_at is not None:
            ages.append(now - w.engine_at)
        return min(ages) if ages else None

    # -- views -------------------------------------------------------------

    def instance_view(self, w: WorkerState, now: float) -> InstanceView:
        engine = (
            w.engine
            if (w.engine_at is not None and now - w.engine_at <= self.telemetry_stale_s)
            else None
        )
        gpus = self._fresh_gpus(w, now)
        return w.load.view(
            w.name,
            _view_role(w.spec.role),
            now,
            url=w.spec.url,
            healthy=w.available(now),
            running_batch=engine.num_running_reqs if engine else None,
            kv_tokens=engine.kv_used_tokens if engine else None,
            clock_mhz=max(g.sm_clock_mhz for g in gpus) if gpus else None,
            power_w=sum(g.power_w for g in gpus) if gpus else None,
            engine_queue_reqs=engine.num_queue_reqs if engine else None,
            telemetry_age_s=self.telemetry_age_s(w, now),
            kv_capacity_tokens=engine.kv_capacity_tokens if engine else None,
        )

    def view(self, role: str, now: float) -> ClusterView:
        return ClusterView(self.instance_view(w, now) for w in self.role(role))

    def instance_state(self, name: str, now: float, t_ns: int) -> InstanceState:
        """The bus message for one instance (increments its sequence number)."""
        w = self.workers[name]
        v = self.instance_view(w, now)
        w.seq += 1
        # latency windows cost a sort each: refresh them at most every WINDOW_REFRESH_S
        if w.windows is None or now - w.windows[0] >= WINDOW_REFRESH_S:
            w.windows = (
                now,
                _window(w.ttft_samples, now, self.latency_window_s),
                _window(w.itl_samples, now, self.latency_window_s),
            )
        _, ttft, itl = w.windows
        return InstanceState(
            t_ns=t_ns,
            instance=w.published_name,
            role=_view_role(w.spec.role),
            url=w.spec.url,
            seq=w.seq,
            in_flight_requests=v.in_flight_requests,
            in_flight_tokens=v.in_flight_tokens,
            queued_prefill_tokens=v.queued_prefill_tokens,
            oldest_wait_s=v.oldest_wait_s,
            healthy=w.healthy,
            circuit_open=w.breaker.is_open(now),
            sm_clock_mhz=v.clock_mhz,
            power_w=v.power_w,
            engine_running_reqs=v.running_batch,
            engine_queue_reqs=v.engine_queue_reqs,
            telemetry_age_s=v.telemetry_age_s,
            ttft=ttft,
            itl=itl,
        )
