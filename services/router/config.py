"""Router configuration: one msgspec Struct, built from flags (or a TOML file)."""

from __future__ import annotations

import re
from typing import Literal
from urllib.parse import urlsplit

import msgspec
from voltana.bus.client import BusOptions
from voltana.common.errors import ConfigError
from voltana.services.router.policies.cache_aware import CacheAwareConfig

__all__ = ["RouterConfig", "WorkerSpec", "instance_name"]


class WorkerSpec(msgspec.Struct, frozen=True, kw_only=True):
    """One worker: its URL, its role, and (prefill) its bootstrap port (None = server's own)."""

    url: str
    role: str
    bootstrap_port: int | None = None
    name: str = ""


def instance_name(url: str) -> str:
    """A subject-safe instance name from a URL: ``127.0.0.1:30000`` -> ``127-0-0-1_30000``."""
    parts = urlsplit(url)
    host = (parts.hostname or "worker").replace(".", "-")
    port = parts.port or (443 if parts.scheme == "https" else 80)
    return re.sub(r"[^A-Za-z0-9_-]", "-", f"{host}_{port}")


def normalize_url(url: str) -> str:
    """``host:port`` -> ``http://host:port``; no trailing slash.

    Raises:
        ConfigError: not an http(s) URL with a host.
    """
    u = url.strip().rstrip("/")
    if "://" not in u:
        u = "http://" + u
    parts = urlsplit(u)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(f"worker URL must be http(s)://host:port, got {url!r}")
    return u


class RouterConfig(msgspec.Struct, kw_only=True):
    """Everything the router can be told. Times in seconds, sizes in bytes.

    Protection knobs: ``max_concurrent_requests`` run at once, up to ``max_queued_requests``
    wait (longer than ``queue_timeout_s`` -> 503; queue full -> 429);
    ``max_request_bytes`` (413); ``api_key`` (401 without ``Authorization: Bearer``);
    ``prefill_retries`` re-pair a failed prefill before any byte reached the client;
    a worker whose health check fails ``health_failure_threshold`` times in a row is
    unhealthy; ``breaker_failures`` request failures in a row open its circuit for
    ``breaker_open_s`` (then one trial request decides). Bounds on what one client
    sizes (docs/router.md, "Bounds"): ``max_body_buffer_bytes`` (503),
    ``body_read_timeout_s`` (408), ``idle_timeout_s``, ``max_batch_items`` and
    ``max_json_depth`` (400).
    """

    host: str = "127.0.0.1"
    port: int = 8000
    # router processes on the one port, sharing in-flight accounting (docs/router-processes.md)
    processes: int = 1
    reuse_port: bool = False  # bind with SO_REUSEPORT (set for each of ``processes``)
    prefill: list[WorkerSpec] = msgspec.field(default_factory=list)
    decode: list[WorkerSpec] = msgspec.field(default_factory=list)
    # "pd": SGLang PD dispatch (prefill + decode pairs); "unified": colocated workers, one
    # worker per request, as sglang-router without --pd-disaggregation (``workers``; the
    # decode policy picks)
    mode: Literal["pd", "unified"] = "pd"
    workers: list[WorkerSpec] = msgspec.field(default_factory=list)
    prefill_policy: str = "random"
    decode_policy: str = "random"
    # cache_aware's knobs, as sglang-router names them (its defaults)
    cache_threshold: float = 0.3
    balance_abs_threshold: int = 64
    balance_rel_threshold: float = 1.5
    eviction_interval_secs: float = 120.0
    max_tree_size: int = 2**26
    nats: str | None = None
    bus_options: BusOptions | None = None  # full NATS options (wins over ``nats``)
    node: str = "router"
    seed: int | None = None
    # timeouts
    connect_timeout_s: float = 5.0
    request_timeout_s: float = 1800.0
    read_timeout_s: float = 300.0
    # admission
    max_concurrent_requests: int = 4096
    max_queued_requests: int = 4096
    queue_timeout_s: float = 60.0
    max_request_bytes: int = 32 * 1024 * 1024
    api_key: str | None = None  # from --api-key-file, VOLTANA_ROUTER_API_KEY or the TOML file
    # bounds on what one client controls (docs/router.md, "Bounds")
    max_body_buffer_bytes: int = 128 * 1024 * 1024  # request bodies held at once: 503 beyond
    body_read_timeout_s: float = 30.0  # a body not read by then: 408
    idle_timeout_s: float = (
        15.0  # a connection silent (or still sending headers) that long is closed
    )
    max_batch_items: int = 1024  # items of a batch, chat ``n`` included: 400 beyond
    max_json_depth: int = 64  # nesting of the request body: 400 beyond
    # retries and worker protection
    prefill_retries: int = 2
    retry_backoff_s: float = 0.02
    health_check_interval_s: float = 10.0
    health_check_timeout_s: float = 5.0
    health_check_path: str = "/health"
    health_failure_threshold: int = 3
    breaker_failures: int = 5
    breaker_open_s: float = 10.0
    # SLO (for records and ecoroute) and state
    slo_ttft_s: float = 1.0
    slo_itl_s: float = 0.05
    slo_margin: float = 0.1
    profile: str | None = None  # profile JSON for ecoroute; None = packaged one below
    profile_gpu: str = "h100"
    profile_model: str = "llama-3.1-8b"
    state_publish_hz: float = 20.0
    # energy per request (docs/energy.md)
    energy_idle: str = "overhead"  # idle GPU energy: "overhead" (unattributed) or "spread"
    energy_wait_s: float = 3.0  # a record waits this long for the energy covering its end
    energy_attention_tokens: float = 30_000.0
    energy_kv_tokens: float = 4_096.0
    telemetry_stale_s: float = 2.0
    latency_window_s: float = 10.0
    upstream_connections: int = 0  # 0 = unlimited pool
    shutdown_timeout_s: float = 5.0  # in-flight requests get this long at shutdown
    # CPython's cyclic GC pauses the event loop for tens of ms under load; the service
    # freezes start-up objects and collects less often (None = interpreter defaults)
    gc_threshold: tuple[int, int, int] | None = (50_000, 50, 100)

    def validate(self) -> RouterConfig:
        """Normalise worker URLs and check ranges; returns self.

        Raises:
            ConfigError: no prefill or decode worker, or a value out of range.
        """
        if self.mode == "unified":
            if not self.workers:
                raise ConfigError("unified mode needs at least one worker (colocated SGLang)")
            if self.prefill or self.decode:
                raise ConfigError("unified mode takes workers, not prefill/decode workers")
        else:
            if not self.prefill:
                raise ConfigError("at least one --prefill worker is required")
            if not self.decode:
                raise ConfigError("at least one --decode worker is required")
            if self.workers:
                raise ConfigError("PD mode takes prefill and decode workers; set mode unified")
        seen: set[str] = set()
        fixed: dict[str, list[WorkerSpec]] = {"prefill": [], "decode": [], "unified": []}
        groups = (("prefill", self.prefill), ("decode", self.decode), ("unified", self.workers))
        for role, specs in groups:
            for w in specs:
                url = normalize_url(w.url)
                name = w.name or instance_name(url)
                if name in seen:
                    raise ConfigError(f"worker {url} listed twice")
                seen.add(name)
                fixed[role].append(
                    WorkerSpec(url=url, role=role, bootstrap_port=w.bootstrap_port, name=name)
                )
        self.prefill, self.decode = fixed["prefill"], fixed["decode"]
        self.workers = fixed["unified"]
        for name in (
            "max_concurrent_requests",
            "max_request_bytes",
            "state_publish_hz",
            "max_body_buffer_bytes",
            "body_read_timeout_s",
            "idle_timeout_s",
            "max_batch_items",
            "max_json_depth",
            "processes",
        ):
            if getattr(self, name) <= 0:
                raise ConfigError(f"{name} must be > 0")
        for name in ("max_queued_requests", "prefill_retries", "health_check_interval_s"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name} must be >= 0")
        if self.energy_idle not in ("overhead", "spread"):
            raise ConfigError(
                f"energy_idle must be one of overhead, spread; got {self.energy_idle!r}"
            )
        for name in ("energy_wait_s", "energy_attention_tokens", "energy_kv_tokens"):
            if not getattr(self, name) > 0:
                raise ConfigError(f"{name} must be > 0")
        if self.max_body_buffer_bytes < self.max_request_bytes:
            raise ConfigError("max_body_buffer_bytes must be >= max_request_bytes")
        if not 0 <= self.slo_margin < 1:
            raise ConfigError("slo_margin must be in [0, 1)")
        cache_aware_config(self)
        return self


def cache_aware_config(cfg: RouterConfig) -> CacheAwareConfig:
    """The cache_aware policy's thresholds from the router's configuration.

    Raises:
        ConfigError: a threshold out of range (the message names it).
    """
    try:
        return CacheAwareConfig(
            cache_threshold=cfg.cache_threshold,
            balance_abs_threshold=cfg.balance_abs_threshold,
            balance_rel_threshold=cfg.balance_rel_threshold,
            eviction_interval_secs=cfg.eviction_interval_secs,
            max_tree_size=cfg.max_tree_size,
        )
    except ValueError as exc:
        raise ConfigError(f"cache-aware routing: {exc}") from exc
