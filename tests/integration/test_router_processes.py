"""``voltana router --processes 2``: two router processes on one port, real HTTP, real processes.

Two minimal SGLang-shaped workers run in the test's loop; each records which requests
reached it and holds a stream open while asked to. A connection belongs to one router
process for its life (SO_REUSEPORT picks the process at accept), so the tests open
connections until they hold one per process (``/voltana/router/process`` says which)
and then drive each process on purpose.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from helpers import free_port, log_tail, serve_app, wait_for
from voltana.bus.client import Bus
from voltana.bus.natsserver import NatsServer
from voltana.schemas import subjects
from voltana.schemas.router import InstanceState, RouteDecision
from voltana.services.router.multiproc import MAX_RESTARTS
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


@pytest.fixture
async def workers() -> AsyncIterator[list[Worker]]:
    ws = [Worker("w1"), Worker("w2")]
    runners = []
    try:
        for w in ws:
            runner, w.url = await serve_app(w.app())
            runners.append(runner)
        yield ws
    finally:
        for w in ws:
            w.release.set()
        for runner in runners:
            await runner.cleanup()


@pytest.fixture
async def routers(tmp_path: Path, workers: list[Worker]) -> AsyncIterator[Routers]:
    r = await start_routers(tmp_path, workers)
    try:
        yield r
    finally:
        await stop_routers(r)


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


async def test_processes_share_in_flight_and_route_by_the_sum(routers: Routers) -> None:
    r = routers
    sessions = await r.per_slot(per=2)
    try:
        (a, a2), (b, b2) = sessions[0], sessions[1]
        held, busy = await hold(r, a)  # one long stream through process 0
        idle = next(w for w in r.workers if w is not busy)
        # process 1 sees process 0's request: least-load sends all of its own elsewhere
        # (without the shared view it would see two idle workers and pick at random)
        before = len(busy.served)
        for _ in range(10):
            async with b.post(r.url + "/generate", json={"text": "short"}) as resp:
                assert resp.status == 200
                assert (await resp.json())["worker"] == idle.name
        assert len(busy.served) == before
        want = {port_of(busy): 1, port_of(idle): 0}
        assert await r.in_flight(a2) == want and await r.in_flight(b2) == want
        held_b, got = await hold(r, b)  # a stream through process 1 goes to the idle one
        assert got is idle
        want = {port_of(busy): 1, port_of(idle): 1}
        assert await r.in_flight(a2) == want and await r.in_flight(b2) == want
        for w in r.workers:
            w.release.set()
        for resp in (held, held_b):
            assert (await resp.read()).endswith(b"data: [DONE]\n\n")
            resp.release()
        zero = {port_of(busy): 0, port_of(idle): 0}
        for s in (a2, b2):
            got_zero: list[dict[str, int]] = []

            async def settled(s: aiohttp.ClientSession = s, out: list[Any] = got_zero) -> None:
                out[:] = [await r.in_flight(s)]

            await wait_for_async(settled, lambda out=got_zero: out == [zero])
        # /metrics on either process counts every process's requests
        for s in (a2, b2):
            totals: list[float] = []

            async def scrape(s: aiohttp.ClientSession = s, out: list[float] = totals) -> None:
                async with s.get(r.url + "/metrics") as resp:
                    text = await resp.text()
                out[:] = [
                    float(line.rsplit(" ", 1)[1])
                    for line in text.splitlines()
                    if line.startswith('voltana_router_requests_total{path="/generate"')
                ]

            await wait_for_async(scrape, lambda out=totals: sum(out) == 12)
    finally:
        for group in sessions.values():
            for s in group:
                await s.close()


async def wait_for_async(fetch: Any, cond: Any, timeout_s: float = 10.0) -> None:
    """Run ``fetch`` until ``cond()`` holds (each fetch is one round trip to a router)."""

    async def loop() -> None:
        while True:
            await fetch()
            if cond():
                return
            await asyncio.sleep(0.02)

    await asyncio.wait_for(loop(), timeout_s)


async def test_killed_process_is_replaced_and_its_load_forgotten(routers: Routers) -> None:
    r = routers
    sessions = await r.per_slot()
    a, b = sessions[0][0], sessions[1][0]
    try:
        held, busy = await hold(r, a)
        assert (await r.in_flight(b))[port_of(busy)] == 1
        slot0 = r.slot_pids[0]
        assert slot0 in children(r.proc.pid)
        os.kill(slot0, signal.SIGKILL)
        with contextlib.suppress(aiohttp.ClientError):
            await held.read()  # the stream ends with its process
        held.release()
        await wait_for(lambda: "router_process_restarted" in r.log_text(), 60)
        assert r.proc.poll() is None  # the supervisor carries on
        replaced = children(r.proc.pid) - {slot0}
        assert len(replaced) == 2 and not alive(slot0)
        # the dead process's row was zeroed before its successor started
        assert await r.in_flight(b) == {port_of(w): 0 for w in r.workers}
        fresh = await r.per_slot()
        try:
            info = await r.process(fresh[0][0])
            assert info["pid"] != slot0
            async with fresh[0][0].post(r.url + "/generate", json={"text": "x"}) as resp:
                assert resp.status == 200
        finally:
            for group in fresh.values():
                for s in group:
                    await s.close()
        assert '"router_process_died"' in r.log_text()
    finally:
        await a.close()
        await b.close()


@pytest.mark.parametrize("how", ["sigterm", "sigkill"])
async def test_supervisor_exit_leaves_no_processes(routers: Routers, how: str) -> None:
    r = routers
    kids = children(r.proc.pid)
    assert len(kids) == 2 and all(alive(p) for p in kids)
    if how == "sigterm":  # drains both processes, removes the block and metrics directory
        r.proc.terminate()
        await wait_for(lambda: r.proc.poll() is not None, 30)
        assert r.proc.returncode == 0, log_tail(r.log, 3000)
        assert '"router_processes_stopped"' in r.log_text()
    else:  # killed outright: the kernel tells each process (PR_SET_PDEATHSIG)
        r.proc.kill()
        r.proc.wait()
    await wait_for(lambda: not any(alive(p) for p in kids), 30)


async def test_taken_port_fails_before_starting() -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        rc, err = await run_router("--port", str(port), "--processes", "2", "--no-nats")
    assert rc == 1
    assert f"router cannot listen on 127.0.0.1:{port}" in err


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


async def test_process_failing_to_start_stops_the_router(tmp_path: Path) -> None:
    missing = tmp_path / "missing.json"
    rc, err = await run_router(
        "--port",
        "0",
        "--processes",
        "2",
        "--no-nats",
        "--policy",
        "ecoroute",
        "--profile",
        str(missing),
    )
    assert rc == 1
    assert f"cannot read profile {missing}" in err  # the process's own error
    assert "exited with code 1 while starting" in err and "nothing is serving" in err


async def test_one_process_publishes_router_state_with_every_process_load(
    tmp_path: Path, workers: list[Worker], nats_server: NatsServer
) -> None:
    states: list[InstanceState] = []
    decisions: list[RouteDecision] = []
    bus = await Bus.connect(servers=[nats_server.url])
    try:
        await bus.subscribe(subjects.ROUTER_STATE_ALL, InstanceState, lambda m, s: states.append(m))
        await bus.subscribe(
            subjects.ROUTE_DECISION, RouteDecision, lambda m, s: decisions.append(m)
        )
        r = await start_routers(tmp_path, workers, "--nats", nats_server.url)
        try:
            sessions = await r.per_slot()
            try:
                for group in sessions.values():  # a process not yet on the bus drops decisions
                    await bus_up(r, group[0])
                # held through process 1; only process 0 publishes, and its view has it
                held, busy = await hold(r, sessions[1][0])
                name = "127-0-0-1_" + port_of(busy)
                await wait_for(
                    lambda: any(m.instance == name and m.in_flight_requests == 1 for m in states),
                    20,
                )
                async with sessions[0][0].post(r.url + "/generate", json={"text": "x"}) as resp:
                    assert resp.status == 200
                busy.release.set()
                await held.read()
                held.release()
                await wait_for(lambda: len(decisions) == 2, 20)
            finally:
                for group in sessions.values():
                    for s in group:
                        await s.close()
        finally:
            await stop_routers(r)
    finally:
        await bus.close()
    assert len({d.request_id for d in decisions}) == 2  # each request decided once
    for inst in {m.instance for m in states}:  # one publisher: one sequence per instance
        seqs = [m.seq for m in states if m.instance == inst]
        assert seqs == sorted(set(seqs)), seqs[:20]


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


async def test_process_dying_again_and_again_stops_the_router(routers: Routers) -> None:
    r = routers
    sessions = await r.per_slot()
    for group in sessions.values():
        for s in group:
            await s.close()
    pid = r.slot_pids[1]
    for n in range(MAX_RESTARTS):
        os.kill(pid, signal.SIGKILL)
        await wait_for(lambda n=n: len(restarted_pids(r, 1)) == n + 1, 60)
        pid = restarted_pids(r, 1)[-1]
        r.pids.add(pid)
    os.kill(pid, signal.SIGKILL)  # one death more than the supervisor restarts
    await wait_for(lambda: r.proc.poll() is not None, 60)
    assert r.proc.returncode == 1
    text = r.log_text()
    assert f"router process 1 died {MAX_RESTARTS + 1} times within 60 s" in text
    assert '"router_processes_stopped"' in text  # slot 0 drained and stopped too
    await wait_for(lambda: not any(alive(p) for p in r.pids), 30)
