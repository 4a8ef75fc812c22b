"""Small helpers shared by the tests (importable as ``helpers`` from any test)."""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from aiohttp import web
from voltana.common.ports import free_port

__all__ = [
    "emulated_pd_pair",
    "free_port",
    "serve_app",
    "start_emulator",
    "stop_processes",
    "wait_for",
    "wait_http",
]


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


def start_emulator(
    role: str, port: int, *, gpu: int = 0, version: str | None = None, boot: int | None = None
) -> subprocess.Popen[bytes]:
    """An emulated SGLang worker (``voltana emulator``) as a process; its output is discarded.

    ``boot``: the prefill side's bootstrap port; ``version``: the SGLang line to emulate.
    """
    argv = [sys.executable, "-m", "voltana", "--log-level", "warning", "emulator"]
    argv += ["--role", role, "--host", "127.0.0.1", "--port", str(port)]
    argv += ["--gpu-ids", str(gpu), "--bootstrap-timeout-s", "10"]
    if version is not None:
        argv += ["--sglang-version", version]
    if boot is not None:
        argv += ["--disaggregation-bootstrap-port", str(boot)]
    return subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def stop_processes(procs: Iterable[subprocess.Popen[bytes]]) -> None:
    """Terminate every process, then kill those still running after 5 s."""
    procs = list(procs)
    for p in procs:
        if p.poll() is None:
            p.terminate()
    for p in procs:
        try:
            p.wait(timeout=5)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


@contextlib.contextmanager
def emulated_pd_pair() -> Iterator[dict[str, Any]]:
    """A running emulated prefill (GPU 0) and decode (GPU 1) worker, stopped on exit.

    Yields ``{"prefill": (url, bootstrap port), "decode": url}``.
    """
    pp, bp, dp = free_port(), free_port(), free_port()
    procs = [start_emulator("prefill", pp, boot=bp), start_emulator("decode", dp, gpu=1)]
    try:
        wait_http(f"http://127.0.0.1:{pp}/health", procs[0])
        wait_http(f"http://127.0.0.1:{dp}/health", procs[1])
        yield {"prefill": (f"http://127.0.0.1:{pp}", bp), "decode": f"http://127.0.0.1:{dp}"}
    finally:
        stop_processes(procs)


async def serve_app(app: web.Application) -> tuple[web.AppRunner, str]:
    """Serve ``app`` on a free local port; (runner to clean up, base URL)."""
    runner = web.AppRunner(app, shutdown_timeout=0.1)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    return runner, f"http://127.0.0.1:{port}"
