"""The whole system on one machine (`voltana up`'s cluster): requests flow, clocks are driven."""

from __future__ import annotations

import asyncio
import json
import socket
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from helpers import wait_for
from nats.js.api import DeliverPolicy
from voltana.bus.client import Bus
from voltana.common.errors import VoltanaError
from voltana.schemas import ClockState, GpuTelemetry, RequestRecord, codec, subjects
from voltana.tools.localcluster import LocalCluster, LocalClusterSpec


async def exercise(
    cluster: LocalCluster,
) -> tuple[list[RequestRecord], list[ClockState], list[GpuTelemetry]]:
    bus = await Bus.connect(servers=[cluster.nats_url])
    records: list[RequestRecord] = []
    states: list[ClockState] = []
    gpus: list[GpuTelemetry] = []
    await bus.subscribe(subjects.REQUEST_DONE, RequestRecord, lambda m, s: records.append(m))
    # Clock states come from the event stream from its first event on: the controllers may
    # have parked and locked the GPUs before this test subscribed, and the log keeps that.
    history = await bus.js.subscribe(
        subjects.CLOCK_STATE_ALL, ordered_consumer=True, deliver_policy=DeliverPolicy.ALL
    )

    async def read_history() -> None:
        async for m in history.messages:
            states.append(codec.decode(m.data, ClockState))

    reader = asyncio.create_task(read_history())
    assert await micro_services(bus) == {
        "voltana-telemetry",
        "voltana-actuator",
        "voltana-freqctl",
        "voltana-router",
    }
    await bus.subscribe(subjects.TELEMETRY_GPU_ALL, GpuTelemetry, lambda m, s: gpus.append(m))
    body = {
        "text": "energy " * 300,
        "sampling_params": {"max_new_tokens": 24, "ignore_eos": True},
        "stream": True,
    }
    async with aiohttp.ClientSession() as session:

        async def one(i: int) -> dict[str, Any]:
            last: dict[str, Any] = {}
            async with session.post(cluster.router_url + "/generate", json=body) as resp:
                assert resp.status == 200, await resp.text()
                async for line in resp.content:
                    if line.startswith(b"data: {"):
                        last = json.loads(line[6:])
            return last

        outs = await asyncio.gather(*(one(i) for i in range(4)))
    assert all(o["meta_info"]["completion_tokens"] == 24 for o in outs)
    await wait_for(lambda: len(records) >= 4, timeout_s=10)
    await wait_for(lambda: any(s.status == "applied" for s in states), timeout_s=30)
    await wait_for(lambda: {g.gpu for g in gpus} == {0, 1}, timeout_s=30)
    reader.cancel()
    await asyncio.gather(reader, return_exceptions=True)
    await bus.close()
    return records, states, gpus


async def micro_services(bus: Bus) -> set[str]:
    """Names answering nats.micro discovery (``$SRV.PING``), asked until all four answer."""
    names: set[str] = set()

    async def on_reply(msg: Any) -> None:
        names.add(json.loads(msg.data)["name"])

    inbox = bus.nc.new_inbox()
    sub = await bus.nc.subscribe(inbox, cb=on_reply)
    want = {"voltana-telemetry", "voltana-actuator", "voltana-freqctl", "voltana-router"}
    for _ in range(50):  # the router registers once its bus link is up
        await bus.nc.publish("$SRV.PING", b"", reply=inbox)
        await asyncio.sleep(0.2)
        if want <= names:
            break
    await sub.unsubscribe()
    return names


def test_local_cluster_serves_and_controls_clocks(tmp_path: Path) -> None:
    spec = LocalClusterSpec(router_port=0, workdir=tmp_path / "up", noise=0.0)
    cluster = LocalCluster(spec)
    try:
        cluster.start()
        records, states, _gpus = asyncio.run(exercise(cluster))
        assert all(r.status == "ok" and r.output_tokens == 24 for r in records[:4])
        assert all(r.slo_met for r in records[:4]), records
        applied = [s for s in states if s.status == "applied"]
        assert all(s.backend == "emulated" and s.locked_clock_mhz for s in applied)
        assert cluster.check_alive() == []
        procs = list(cluster.procs.values())
    finally:
        cluster.stop()
    assert all(p.poll() is not None for p in procs)
    assert (tmp_path / "up" / "logs" / "router.log").exists()


def test_local_cluster_colocated(tmp_path: Path) -> None:
    """``voltana up --unified 2``: colocated workers behind the router's unified mode,
    their clocks driven by the same controllers (role unified)."""
    spec = LocalClusterSpec(
        prefill=0, decode=0, unified=2, router_port=0, workdir=tmp_path / "up", noise=0.0
    )
    cluster = LocalCluster(spec)
    try:
        cluster.start()
        records, states, _gpus = asyncio.run(exercise(cluster))
        assert all(r.status == "ok" and r.output_tokens == 24 for r in records[:4])
        assert all(r.prefill == r.decode for r in records[:4])  # one worker per request
        assert [i.role for i in cluster.instances] == ["unified", "unified"]
        assert any(s.status == "applied" for s in states)
        assert cluster.check_alive() == []
    finally:
        cluster.stop()


def test_busy_router_port_is_refused_before_anything_starts(tmp_path: Path) -> None:
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        port = held.getsockname()[1]
        cluster = LocalCluster(LocalClusterSpec(router_port=port, workdir=tmp_path / "up"))
        with pytest.raises(VoltanaError, match=f"router port {port} on 127.0.0.1 is in use"):
            cluster.start()
    assert cluster.procs == {} and cluster.nats is None
    assert not (tmp_path / "up").exists()
