"""``voltana router``: the PD router, with flags shaped like sglang-router's where they overlap.

Precedence: flags > ``--config`` TOML file (keys of ``RouterConfig``) > defaults.
The API key may also come from ``VOLTANA_ROUTER_API_KEY``. sglang-router's (and smg's)
own names for what this router does are accepted as aliases; its flags for what this
router does not do are refused by name, with the reason (``router_compat.py``).
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
        description="Route SGLang requests to prefill and decode workers (PD disaggregation).",
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
    p.add_argument("--policy", choices=_POLICIES, default=None, help="policy for both sides")
    p.add_argument(
        "--prefill-policy", choices=_POLICIES, default=None, help="prefill side's policy"
    )
    p.add_argument("--decode-policy", choices=_POLICIES, default=None, help="decode side's policy")
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
        "--api-key", default=None, help="require Bearer key (env VOLTANA_ROUTER_API_KEY)"
    )
    for flag, typ, text in _PROTECTION:
        key = flag[2:].replace("-", "_")
        g.add_argument(flag, type=typ, default=None, help=f"{text} (default {_DEFAULTS[key]})")
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
        "profile_gpu": "profile_gpu",
        "profile_model": "profile_model",
    }
    for flag in (
        "max_concurrent_requests",
        "max_queued_requests",
        "queue_timeout_s",
        "max_request_bytes",
        "api_key",
        "request_timeout_s",
        "connect_timeout_s",
        "read_timeout_s",
        "prefill_retries",
        "health_check_interval_s",
        "health_check_timeout_s",
        "health_failure_threshold",
        "breaker_failures",
        "breaker_open_s",
    ):
        simple[flag] = flag
    for flag, key in simple.items():
        value = getattr(args, flag, None)
        if value is not None:
            setattr(cfg, key, value)
    if cfg.api_key is None and os.environ.get("VOLTANA_ROUTER_API_KEY"):
        cfg.api_key = os.environ["VOLTANA_ROUTER_API_KEY"]
    if args.no_nats:
        cfg.nats, cfg.bus_options = None, None
    else:
        if args.nats is None and cfg.nats:
            args.nats = [cfg.nats]
        cfg.bus_options = bus_options_from_args(args, name="voltana-router")
    return cfg.validate()


def run(args: argparse.Namespace) -> int:
    from voltana.services.router.server import Router
    from voltana.services.runner import run_service

    cfg = build_config(args)

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
