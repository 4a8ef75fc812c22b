"""The routing-policy contract: views in, a selection out, no I/O and no clock reads.

The HTTP router, the simulator and replay all build a :class:`ClusterView` of
the candidates for one side (prefill or decode), call ``select`` with the
current time and a seeded ``numpy.random.Generator``, and then tell the
policy what they did through the optional hooks.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import numpy as np
from voltana.schemas.base import Role

__all__ = [
    "ClusterView",
    "InstanceView",
    "RouteRequest",
    "RoutingPolicy",
    "Selection",
    "healthy",
]


@dataclass(frozen=True, slots=True, kw_only=True)
class InstanceView:
    """What a policy may know about one instance at decision time.

    Router accounting (always present, see ``services.router.accounting``):
    ``in_flight_requests``, ``in_flight_tokens`` (of requests routed here and not
    finished: prompt tokens on a prefill instance, prompt + expected output tokens on
    a decode instance), ``queued_prefill_tokens`` (prefill: prompt tokens routed here
    whose prefill has not ended), ``oldest_wait_s``. Engine/GPU telemetry (None when
    unknown or stale): ``running_batch``, ``kv_tokens``, ``clock_mhz``, ``power_w``.
    """

    instance: str
    role: Role
    url: str = ""
    healthy: bool = True
    in_flight_requests: int = 0
    in_flight_tokens: int = 0
    queued_prefill_tokens: int = 0
    running_batch: int | None = None
    kv_tokens: int | None = None
    clock_mhz: int | None = None
    oldest_wait_s: float = 0.0
    power_w: float | None = None
    engine_queue_reqs: int | None = None
    telemetry_age_s: float | None = None
    kv_capacity_tokens: int | None = None  # the engine's KV pool (telemetry), None: unknown

    @property
    def batch_size(self) -> int:
        """Best estimate of the running batch: engine telemetry if known, else own accounting."""
        if self.running_batch is None:
            return self.in_flight_requests
        return max(self.running_batch, 0)

    @property
    def kv_tokens_est(self) -> int:
        """Best estimate of KV tokens in use: telemetry if known, else in-flight tokens."""
        return self.in_flight_tokens if self.kv_tokens is None else max(self.kv_tokens, 0)


class ClusterView(tuple[InstanceView, ...]):
    """The candidates of one side: a tuple of :class:`InstanceView` (order is stable).

    Accepts ``ClusterView(views)`` and ``ClusterView(instances=views)``.
    """

    __slots__ = ()

    def __new__(cls, instances: Iterable[InstanceView] = ()) -> ClusterView:
        return super().__new__(cls, tuple(instances))

    @property
    def instances(self) -> tuple[InstanceView, ...]:
        return tuple(self)

    def by_name(self, instance: str) -> InstanceView | None:
        for v in self:
            if v.instance == instance:
                return v
        return None

    def __iter__(self) -> Iterator[InstanceView]:
        return super().__iter__()


@dataclass(frozen=True, slots=True, kw_only=True)
class RouteRequest:
    """One request to place. ``arrival_t`` is in the caller's time base (same as ``now``)."""

    request_id: str
    input_tokens: int
    max_new_tokens: int
    arrival_t: float
    # what the prompt is made of: chained keys of its blocks of ``prefix_block_tokens``
    # (equal keys, equal prefixes); empty when unknown. Cache-aware policies match on it.
    prefix_keys: tuple[int, ...] = ()
    prefix_block_tokens: int = 0


@dataclass(frozen=True, slots=True)
class Selection:
    """The chosen instance and a short reason (logged and published)."""

    instance: str
    reason: str


@runtime_checkable
class RoutingPolicy(Protocol):
    """One routing algorithm. ``select`` returns None when nothing fits (no healthy candidate)."""

    name: str

    def select(
        self, view: ClusterView, request: RouteRequest, now: float, rng: np.random.Generator
    ) -> Selection | None: ...

    def on_dispatch(self, instance: str, request: RouteRequest, now: float) -> None: ...

    def on_complete(self, instance: str, request: RouteRequest, now: float) -> None: ...


class PolicyBase:
    """What the policies share: ``select`` over the healthy candidates, no-op hooks.

    Subclasses set ``name`` and implement ``pick`` (or override ``select`` when they
    need the whole view, e.g. its order).
    """

    name: str = "base"

    def select(
        self, view: ClusterView, request: RouteRequest, now: float, rng: np.random.Generator
    ) -> Selection | None:
        """The pick among the healthy candidates; None when there is none."""
        cands = healthy(view)
        return self.pick(cands, request, now, rng) if cands else None

    def pick(
        self, cands: list[InstanceView], request: RouteRequest, now: float, rng: np.random.Generator
    ) -> Selection:
        """Choose one of ``cands`` (healthy, never empty)."""
        raise NotImplementedError

    def on_dispatch(self, instance: str, request: RouteRequest, now: float) -> None:
        """Called right after the caller committed ``request`` to ``instance``."""

    def on_complete(self, instance: str, request: RouteRequest, now: float) -> None:
        """Called when ``request`` finished (any outcome) on ``instance``."""


def healthy(view: ClusterView) -> list[InstanceView]:
    """The candidates a policy may pick from."""
    return [v for v in view if v.healthy]
