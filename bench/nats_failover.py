"""Events lost when the event stream's leader dies: plain publishes against the outbox.

Starts a three-node JetStream cluster on loopback (real nats-server processes),
creates the ``VOLTANA`` stream with three replicas, and runs two publishers of
``ClockState`` events side by side at the same rate, both given all three URLs:

- ``plain``: one core NATS publish per event, what every publisher did before
  the outbox (the stream stores it only while it has a leader);
- ``outbox``: ``Bus.publish`` of a KEEP subject (JetStream, ack, ``Nats-Msg-Id``,
  re-sent until stored).

Each round kills the stream's leader with SIGKILL, waits for the election
advisory, keeps publishing for a while, restarts the dead node and waits until
it has caught up. Per round it prints the election time, the events each
publisher lost (and the time span of the plain publisher's hole), and how late
the outbox's events were stored (stream time minus the event's own ``t_ns``).

Usage::

    .venv/bin/python bench/nats_failover.py [--rounds 3] [--rate 100] [--out FILE]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from voltana.bus.client import Bus
from voltana.bus.jsstate import StreamLimits
from voltana.bus.natsserver import NatsServer
from voltana.common.ports import free_port
from voltana.schemas import codec, subjects
from voltana.schemas.clock import ClockState
from voltana.schemas.delivery import MSG_ID_HEADER, msg_id, parse_msg_id


def cluster(root: Path) -> list[NatsServer]:
    ports = [free_port() for _ in range(3)]
    routes = [f"nats://127.0.0.1:{p}" for p in ports]
    return [
        NatsServer(
            store_dir=root / f"n{i}",
            server_name=f"n{i}",
            cluster_port=ports[i],
            routes=[r for j, r in enumerate(routes) if j != i],
        )
        for i in range(3)
    ]


def state(node: str, seq: int) -> ClockState:
    return ClockState(
        t_ns=time.time_ns(), node=node, gpu=0, seq=seq, status="applied", locked_clock_mhz=1005
    )


async def leader(bus: Bus) -> str:
    while True:
        try:
            info = await bus.js.stream_info(subjects.STREAM_NAME)
            if info.cluster and info.cluster.leader:
                return info.cluster.leader
        except Exception:
            pass
        await asyncio.sleep(0.1)


async def one_round(
    servers: list[NatsServer], urls: list[str], rate: float, n: int
) -> dict[str, Any]:
    admin = await Bus.connect(servers=urls, name="bench-admin")
    plain = await Bus.connect(servers=urls, name="bench-plain")
    kept = await Bus.connect(servers=urls, name="bench-outbox")
    stop = asyncio.Event()
    sent = {"plain": 0, "outbox": 0}

    async def publish() -> None:
        seq = 0
        while not stop.is_set():
            seq += 1
            hdr = {MSG_ID_HEADER: msg_id(f"plain{n}", seq)}
            msg = state(f"plain{n}", seq)
            await plain.nc.publish(
                subjects.clock_state(f"plain{n}", 0), codec.encode(msg), headers=hdr
            )
            await kept.publish(subjects.clock_state(f"outbox{n}", 0), state(f"outbox{n}", seq))
            sent["plain"] = sent["outbox"] = seq
            await asyncio.sleep(1 / rate)

    task = asyncio.create_task(publish())
    await asyncio.sleep(1.5)
    victim_name = await leader(admin)
    victim = next(s for s in servers if s.server_name == victim_name)
    elected = await admin.nc.subscribe(
        f"$JS.EVENT.ADVISORY.STREAM.LEADER_ELECTED.{subjects.STREAM_NAME}"
    )
    t0 = time.monotonic()
    assert victim.pid is not None
    os.kill(victim.pid, signal.SIGKILL)
    await elected.next_msg(timeout=60)
    election_s = time.monotonic() - t0
    await asyncio.sleep(2.0)
    stop.set()
    await task
    flushed = await kept.outbox.flush(30)
    victim.stop()
    await asyncio.to_thread(victim.start)  # back, to catch up for the next round
    await plain.close()
    await kept.close()

    stored: dict[str, dict[int, float]] = {"plain": {}, "outbox": {}}
    info = await admin.js.stream_info(subjects.STREAM_NAME)
    sub = await admin.js.subscribe(subjects.ALL, ordered_consumer=True)
    while True:
        m = await sub.next_msg(timeout=10)
        parsed = parse_msg_id((m.headers or {}).get(MSG_ID_HEADER, ""))
        kinds = {f"plain{n}": "plain", kept.publisher_id: "outbox"}
        if parsed and parsed[0] in kinds:
            kind = kinds[parsed[0]]
            t_ns = codec.decode(m.data, ClockState).t_ns
            stored[kind][parsed[1]] = m.metadata.timestamp.timestamp() - t_ns / 1e9
        if m.metadata.sequence.stream >= info.state.last_seq:
            break
    await sub.unsubscribe()
    await admin.close()
    lost = {k: sorted(set(range(1, sent[k] + 1)) - set(v)) for k, v in stored.items()}
    hole_s = (max(lost["plain"]) - min(lost["plain"])) / rate if lost["plain"] else 0.0
    delays = sorted(stored["outbox"].values())
    return {
        "killed": victim_name,
        "election_s": round(election_s, 2),
        "sent_each": sent["plain"],
        "plain_lost": len(lost["plain"]),
        "plain_hole_s": round(hole_s, 2),
        "outbox_lost": len(lost["outbox"]),
        "outbox_flushed": flushed,
        "outbox_store_delay_max_s": round(delays[-1], 2) if delays else None,
        "outbox_store_delay_p50_s": round(delays[len(delays) // 2], 3) if delays else None,
    }


async def main(args: argparse.Namespace) -> dict[str, Any]:
    root = Path(tempfile.mkdtemp(prefix="voltana-failover-"))
    servers = cluster(root)
    try:
        for s in servers:
            s.start()
        urls = [s.url for s in servers]
        admin = await Bus.connect(servers=urls, name="bench-admin")
        while True:
            try:
                await admin.ensure_event_stream(StreamLimits(replicas=3))
                break
            except Exception:
                await asyncio.sleep(0.5)
        await leader(admin)
        await admin.close()
        rounds = []
        for n in range(args.rounds):
            r = await one_round(servers, urls, args.rate, n)
            print(json.dumps(r), flush=True)
            rounds.append(r)
        return {"rate_per_publisher": args.rate, "rounds": rounds}
    finally:
        for s in servers:
            s.close()


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=3, help="leader kills (default 3)")
    p.add_argument("--rate", type=float, default=100.0, help="events/s per publisher")
    p.add_argument("--out", default=None, help="write the results as JSON")
    a = p.parse_args()
    result = asyncio.run(main(a))
    if a.out:
        Path(a.out).write_text(json.dumps(result, indent=2) + "\n")
    sys.exit(0)
