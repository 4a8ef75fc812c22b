"""The ``voltana`` command: one argparse tree, each subcommand registered by its module.

Each module in ``_COMMANDS`` exposes ``register(subparsers)`` which adds its
parser and sets ``func`` (a callable taking the parsed ``argparse.Namespace``
and returning an exit code). The modules are imported directly, so a missing
command is an import error, never a silent gap; heavy imports stay inside ``func``.
"""

from __future__ import annotations

import argparse
import errno
import sys
from collections.abc import Sequence

from voltana import __version__
from voltana.common.errors import VoltanaError
from voltana.services.actuator import cli as actuator_cli
from voltana.services.emulator import cli as emulator_cli
from voltana.services.freqctl import cli as freqctl_cli
from voltana.services.profiler import cli as profiler_cli
from voltana.services.router import cli as router_cli
from voltana.services.telemetry import cli as telemetry_cli
from voltana.sim import cli as sim_cli
from voltana.sim import plan_cli
from voltana.tools import nats as tools_nats
from voltana.tools import replay as tools_replay
from voltana.tools import report as tools_report
from voltana.tools import up as tools_up

_COMMANDS = (
    tools_up,
    tools_nats,
    tools_replay,
    tools_report,
    emulator_cli,
    telemetry_cli,
    freqctl_cli,
    actuator_cli,
    profiler_cli,
    router_cli,
    sim_cli,
    plan_cli,
)


class _HelpWithDefaults(argparse.HelpFormatter):
    """Every flag's help ends with its default, unless the help already names one."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        default = action.default
        if (
            not action.option_strings
            or default in (None, False, argparse.SUPPRESS)
            or "default" in text.lower()
            or text == argparse.SUPPRESS
        ):
            return action.help
        return f"{text} (default: %(default)s)"


def _subparsers(parser: argparse.ArgumentParser) -> list[argparse.ArgumentParser]:
    """Every parser below ``parser``, depth first."""
    out: list[argparse.ArgumentParser] = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in dict.fromkeys(action.choices.values()):  # aliases share a parser
                out += [sub, *_subparsers(sub)]
    return out


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
    for module in _COMMANDS:
        module.register(sub)
    for p in _subparsers(parser):
        if p.formatter_class is argparse.HelpFormatter:
            p.formatter_class = _HelpWithDefaults
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
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            msg = (
                f"address in use ({exc.strerror}): another process holds a port this command "
                "binds; stop it or choose other ports (see --help)"
            )
        elif exc.filename is not None and exc.errno in (errno.ENOENT, errno.EACCES, errno.EISDIR):
            msg = f"{exc.strerror}: {exc.filename}"
        else:
            raise
        print(f"voltana {args.command}: error: {msg}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
