"""Telemetry-to-applied-clock latency of the control loop over loopback NATS.

Starts an embedded nats-server, one emulated decode worker (its admin HTTP is
the clock backend), ``voltana actuator --backend emulated`` and ``voltana
freqctl`` as real subprocesses. The benchmark itself plays the telemetry
service: it publishes ``InstanceTelemetry`` for one instance at 20 Hz,
switching between idle (the controller parks the GPU at its lowest clock) and
loaded (a waiting queue: the controller raises the clock). For every switch it
measures the time from publishing the first telemetry of the new state to
receiving the actuator's ``ClockState`` that reports the new clock applied.

Usage::

    .venv/bin/python bench/freqctl_loop.py [--steps 60] [--out bench/results/freqctl_loop.json]

Prints p50/p90/p99/max in milliseconds for raises (idle -> loaded) and parks
(loaded -> idle; parks include the controller's minimum dwell).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from children import Children
from voltana.common.ports import free_port

LOG_ENV = {"VOLTANA_LOG_FORMAT": "json", "VOLTANA_LOG_LEVEL": "warning"}


def pct(xs: list[float]) -> dict[str, float]:
    a = np.array(xs) * 1e3
    return {
        "n": len(xs),
        "p50_ms": float(np.percentile(a, 50)),
        "p90_ms": float(np.percentile(a, 90)),
        "p99_ms": float(np.percentile(a, 99)),
        "max_ms": float(a.max()),
    }


async def measure(nats_url: str, steps: int, node: str, instance: str) -> dict[str, Any]:
    from voltana.bus.client import Bus, BusOptions
    from voltana.schemas import subjects
    from voltana.schemas.clock import ClockState
    from voltana.schemas.telemetry import InstanceTelemetry

    bus = await Bus.connect(BusOptions(servers=[nats_url]))
    applied: asyncio.Queue[tuple[float, ClockState]] = asyncio.Queue()

    def on_state(st: ClockState, subject: str) -> None:
        if st.status == "applied":
            applied.put_nowait((time.perf_counter(), st))

    await bus.subscribe(subjects.clock_state(node, 0), ClockState, on_state)
    state = {"loaded": False}
    seq = 0

    async def publish() -> float:
        nonlocal seq
        seq += 1
        loaded = state["loaded"]
        msg = InstanceTelemetry(
            t_ns=time.time_ns(),
            instance=instance,
            role="decode",
            node=node,
            url="http://127.0.0.1:1",
            seq=seq,
            gpus=[0],
            num_running_reqs=32 if loaded else 0,
            num_queue_reqs=8 if loaded else 0,
            kv_used_tokens=32 * 1500 if loaded else 0,
        )
        t = time.perf_counter()
        await bus.publish(subjects.telemetry_engine("decode", instance), msg)
        return t

    async def background() -> None:
        while True:
            await publish()
            await asyncio.sleep(0.05)

    bg = asyncio.create_task(background())
    raises: list[float] = []
    parks: list[float] = []
    clocks: dict[str, set[int]] = {"raise": set(), "park": set()}
    try:
        # settle: idle until the first park is applied
        await asyncio.sleep(1.5)
        while not applied.empty():
            applied.get_nowait()
        for i in range(steps):
            loaded = i % 2 == 0
            state["loaded"] = loaded
            t0 = await publish()
            try:
                t1, st = await asyncio.wait_for(applied.get(), timeout=5.0)
            except TimeoutError:
                print(f"step {i}: no applied clock within 5 s", file=sys.stderr)
                continue
            (raises if loaded else parks).append(t1 - t0)
            clocks["raise" if loaded else "park"].add(int(st.locked_clock_mhz or 0))
            await asyncio.sleep(0.35)  # past the controller's dwell and the actuator's rate limit
            while not applied.empty():
                applied.get_nowait()
    finally:
        bg.cancel()
        await bus.close()
    return {
        "raise": pct(raises) if raises else None,
        "park": pct(parks) if parks else None,
        "raise_clocks_mhz": sorted(clocks["raise"]),
        "park_clocks_mhz": sorted(clocks["park"]),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=60, help="state switches (half raises)")
    parser.add_argument("--out", default=None, help="also write the figures as JSON here")
    args = parser.parse_args()

    from voltana.bus.natsserver import NatsServer

    node, instance = "bench", "b0"
    with (
        tempfile.TemporaryDirectory() as tmp,
        NatsServer(store_dir=Path(tmp) / "js") as server,
        Children(Path(tmp), env=LOG_ENV) as kids,
    ):
        port = free_port()
        emu_url = f"http://127.0.0.1:{port}"
        kids.voltana(
            "emulator",
            [
                "emulator",
                "--role",
                "decode",
                "--gpu",
                "h100",
                "--model",
                "llama-3.1-8b",
                "--tp",
                "1",
                "--gpu-ids",
                "0",
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--disaggregation-bootstrap-port",
                str(free_port()),
            ],
        )
        kids.wait_http("emulator", emu_url + "/voltana/gpus", timeout_s=30)
        actuator = ["actuator", "--node", node, "--backend", "emulated", "--nats", server.url]
        kids.voltana("actuator", [*actuator, "--emulator-url", emu_url])
        kids.voltana(
            "freqctl",
            [
                "freqctl",
                "--instances",
                f"{instance}@{node}:0",
                "--nats",
                server.url,
                "--no-kv",
                "--tick-s",
                "0.1",
            ],
        )
        time.sleep(2.0)
        kids.check_running()
        result = asyncio.run(measure(server.url, args.steps, node, instance))
    result["setup"] = (
        "loopback NATS; voltana freqctl (policy voltana, packaged h100 profile) and "
        "voltana actuator (emulated backend, admin HTTP of one emulated H100) as subprocesses; "
        "telemetry published by the benchmark at 20 Hz"
    )
    for kind in ("raise", "park"):
        r = result[kind]
        if r:
            print(
                f"{kind:5s}: n={r['n']:3d}  p50 {r['p50_ms']:6.1f} ms  p90 {r['p90_ms']:6.1f} ms  "
                f"p99 {r['p99_ms']:6.1f} ms  max {r['max_ms']:6.1f} ms"
            )
    print(
        f"clocks: raise -> {result['raise_clocks_mhz']} MHz, park -> {result['park_clocks_mhz']} MHz"
    )
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
