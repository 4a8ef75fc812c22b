"""Node configuration of the telemetry service (TOML, decoded with msgspec).

One file per node maps GPUs to serving instances. See
``deploy/node.example.toml`` for a commented example.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import msgspec
from voltana.bus.client import BusOptions
from voltana.common.errors import ConfigError
from voltana.schemas import subjects
from voltana.schemas.base import Role

GpuBackend = Literal["nvml", "emulated", "none"]


class InstanceConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """One SGLang server (or emulator) and the GPUs of its tensor-parallel group.

    ``gpu_backend``: ``nvml`` reads the local GPUs; ``emulated`` reads them from
    the emulator's admin HTTP at ``admin_url`` (default: ``url``); ``none``
    publishes engine telemetry only. ``engine = false`` publishes GPUs only.
    """

    name: str
    role: Role
    url: str
    gpus: list[int] = msgspec.field(default_factory=list)
    gpu_backend: GpuBackend = "nvml"
    admin_url: str | None = None
    engine: bool = True

    @property
    def gpu_admin_url(self) -> str:
        return (self.admin_url or self.url).rstrip("/")


class RatesConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Sampling rates and timeouts.

    ``engine_hz`` is the scrape rate of SGLang (its gauges refresh slower than
    the GPU's counters); ``latency_window_s`` is the span of TTFT/ITL windows.
    ``energy_hz`` caps NVML energy-counter reads (about 4 ms of CPU each on an
    H100; the counter moves every 100 ms); emulated GPUs report it every sample.
    """

    gpu_hz: float = 20.0
    energy_hz: float = 2.0
    engine_hz: float = 4.0
    latency_window_s: float = 5.0
    http_timeout_s: float = 1.0


class MetricsConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """The service's own Prometheus endpoint (port 0 picks a free port; -1 turns it off)."""

    host: str = "127.0.0.1"
    port: int = 9464


class NodeConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    node: str
    nats: BusOptions = msgspec.field(default_factory=lambda: BusOptions(name="voltana-telemetry"))
    rates: RatesConfig = msgspec.field(default_factory=RatesConfig)
    metrics: MetricsConfig = msgspec.field(default_factory=MetricsConfig)
    instances: list[InstanceConfig] = msgspec.field(default_factory=list)


def validate(cfg: NodeConfig) -> NodeConfig:
    """Check what types alone cannot: names usable in subjects, unique names and GPUs.

    Raises:
        ConfigError: with the offending value named.
    """
    try:
        subjects.telemetry_gpu(cfg.node, 0)
        for inst in cfg.instances:
            subjects.telemetry_engine(inst.role, inst.name)
    except subjects.SubjectError as exc:
        raise ConfigError(str(exc)) from exc
    if not cfg.instances:
        raise ConfigError("the node config lists no [[instances]]")
    names = [i.name for i in cfg.instances]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise ConfigError(f"instance name {dupes[0]!r} appears more than once")
    seen: dict[int, str] = {}
    for inst in cfg.instances:
        if inst.gpu_backend != "none" and not inst.gpus:
            raise ConfigError(
                f"instance {inst.name!r}: gpu_backend {inst.gpu_backend!r} needs a 'gpus' list"
            )
        for g in inst.gpus:
            if g < 0:
                raise ConfigError(f"instance {inst.name!r}: GPU index {g} is negative")
            if g in seen:
                raise ConfigError(
                    f"GPU {g} is listed for both {seen[g]!r} and {inst.name!r}: "
                    "GPU indices are node-global and belong to one instance"
                )
            seen[g] = inst.name
        if not inst.url.startswith(("http://", "https://")):
            raise ConfigError(f"instance {inst.name!r}: url {inst.url!r} must start with http://")
    r = cfg.rates
    for what, hz in (("gpu_hz", r.gpu_hz), ("engine_hz", r.engine_hz), ("energy_hz", r.energy_hz)):
        if not 0 < hz <= 1000:
            raise ConfigError(f"rates.{what} = {hz}: must be in (0, 1000]")
    if r.latency_window_s <= 0 or r.http_timeout_s <= 0:
        raise ConfigError("rates.latency_window_s and rates.http_timeout_s must be > 0")
    return cfg


def parse_config(text: str | bytes, *, origin: str = "<config>") -> NodeConfig:
    """Decode and validate TOML text.

    Raises:
        ConfigError: syntax error, unknown or mistyped field (with its path), or a
            failed check from :func:`validate`.
    """
    try:
        cfg = msgspec.toml.decode(text, type=NodeConfig)
    except (msgspec.ValidationError, msgspec.DecodeError) as exc:
        raise ConfigError(f"{origin}: {exc}") from exc
    try:
        return validate(cfg)
    except ConfigError as exc:
        raise ConfigError(f"{origin}: {exc}") from exc


def load_config(path: str | Path) -> NodeConfig:
    """Read, decode and validate a node config file."""
    p = Path(path)
    try:
        data = p.read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read node config {p}: {exc.strerror or exc}") from exc
    return parse_config(data, origin=str(p))
