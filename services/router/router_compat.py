"""sglang-router's and smg's command-line names on ``voltana router``.

Their names for what this router does are aliases of its own flags (same
destination); their flags for what it does not do are refused by name with
the reason, instead of argparse's bare "unrecognized arguments".
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from typing import Any

from prometheus_client import CollectorRegistry, start_http_server
from voltana.common.errors import ConfigError

__all__ = ["UNSUPPORTED", "add_sglang_router_flags", "serve_metrics"]

# sglang-router / smg flag -> (RouterConfig key, type, help)
ALIASES: dict[str, tuple[str, type, str]] = {
    "--max-payload-size": ("max_request_bytes", int, "= --max-request-bytes"),
    "--request-timeout-secs": ("request_timeout_s", float, "= --request-timeout-s"),
    "--queue-size": ("max_queued_requests", int, "= --max-queued-requests"),
    "--queue-timeout-secs": ("queue_timeout_s", float, "= --queue-timeout-s"),
    "--health-check-interval-secs": (
        "health_check_interval_s",
        float,
        "= --health-check-interval-s",
    ),
    "--health-check-timeout-secs": ("health_check_timeout_s", float, "= --health-check-timeout-s"),
    "--cb-failure-threshold": ("breaker_failures", int, "= --breaker-failures"),
    "--cb-timeout-duration-secs": ("breaker_open_s", float, "= --breaker-open-s"),
    "--retry-max-retries": ("prefill_retries", int, "= --prefill-retries (prefill re-pairings)"),
}

_NOT_PD = "this router serves SGLang workers over HTTP (--prefill/--decode, --worker-urls)"
_NO_TOKENIZER = "this router does not tokenize (it forwards requests as they come)"
UNSUPPORTED: dict[str, str] = {
    "--mini-lb": "the mini load balancer is sglang-router's own; this router is the PD router",
    "--dp-aware": "data-parallel-rank routing is not supported",
    "--enable-igw": "the inference gateway mode is not supported",
    "--service-discovery": "Kubernetes service discovery is not supported; list the workers",
    "--worker-startup-timeout-secs": "workers are health-checked while serving, not awaited",
    "--worker-startup-check-interval": "workers are health-checked while serving, not awaited",
    "--rate-limit-tokens-per-second": "token rate limiting is not supported",
    "--model-path": _NO_TOKENIZER,
    "--tokenizer-path": _NO_TOKENIZER,
    "--chat-template": _NO_TOKENIZER,
    "--reasoning-parser": _NO_TOKENIZER,
    "--tool-call-parser": _NO_TOKENIZER,
    "--backend": _NOT_PD,
    "--selector": "Kubernetes service discovery is not supported; list the workers",
}


class _Refuse(argparse.Action):
    def __init__(self, option_strings: Sequence[str], dest: str, **kw: Any) -> None:
        super().__init__(option_strings, dest, nargs="*", default=argparse.SUPPRESS, **kw)

    def __call__(
        self, parser: argparse.ArgumentParser, ns: Any, values: Any, opt: Any = None
    ) -> None:
        parser.error(f"{opt} (an sglang-router flag) is not supported: {UNSUPPORTED[str(opt)]}")


def add_sglang_router_flags(p: argparse.ArgumentParser) -> None:
    """Aliases, --pd-disaggregation, --prometheus-port/-host, --log-level, the refusals."""
    g = p.add_argument_group("sglang-router / smg names")
    g.add_argument(
        "--pd-disaggregation",
        action="store_true",
        help="accepted for sglang-router command lines: --prefill/--decode route PD, "
        "--worker-urls colocated workers",
    )
    for flag, (dest, typ, text) in ALIASES.items():
        g.add_argument(flag, dest=dest, type=typ, default=None, help=text)
    g.add_argument(
        "--prometheus-port",
        type=int,
        default=None,
        help="also serve /metrics on this port, as sglang-router does (default: only on --port)",
    )
    g.add_argument(
        "--prometheus-host", default="127.0.0.1", help="bind address of --prometheus-port"
    )
    g.add_argument(
        "--log-level",
        dest="log_level",
        default=argparse.SUPPRESS,
        help="log level (same as voltana --log-level)",
    )
    g.add_argument(
        "--disable-retries",
        dest="prefill_retries",
        action="store_const",
        const=0,
        help="= --prefill-retries 0",
    )
    g.add_argument(
        "--disable-health-check",
        dest="health_check_interval_s",
        action="store_const",
        const=0.0,
        help="= --health-check-interval-s 0",
    )
    for flag in UNSUPPORTED:
        g.add_argument(flag, action=_Refuse, help=argparse.SUPPRESS)


def serve_metrics(registry: CollectorRegistry, host: str, port: int) -> None:
    """Serve ``registry`` on ``host:port`` from a daemon thread (ends with the process)."""
    try:
        start_http_server(port, addr=host, registry=registry)
    except OSError as exc:
        raise ConfigError(f"--prometheus-port {port} on {host}: {exc.strerror or exc}") from exc
