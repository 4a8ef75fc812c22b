"""``voltana actuator``: run one node's actuator until SIGTERM/SIGINT, resetting clocks on every exit."""

from __future__ import annotations

import argparse

import structlog
from voltana.common.logs import get_logger
from voltana.gpu.device import ClockSetter
from voltana.gpu.open import open_device


def parse_gpus(text: str | None) -> list[int] | None:
    """``"0,1,3"`` -> [0, 1, 3]; None or empty -> None (every GPU the backend finds)."""
    from voltana.common.errors import ConfigError

    if not text:
        return None
    try:
        return sorted({int(t) for t in text.split(",") if t.strip()})
    except ValueError as exc:
        raise ConfigError(f"--gpus wants comma-separated indices, got {text!r}") from exc


def run(args: argparse.Namespace) -> int:
    """Entry point of ``voltana actuator``: run until a signal, then leave default clocks."""
    from voltana.bus.client import Bus
    from voltana.bus.cliopts import bus_options_from_args
    from voltana.services.actuator.core import ActuatorConfig
    from voltana.services.actuator.service import Actuator
    from voltana.services.runner import metrics_from_args, run_service

    log = get_logger("actuator", node=args.node)
    config = ActuatorConfig(
        node=args.node,
        min_change_interval_s=args.min_change_interval_s,
        max_lease_s=args.max_lease_s,
        max_command_age_s=args.max_command_age_s,
        max_clock_skew_s=args.max_clock_skew_s,
        verify_interval_s=args.verify_interval_s,
    )
    backend = open_device(
        args.backend,
        gpus=parse_gpus(args.gpus),
        emulator_urls=args.emulator_url or [],
        dry_run_source=args.dry_run_source,
    )

    def build(bus: Bus) -> Actuator:
        return Actuator(bus, backend, config)

    try:
        # the runner always calls Actuator.stop, which resets every GPU it controls
        return run_service(
            build,
            name="actuator",
            bus=bus_options_from_args(args, name=f"voltana-actuator-{args.node}"),
            metrics=metrics_from_args(args),
            log=log,
        )
    finally:
        final_reset(backend, log)


def final_reset(backend: ClockSetter, log: structlog.typing.FilteringBoundLogger) -> None:
    """Last line of defence: whatever happened, no lock this process made survives it."""
    for gpu in backend.indices:
        try:
            if backend.reset_locked_clocks(gpu):
                log.warning("final_reset_was_needed", gpu=gpu)
        except Exception as exc:
            log.error("final_reset_failed", gpu=gpu, error=str(exc))
    backend.close()


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg,unused-ignore]
    """Add ``voltana actuator``."""
    from voltana.bus.cliopts import add_nats_args
    from voltana.services.runner import add_metrics_args

    p = sub.add_parser(
        "actuator",
        help="privileged per-node clock actuator (NVML locked clocks under a lease)",
        description=(
            "Applies clock commands for this node's GPUs only, from voltana.clock.set.<node>.*; "
            "every lock is held under a lease and reset to default clocks when the lease "
            "lapses, the bus is lost or the process stops."
        ),
    )
    p.add_argument("--node", required=True, help="this node's name (the subject token)")
    p.add_argument(
        "--backend",
        choices=["nvml", "emulated", "dry-run"],
        default="nvml",
        help="how clocks are applied: NVML, the emulator's admin API, or logged only",
    )
    p.add_argument(
        "--dry-run-source",
        choices=["nvml", "emulated"],
        default="nvml",
        help="where a dry-run backend reads GPUs and supported clocks from (default nvml)",
    )
    p.add_argument(
        "--emulator-url",
        action="append",
        default=None,
        metavar="URL",
        help="emulator server base URL, repeatable (emulated backend)",
    )
    p.add_argument("--gpus", default=None, help="GPU indices to control, e.g. 0,1 (default all)")
    p.add_argument(
        "--min-change-interval-s",
        type=float,
        default=0.05,
        help="rate limit: least time between two clock changes of one GPU (default 0.05)",
    )
    p.add_argument(
        "--max-lease-s", type=float, default=30.0, help="longest lease a command may ask for"
    )
    p.add_argument(
        "--max-command-age-s",
        type=float,
        default=5.0,
        help="reject a lock stamped longer ago than this by this host's clock (default 5)",
    )
    p.add_argument(
        "--max-clock-skew-s",
        type=float,
        default=1.0,
        help="reject a lock stamped further in the future than this (default 1)",
    )
    p.add_argument(
        "--verify-interval-s",
        type=float,
        default=5.0,
        help="re-read a renewed lock from the hardware this often; re-apply if lost (default 5)",
    )
    add_metrics_args(p)
    add_nats_args(p)
    p.set_defaults(func=run)
