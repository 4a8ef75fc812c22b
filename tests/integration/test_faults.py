"""Faults a fleet sees, with real processes on a real nats-server, each outcome asserted.

- freqctl killed: its leases lapse and the actuator resets the GPU within the lease;
- a lock made outside the actuator: a renewal finds it and re-applies the lease's
  clock; with no lease, the actuator's stop still resets it (resets never trust
  a cache);
- actuator killed (SIGKILL) and restarted: the lock it left is cleared at start,
  then freqctl's renewals lock again;
- NATS stopped and restarted under load: the router serves every request (no
  request lost without an error), the actuator resets at once, and everything
  resumes when NATS is back;
- a decode worker killed mid-stream under load: every stream ends ([DONE], or an
  error chunk then [DONE]), counters return to zero, the other decode serves on.

(``test_router_failures.py`` and ``test_actuator_node.py`` hold the single-fault
cases: one stream cut, a bus loss, a backend failure.)
"""

from __future__ import annotations

import asyncio
import json
import signal
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from actuator_helpers import emulator, gpus_of
from helpers import free_port, spawn_voltana, start_emulator, stop_processes, wait_for, wait_http
from voltana.bus.client import Bus, BusOptions
from voltana.bus.natsserver import NatsServer
from voltana.schemas import subjects
from voltana.schemas.clock import ClockState
from voltana.services.router.config import RouterConfig, WorkerSpec
from voltana.services.router.server import Router

NODE = "n1"
LEASE_S = 1.0
SAFE_MHZ = 1980  # freqctl without telemetry holds the safe clock: the maximum


@pytest.fixture(scope="module")
def emu(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with emulator(gpu_ids=(0,), log_dir=tmp_path_factory.mktemp("emu")) as url:
        yield url


def locked(emu: str) -> int | None:
    return gpus_of(emu)[0]["locked_clock_mhz"]


def lock_outside(emu: str, mhz: int) -> None:
    """Lock the GPU behind the actuator's back, as ``nvidia-smi -lgc`` would."""
    body = json.dumps({"min_mhz": mhz, "max_mhz": mhz}).encode()
    req = urllib.request.Request(
        emu + "/voltana/gpus/0/locked_clocks",
        data=body,
        headers={"Content-Type": "application/json"},
    )
    urllib.request.urlopen(req, timeout=2).close()
    assert locked(emu) == mhz


def actuator(nats: str, emu: str, log: Path) -> Any:
    args = ["actuator", "--node", NODE, "--backend", "emulated", "--emulator-url", emu]
    args += ["--nats", nats, "--verify-interval-s", "0.5"]
    return spawn_voltana(args, log, ready="actuator_ready")


def freqctl(nats: str, log: Path) -> Any:
    args = ["freqctl", "--name", "faults", "--instances", f"d0@{NODE}:0", "--no-kv"]
    args += ["--lease-s", str(LEASE_S), "--tick-s", "0.1", "--nats", nats]
    return spawn_voltana(args, log, ready="freqctl_ready")


async def test_freqctl_and_actuator_killed_and_locks_made_outside(
    nats_server: NatsServer, emu: str, tmp_path: Path
) -> None:
    watcher = await Bus.connect(BusOptions(servers=[nats_server.url]))
    states: list[ClockState] = []
    await watcher.subscribe(subjects.CLOCK_STATE_ALL, ClockState, lambda m, s: states.append(m))
    try:
        with actuator(nats_server.url, emu, tmp_path / "act1.log") as act:
            with freqctl(nats_server.url, tmp_path / "fc1.log") as fc:
                await wait_for(lambda: locked(emu) == SAFE_MHZ, 20)
                # a lock made outside: the next verified renewal re-applies the lease's clock
                lock_outside(emu, 600)
                await wait_for(lambda: locked(emu) == SAFE_MHZ, 5)
                await wait_for(lambda: any("re-applied" in s.reason for s in states), 5)
                # freqctl killed: nobody renews; the lease lapses and the GPU is reset
                fc.send_signal(signal.SIGKILL)
                t_kill = time.monotonic()
                await wait_for(lambda: locked(emu) is None, LEASE_S + 5)
                assert time.monotonic() - t_kill <= LEASE_S + 1.5
                await wait_for(lambda: any(s.status == "expired" for s in states), 5)
            # no lease now and the actuator's cache says default clocks; a lock made
            # outside is still reset when the actuator stops
            lock_outside(emu, 600)
            act.send_signal(signal.SIGTERM)
            act.wait(10)
            assert act.returncode == 0
            assert locked(emu) is None

        # actuator killed (SIGKILL) with a lock in force, then restarted
        with freqctl(nats_server.url, tmp_path / "fc2.log"):
            with actuator(nats_server.url, emu, tmp_path / "act2.log") as act:
                await wait_for(lambda: locked(emu) == SAFE_MHZ, 20)
                act.send_signal(signal.SIGKILL)
                act.wait(10)
            await asyncio.sleep(LEASE_S)
            assert locked(emu) == SAFE_MHZ  # nobody could reset it: why start-up resets
            n = len(states)
            with actuator(nats_server.url, emu, tmp_path / "act3.log"):
                await wait_for(lambda: any(s.status == "reset" for s in states[n:]), 10)
                await wait_for(lambda: locked(emu) == SAFE_MHZ, 10)  # renewals lock again
                assert any("start-up" in s.reason for s in states[n:])
        # everything stopped: default clocks
        assert locked(emu) is None
    finally:
        await watcher.close()


def router_cfg(prefill: tuple[str, int], decodes: list[str], nats: str | None) -> RouterConfig:
    return RouterConfig(
        port=0,
        prefill=[WorkerSpec(url=prefill[0], role="prefill", bootstrap_port=prefill[1])],
        decode=[WorkerSpec(url=u, role="decode") for u in decodes],
        nats=nats,
        health_check_interval_s=0.2,
        health_failure_threshold=1,
        breaker_failures=1000,
    )


STREAM = {
    "text": "fault",
    "stream": True,
    "sampling_params": {"max_new_tokens": 24, "ignore_eos": True},
}


async def one_stream(s: aiohttp.ClientSession, url: str) -> str:
    """One streaming request: 'ok' (ended with [DONE], no error), 'error' (an error chunk
    then [DONE], or an error status), or raises (a request lost without an error)."""
    async with s.post(url + "/generate", json=STREAM) as resp:
        data = await resp.read()
    if resp.status != 200:
        assert b'"error"' in data, data[:200]
        return "error"
    events = [e.strip() for e in data.split(b"\n\n") if e.strip()]
    assert events and events[-1] == b"data: [DONE]", data[-200:]
    return "error" if any(b'"error"' in e for e in events) else "ok"


async def run_load(url: str, stop: asyncio.Event, workers: int = 6) -> list[str]:
    out: list[str] = []
    timeout = aiohttp.ClientTimeout(total=30)
    async with aiohttp.ClientSession(timeout=timeout) as s:

        async def loop() -> None:
            while not stop.is_set():
                out.append(await one_stream(s, url))

        await asyncio.gather(*(loop() for _ in range(workers)))
    return out


@pytest.fixture(scope="module")
def pd() -> Iterator[dict[str, Any]]:
    """One prefill and two decode emulator processes (the module's last test kills one)."""
    pp, bp, d1, d2 = free_port(), free_port(), free_port(), free_port()
    procs = {
        "prefill": start_emulator("prefill", pp, boot=bp, gpu=1),
        "d1": start_emulator("decode", d1, gpu=2),
        "d2": start_emulator("decode", d2, gpu=3),
    }
    try:
        for port, proc in zip((pp, d1, d2), procs.values(), strict=True):
            wait_http(f"http://127.0.0.1:{port}/health", proc)
        yield {
            "procs": procs,
            "prefill": (f"http://127.0.0.1:{pp}", bp),
            "decodes": [f"http://127.0.0.1:{d1}", f"http://127.0.0.1:{d2}"],
        }
    finally:
        stop_processes(procs.values())


async def test_nats_stopped_and_restarted_under_load(
    nats_server: NatsServer, emu: str, pd: dict[str, Any], tmp_path: Path
) -> None:
    r = await Router(router_cfg(pd["prefill"], pd["decodes"], nats_server.url)).start()
    try:
        with (
            actuator(nats_server.url, emu, tmp_path / "act.log"),
            freqctl(nats_server.url, tmp_path / "fc.log"),
        ):
            await wait_for(lambda: locked(emu) == SAFE_MHZ and r.bus.connected, 20)
            stop = asyncio.Event()
            load = asyncio.create_task(run_load(r.url, stop))
            await asyncio.sleep(0.5)
            nats_server.stop()
            t_down = time.monotonic()
            await wait_for(lambda: locked(emu) is None, 5)  # bus lost: reset at once
            assert time.monotonic() - t_down < 2.0
            await asyncio.sleep(1.0)  # serving without the bus
            nats_server.start()
            await wait_for(lambda: r.bus.connected and locked(emu) == SAFE_MHZ, 20)
            stop.set()
            results = await load
        assert results and set(results) == {"ok"}, sorted(set(results))
        assert all(w.load.in_flight_requests == 0 for w in r.state.workers.values())
        assert r.admission.active == 0 and r.admission.body_bytes == 0
    finally:
        await r.stop()


async def test_decode_killed_mid_stream_under_load(pd: dict[str, Any]) -> None:
    r = await Router(router_cfg(pd["prefill"], pd["decodes"], None)).start()
    try:
        stop = asyncio.Event()
        load = asyncio.create_task(run_load(r.url, stop, workers=8))
        d1 = r.cfg.decode[0].name
        await wait_for(lambda: r.state.workers[d1].load.in_flight_requests > 0, 10)
        pd["procs"]["d1"].send_signal(signal.SIGKILL)
        await wait_for(lambda: not r.state.workers[d1].healthy, 5)
        await asyncio.sleep(1.0)  # the other decode serves on
        stop.set()
        results = await load
        assert "ok" in results  # no stream hung or was lost: each ended ok or with an error
        async with aiohttp.ClientSession() as s:
            assert await one_stream(s, r.url) == "ok"
        await wait_for(
            lambda: all(w.load.in_flight_requests == 0 for w in r.state.workers.values()), 5
        )
        assert r.admission.active == 0
    finally:
        await r.stop()
