"""Pure parts of the freqctl service: instance specs, controller inputs, config resolution, leases.

The shell (:mod:`voltana.services.freqctl.service`) owns NATS and the clock;
everything here takes values and the time in and returns values, so it is
tested with plain data.

Mapping from bus messages to :class:`ControlInput` (documented in docs/freqctl.md):

- ``queue_reqs`` = the engine's waiting queue (``num_queue_reqs``);
- ``running_reqs`` = ``batch_size`` = ``num_running_reqs``; ``kv_tokens`` = ``kv_used_tokens``;
- ``prefill_tokens`` and ``oldest_wait_s`` come from the router's ``InstanceState``
  (``queued_prefill_tokens``, ``oldest_wait_s``) while it is fresh; without it
  they are 0 for an idle instance and unknown (None: the controller's safe
  clock) otherwise;
- ``observed_ttft_s`` / ``observed_itl_s`` = the window mean (else p50) when the
  window counted anything;
- ``t`` = the older of the telemetry's own timestamp and its arrival, so clock
  skew can never make stale telemetry look fresh.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import msgspec
from voltana.common.errors import ConfigError
from voltana.schemas import subjects
from voltana.schemas.base import Role
from voltana.schemas.config import ControllerConfig
from voltana.schemas.router import InstanceState
from voltana.schemas.telemetry import InstanceTelemetry, LatencyWindow
from voltana.services.freqctl.controllers.base import ControlInput

RENEW_FRACTION = 0.4
"""A held clock is re-sent after this fraction of its lease (two renewals can be lost)."""


class InstanceSpec(msgspec.Struct, frozen=True):
    """One instance this controller drives; ``node``/``gpus`` None: learned from telemetry."""

    name: str
    node: str | None = None
    gpus: tuple[int, ...] = ()


def parse_instances(text: str) -> list[InstanceSpec]:
    """Parse ``--instances``: ``NAME[@NODE:GPU+GPU...]`` separated by commas.

    ``d0,p0`` learns node and GPUs from telemetry; ``d0@n1:0+1`` fixes them, so
    the instance is driven to its safe clock even before any telemetry arrives.

    Raises:
        ConfigError: an empty or malformed entry.
    """
    out: list[InstanceSpec] = []
    for raw in text.split(","):
        entry = raw.strip()
        if not entry:
            continue
        name, _, where = entry.partition("@")
        try:
            subjects.kv_controller_key(name)  # validates the token
            if not where:
                out.append(InstanceSpec(name))
                continue
            node, _, gpus = where.partition(":")
            subjects.clock_set(node, 0)
            indices = tuple(int(g) for g in gpus.split("+")) if gpus else ()
            if not indices or any(g < 0 for g in indices):
                raise ValueError("no GPU indices")
        except ValueError as exc:
            raise ConfigError(
                f"bad --instances entry {entry!r}: want NAME or NAME@NODE:GPU[+GPU...] ({exc})"
            ) from exc
        out.append(InstanceSpec(name, node, indices))
    if not out:
        raise ConfigError("--instances names no instance")
    names = [s.name for s in out]
    if len(set(names)) != len(names):
        raise ConfigError(f"--instances repeats an instance: {names}")
    return out


def _observed(w: LatencyWindow | None) -> float | None:
    if w is None or w.count <= 0:
        return None
    value = w.mean_s if w.mean_s is not None else w.p50_s
    if value is None or not math.isfinite(value) or value < 0:
        return None
    return value


def router_brought_work(prev: InstanceState | None, cur: InstanceState) -> bool:
    """The router holds more work for an instance than at its previous report: the
    controller decides at once (wake on dispatch), not at the next engine scrape. The
    service and the replayer both follow this, so a replay makes the same decisions."""
    if prev is None:
        return cur.in_flight_requests > 0 or cur.queued_prefill_tokens > 0
    return (
        cur.in_flight_requests > prev.in_flight_requests
        or cur.queued_prefill_tokens > prev.queued_prefill_tokens
    )


def build_input(
    tel: InstanceTelemetry,
    *,
    received_s: float,
    router: InstanceState | None,
    router_received_s: float | None,
    now_s: float,
    stale_after_s: float,
    current_clock_mhz: int | None,
) -> ControlInput:
    """The controller input for one instance from its latest telemetry and router state.

    Times are wall-clock seconds (``t_ns / 1e9``), the timeline the controller sees.
    """
    router_fresh = (
        router is not None
        and router_received_s is not None
        and now_s - min(router.t_ns / 1e9, router_received_s) <= stale_after_s
    )
    queued: tuple[float, float] | None = None
    if router_fresh and router is not None:
        queued = (float(router.queued_prefill_tokens), float(router.oldest_wait_s))
    return control_input(
        instance=tel.instance,
        role=tel.role,
        t=min(tel.t_ns / 1e9, received_s),
        queue_reqs=tel.num_queue_reqs,
        running_reqs=tel.num_running_reqs,
        kv_used_tokens=tel.kv_used_tokens,
        queued_prefill=queued,
        observed_ttft_s=_observed(tel.ttft),
        observed_itl_s=_observed(tel.itl),
        current_clock_mhz=current_clock_mhz,
        healthy=tel.healthy and plausible(tel),
    )


MAX_PLAUSIBLE_RUNNING = 1 << 20
"""More requests in one engine's batch than any GPU holds: the telemetry is not believed."""


def plausible(tel: InstanceTelemetry) -> bool:
    """Telemetry a real engine could report; otherwise the controller takes its safe clock.

    Hostile or corrupt values (2^62 KV tokens) would otherwise reach the predictor,
    which clamps them into its fitted range and may pick a slow clock.
    """
    cap = tel.kv_capacity_tokens
    if cap is not None and tel.kv_used_tokens > cap:
        return False
    return tel.num_running_reqs <= MAX_PLAUSIBLE_RUNNING and (
        cap is not None or tel.kv_used_tokens <= MAX_PLAUSIBLE_RUNNING * 1024
    )


def control_input(
    *,
    instance: str,
    role: Role,
    t: float,
    queue_reqs: int,
    running_reqs: int,
    kv_used_tokens: int,
    queued_prefill: tuple[float, float] | None,
    observed_ttft_s: float | None,
    observed_itl_s: float | None,
    current_clock_mhz: int | None,
    healthy: bool = True,
) -> ControlInput:
    """The one mapping from an engine's state to a controller input (live and simulated).

    ``queued_prefill`` is (prompt tokens still to prefill, the oldest one's wait in s)
    from a fresh router view, None without one: then an idle instance has none and
    a busy one an unknown amount (the controller's safe clock).
    """
    prefill_tokens: float | None
    oldest_wait_s: float | None
    if queued_prefill is not None:
        prefill_tokens, oldest_wait_s = queued_prefill
    elif running_reqs == 0 and queue_reqs == 0:
        prefill_tokens, oldest_wait_s = 0.0, 0.0
    else:
        prefill_tokens = oldest_wait_s = None
    return ControlInput(
        instance=instance,
        role=role,
        t=t,
        queue_reqs=queue_reqs,
        running_reqs=running_reqs,
        batch_size=float(running_reqs),
        kv_tokens=float(kv_used_tokens),
        prefill_tokens=prefill_tokens,
        oldest_wait_s=oldest_wait_s,
        observed_ttft_s=observed_ttft_s,
        observed_itl_s=observed_itl_s,
        current_clock_mhz=current_clock_mhz,
        healthy=healthy,
    )


def missing_input(instance: str) -> ControlInput:
    """An input with no telemetry behind it: every controller answers with its safe clock."""
    return ControlInput(instance=instance, role="unified", t=-math.inf, healthy=False)


@dataclass(slots=True)
class ConfigStore:
    """Live controller configs from the KV bucket: per-instance key, else default key, else base."""

    base: ControllerConfig
    values: dict[str, ControllerConfig] = field(default_factory=dict)

    def put(self, key: str, value: ControllerConfig | None) -> None:
        if value is None:
            self.values.pop(key, None)
        else:
            self.values[key] = value

    def for_instance(self, instance: str) -> ControllerConfig:
        return (
            self.values.get(subjects.kv_controller_key(instance))
            or self.values.get(subjects.KV_DEFAULT_CONTROLLER_KEY)
            or self.base
        )


@dataclass(frozen=True, slots=True)
class Sent:
    """The last command sent for one instance: the clock (None: default clocks) and when."""

    clock_mhz: int | None
    at_s: float


def needs_send(
    last: Sent | None,
    clock_mhz: int | None,
    now_s: float,
    lease_s: float,
    *,
    renew_fraction: float = RENEW_FRACTION,
) -> bool:
    """Send when the clock changes, or when a held lock is due for renewal.

    A reset (``clock_mhz`` None) needs no renewal: default clocks hold by themselves.
    """
    if last is None or last.clock_mhz != clock_mhz:
        return True
    if clock_mhz is None:
        return False
    return now_s - last.at_s >= lease_s * renew_fraction
