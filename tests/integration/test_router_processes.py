"""``voltana router --processes 2``: two router processes on one port, real HTTP, real processes.

Two minimal SGLang-shaped workers run in the test's loop; each records which requests
reached it and holds a stream open while asked to. A connection belongs to one router
process for its life (SO_REUSEPORT picks the process at accept), so the tests open
connections until they hold one per process (``/voltana/router/process`` says which)
and then drive each process on purpose. The harness is in tests/router_processes_helpers.py.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from helpers import log_tail, serve_app, wait_for
from router_processes_helpers import (
    Routers,
    Worker,
    alive,
    bus_up,
    children,
    hold,
    port_of,
    restarted_pids,
    run_router,
    start_routers,
    stop_routers,
    wait_for_async,
)
from voltana.bus.client import Bus
from voltana.bus.natsserver import NatsServer
from voltana.schemas import subjects
from voltana.schemas.router import InstanceState, RouteDecision
from voltana.services.router.multiproc import MAX_RESTARTS


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
