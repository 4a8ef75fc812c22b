"""Replay from the real JetStream event log reproduces the recorded controller decisions."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from pathlib import Path

import msgspec
from voltana.bus.client import Bus
from voltana.bus.natsserver import NatsServer
from voltana.predictor.profile import default_profile
from voltana.schemas import ControllerConfig, InstanceTelemetry, SloConfig, subjects
from voltana.services.freqctl.controllers import make_controller, to_event
from voltana.services.freqctl.core import build_input


def telemetry(seq: int, t_ns: int) -> InstanceTelemetry:
    running = [0, 4, 32, 96, 160, 8, 0][seq % 7]
    return InstanceTelemetry(
        t_ns=t_ns,
        instance="d0",
        role="decode",
        node="n1",
        url="http://127.0.0.1:1",
        seq=seq,
        gpus=[0],
        num_running_reqs=running,
        kv_used_tokens=running * 900,
    )


async def record_run(url: str, config: ControllerConfig) -> int:
    """Publish telemetry and, like the live service, the decision taken on each one."""
    profile = default_profile()
    controller = make_controller(config, profile)
    bus = await Bus.connect(servers=[url])
    await bus.ensure_event_stream()
    n = 28
    for seq in range(n):
        now = time.time()
        tel = telemetry(seq, time.time_ns())
        ack = await bus.js.publish(subjects.telemetry_engine("decode", "d0"), _enc(tel))
        stored = await bus.js.get_msg(subjects.STREAM_NAME, ack.seq)
        at_s = stored.time.timestamp() if getattr(stored, "time", None) else now  # arrival time
        inp = build_input(
            tel,
            received_s=at_s,
            router=None,
            router_received_s=None,
            now_s=at_s,
            stale_after_s=config.stale_after_s,
            current_clock_mhz=None,
        )
        decision = controller.decide(inp, at_s)
        event = to_event(decision, inp, policy=controller.name, t_ns=time.time_ns(), now=at_s)
        await bus.js.publish(subjects.freqctl_decision("d0"), _enc(event))
        await asyncio.sleep(0.005)
    await bus.close()
    return n


def _enc(msg: msgspec.Struct) -> bytes:
    from voltana.schemas import codec

    return codec.encode(msg)


def run_replay(*args: str) -> subprocess.CompletedProcess[str]:
    """``voltana replay ARGS`` as a process; a non-zero exit fails the test."""
    return subprocess.run(
        [sys.executable, "-m", "voltana", "replay", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )


def replay(*args: str) -> tuple[dict[str, object], str]:
    """The JSON report (the last line out) and the stderr of a replay judged at a 40 ms ITL."""
    out = run_replay(*args, "--json", "--slo-itl-s", "0.04")
    return msgspec.json.decode(out.stdout.strip().splitlines()[-1]), out.stderr


def test_replay_reproduces_recorded_decisions(nats_server: NatsServer, tmp_path: Path) -> None:
    config = ControllerConfig(policy="voltana", slo=SloConfig(itl_s=0.04))
    n = asyncio.run(record_run(nats_server.url, config))

    same, _ = replay("--nats", nats_server.url)
    assert same["events"] == 2 * n
    assert same["compared_with_recorded"] == {"d0": n}
    assert same["agreement"] == 1.0

    other, _ = replay("--nats", nats_server.url, "--policy", "static-max")
    assert other["agreement"] is not None and other["agreement"] < 1.0

    export = tmp_path / "events.jsonl"
    run_replay("--nats", nats_server.url, "--export", str(export))
    assert len(export.read_text().splitlines()) == 2 * n
    with export.open("a") as f:
        f.write('{"at_s": 1, "subject": "voltana.nope", "msg": {}}\n')
    from_file, stderr = replay("--file", str(export))
    assert from_file["agreement"] == 1.0
    assert "skipped" in stderr


def test_replay_since_s_reads_only_recent_events(nats_server: NatsServer) -> None:
    config = ControllerConfig(policy="voltana", slo=SloConfig(itl_s=0.04))
    n = asyncio.run(record_run(nats_server.url, config))
    recent, stderr = replay("--nats", nats_server.url, "--since-s", "600")
    assert recent["events"] == 2 * n and "Traceback" not in stderr
    none_yet, _ = replay("--nats", nats_server.url, "--since-s", "0.000001")
    assert none_yet["events"] == 0


def test_replay_without_a_stream_says_so(nats_server: NatsServer) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "voltana", "replay", "--nats", nats_server.url, "--wait-s", "1"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 1
    assert "no VOLTANA event stream" in out.stderr and "Traceback" not in out.stderr
