"""Prometheus metrics of one router (its own registry, so several can share a process)."""

from __future__ import annotations

import contextlib
from bisect import bisect_left
from collections.abc import Sequence

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

TTFT_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.2, 0.4, 0.6, 0.8, 1, 2, 4, 6, 8, 10, 20, 40)
ITL_BUCKETS = (
    0.002,
    0.004,
    0.006,
    0.008,
    0.01,
    0.015,
    0.02,
    0.025,
    0.03,
    0.035,
    0.04,
    0.06,
    0.08,
    0.1,
    0.2,
    0.4,
    0.8,
    2,
)
ENERGY_BUCKETS = (0.1, 0.25, 0.5, 1, 2.5, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000)
J_PER_TOKEN_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1, 1.5, 2, 3, 5, 10, 25)
E2E_BUCKETS = (0.05, 0.1, 0.2, 0.4, 0.8, 1, 2, 4, 8, 16, 32, 64, 128, 300, 600)


class RouterMetrics:
    """Every metric the router exports, prefixed ``voltana_router_``."""

    def __init__(self) -> None:
        r = self.registry = CollectorRegistry(auto_describe=True)
        p = "voltana_router_"
        self.requests = Counter(p + "requests", "Requests answered", ["path", "status"], registry=r)
        self.rejected = Counter(p + "rejected", "Requests refused", ["reason"], registry=r)
        self.errors = Counter(
            p + "upstream_errors", "Upstream failures", ["role", "kind"], registry=r
        )
        self.retries = Counter(p + "prefill_retries", "Prefill re-pairings", registry=r)
        self.cancelled = Counter(p + "client_cancelled", "Client went away mid-request", registry=r)
        self.in_flight = Gauge(
            p + "in_flight", "Requests being served", registry=r, multiprocess_mode="livesum"
        )
        self.queued = Gauge(
            p + "queued", "Requests waiting for a slot", registry=r, multiprocess_mode="livesum"
        )
        self.worker_in_flight = Gauge(
            p + "worker_in_flight",
            "In-flight requests per worker",
            ["instance", "role"],
            registry=r,
            multiprocess_mode="livesum",
        )
        self.worker_healthy = Gauge(
            p + "worker_healthy",
            "1 when the worker passes health checks",
            ["instance"],
            registry=r,
            multiprocess_mode="livemin",
        )
        self.circuit_open = Gauge(
            p + "worker_circuit_open",
            "1 while the worker's breaker is open",
            ["instance"],
            registry=r,
            multiprocess_mode="livemax",
        )
        self.telemetry_age = Gauge(
            p + "telemetry_age_seconds",
            "Age of the freshest telemetry (-1: none)",
            ["instance"],
            registry=r,
            multiprocess_mode="livemax",
        )
        self.nats_connected = Gauge(
            p + "nats_connected",
            "1 when the bus is up; 0 = serving on own accounting",
            registry=r,
            multiprocess_mode="livemin",
        )
        self.bus_dropped = Counter(
            p + "bus_dropped", "Bus messages not published", ["kind"], registry=r
        )
        self.decisions = Counter(
            p + "decisions", "Route decisions", ["role", "instance"], registry=r
        )
        self.ttft = Histogram(
            p + "ttft_seconds", "TTFT seen by the router", buckets=TTFT_BUCKETS, registry=r
        )
        self.itl = Histogram(
            p + "itl_seconds",
            "Inter-chunk gaps seen by the router",
            buckets=ITL_BUCKETS,
            registry=r,
        )
        self.e2e = Histogram(
            p + "e2e_seconds", "End-to-end request latency", buckets=E2E_BUCKETS, registry=r
        )
        self.slo_met = Counter(p + "slo", "Finished requests by SLO outcome", ["met"], registry=r)
        self.request_energy = Histogram(
            p + "request_energy_joules",
            "GPU energy attributed to each finished request (docs/energy.md)",
            ["model", "path"],
            buckets=ENERGY_BUCKETS,
            registry=r,
        )
        self.energy_per_token = Histogram(
            p + "request_energy_per_output_token_joules",
            "Attributed GPU energy of each finished request per output token",
            ["model", "path"],
            buckets=J_PER_TOKEN_BUCKETS,
            registry=r,
        )
        self.energy_measured = Gauge(
            p + "energy_measured_joules", "GPU energy booked since start, all instances", registry=r
        )
        self.energy_attributed = Gauge(
            p + "energy_attributed_joules", "Booked GPU energy attributed to requests", registry=r
        )
        self.energy_unattributed = Gauge(
            p + "energy_unattributed_joules",
            "Booked GPU energy kept as idle/overhead (not attributed)",
            registry=r,
        )
        self.energy_dropped = Gauge(
            p + "energy_dropped_joules",
            "Attributed energy of requests whose record left before it was final",
            registry=r,
        )
        self._worker_label: dict[str, str] = {}  # worker key -> instance label in use

    def set_worker(
        self,
        key: str,
        name: str,
        role: str,
        in_flight: int,
        healthy: bool,
        open_: bool,
        age: float | None,
    ) -> None:
        """One worker's gauges, labelled by its instance name (as the state endpoint and the
        bus call it); when telemetry renames it, the series under the old name go."""
        old = self._worker_label.get(key)
        if old is not None and old != name:
            for g, labels in (
                (self.worker_in_flight, (old, role)),
                (self.worker_healthy, (old,)),
                (self.circuit_open, (old,)),
                (self.telemetry_age, (old,)),
            ):
                with contextlib.suppress(KeyError):
                    g.remove(*labels)
        self._worker_label[key] = name
        self.worker_in_flight.labels(name, role).set(in_flight)
        self.worker_healthy.labels(name).set(1 if healthy else 0)
        self.circuit_open.labels(name).set(1 if open_ else 0)
        self.telemetry_age.labels(name).set(-1 if age is None else age)


def observe_many(hist: Histogram, values: Sequence[float]) -> None:
    """``hist.observe(v)`` for every value, at the cost of one lock per bucket touched.

    A streamed request brings one inter-chunk gap per token; observing them one by
    one takes two locked increments each. Falls back to ``observe`` when the
    histogram's inner fields are not the ones this prometheus-client version has.
    """
    bounds = getattr(hist, "_upper_bounds", None)
    buckets = getattr(hist, "_buckets", None)
    total = getattr(hist, "_sum", None)
    if not values:
        return
    if bounds is None or buckets is None or total is None or len(buckets) != len(bounds):
        for v in values:
            hist.observe(v)
        return
    counts: dict[int, int] = {}
    for v in values:
        i = bisect_left(bounds, v)  # the first bucket whose bound is >= v, as observe picks
        counts[i] = counts.get(i, 0) + 1
    for i, n in counts.items():
        buckets[i].inc(n)
    total.inc(sum(values))
