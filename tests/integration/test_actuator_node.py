"""The actuator against a real nats-server and real emulator subprocesses (emulated backend)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import time
from pathlib import Path

import msgspec
import pytest
from actuator_helpers import actuator_proc, emulator, gpus_of
from helpers import wait_for
from voltana.bus.client import Bus, BusOptions
from voltana.bus.natsserver import NatsServer
from voltana.gpu.emulated import EmulatedDevice
from voltana.schemas import now_ns, subjects
from voltana.schemas.clock import ClockState, ResetClock, SetClock
from voltana.services.actuator.core import ActuatorConfig
from voltana.services.actuator.service import Actuator

NODE = "n1"


def set_cmd(
    mhz: int, *, gpu: int = 0, node: str = NODE, lease_s: float = 2.0, seq: int = 0
) -> SetClock:
    return SetClock(
        t_ns=now_ns(),
        node=node,
        gpu=gpu,
        sm_clock_mhz=mhz,
        lease_s=lease_s,
        seq=seq,
        issued_by="test",
    )


async def states(bus: Bus) -> list[ClockState]:
    got: list[ClockState] = []
    await bus.subscribe(subjects.CLOCK_STATE_ALL, ClockState, lambda m, s: got.append(m))
    return got


@pytest.fixture(scope="module")
def emu(tmp_path_factory: pytest.TempPathFactory):
    with emulator(gpu_ids=(0, 1), log_dir=tmp_path_factory.mktemp("emu")) as url:
        yield url


def fast(url: str) -> BusOptions:
    return BusOptions(servers=[url], reconnect_initial_s=0.05, reconnect_max_s=0.2)


async def test_lock_lease_expiry_and_rejections(nats_server: NatsServer, emu: str) -> None:
    """Applied, renewed, expired; out-of-list clock, foreign node, unknown GPU rejected; junk counted."""
    backend = EmulatedDevice.discover([emu])
    supported = backend.supported_sm_clocks_mhz(0)
    bus = await Bus.connect(fast(nats_server.url))
    client = await Bus.connect(fast(nats_server.url))
    got = await states(client)
    async with Actuator(bus, backend, ActuatorConfig(node=NODE, min_change_interval_s=0.0)) as act:
        await wait_for(lambda: sum(s.status == "reset" for s in got) == 2)  # start-up resets
        mhz = supported[len(supported) // 2]
        await client.publish(subjects.clock_set(NODE, 0), set_cmd(mhz, lease_s=0.6))
        await wait_for(lambda: any(s.status == "applied" for s in got))
        applied = next(s for s in got if s.status == "applied")
        assert (applied.gpu, applied.locked_clock_mhz, applied.backend) == (0, mhz, "emulated")
        assert applied.apply_latency_s is not None and applied.lease_expires_t_ns is not None
        assert gpus_of(emu)[0]["locked_clock_mhz"] == mhz

        # renewal: same clock, nothing re-applied, lease pushed out
        await client.publish(subjects.clock_set(NODE, 0), set_cmd(mhz, lease_s=0.6))
        await wait_for(lambda: any(s.status == "unchanged" for s in got))

        # rejections, each reported on the GPU's state subject, none applied
        bad_clock = supported[0] + 1
        await client.publish(subjects.clock_set(NODE, 0), set_cmd(bad_clock))
        await client.publish(subjects.clock_set(NODE, 1), set_cmd(mhz, gpu=1, node="n2"))
        await client.publish(subjects.clock_set(NODE, 7), set_cmd(mhz, gpu=7))
        await wait_for(lambda: sum(s.status == "rejected" for s in got) == 3)
        rejected = [s for s in got if s.status == "rejected"]
        assert (
            "not a supported clock" in rejected[0].reason
            and rejected[0].requested_clock_mhz == bad_clock
        )
        assert "node 'n2'" in rejected[1].reason and rejected[1].gpu == 1
        assert "not controlled" in rejected[2].reason and rejected[2].gpu == 7
        assert gpus_of(emu)[1]["locked_clock_mhz"] is None

        # malformed payloads: dropped and counted, visible in the micro status endpoint
        await client.nc.publish(subjects.clock_set(NODE, 0), b"\xc1garbage")
        await client.nc.publish(
            subjects.clock_set(NODE, 0), msgspec.msgpack.encode({"type": "set"})
        )
        await wait_for(lambda: bus.decode_error_total() == 2)
        reply = await client.nc.request(subjects.actuator_status(NODE), b"", timeout=2)
        status = json.loads(reply.data)
        assert status["malformed_dropped"] == 2 and status["outcomes"]["rejected"] == 3

        # lease expiry: no renewal -> default clocks
        await wait_for(lambda: any(s.status == "expired" for s in got), timeout_s=3)
        expired = next(s for s in got if s.status == "expired")
        assert expired.locked_clock_mhz is None
        assert gpus_of(emu)[0]["locked_clock_mhz"] is None
        assert act.stats()["gpus"][0]["target_mhz"] is None
    await bus.close()
    await client.close()


async def test_reset_command_and_exception_exit(nats_server: NatsServer, emu: str) -> None:
    backend = EmulatedDevice.discover([emu])
    mhz = backend.supported_sm_clocks_mhz(1)[10]
    bus = await Bus.connect(fast(nats_server.url))
    got = await states(bus)
    with pytest.raises(RuntimeError, match="boom"):
        async with Actuator(bus, backend, ActuatorConfig(node=NODE, min_change_interval_s=0.0)):
            await bus.publish(subjects.clock_set(NODE, 1), set_cmd(mhz, gpu=1, lease_s=30))
            await wait_for(lambda: gpus_of(emu)[1]["locked_clock_mhz"] == mhz)
            await bus.publish(
                subjects.clock_set(NODE, 1),
                ResetClock(t_ns=now_ns(), node=NODE, gpu=1, issued_by="test"),
            )
            await wait_for(lambda: gpus_of(emu)[1]["locked_clock_mhz"] is None)
            await bus.publish(subjects.clock_set(NODE, 1), set_cmd(mhz, gpu=1, lease_s=30))
            await wait_for(lambda: gpus_of(emu)[1]["locked_clock_mhz"] == mhz)
            raise RuntimeError("boom")
    assert gpus_of(emu)[1]["locked_clock_mhz"] is None  # the exception path reset it
    await wait_for(lambda: got[-1].status == "reset" and "exception" in got[-1].reason)
    await bus.close()


async def test_bus_loss_resets_clocks(tmp_path: Path, emu: str) -> None:
    server = NatsServer(store_dir=tmp_path / "js")
    server.start()
    try:
        backend = EmulatedDevice.discover([emu])
        mhz = backend.supported_sm_clocks_mhz(0)[5]
        bus = await Bus.connect(fast(server.url))
        act = Actuator(bus, backend, ActuatorConfig(node=NODE, min_change_interval_s=0.0))
        await act.start()
        try:
            await bus.publish(subjects.clock_set(NODE, 0), set_cmd(mhz, lease_s=30))
            await wait_for(lambda: gpus_of(emu)[0]["locked_clock_mhz"] == mhz)
            t0 = time.monotonic()
            server.stop()
            await wait_for(lambda: gpus_of(emu)[0]["locked_clock_mhz"] is None, timeout_s=5)
            reset_after_s = time.monotonic() - t0
            assert reset_after_s < 5  # long before the 30 s lease
        finally:
            await act.stop()
            with contextlib.suppress(ConnectionError):  # nats-py raises closing a lost link
                await bus.nc.close()
    finally:
        server.close()


async def test_backend_failure_is_reported_as_error(
    nats_server: NatsServer, tmp_path: Path
) -> None:
    """The emulator goes away: the lock fails, an error state is published, the target drops."""
    with emulator(gpu_ids=(0,), log_dir=tmp_path) as url:
        backend = EmulatedDevice.discover([url], timeout_s=0.5)
        mhz = backend.supported_sm_clocks_mhz(0)[3]
        bus = await Bus.connect(fast(nats_server.url))
        got = await states(bus)
        act = Actuator(bus, backend, ActuatorConfig(node=NODE, min_change_interval_s=0.0))
        await act.start()
    try:  # the emulator is stopped now
        await bus.publish(subjects.clock_set(NODE, 0), set_cmd(mhz, lease_s=30))
        await wait_for(lambda: any(s.status == "error" for s in got), timeout_s=5)
        err = next(s for s in got if s.status == "error")
        assert "UNREACHABLE" in err.reason and err.requested_clock_mhz == mhz
        await wait_for(lambda: act.stats()["gpus"][0]["target_mhz"] is None)
    finally:
        await act.stop()
        await bus.close()


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
async def test_signal_resets_clocks_subprocess(
    nats_server: NatsServer, emu: str, tmp_path: Path, sig: int
) -> None:
    """A real ``voltana actuator`` process: lock, then the signal -> default clocks, exit 0."""
    client = await Bus.connect(fast(nats_server.url))
    got = await states(client)
    mhz = gpus_of(emu)[0]["supported_sm_clocks_mhz"][12]
    with actuator_proc(nats_server.url, NODE, [emu], log_path=tmp_path / "act.log") as proc:
        # the actuator resets every GPU at start-up: that state says it is listening
        await wait_for(
            lambda: sum(s.status == "reset" and s.gpu == 1 for s in got) >= 1, timeout_s=20
        )
        await client.publish(subjects.clock_set(NODE, 0), set_cmd(mhz, lease_s=30))
        await wait_for(lambda: gpus_of(emu)[0]["locked_clock_mhz"] == mhz)
        proc.send_signal(sig)
        rc = await asyncio.to_thread(proc.wait, 15)
    assert rc == 0, (tmp_path / "act.log").read_text()[-3000:]
    assert gpus_of(emu)[0]["locked_clock_mhz"] is None
    await wait_for(lambda: got[-1].status == "reset" and got[-1].locked_clock_mhz is None)
    await client.close()
