"""The ``voltana`` command: one argparse tree, each subcommand registered by its module.

Each module in ``_COMMANDS`` exposes ``register(subparsers)`` which adds its
parser and sets ``func`` (a callable taking the parsed ``argparse.Namespace``
and returning an exit code). Heavy imports stay inside ``func``.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from voltana import __version__
from voltana.common.errors import VoltanaError

_COMMANDS: list[str] = [
    "voltana.common.cli_up",
    "voltana.common.cli_nats",
    "voltana.common.cli_replay",
    "voltana.services.emulator.cli",
    "voltana.services.telemetry.cli",
    "voltana.services.freqctl.cli",
    "voltana.services.router.cli",
    "voltana.sim.cli",
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="voltana",
        description="SLO-aware, energy-efficient control plane for SGLang PD serving.",
    )
    parser.add_argument("--version", action="version", version=f"voltana {__version__}")
    parser.add_argument(
        "--log-format",
        choices=["auto", "json", "console"],
        default=None,
        help="log rendering (default: env VOLTANA_LOG_FORMAT, else console on a terminal, JSON otherwise)",
    )
    parser.add_argument(
        "--log-level", default=None, help="log level (default: env VOLTANA_LOG_LEVEL, else info)"
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module_name in _COMMANDS:
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name == module_name:
                continue  # that part of the project is not built into this install
            raise
        module.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    from voltana.common.logs import configure_logging

    parser = build_parser()
    args = parser.parse_args(argv)
    configure_logging(fmt=args.log_format, level=args.log_level)
    func = getattr(args, "func", None)
    if func is None:
        parser.print_help()
        return 2
    try:
        return int(func(args) or 0)
    except VoltanaError as exc:
        print(f"voltana {args.command}: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
