"""``voltana freqctl``: run the clock controllers of a set of instances until SIGTERM/SIGINT."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from voltana.predictor.profile import Profile


def add_profile_args(parser: argparse.ArgumentParser) -> None:
    """``--profile``, else the packaged profile of ``--gpu``/``--model`` (freqctl and replay)."""
    parser.add_argument(
        "--profile", default=None, help="profile JSON (default: packaged --gpu/--model)"
    )
    from voltana.predictor.profile import packaged_profiles

    pairs = packaged_profiles()
    parser.add_argument(
        "--gpu",
        default="h100",
        choices=sorted({g for g, _ in pairs}),
        help="packaged profile GPU (default h100)",
    )
    parser.add_argument(
        "--model",
        default="llama-3.1-8b",
        choices=sorted({m for _, m in pairs}),
        help="packaged profile model (default llama-3.1-8b)",
    )


def profile_from_args(args: argparse.Namespace) -> Profile:
    """The profile named by :func:`add_profile_args`' flags."""
    from voltana.predictor.profile import default_profile, load_profile

    return load_profile(args.profile) if args.profile else default_profile(args.gpu, args.model)


def run(args: argparse.Namespace) -> int:
    """Entry point of ``voltana freqctl``."""
    from voltana.bus.client import Bus
    from voltana.bus.cliopts import bus_options_from_args
    from voltana.common.logs import get_logger
    from voltana.schemas.config import ControllerConfig, SloConfig
    from voltana.services.freqctl.core import parse_instances
    from voltana.services.freqctl.service import FreqctlService
    from voltana.services.runner import metrics_from_args, run_service

    specs = parse_instances(args.instances)
    profile = profile_from_args(args)
    base = ControllerConfig(
        policy=args.policy,
        slo=SloConfig(ttft_s=args.slo_ttft_s, itl_s=args.slo_itl_s, margin=args.slo_margin),
        static_clock_mhz=args.static_clock_mhz,
        lease_s=args.lease_s,
        stale_after_s=args.stale_after_s,
    )

    def build(bus: Bus) -> FreqctlService:
        return FreqctlService(
            bus, specs, profile, base, name=args.name, tick_s=args.tick_s, use_kv=not args.no_kv
        )

    return run_service(
        build,
        name="freqctl",
        bus=bus_options_from_args(args, name=f"voltana-freqctl-{args.name}"),
        metrics=metrics_from_args(args),
        log=get_logger("freqctl", controller=args.name),
    )


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg,unused-ignore]
    """Add ``voltana freqctl``."""
    from voltana.bus.cliopts import add_nats_args
    from voltana.services.runner import add_metrics_args

    p = sub.add_parser(
        "freqctl",
        help="per-instance GPU clock controllers (telemetry in, clock commands out)",
        description=(
            "Subscribes to the telemetry of its instances and publishes clock commands; "
            "policy and SLO per instance change live through the NATS KV bucket "
            "(keys controller.<instance> and controller.default, values ControllerConfig JSON)."
        ),
    )
    p.add_argument(
        "--instances",
        required=True,
        help="instances to drive: NAME or NAME@NODE:GPU[+GPU...], comma-separated",
    )
    p.add_argument("--name", default="freqctl", help="controller name (issued_by of commands)")
    add_profile_args(p)
    p.add_argument(
        "--policy",
        default="voltana",
        choices=["voltana", "ecofreq", "ecofreq-2level", "static", "static-max", "static-min"],
        help="policy where the KV bucket sets none (default voltana)",
    )
    p.add_argument("--static-clock-mhz", type=int, default=None, help="clock of --policy static")
    p.add_argument("--slo-ttft-s", type=float, default=1.0, help="TTFT SLO in seconds")
    p.add_argument("--slo-itl-s", type=float, default=0.05, help="ITL SLO in seconds")
    p.add_argument("--slo-margin", type=float, default=0.1, help="fraction of the SLO kept back")
    p.add_argument("--lease-s", type=float, default=2.0, help="lease of each clock command")
    p.add_argument(
        "--stale-after-s", type=float, default=1.0, help="telemetry older than this: safe clock"
    )
    p.add_argument("--tick-s", type=float, default=0.1, help="staleness/renewal check period")
    p.add_argument("--no-kv", action="store_true", help="ignore the KV bucket (flags only)")
    add_metrics_args(p)
    add_nats_args(p)
    p.set_defaults(func=run)
