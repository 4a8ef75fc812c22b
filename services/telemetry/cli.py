"""``voltana telemetry --config node.toml``: one telemetry process per node.

Precedence: flags > ``VOLTANA_*`` environment > the config file > defaults.
"""

from __future__ import annotations

import argparse
import os
from typing import Any


def register(subparsers: argparse._SubParsersAction[Any]) -> None:
    p = subparsers.add_parser(
        "telemetry",
        help="publish GPU power/clock and SGLang engine telemetry on NATS",
        description=(
            "Sample the node's GPUs (NVML or emulated) and SGLang servers and publish "
            "GpuTelemetry / InstanceTelemetry on NATS."
        ),
    )
    p.add_argument(
        "--config", required=True, help="node config TOML (see deploy/node.example.toml)"
    )
    p.add_argument("--node", default=None, help="override the node name (env VOLTANA_NODE)")
    p.add_argument("--gpu-hz", type=float, default=None, help="GPU sampling rate (default 20)")
    p.add_argument("--engine-hz", type=float, default=None, help="engine scrape rate (default 4)")
    p.add_argument(
        "--metrics-port",
        type=int,
        default=None,
        help="own Prometheus endpoint port (0 = any free port, -1 = off; default 9464)",
    )
    p.add_argument(
        "--check",
        action="store_true",
        help="validate the config and open the GPU sources, then exit",
    )
    from voltana.bus.cliopts import add_nats_args

    add_nats_args(p)
    p.set_defaults(func=run)


def _nats_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """NATS settings given by flag or environment (these win over the config file)."""
    from voltana.bus.cliopts import bus_options_from_args
    from voltana.bus.options import BusOptions

    given = bus_options_from_args(args, name="voltana-telemetry")
    out: dict[str, Any] = {}
    if args.nats or os.environ.get("VOLTANA_NATS_URL"):
        out["servers"] = given.servers
    for fld in (
        "user",
        "password",
        "token",
        "creds_file",
        "nkeys_seed_file",
        "tls_ca_file",
        "tls_cert_file",
        "tls_key_file",
    ):
        value = getattr(given, fld)
        if value is not None:
            out[fld] = value
    if given.inbox_prefix != BusOptions().inbox_prefix:  # given by flag or environment
        out["inbox_prefix"] = given.inbox_prefix
    return out


def run(args: argparse.Namespace) -> int:
    import msgspec
    from voltana.services.runner import run_service
    from voltana.services.telemetry.config import load_config, validate
    from voltana.services.telemetry.service import TelemetryService, build_sources

    cfg = load_config(args.config)
    rates = cfg.rates
    if args.gpu_hz is not None:
        rates = msgspec.structs.replace(rates, gpu_hz=args.gpu_hz)
    if args.engine_hz is not None:
        rates = msgspec.structs.replace(rates, engine_hz=args.engine_hz)
    metrics = cfg.metrics
    if args.metrics_port is not None:
        metrics = msgspec.structs.replace(metrics, port=args.metrics_port)
    node = args.node or os.environ.get("VOLTANA_NODE") or cfg.node
    nats = msgspec.structs.replace(cfg.nats, **_nats_overrides(args))
    cfg = validate(msgspec.structs.replace(cfg, node=node, rates=rates, metrics=metrics, nats=nats))
    sources = build_sources(cfg)  # GPU errors surface before anything connects
    try:
        if args.check:
            for s in sources.values():
                print(f"{s.name} GPUs {list(s.indices)}: {len(s.sample())} sample(s) read")
            print(f"config {args.config}: ok ({len(cfg.instances)} instance(s))")
            return 0
        # the node config's own [metrics] endpoint (with /healthz) is the service's
        return run_service(
            lambda bus: TelemetryService(cfg, bus, sources=sources), name="telemetry", bus=cfg.nats
        )
    finally:
        for s in sources.values():
            s.close()
