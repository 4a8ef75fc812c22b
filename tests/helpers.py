"""Small helpers shared by the tests (importable as ``helpers`` from any test)."""

from __future__ import annotations

import asyncio
import subprocess
import time
import urllib.request
from collections.abc import Callable

from voltana.common.ports import free_port

__all__ = ["free_port", "wait_for", "wait_http"]


async def wait_for(
    cond: Callable[[], bool], timeout_s: float = 5.0, interval_s: float = 0.02
) -> None:
    """Poll ``cond`` until true; fail the test with a clear message on timeout."""
    deadline = time.monotonic() + timeout_s
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout_s} s")
        await asyncio.sleep(interval_s)


def wait_http(url: str, proc: subprocess.Popen[bytes], timeout_s: float = 30.0) -> None:
    """Wait until ``url`` answers 200; fail at once if ``proc`` (the server) exited."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args!r} exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=1) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"{url} not ready in {timeout_s} s")
