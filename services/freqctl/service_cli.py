"""Registers ``voltana freqctl`` and ``voltana actuator`` (called from the freqctl CLI module)."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    """Add the service subcommands; heavy imports wait until a command runs."""
    from voltana.services.freqctl import actuator_main

    actuator_main.add_parser(sub)
    try:
        from voltana.services.freqctl import service_main
    except ModuleNotFoundError as exc:  # built later in this package
        if exc.name != "voltana.services.freqctl.service_main":
            raise
        return
    service_main.add_parser(sub)
