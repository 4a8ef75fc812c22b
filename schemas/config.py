"""Live configuration stored in the NATS KV bucket (SLOs, controller policy)."""

from __future__ import annotations

from typing import Literal

import msgspec
from voltana.schemas.base import SCHEMA_VERSION


class SloConfig(msgspec.Struct, frozen=True, kw_only=True):
    """Latency targets. ``ttft_s``: time to first token; ``itl_s``: inter-token latency.

    ``margin`` is the fraction of each budget the controllers keep in reserve
    (0.1 = plan for 90% of the SLO).
    """

    ttft_s: float = 1.0
    itl_s: float = 0.05
    margin: float = 0.1
    v: int = SCHEMA_VERSION
    t_ns: int = 0


class ControllerConfig(msgspec.Struct, frozen=True, kw_only=True):
    """Per-instance controller settings, changeable live through the KV bucket.

    ``policy`` selects the controller: ``voltana`` (the project's own), ``ecofreq``
    (the published method), ``static`` (always ``static_clock_mhz``; None = default
    clocks), ``static-max`` / ``static-min`` (the ends of the allowed range).
    ``min_dwell_s`` and ``hysteresis_mhz`` damp clock changes.
    """

    policy: Literal[
        "voltana", "ecofreq", "ecofreq-2level", "static", "static-max", "static-min"
    ] = "voltana"
    slo: SloConfig = SloConfig()
    enabled: bool = True
    static_clock_mhz: int | None = None
    min_clock_mhz: int | None = None
    max_clock_mhz: int | None = None
    min_dwell_s: float = 0.2
    hysteresis_mhz: int = 45
    lease_s: float = 2.0
    stale_after_s: float = 1.0
    v: int = SCHEMA_VERSION
    t_ns: int = 0
