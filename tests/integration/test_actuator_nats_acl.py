"""The shipped NATS config (deploy/nats/nats-server.conf): each role's user can do its job, no more."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from actuator_helpers import emulator, gpus_of
from helpers import acl_opts, wait_for
from voltana.bus.client import Bus
from voltana.bus.natsserver import NatsServer
from voltana.gpu.emulated import EmulatedDevice
from voltana.predictor.profile import default_profile
from voltana.schemas import subjects
from voltana.schemas.clock import ClockState, SetClock
from voltana.schemas.config import ControllerConfig
from voltana.schemas.telemetry import InstanceTelemetry
from voltana.services.actuator.core import ActuatorConfig
from voltana.services.actuator.service import Actuator
from voltana.services.freqctl.core import InstanceSpec
from voltana.services.freqctl.service import FreqctlService

NODE = "gpu-node-1"  # the node the example config's actuator user is for


async def test_role_users_run_the_control_loop(acl_server: NatsServer, tmp_path: Path) -> None:
    url = acl_server.url
    admin = await Bus.connect(acl_opts(url, "admin"))
    await admin.kv()  # the bucket is created by an operator; freqctl may not create streams
    with emulator(gpu_ids=(0,), log_dir=tmp_path) as emu:
        act_bus = await Bus.connect(acl_opts(url, f"actuator-{NODE}"))
        fc_bus = await Bus.connect(acl_opts(url, f"freqctl-{NODE}"))
        tel_bus = await Bus.connect(acl_opts(url, f"telemetry-{NODE}"))
        states: list[ClockState] = []
        await admin.subscribe(subjects.CLOCK_STATE_ALL, ClockState, lambda m, s: states.append(m))
        actuator = Actuator(act_bus, EmulatedDevice.discover([emu]), ActuatorConfig(node=NODE))
        profile = default_profile("h100", "llama-3.1-8b")
        freqctl = FreqctlService(
            fc_bus, [InstanceSpec("decode-0", NODE, (0,))], profile, ControllerConfig(), name=NODE
        )
        await actuator.start()
        await freqctl.start()
        stop = asyncio.Event()

        async def telemetry() -> None:
            seq = 0
            while not stop.is_set():
                seq += 1
                msg = InstanceTelemetry(
                    t_ns=time.time_ns(),
                    instance="decode-0",
                    role="decode",
                    node=NODE,
                    url=emu,
                    seq=seq,
                    gpus=[0],
                )
                await tel_bus.publish(subjects.telemetry_engine("decode", "decode-0"), msg)
                await asyncio.sleep(0.05)

        pub = asyncio.create_task(telemetry())
        try:
            # telemetry user -> freqctl user -> actuator user: idle instance parked
            await wait_for(lambda: gpus_of(emu)[0]["locked_clock_mhz"] == profile.min_clock_mhz, 10)
            # the admin changes the policy live through the KV bucket; freqctl reads it
            await admin.kv_put_json(
                subjects.kv_controller_key("decode-0"),
                ControllerConfig(policy="static", static_clock_mhz=1200),
            )
            await wait_for(lambda: gpus_of(emu)[0]["locked_clock_mhz"] == 1200, 10)
            # the admin reaches both status endpoints
            for subject in (subjects.actuator_status(NODE), subjects.freqctl_status(NODE)):
                reply = await admin.nc.request(subject, b"", timeout=2)
                assert reply.data.startswith(b"{")

            # the telemetry user cannot command a GPU: the server drops its SetClock
            before = actuator.outcomes.copy()
            forged = SetClock(t_ns=time.time_ns(), node=NODE, gpu=0, sm_clock_mhz=345, lease_s=30)
            await tel_bus.publish(subjects.clock_set(NODE, 0), forged)
            await asyncio.sleep(0.5)
            assert actuator.outcomes["applied"] == before["applied"]
            assert gpus_of(emu)[0]["locked_clock_mhz"] == 1200
        finally:
            stop.set()
            await pub
            await freqctl.stop()
            await actuator.stop()
            for b in (fc_bus, tel_bus, act_bus):
                await b.close()
        assert gpus_of(emu)[0]["locked_clock_mhz"] is None
    await admin.close()


async def test_actuator_user_hears_only_its_node(acl_server: NatsServer) -> None:
    admin = await Bus.connect(acl_opts(acl_server.url, "admin"))
    act = await Bus.connect(acl_opts(acl_server.url, f"actuator-{NODE}"))
    heard: list[SetClock] = []
    await act.subscribe(
        subjects.clock_set_node("gpu-node-2"), SetClock, lambda m, s: heard.append(m)
    )
    await act.subscribe(subjects.clock_set_node(NODE), SetClock, lambda m, s: heard.append(m))
    for node in ("gpu-node-2", NODE):
        cmd = SetClock(t_ns=time.time_ns(), node=node, gpu=0, sm_clock_mhz=1200)
        await admin.publish(subjects.clock_set(node, 0), cmd)
    await wait_for(lambda: len(heard) >= 1)
    await asyncio.sleep(0.3)
    assert [m.node for m in heard] == [NODE]
    await act.close()
    await admin.close()
