"""The evaluated policy combinations: which clock controller and which routing policies.

Every entry names objects that live in the services (``make_controller`` from
freqctl, ``make_policy`` from the router); the simulator only picks them.

| name         | clock controller | prefill routing | decode routing |
| ------------ | ---------------- | --------------- | -------------- |
| static-max   | static-max       | random          | round-robin    |
| static-min   | static-min       | random          | round-robin    |
| ecofreq      | ecofreq          | random          | round-robin    |
| voltana-ref  | ecofreq          | random          | ecoroute-tile  |
| voltana      | voltana          | ecoroute        | ecoroute       |
| cache-aware  | static-max       | cache-aware     | cache-aware    |
| default      | default clocks   | random          | round-robin    |
| default-rr   | default clocks   | round-robin     | round-robin    |
| default-p2   | default clocks   | power-of-two    | power-of-two   |
| default-ca   | default clocks   | cache-aware     | cache-aware    |

``voltana-clocks`` is the controller alone behind an existing router: telemetry
cadence without dispatch wake-ups, the ``default`` routing.

``default`` is what users run today: no clock lock (the driver boosts under load and
lets an idle GPU's clock decay after a hold, ``groundtruth.default_clock``), with the
routing of the static baselines; ``default-rr``, ``default-p2`` and ``default-ca`` route
as sglang-router's ``round_robin``, ``power_of_two`` and ``cache_aware`` (its default)
policies do. On a colocated
(``Nu``) cluster every policy routes with its decode-side policy (one worker per
request, as sglang-router without ``--pd-disaggregation``).

Diagnostics that change one lever at a time: ``voltana-rr`` (voltana clocks,
random/round-robin routing), ``voltana-tile`` (voltana clocks, ecoroute-tile
decode routing), ``ecofreq-ecoroute`` (EcoFreq clocks, ecoroute routing).

``voltana-ref`` is the published method (EcoFreq + the released EcoRoute, a
tile packer, with random prefill placement); ``voltana`` is the project's own.
``oracle`` is not a deployable policy: see :mod:`voltana.sim.oracle`.
"""

from __future__ import annotations

from typing import Literal

import msgspec
from voltana.common.errors import ConfigError

__all__ = ["POLICIES", "ControllerName", "PolicySpec", "parse_policies"]

ControllerName = Literal[
    "voltana", "ecofreq", "ecofreq-2level", "static", "static-max", "static-min"
]
"""The ``policy`` values ``ControllerConfig`` accepts."""


class PolicySpec(msgspec.Struct, frozen=True):
    """One evaluated combination (controller policy name as in ``ControllerConfig``)."""

    name: str
    controller: ControllerName
    prefill_routing: str
    decode_routing: str
    static_clock: str | None = None  # "max" | "min" | "default" (no lock) for static
    wake_on_dispatch: bool | None = None  # None: the run's setting; False: telemetry only


POLICIES: dict[str, PolicySpec] = {
    "static-max": PolicySpec("static-max", "static", "random", "round-robin", "max"),
    "static-min": PolicySpec("static-min", "static", "random", "round-robin", "min"),
    "ecofreq": PolicySpec("ecofreq", "ecofreq", "random", "round-robin"),
    "ecofreq-2level": PolicySpec("ecofreq-2level", "ecofreq-2level", "random", "round-robin"),
    "voltana-ref": PolicySpec("voltana-ref", "ecofreq", "random", "ecoroute-tile"),
    "voltana": PolicySpec("voltana", "voltana", "ecoroute", "ecoroute"),
    "default": PolicySpec("default", "static", "random", "round-robin", "default"),
    "default-rr": PolicySpec("default-rr", "static", "round-robin", "round-robin", "default"),
    "default-p2": PolicySpec("default-p2", "static", "power-of-two", "power-of-two", "default"),
    # clocks only, behind an existing router: the voltana controller at telemetry cadence
    # (no dispatch wake-ups, it sees no router), the default baseline's routing
    "voltana-clocks": PolicySpec(
        "voltana-clocks", "voltana", "random", "round-robin", wake_on_dispatch=False
    ),
    # diagnostics: one lever at a time
    "voltana-rr": PolicySpec("voltana-rr", "voltana", "random", "round-robin"),
    "ecofreq-ecoroute": PolicySpec("ecofreq-ecoroute", "ecofreq", "ecoroute", "ecoroute"),
    "voltana-tile": PolicySpec("voltana-tile", "voltana", "random", "ecoroute-tile"),
    # sglang-router's default routing (cache_aware on both sides) at the top clock
    "cache-aware": PolicySpec("cache-aware", "static", "cache-aware", "cache-aware", "max"),
    # what a team runs today behind sglang-router's defaults: cache_aware, no clock lock
    "default-ca": PolicySpec("default-ca", "static", "cache-aware", "cache-aware", "default"),
}


def parse_policies(text: str) -> list[PolicySpec]:
    """Comma-separated names -> specs (order kept, duplicates dropped).

    Raises:
        ConfigError: an unknown name.
    """
    out: list[PolicySpec] = []
    for raw in text.split(","):
        name = raw.strip()
        if not name:
            continue
        spec = POLICIES.get(name)
        if spec is None:
            raise ConfigError(f"unknown policy {name!r}; choose from {', '.join(POLICIES)}")
        if spec not in out:
            out.append(spec)
    if not out:
        raise ConfigError("no policy given")
    return out
