"""The harness of tests/integration/test_router_processes.py: minimal workers that record
and hold requests, the router with ``--processes 2`` as a process, and ways to reach each
of its processes on purpose (a connection belongs to one process for its life)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web
from helpers import free_port, log_tail, wait_for
from voltana.services.router.multiproc_child import PROCESS_PATH


@dataclass
class Worker:
    """A minimal worker: ``/generate`` answers at once, or (text ``hold``) streams one chunk
    and holds the stream until ``release`` is set."""

    name: str
    url: str = ""
    served: list[str] = field(default_factory=list)
    release: asyncio.Event = field(default_factory=asyncio.Event)

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/health", self.health)
        app.router.add_post("/generate", self.generate)
        return app

    async def health(self, request: web.Request) -> web.Response:
        return web.Response(text="ok")

    async def generate(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        self.served.append(body["text"])
        meta = {"completion_tokens": 1, "finish_reason": None}
        chunk = {"text": "a", "worker": self.name, "meta_info": meta}
        if body["text"] != "hold":
            return web.json_response(chunk)
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        with contextlib.suppress(ConnectionError):
            await resp.write(b"data: " + json.dumps(chunk).encode() + b"\n\n")
            await self.release.wait()
            await resp.write(b"data: [DONE]\n\n")
        return resp


def alive(pid: int) -> bool:
    """The process exists and is not a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def children(pid: int) -> set[int]:
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except FileNotFoundError:
        return set()
    return {int(p) for p in text.split()}


@dataclass
class Routers:
    proc: subprocess.Popen[bytes]
    url: str
    log: Path
    workers: list[Worker]
    pids: set[int] = field(default_factory=set)  # every router process seen, for cleanup
    slot_pids: dict[int, int] = field(default_factory=dict)  # last seen, by slot

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")

    async def process(self, s: aiohttp.ClientSession) -> dict[str, Any]:
        async with s.get(self.url + PROCESS_PATH) as r:
            info: dict[str, Any] = await r.json()
        self.pids.add(info["pid"])
        self.slot_pids[info["slot"]] = info["pid"]
        return info

    async def per_slot(self, per: int = 1) -> dict[int, list[aiohttp.ClientSession]]:
        """``per`` client sessions (one kept-alive connection each) per router process."""
        found: dict[int, list[aiohttp.ClientSession]] = {0: [], 1: []}
        for _ in range(100):
            s = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=1))
            slot = (await self.process(s))["slot"]
            if len(found[slot]) < per:
                found[slot].append(s)
                if all(len(v) == per for v in found.values()):
                    return found
            else:
                await s.close()
        for group in found.values():
            for s in group:
                await s.close()
        raise AssertionError(f"no connection reached each process: {found}")

    async def in_flight(self, s: aiohttp.ClientSession) -> dict[str, int]:
        async with s.get(self.url + "/voltana/router/state") as r:
            state = await r.json()
        return {i["url"].rsplit(":", 1)[1]: i["in_flight_requests"] for i in state["instances"]}


async def start_routers(tmp_path: Path, workers: list[Worker], *extra: str) -> Routers:
    port = free_port()
    log = tmp_path / "router.log"
    argv = [sys.executable, "-m", "voltana", "--log-format", "json", "router"]
    argv += ["--worker-urls", *(w.url for w in workers), "--port", str(port)]
    argv += ["--processes", "2", "--policy", "least-load", "--health-check-interval-s", "0"]
    argv += list(extra or ["--no-nats"])
    env = {**os.environ, "TMPDIR": str(tmp_path)}  # a killed supervisor's metrics dir: here
    with log.open("wb") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env=env)
    r = Routers(proc, f"http://127.0.0.1:{port}", log, workers)
    try:
        await wait_for(
            lambda: "router_processes_started" in r.log_text() or proc.poll() is not None, 60
        )
        assert proc.poll() is None, log_tail(log, 3000)
        r.pids |= children(proc.pid)
    except BaseException:
        await stop_routers(r)
        raise
    return r


async def stop_routers(r: Routers) -> None:
    """SIGTERM the supervisor (and release held streams); kill whatever is left by PID."""
    for w in r.workers:
        w.release.set()
    r.pids |= children(r.proc.pid)
    if r.proc.poll() is None:
        r.proc.terminate()
        with contextlib.suppress(AssertionError):
            await wait_for(lambda: r.proc.poll() is not None, 20)
    if r.proc.poll() is None:
        r.proc.kill()
        r.proc.wait()
    for pid in r.pids:
        if alive(pid):
            os.kill(pid, signal.SIGKILL)


async def hold(r: Routers, s: aiohttp.ClientSession) -> tuple[aiohttp.ClientResponse, Worker]:
    """A stream held open through ``s``'s process; returns once the worker sent its chunk."""
    resp = await s.post(r.url + "/generate", json={"text": "hold", "stream": True})
    assert resp.status == 200
    line = await resp.content.readline()
    assert line.startswith(b"data: "), line
    name = json.loads(line[6:])["worker"]
    return resp, next(w for w in r.workers if w.name == name)


def port_of(w: Worker) -> str:
    return w.url.rsplit(":", 1)[1]


async def wait_for_async(fetch: Any, cond: Any, timeout_s: float = 10.0) -> None:
    """Run ``fetch`` until ``cond()`` holds (each fetch is one round trip to a router)."""

    async def loop() -> None:
        while True:
            await fetch()
            if cond():
                return
            await asyncio.sleep(0.02)

    await asyncio.wait_for(loop(), timeout_s)


async def run_router(*args: str) -> tuple[int, str]:
    """``voltana router ARGS`` to its end (60 s at most): exit code and stderr."""
    argv = [sys.executable, "-m", "voltana", "router", "--worker-urls", "127.0.0.1:9", *args]
    proc = await asyncio.create_subprocess_exec(
        *argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    try:
        _, err = await asyncio.wait_for(proc.communicate(), 60)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert proc.returncode is not None
    return proc.returncode, err.decode()


async def bus_up(r: Routers, s: aiohttp.ClientSession, timeout_s: float = 30) -> None:
    """Wait until the process behind ``s`` is connected to NATS."""
    deadline = time.monotonic() + timeout_s
    while True:
        async with s.get(r.url + "/voltana/router/state") as resp:
            if (await resp.json())["nats_connected"]:
                return
        assert time.monotonic() < deadline, "a router process never connected to NATS"
        await asyncio.sleep(0.05)


def restarted_pids(r: Routers, slot: int) -> list[int]:
    """PIDs of the processes that replaced ``slot``'s, in order (from the JSON log)."""
    out = []
    for line in r.log_text().splitlines():
        if '"router_process_restarted"' in line:
            ev = json.loads(line)
            if ev["slot"] == slot:
                out.append(ev["pid"])
    return out
