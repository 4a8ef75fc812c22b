"""``voltana profile`` (and, when installed, ``voltana freqctl`` / ``voltana actuator``).

The profile subcommand lives in :mod:`voltana.services.freqctl.profile_cli`; the
service subcommands in ``voltana.services.freqctl.service_cli``, registered here
when that module is present.
"""

from __future__ import annotations

import argparse
import importlib
from typing import Any


def register(subparsers: argparse._SubParsersAction[Any]) -> None:
    """Add ``profile`` and the freqctl service subcommands to the ``voltana`` CLI."""
    from voltana.services.freqctl.profile_cli import add_profile_parser

    add_profile_parser(subparsers)
    name = "voltana.services.freqctl.service_cli"
    try:
        service_cli = importlib.import_module(name)
    except ModuleNotFoundError as exc:
        if exc.name != name:
            raise
        return
    service_cli.register(subparsers)
