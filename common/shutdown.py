"""Graceful shutdown for service shells: an asyncio.Event set by SIGTERM/SIGINT."""

from __future__ import annotations

import asyncio
import signal

_current: list[asyncio.Event] = []


def shutdown_event() -> asyncio.Event:
    """An event set on SIGTERM or SIGINT (call inside the running loop)."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    _current[:] = [stop]
    return stop


def request_shutdown() -> bool:
    """Set the running service's shutdown event, as a signal would; False when there is none."""
    if not _current:
        return False
    _current[0].set()
    return True
