"""``voltana router``: the PD router, with flags shaped like sglang-router's where they overlap.

Precedence: flags > ``--config`` TOML file (keys of ``RouterConfig``) > defaults.
The API key comes from ``--api-key-file`` or ``VOLTANA_ROUTER_API_KEY``, never
from argv (every user of the machine can read a process's argv).
sglang-router's (and smg's) own names for what this router does are accepted as
aliases; its flags for what this router does not do are refused by name, with the
reason (``router_compat.py``).
"""

from __future__ import annotations

import argparse
import asyncio
import os
from collections.abc import Callable
from typing import Any

from voltana.predictor.profile import packaged_profiles
from voltana.services.router.config import RouterConfig
from voltana.services.router.policies.factory import POLICY_NAMES

_POLICIES = [*POLICY_NAMES, "round_robin", "power_of_two"]
_DEFAULTS = {f: getattr(RouterConfig(), f) for f in RouterConfig.__struct_fields__}
_PROTECTION: list[tuple[str, type, str]] = [
    ("--max-concurrent-requests", int, "requests served at once"),
    ("--max-queued-requests", int, "requests waiting for a slot; more are refused (429)"),
    ("--queue-timeout-s", float, "longest wait for a slot (s)"),
    ("--max-request-bytes", int, "largest request body"),
    ("--request-timeout-s", float, "whole request to a worker (s)"),
    ("--connect-timeout-s", float, "connecting to a worker (s)"),
    ("--read-timeout-s", float, "gap between bytes from a worker (s)"),
    ("--prefill-retries", int, "re-pairings of a failed prefill before any byte is sent"),
    ("--health-check-interval-s", float, "between worker health checks (s; 0 = off)"),
    ("--health-check-timeout-s", float, "one health check (s)"),
    ("--health-failure-threshold", int, "failed checks in a row that mark a worker unhealthy"),
    ("--breaker-failures", int, "request failures in a row that open a worker's circuit"),
    ("--breaker-open-s", float, "how long an open circuit stays open (s)"),
]


def _prefill_arg(values: list[str]) -> tuple[str, int | None]:
    if not 1 <= len(values) <= 2:
        raise argparse.ArgumentTypeError("--prefill takes URL [BOOTSTRAP_PORT]")
    port: int | None = None
    if len(values) == 2 and values[1].lower() not in ("none", "null", ""):
        try:
            port = int(values[1])
        except ValueError:
            raise argparse.ArgumentTypeError(f"bad bootstrap port {values[1]!r}") from None
    return values[0], port


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "router",
        help="PD router: SGLang prefill/decode dispatch with energy-aware routing",
        description="Route SGLang requests to prefill and decode workers (PD disaggregation), "
        "or to colocated workers (--worker-urls).",
    )
    p.add_argument("--config", default=None, help="TOML file with RouterConfig keys")
    p.add_argument("--host", default=None, help="bind address (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=None, help="bind port (default 8000)")
    p.add_argument(
        "--prefill",
        nargs="+",
        action="append",
        default=None,
        metavar=("URL", "BOOTSTRAP_PORT"),
        help="prefill worker URL and optional bootstrap port (none = server's own); "
        "repeat per worker",
    )
    p.add_argument(
        "--decode",
        action="append",
        default=None,
        metavar="URL",
        help="decode worker URL; repeat per worker",
    )
    p.add_argument(
        "--worker-urls",
        nargs="+",
        action="extend",
        default=None,
        metavar="URL",
        help="colocated (unified) SGLang workers, one per request, as sglang-router routes "
        "without --pd-disaggregation (instead of --prefill/--decode)",
    )
    p.add_argument("--policy", choices=_POLICIES, default=None, help="policy for both sides")
    p.add_argument(
        "--prefill-policy", choices=_POLICIES, default=None, help="prefill side's policy"
    )
    p.add_argument("--decode-policy", choices=_POLICIES, default=None, help="decode side's policy")
    ca = p.add_argument_group("cache_aware policy (sglang-router's flags and defaults)")
    ca.add_argument(
        "--cache-threshold",
        type=float,
        default=None,
        help="prefix match share (0-1) above which a request follows its prefix (default 0.3)",
    )
    ca.add_argument(
        "--balance-abs-threshold",
        type=int,
        default=None,
        help="load balancing when max - min in-flight > this AND max > min x "
        "--balance-rel-threshold (default 64)",
    )
    ca.add_argument(
        "--balance-rel-threshold", type=float, default=None, help="see above (default 1.5)"
    )
    ca.add_argument(
        "--eviction-interval-secs",
        type=float,
        default=None,
        help="seconds between prunings of the approximate tree (default 120)",
    )
    ca.add_argument(
        "--max-tree-size",
        type=int,
        default=None,
        help="tokens the approximate tree keeps per worker (default 2**26)",
    )
    p.add_argument("--profile", default=None, help="profile JSON for ecoroute (default: packaged)")
    pairs = packaged_profiles()
    p.add_argument(
        "--gpu",
        dest="profile_gpu",
        default=None,
        choices=sorted({g for g, _ in pairs}),
        help="packaged profile's GPU for ecoroute (default h100)",
    )
    p.add_argument(
        "--model",
        dest="profile_model",
        default=None,
        choices=sorted({m for _, m in pairs}),
        help="packaged profile's model for ecoroute (default llama-3.1-8b)",
    )
    p.add_argument("--slo-ttft-s", type=float, default=None, help="TTFT SLO in s (default 1.0)")
    p.add_argument("--slo-itl-s", type=float, default=None, help="ITL SLO in s (default 0.05)")
    p.add_argument(
        "--processes",
        type=int,
        default=None,
        help="router processes on the one port (SO_REUSEPORT), sharing in-flight "
        "accounting and /metrics; see docs/router-processes.md (default 1)",
    )
    p.add_argument("--no-nats", action="store_true", help="run without the bus")
    p.add_argument("--seed", type=int, default=None, help="routing seed (default: random)")
    p.add_argument(
        "--loop",
        choices=["auto", "asyncio", "uvloop"],
        default="auto",
        help="event loop (auto: uvloop when installed)",
    )
    g = p.add_argument_group("protection")
    g.add_argument(
        "--api-key-file",
        default=None,
        help="file holding the Bearer key every path but /health needs "
        "(or env VOLTANA_ROUTER_API_KEY; default: no key)",
    )
    g.add_argument(
        "--api-key", default=None, help=argparse.SUPPRESS
    )  # refused with a message: a key in argv is visible in ps
    g.add_argument(
        "--max-body-buffer-bytes",
        type=int,
        default=None,
        help="request body bytes held at once, over all requests; beyond: 503 (default 128 MiB)",
    )
    g.add_argument(
        "--body-read-timeout-s",
        type=float,
        default=None,
        help="a request body must arrive within this; else 408 (default 30)",
    )
    g.add_argument(
        "--idle-timeout-s",
        type=float,
        default=None,
        help="close a client connection idle or sending headers this long (default 15)",
    )
    g.add_argument(
        "--max-batch-items",
        type=int,
        default=None,
        help="items in one batch request, chat n included; beyond: 400 (default 1024)",
    )
    g.add_argument(
        "--max-json-depth",
        type=int,
        default=None,
        help="nesting depth of a request body; beyond: 400 (default 64)",
    )
    for flag, typ, text in _PROTECTION:
        key = flag[2:].replace("-", "_")
        g.add_argument(flag, type=typ, default=None, help=f"{text} (default {_DEFAULTS[key]})")
    e = p.add_argument_group("energy per request (docs/energy.md)")
    e.add_argument(
        "--energy-idle",
        choices=("overhead", "spread"),
        default=None,
        help="idle GPU energy: kept as unattributed overhead, or spread over the next "
        "requests of the same GPU (default: overhead)",
    )
    e.add_argument(
        "--energy-wait-s",
        type=float,
        default=None,
        help="how long a finished request's record (and an answer asking for its energy) "
        "waits for the GPU energy covering its end (default: 3.0)",
    )
    from voltana.bus.cliopts import add_nats_args
    from voltana.services.router.router_compat import add_sglang_router_flags

    add_sglang_router_flags(p)
    add_nats_args(p)
    p.set_defaults(func=run)


def build_config(args: argparse.Namespace) -> Any:
    """RouterConfig from flags over the optional TOML file."""
    import msgspec
    from voltana.bus.cliopts import bus_options_from_args
    from voltana.common.errors import ConfigError
    from voltana.services.router.config import RouterConfig, WorkerSpec

    base: dict[str, Any] = {}
    if args.config:
        try:
            with open(args.config, "rb") as f:
                base = msgspec.toml.decode(f.read())
        except (OSError, msgspec.DecodeError) as exc:
            raise ConfigError(f"cannot read {args.config}: {exc}") from exc
    try:
        cfg = msgspec.convert(base, RouterConfig)
    except msgspec.ValidationError as exc:
        raise ConfigError(f"{args.config}: {exc}") from exc
    if args.prefill:
        try:
            pairs = [_prefill_arg(v) for v in args.prefill]
        except argparse.ArgumentTypeError as exc:
            raise ConfigError(str(exc)) from exc
        cfg.prefill = [WorkerSpec(url=u, role="prefill", bootstrap_port=bp) for u, bp in pairs]
    if args.decode:
        cfg.decode = [WorkerSpec(url=u, role="decode") for u in args.decode]
    if args.worker_urls:
        cfg.mode = "unified"
        cfg.workers = [WorkerSpec(url=u, role="unified") for u in args.worker_urls]
    if args.policy:
        cfg.prefill_policy = cfg.decode_policy = args.policy
    simple = {
        "host": "host",
        "port": "port",
        "prefill_policy": "prefill_policy",
        "decode_policy": "decode_policy",
        "profile": "profile",
        "slo_ttft_s": "slo_ttft_s",
        "slo_itl_s": "slo_itl_s",
        "seed": "seed",
        "processes": "processes",
        "profile_gpu": "profile_gpu",
        "profile_model": "profile_model",
    }
    for flag in (
        "max_concurrent_requests",
        "max_queued_requests",
        "queue_timeout_s",
        "max_request_bytes",
        "max_body_buffer_bytes",
        "body_read_timeout_s",
        "idle_timeout_s",
        "max_batch_items",
        "max_json_depth",
        "request_timeout_s",
        "connect_timeout_s",
        "read_timeout_s",
        "prefill_retries",
        "health_check_interval_s",
        "health_check_timeout_s",
        "health_failure_threshold",
        "breaker_failures",
        "breaker_open_s",
        "energy_idle",
        "energy_wait_s",
        "cache_threshold",
        "balance_abs_threshold",
        "balance_rel_threshold",
        "eviction_interval_secs",
        "max_tree_size",
    ):
        simple[flag] = flag
    for flag, key in simple.items():
        value = getattr(args, flag, None)
        if value is not None:
            setattr(cfg, key, value)
    if args.api_key is not None:
        raise ConfigError(
            "--api-key is not accepted: a key on the command line is visible in ps; "
            "use --api-key-file FILE or VOLTANA_ROUTER_API_KEY"
        )
    if args.api_key_file:
        cfg.api_key = read_key_file(args.api_key_file)
    elif os.environ.get("VOLTANA_ROUTER_API_KEY"):
        cfg.api_key = os.environ["VOLTANA_ROUTER_API_KEY"]
    if args.no_nats:
        cfg.nats, cfg.bus_options = None, None
    else:
        if args.nats is None and cfg.nats:
            args.nats = [cfg.nats]
        cfg.bus_options = bus_options_from_args(args, name="voltana-router")
    return cfg.validate()


def read_key_file(path: str) -> str:
    """The API key in ``path`` (surrounding whitespace dropped).

    Raises:
        ConfigError: the file cannot be read or holds no key.
    """
    from voltana.common.errors import ConfigError

    try:
        with open(path, encoding="utf-8") as f:
            key = f.read().strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read --api-key-file {path}: {exc}") from exc
    if not key:
        raise ConfigError(f"--api-key-file {path} is empty")
    return key


def run(args: argparse.Namespace) -> int:
    from voltana.services.router.server import Router
    from voltana.services.runner import run_service

    cfg = build_config(args)
    if cfg.processes > 1:
        from voltana.services.router.multiproc import run_processes

        child = ["--loop", args.loop, "--prometheus-host", args.prometheus_host]
        child += (
            [] if args.prometheus_port is None else ["--prometheus-port", str(args.prometheus_port)]
        )
        for flag, value in (("--log-format", args.log_format), ("--log-level", args.log_level)):
            child += [] if value is None else [flag, value]
        return run_processes(cfg, child)

    def started(router: Router) -> None:
        if args.prometheus_port is not None:  # sglang-router's separate metrics listener
            from voltana.services.router.router_compat import serve_metrics

            serve_metrics(router.metrics.registry, args.prometheus_host, args.prometheus_port)
        if cfg.gc_threshold is not None:
            import gc

            gc.collect()
            gc.freeze()  # start-up objects never need scanning again
            gc.set_threshold(*cfg.gc_threshold)

    # the router keeps its own bus link (RouterBus): it runs, and reconnects, without one
    return run_service(
        lambda: Router(cfg), name="router", ready=started, loop_factory=_loop_factory(args.loop)
    )


def _loop_factory(choice: str) -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop's loop for ``auto`` (when installed) and ``uvloop``; None: asyncio's."""
    if choice not in ("auto", "uvloop"):
        return None
    try:
        import uvloop
    except ImportError:
        if choice == "uvloop":
            from voltana.common.errors import ConfigError

            raise ConfigError("--loop uvloop: uvloop is not installed") from None
        return None
    factory: Callable[[], asyncio.AbstractEventLoop] = uvloop.new_event_loop
    return factory
