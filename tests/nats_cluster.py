"""A nats-server cluster with JetStream on loopback for the cluster tests, and what they ask of it.

Every node is a real ``nats-server`` child process (client, route and monitoring
ports free on 127.0.0.1), stopped by PID when the context ends, also on failure.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import urllib.request
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path

from nats.aio.client import Client as NatsClient
from nats.js import JetStreamContext
from voltana.bus.natsserver import NatsServer
from voltana.common.ports import free_port
from voltana.schemas.delivery import MSG_ID_HEADER, parse_msg_id


@contextlib.contextmanager
def nats_cluster(root: Path, size: int = 3) -> Iterator[list[NatsServer]]:
    """``size`` nodes named n0..n{size-1}, each routed to the others; all stopped on exit."""
    route_ports = [free_port() for _ in range(size)]
    routes = [f"nats://127.0.0.1:{p}" for p in route_ports]
    servers = [
        NatsServer(
            store_dir=root / f"n{i}",
            server_name=f"n{i}",
            cluster_port=route_ports[i],
            routes=[r for j, r in enumerate(routes) if j != i],
            http_port=free_port(),
        )
        for i in range(size)
    ]
    try:
        for s in servers:
            s.start()
        yield servers
    finally:
        for s in servers:
            s.close()


def urls(servers: list[NatsServer]) -> list[str]:
    return [s.url for s in servers]


def nats_args(servers: list[NatsServer]) -> list[str]:
    """``--nats URL`` for every node: what an operator gives each service."""
    return [a for s in servers for a in ("--nats", s.url)]


def client_names(server: NatsServer) -> list[str]:
    """Names of the clients connected to ``server`` (its /connz monitoring page)."""
    with urllib.request.urlopen(f"http://127.0.0.1:{server.http_port}/connz", timeout=2) as r:
        return [c.get("name", "") for c in json.loads(r.read())["connections"]]


def kill9(server: NatsServer) -> None:
    """SIGKILL the node, as a crash would, then reap it."""
    assert server.pid is not None
    os.kill(server.pid, signal.SIGKILL)
    server.stop()


async def stream_leader(js: JetStreamContext, stream: str) -> str:
    """The stream's current leader, waiting while it has none."""
    while True:
        with contextlib.suppress(Exception):
            info = await js.stream_info(stream)
            if info.cluster is not None and info.cluster.leader:
                return info.cluster.leader
        await asyncio.sleep(0.1)


async def move_leader(nc: NatsClient, js: JetStreamContext, stream: str, to: str) -> None:
    """Make ``to`` the stream's leader (a preferred step-down), waiting for the election."""
    if await stream_leader(js, stream) == to:
        return
    sub = await nc.subscribe(f"$JS.EVENT.ADVISORY.STREAM.LEADER_ELECTED.{stream}")
    try:
        body = json.dumps({"placement": {"preferred": to}}).encode()
        reply = await nc.request(f"$JS.API.STREAM.LEADER.STEPDOWN.{stream}", body, timeout=5)
        assert json.loads(reply.data).get("success"), reply.data
        while json.loads((await sub.next_msg(timeout=15)).data)["leader"] != to:
            pass
    finally:
        await sub.unsubscribe()


async def publisher_sequences(js: JetStreamContext, stream: str) -> dict[str, list[int]]:
    """Every voltana message id in the stream, as sorted sequence numbers per publisher."""
    info = await js.stream_info(stream)
    seqs: dict[str, list[int]] = defaultdict(list)
    sub = await js.subscribe("voltana.>", stream=stream, ordered_consumer=True)
    try:
        last = info.state.last_seq
        while info.state.messages:
            m = await sub.next_msg(timeout=10)
            parsed = parse_msg_id((m.headers or {}).get(MSG_ID_HEADER, ""))
            if parsed is not None:
                seqs[parsed[0]].append(parsed[1])
            if m.metadata.sequence.stream >= last:
                break
    finally:
        await sub.unsubscribe()
    return {p: sorted(s) for p, s in seqs.items()}


def gaps(seqs: list[int]) -> list[int]:
    """Sequence numbers missing from 1..max."""
    have = set(seqs)
    return [n for n in range(1, max(seqs, default=0) + 1) if n not in have]
