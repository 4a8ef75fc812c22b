"""The freqctl service shell over a real nats-server, with a real actuator on a real emulator.

Telemetry is published by the test (so its timing is controlled): missing and
stale telemetry drive the safe (maximum) clock, held clocks are renewed past
their lease, bad KV values are counted and leave the config in force.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator

import pytest
from actuator_helpers import emulator, gpus_of
from helpers import wait_for
from voltana.bus.client import Bus, BusOptions
from voltana.bus.natsserver import NatsServer
from voltana.gpu.emulated import EmulatedDevice
from voltana.predictor.profile import default_profile
from voltana.schemas import subjects
from voltana.schemas.clock import ClockDecision, ClockState
from voltana.schemas.config import ControllerConfig
from voltana.schemas.telemetry import InstanceTelemetry
from voltana.services.actuator.core import ActuatorConfig
from voltana.services.actuator.service import Actuator
from voltana.services.freqctl.core import InstanceSpec
from voltana.services.freqctl.service import FreqctlService

NODE = "n1"
PROFILE = default_profile("h100", "llama-3.1-8b")
MAX, MIN = PROFILE.max_clock_mhz, PROFILE.min_clock_mhz


@pytest.fixture(scope="module")
def emu(tmp_path_factory: pytest.TempPathFactory):
    with emulator(gpu_ids=(0, 1), log_dir=tmp_path_factory.mktemp("emu")) as url:
        yield url


class Loop:
    """Actuator + freqctl on one bus, plus a client bus for the test."""

    def __init__(self, bus: Bus, client: Bus, actuator: Actuator, freqctl: FreqctlService) -> None:
        self.bus, self.client, self.actuator, self.freqctl = bus, client, actuator, freqctl
        self.states: list[ClockState] = []
        self.decisions: list[ClockDecision] = []
        self.seq = 0

    async def telemetry(self, instance: str, gpus: list[int], **kw: int) -> None:
        self.seq += 1
        msg = InstanceTelemetry(
            t_ns=time.time_ns(),
            instance=instance,
            role="decode",
            node=NODE,
            url="http://127.0.0.1:1",
            seq=self.seq,
            gpus=gpus,
            **kw,
        )
        await self.client.publish(subjects.telemetry_engine("decode", instance), msg)


@pytest.fixture
async def loop(nats_server: NatsServer, emu: str) -> AsyncIterator[Loop]:
    opts = BusOptions(servers=[nats_server.url])
    bus, client = await Bus.connect(opts), await Bus.connect(opts)
    actuator = Actuator(bus, EmulatedDevice.discover([emu]), ActuatorConfig(node=NODE))
    base = ControllerConfig(lease_s=0.6, stale_after_s=0.5, min_dwell_s=0.0)
    specs = [InstanceSpec("d0"), InstanceSpec("fixed", NODE, (1,))]
    freqctl = FreqctlService(bus, specs, PROFILE, base, name="t", tick_s=0.05)
    lp = Loop(bus, client, actuator, freqctl)
    await client.subscribe(subjects.CLOCK_STATE_ALL, ClockState, lambda m, s: lp.states.append(m))
    await client.subscribe(
        "voltana.freqctl.decision.*", ClockDecision, lambda m, s: lp.decisions.append(m)
    )
    await actuator.start()
    await freqctl.start()
    try:
        yield lp
    finally:
        await freqctl.stop()
        await actuator.stop()
        await bus.close()
        await client.close()


async def test_missing_then_fresh_then_stale_telemetry(loop: Loop, emu: str) -> None:
    # an instance with a fixed topology and no telemetry at all: safe (max) clock
    await wait_for(lambda: gpus_of(emu)[1]["locked_clock_mhz"] == MAX)
    assert any(d.instance == "fixed" and "stale" in d.reason for d in loop.decisions)

    # fresh idle telemetry: d0 (topology learned from telemetry) is parked
    for _ in range(5):
        await loop.telemetry("d0", [0])
        await asyncio.sleep(0.05)
    await wait_for(lambda: gpus_of(emu)[0]["locked_clock_mhz"] == MIN)

    # held for 3 leases by renewals while telemetry keeps coming: never expires
    t_end = time.monotonic() + 1.8
    while time.monotonic() < t_end:
        await loop.telemetry("d0", [0])
        await asyncio.sleep(0.1)
    assert not [s for s in loop.states if s.gpu == 0 and s.status == "expired"]
    assert gpus_of(emu)[0]["locked_clock_mhz"] == MIN

    # telemetry stops: after stale_after_s the controller goes to the safe clock
    t_stop = time.monotonic()
    await wait_for(lambda: gpus_of(emu)[0]["locked_clock_mhz"] == MAX, timeout_s=3)
    assert time.monotonic() - t_stop < 1.5
    status = json.loads((await loop.client.nc.request(subjects.freqctl_status("t"), b"", 2)).data)
    d0 = next(i for i in status["instances"] if i["instance"] == "d0")
    assert d0["rule"] == "stale" and d0["clock_mhz"] == MAX


async def test_kv_live_config_and_bad_values(loop: Loop, emu: str) -> None:
    for _ in range(3):
        await loop.telemetry("d0", [0])
        await asyncio.sleep(0.05)
    await wait_for(lambda: gpus_of(emu)[0]["locked_clock_mhz"] == MIN)
    kv = await loop.client.kv()
    key = subjects.kv_controller_key("d0")
    await loop.client.kv_put_json(key, ControllerConfig(policy="static", static_clock_mhz=1005))

    async def feed_until(cond: object, timeout_s: float = 5) -> None:
        deadline = time.monotonic() + timeout_s
        while not cond():  # type: ignore[operator]
            assert time.monotonic() < deadline, "condition not met"
            await loop.telemetry("d0", [0])
            await asyncio.sleep(0.05)

    await feed_until(lambda: gpus_of(emu)[0]["locked_clock_mhz"] == 1005)
    # a value that is not a ControllerConfig: counted, the static config stays
    await kv.put(key, b'{"policy": "warp-speed"}')
    await wait_for(lambda: loop.freqctl.counts["config_errors"] >= 1)
    await feed_until(lambda: True)
    assert gpus_of(emu)[0]["locked_clock_mhz"] == 1005
    # the default key applies to instances without their own; deleting ours falls back to it
    await loop.client.kv_put_json(
        subjects.KV_DEFAULT_CONTROLLER_KEY, ControllerConfig(policy="static", static_clock_mhz=1410)
    )
    await kv.delete(key)
    await feed_until(lambda: gpus_of(emu)[0]["locked_clock_mhz"] == 1410)
    # disabled: default clocks
    await loop.client.kv_put_json(
        subjects.KV_DEFAULT_CONTROLLER_KEY, ControllerConfig(enabled=False)
    )
    await feed_until(lambda: gpus_of(emu)[0]["locked_clock_mhz"] is None)
    await kv.delete(subjects.KV_DEFAULT_CONTROLLER_KEY)


async def test_router_dispatch_wakes_a_parked_prefill_instance(loop: Loop) -> None:
    """Work the router dispatches wakes a parked instance without waiting for a scrape."""
    from voltana.schemas.router import InstanceState

    gpu = 0
    idle = InstanceTelemetry(
        t_ns=time.time_ns(),
        instance="d0",
        role="prefill",
        node=NODE,
        url="http://127.0.0.1:1",
        seq=1,
        gpus=[gpu],
    )
    await loop.client.publish(subjects.telemetry_engine("prefill", "d0"), idle)

    def locked() -> int | None:
        mine = [s for s in loop.states if s.gpu == gpu and s.status in ("applied", "unchanged")]
        return mine[-1].locked_clock_mhz if mine else None

    await wait_for(lambda: locked() == MIN, 5)
    state = InstanceState(
        t_ns=time.time_ns(),
        instance="d0",
        role="prefill",
        url="http://127.0.0.1:1",
        seq=1,
        in_flight_requests=2,
        queued_prefill_tokens=12000,
        oldest_wait_s=0.05,
    )
    sent = time.monotonic()
    await loop.client.publish(subjects.router_state("prefill", "d0"), state)
    await wait_for(lambda: (locked() or 0) > MIN, 0.4)  # well inside one 0.5 s stale window
    assert loop.freqctl.counts["router_wakes"] >= 1
    assert time.monotonic() - sent < 0.4
