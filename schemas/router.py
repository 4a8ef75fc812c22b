"""What the router observes: instance state, route decisions, finished requests."""

from __future__ import annotations

from typing import Literal

from voltana.schemas.base import Count, Event, Name, OptName, Text
from voltana.schemas.telemetry import LatencyWindow, Role


class InstanceState(Event, frozen=True, kw_only=True):  # type: ignore[call-arg, unused-ignore]
    """The router's view of one instance: its own accounting merged with telemetry.

    ``telemetry_age_s`` is None when no telemetry was ever received for it.
    """

    instance: Name
    role: Role
    url: Text
    seq: int
    in_flight_requests: Count = 0
    in_flight_tokens: Count = 0
    queued_prefill_tokens: Count = 0
    oldest_wait_s: float = 0.0
    healthy: bool = True
    circuit_open: bool = False
    sm_clock_mhz: int | None = None
    power_w: float | None = None
    engine_running_reqs: int | None = None
    engine_queue_reqs: int | None = None
    telemetry_age_s: float | None = None
    ttft: LatencyWindow | None = None
    itl: LatencyWindow | None = None


class RouteDecision(Event, frozen=True, kw_only=True):  # type: ignore[call-arg, unused-ignore]
    """Where one request went and why."""

    request_id: Text
    prefill: OptName
    decode: OptName
    prefill_policy: Text
    decode_policy: Text
    bootstrap_room: int
    input_tokens: int = 0
    max_new_tokens: int | None = None
    prefill_reason: Text = ""
    decode_reason: Text = ""
    path: Text = "/generate"


RequestStatus = Literal["ok", "error", "cancelled", "rejected"]


class RequestRecord(Event, frozen=True, kw_only=True):  # type: ignore[call-arg, unused-ignore]
    """One finished request as the client saw it.

    ``slo_met`` is the per-request definition used throughout the project:
    TTFT within the TTFT SLO and mean ITL within the ITL SLO.
    ``itl_within_slo_frac`` is the fraction of this request's inter-token gaps
    within the ITL SLO (the per-token view).

    ``energy_j`` is the GPU energy attributed to this request (docs/energy.md):
    ``energy_prefill_j`` + ``energy_decode_j`` (its share of its instances' busy
    energy) + ``energy_idle_j`` (its share of idle energy, when the router spreads
    idle energy over requests). None when no GPU energy could be attributed in
    time (no energy telemetry for an instance it used). ``model`` is the
    client's ``model`` field; ``tenant`` its ``X-Tenant`` header, else a short
    hash of its API key (never the key itself).
    """

    request_id: Text
    prefill: OptName
    decode: OptName
    status: RequestStatus
    arrival_t_ns: int
    input_tokens: int = 0
    output_tokens: int = 0
    ttft_s: float | None = None
    e2e_s: float | None = None
    itl_mean_s: float | None = None
    itl_p99_s: float | None = None
    itl_max_s: float | None = None
    itl_within_slo_frac: float | None = None
    slo_ttft_s: float | None = None
    slo_itl_s: float | None = None
    ttft_met: bool | None = None
    itl_met: bool | None = None
    slo_met: bool | None = None
    error: Text | None = None
    stream: bool = False
    energy_j: float | None = None
    energy_prefill_j: float | None = None
    energy_decode_j: float | None = None
    energy_idle_j: float | None = None
    model: str | None = None
    tenant: str | None = None
