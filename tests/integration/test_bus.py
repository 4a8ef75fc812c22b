"""The bus against a real nats-server: typed pub/sub, bad payloads, restarts, JetStream, auth."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path

import msgspec
import pytest
from helpers import wait_for
from structlog.testing import capture_logs
from voltana.bus.client import Bus, BusOptions, backoff_s
from voltana.bus.natsserver import NatsServer
from voltana.common.errors import BusError
from voltana.schemas import GpuTelemetry, SetClock, codec, now_ns, subjects
from voltana.schemas.clock import ClockCommand


def gpu_msg(seq: int) -> GpuTelemetry:
    return GpuTelemetry(
        t_ns=now_ns(),
        node="n1",
        gpu=0,
        seq=seq,
        power_w=100.0 + seq,
        energy_j=float(seq),
        sm_clock_mhz=1980,
    )


def fast_reconnect(url: str) -> BusOptions:
    return BusOptions(servers=[url], reconnect_initial_s=0.05, reconnect_max_s=0.2)


async def test_typed_publish_subscribe(nats_server: NatsServer) -> None:
    bus = await Bus.connect(fast_reconnect(nats_server.url))
    got: list[tuple[GpuTelemetry, str]] = []
    await bus.subscribe(subjects.TELEMETRY_GPU_ALL, GpuTelemetry, lambda m, s: got.append((m, s)))
    for i in range(3):
        await bus.publish(subjects.telemetry_gpu("n1", 0), gpu_msg(i))
    await wait_for(lambda: len(got) == 3)
    assert [m.seq for m, _ in got] == [0, 1, 2]
    assert got[0][1] == "voltana.telemetry.gpu.n1.0"
    await bus.close()


async def test_malformed_payload_is_counted_logged_and_dropped(nats_server: NatsServer) -> None:
    bus = await Bus.connect(fast_reconnect(nats_server.url))
    got: list[object] = []
    subject = subjects.clock_set("n1", 0)
    await bus.subscribe(subject, ClockCommand, lambda m, s: got.append(m))
    good = SetClock(t_ns=now_ns(), node="n1", gpu=0, sm_clock_mhz=1200)
    with capture_logs() as logs:
        await bus.nc.publish(subject, b"\xc1 not msgpack")
        await bus.nc.publish(subject, msgspec.msgpack.encode({"type": "set", "node": "n1"}))
        await bus.publish(subject, good)
        await wait_for(lambda: len(got) == 1)
    assert got == [good]
    assert bus.decode_errors[(subject, "decode")] == 1
    assert bus.decode_errors[(subject, "validation")] == 1
    dropped = [e for e in logs if e["event"] == "bus_payload_dropped"]
    assert {e["subject"] for e in dropped} == {subject}
    assert any("t_ns" in e["error"] for e in dropped)
    await bus.close()


async def test_handler_exception_does_not_end_subscription(nats_server: NatsServer) -> None:
    bus = await Bus.connect(fast_reconnect(nats_server.url))
    got: list[int] = []

    def handler(m: GpuTelemetry, s: str) -> None:
        if m.seq == 0:
            raise RuntimeError("boom")
        got.append(m.seq)

    await bus.subscribe(subjects.TELEMETRY_GPU_ALL, GpuTelemetry, handler)
    await bus.publish(subjects.telemetry_gpu("n1", 0), gpu_msg(0))
    await bus.publish(subjects.telemetry_gpu("n1", 0), gpu_msg(1))
    await wait_for(lambda: got == [1])
    await bus.close()


async def test_subscriber_receives_after_server_restart(nats_server: NatsServer) -> None:
    sub = await Bus.connect(fast_reconnect(nats_server.url))
    pub = await Bus.connect(fast_reconnect(nats_server.url))
    reconnected = asyncio.Event()
    sub.on_reconnect(reconnected.set)
    got: list[int] = []
    await sub.subscribe(subjects.TELEMETRY_GPU_ALL, GpuTelemetry, lambda m, s: got.append(m.seq))
    await pub.publish(subjects.telemetry_gpu("n1", 0), gpu_msg(1))
    await wait_for(lambda: got == [1])

    await asyncio.to_thread(nats_server.restart)
    await asyncio.wait_for(reconnected.wait(), timeout=10)
    await wait_for(lambda: pub.is_connected, timeout_s=10)
    await pub.publish(subjects.telemetry_gpu("n1", 0), gpu_msg(2))
    await wait_for(lambda: 2 in got, timeout_s=5)
    await sub.close()
    await pub.close()


async def test_jetstream_keeps_published_events(nats_server: NatsServer) -> None:
    bus = await Bus.connect(fast_reconnect(nats_server.url))
    await bus.ensure_event_stream()
    await bus.ensure_event_stream()  # idempotent
    for i in range(5):
        await bus.publish(subjects.telemetry_gpu("n1", 0), gpu_msg(i))
    assert await bus.publish_persistent(subjects.telemetry_gpu("n1", 0), gpu_msg(5), msg_id="m5")
    assert not await bus.publish_persistent(
        subjects.telemetry_gpu("n1", 0), gpu_msg(5), msg_id="m5"
    )
    await bus.nc.flush()

    async def count() -> int:
        info = await bus.js.stream_info(subjects.STREAM_NAME)
        return int(info.state.messages)

    for _ in range(50):
        if await count() == 6:
            break
        await asyncio.sleep(0.02)
    assert await count() == 6
    psub = await bus.js.subscribe(subjects.TELEMETRY_GPU_ALL, ordered_consumer=True)
    seqs = []
    for _ in range(6):
        m = await psub.next_msg(timeout=2)
        seqs.append(codec.decode(m.data, GpuTelemetry).seq)
    assert seqs == [0, 1, 2, 3, 4, 5]
    await bus.close()


async def test_kv_round_trip(nats_server: NatsServer) -> None:
    from voltana.schemas import ControllerConfig, SloConfig

    bus = await Bus.connect(fast_reconnect(nats_server.url))
    key = subjects.kv_controller_key("d0")
    assert await bus.kv_get_json(key, ControllerConfig) is None
    cfg = ControllerConfig(policy="ecofreq", slo=SloConfig(itl_s=0.04))
    await bus.kv_put_json(key, cfg)
    assert await bus.kv_get_json(key, ControllerConfig) == cfg
    await bus.close()


async def test_wrong_password_is_a_clear_error(tmp_path: Path) -> None:
    with NatsServer(store_dir=tmp_path, user="voltana", password="right") as server:
        ok = await Bus.connect(servers=[server.url], user="voltana", password="right")
        await ok.close()
        with pytest.raises(BusError, match="refused the credentials"):
            await Bus.connect(
                servers=[server.url], user="voltana", password="wrong", allow_reconnect=False
            )


async def test_no_server_is_a_clear_error() -> None:
    from helpers import free_port

    url = f"nats://127.0.0.1:{free_port()}"
    with pytest.raises(BusError, match="cannot connect to NATS"):
        await Bus.connect(servers=[url], connect_timeout_s=0.5, allow_reconnect=False)


def test_backoff_grows_and_is_capped() -> None:
    import random

    rng = random.Random(1)
    waits = [backoff_s(a, 0.1, 2.0, rng) for a in range(10)]
    assert waits[0] <= 0.1
    assert max(waits) <= 2.0
    assert waits[6] >= 1.0


def test_cli_tail_prints_json_lines(nats_server: NatsServer) -> None:
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "voltana",
            "tail",
            "voltana.clock.>",
            "--count",
            "1",
            "--nats",
            nats_server.url,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:

        async def publish_until_seen() -> None:
            bus = await Bus.connect(servers=[nats_server.url])
            msg = SetClock(t_ns=now_ns(), node="n1", gpu=0, sm_clock_mhz=1200)
            for _ in range(100):
                await bus.publish(subjects.clock_set("n1", 0), msg)
                await bus.nc.flush()
                if proc.poll() is not None:
                    break
                await asyncio.sleep(0.1)
            await bus.close()

        asyncio.run(publish_until_seen())
        out, _err = proc.communicate(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    line = msgspec.json.decode(out.splitlines()[0])
    assert line["subject"] == "voltana.clock.set.n1.0"
    assert line["msg"]["type"] == "set" and line["msg"]["sm_clock_mhz"] == 1200
