"""Killing the event stream's leader under load loses no KEEP event and fails no request.

A three-node JetStream cluster on loopback (stream and bucket with three
replicas, made by ``voltana nats init``), an emulated prefill/decode pair, and
the real ``voltana`` telemetry, actuator, freqctl and router processes, each
given all three NATS URLs. Requests flow through the router while the node
that leads the ``VOLTANA`` stream, and carries the actuator's connection, is
killed with SIGKILL. Then:

- no request through the router failed;
- the actuator reset its clocks on losing the bus and freqctl locked them again;
- ``voltana replay`` reads the log once the election is over;
- every KEEP publisher's sequence (``Nats-Msg-Id`` ``<publisher>:<seq>``) is in the
  stream without a gap, also across the election.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from pathlib import Path

import aiohttp
import msgspec
from helpers import emulated_pd_pair, spawn_voltana, wait_for, wait_http
from nats_cluster import (
    client_names,
    gaps,
    kill9,
    move_leader,
    nats_args,
    nats_cluster,
    publisher_sequences,
    stream_leader,
    urls,
)
from voltana.bus.client import Bus
from voltana.common.ports import free_port
from voltana.schemas import subjects
from voltana.schemas.clock import ClockState

NODE = "n1"


def node_toml(path: Path, servers: list[str], prefill: str, decode: str) -> Path:
    path.write_text(
        f"""node = "{NODE}"
[nats]
servers = {msgspec.json.encode(servers).decode()}
[rates]
gpu_hz = 10.0
engine_hz = 10.0
[metrics]
port = -1
[[instances]]
name = "prefill-0"
role = "prefill"
url = "{prefill}"
gpus = [0]
gpu_backend = "emulated"
[[instances]]
name = "decode-0"
role = "decode"
url = "{decode}"
gpus = [1]
gpu_backend = "emulated"
"""
    )
    return path


class Load:
    """Clients posting short requests to the router until stopped; counts every outcome."""

    def __init__(self, url: str, clients: int = 3) -> None:
        self.url, self.clients = url, clients
        self.ok = 0
        self.failed: list[str] = []
        self.stop = asyncio.Event()

    async def run(self) -> None:
        async with aiohttp.ClientSession() as session:
            await asyncio.gather(*(self._client(session, i) for i in range(self.clients)))

    async def _client(self, session: aiohttp.ClientSession, i: int) -> None:
        body = {"text": f"client {i} says hello", "sampling_params": {"max_new_tokens": 8}}
        while not self.stop.is_set():
            try:
                async with session.post(self.url + "/generate", json=body) as resp:
                    await resp.read()
                    if resp.status == 200:
                        self.ok += 1
                    else:
                        self.failed.append(f"HTTP {resp.status}")
            except aiohttp.ClientError as exc:
                self.failed.append(repr(exc))


async def test_stream_leader_killed_under_load(tmp_path: Path) -> None:
    with nats_cluster(tmp_path / "nats") as servers, emulated_pd_pair() as pd:
        init = subprocess.run(
            [
                sys.executable,
                "-m",
                "voltana",
                "nats",
                "init",
                "--replicas",
                "3",
                *nats_args(servers),
            ],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert init.returncode == 0, init.stdout + init.stderr
        (prefill, boot), decode = pd["prefill"], pd["decode"]
        cfg = node_toml(tmp_path / "node.toml", urls(servers), prefill, decode)
        router_url = f"http://127.0.0.1:{free_port()}"
        nats = nats_args(servers)
        actuator = ["actuator", "--node", NODE, "--backend", "emulated"]
        actuator += ["--emulator-url", prefill, "--emulator-url", decode, *nats]
        freqctl = ["freqctl", "--instances", f"prefill-0@{NODE}:0,decode-0@{NODE}:1", *nats]
        router = ["router", "--host", "127.0.0.1", "--port", router_url.rsplit(":", 1)[1]]
        router += ["--prefill", prefill, str(boot), "--decode", decode, *nats]
        with (
            spawn_voltana(actuator, tmp_path / "actuator.log", ready="actuator_ready"),
            spawn_voltana(["telemetry", "--config", str(cfg)], tmp_path / "telemetry.log"),
            spawn_voltana(freqctl, tmp_path / "freqctl.log", ready="freqctl_ready"),
            spawn_voltana(router, tmp_path / "router.log") as router_proc,
        ):
            wait_http(router_url + "/health", router_proc)
            # the node carrying the actuator's connection becomes the stream's leader: killing
            # it takes the stream's leader and the actuator's bus at once
            victim = next(s for s in servers if f"voltana-actuator-{NODE}" in client_names(s))
            survivors = [s for s in servers if s is not victim]
            watch = await Bus.connect(servers=urls(survivors), name="watch")
            states: list[ClockState] = []
            await watch.subscribe(
                subjects.CLOCK_STATE_ALL, ClockState, lambda m, s: states.append(m)
            )
            await move_leader(watch.nc, watch.js, subjects.STREAM_NAME, str(victim.server_name))
            load = Load(router_url)
            load_task = asyncio.create_task(load.run())
            try:
                await wait_for(lambda: {1} <= {s.gpu for s in states if s.status == "applied"}, 30)
                await wait_for(lambda: load.ok >= 20, 30)
                elected = await watch.nc.subscribe(
                    f"$JS.EVENT.ADVISORY.STREAM.LEADER_ELECTED.{subjects.STREAM_NAME}"
                )
                n_before = len(states)
                killed_at = time.monotonic()
                kill9(victim)
                await elected.next_msg(timeout=30)
                election_s = time.monotonic() - killed_at
                print(f"stream leader elected {election_s:.2f} s after the kill")

                def relocked() -> bool:
                    after = states[n_before:]
                    lost = [i for i, s in enumerate(after) if s.status == "reset"]
                    return bool(lost) and any(s.status == "applied" for s in after[lost[0] :])

                await wait_for(relocked, 30)
                ok_then = load.ok
                await wait_for(lambda: load.ok >= ok_then + 20, 30)
            finally:
                load.stop.set()
                await load_task
            assert not load.failed, load.failed[:5]
            assert await stream_leader(watch.js, subjects.STREAM_NAME) != victim.server_name

            replay = subprocess.run(
                [sys.executable, "-m", "voltana", "replay", "--json", *nats_args(survivors)],
                capture_output=True,
                text=True,
                timeout=60,
            )
            assert replay.returncode == 0, replay.stderr[-2000:]
            assert "Traceback" not in replay.stderr, replay.stderr[-2000:]
            report = msgspec.json.decode(replay.stdout.strip().splitlines()[-1])
            assert report["events"] > 0 and report["compared_with_recorded"]
        # every service stopped (SIGTERM): their outboxes are flushed into the stream
        try:
            seqs = await publisher_sequences(watch.js, subjects.STREAM_NAME)
        finally:
            await watch.close()
        kinds = {p.rsplit("-", 1)[0] for p in seqs}
        assert {"voltana-actuator-n1", "voltana-freqctl-freqctl", "voltana-router"} <= kinds
        missing = {p: gaps(s)[:10] for p, s in seqs.items() if gaps(s)}
        assert not missing, missing
        print({p: len(s) for p, s in seqs.items()})
