"""``voltana nats init``: create or check the event stream and the config bucket on a server or cluster.

Run once per deployment (as the ``admin`` user), after the NATS servers are up.
It waits for JetStream to answer (a fresh cluster elects its meta leader
first), creates what is missing with the replicas asked for, and never
downgrades what exists: a stream or bucket with other settings is left alone
and every difference is printed (``--apply`` changes limits and raises, but
never lowers, replicas). Exit status 0 when everything matches, 2 when
something differs, 1 on an error.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from typing import Any

from voltana.bus.client import Bus
from voltana.bus.cliopts import add_nats_args, bus_options_from_args
from voltana.bus.jsstate import (
    BucketSettings,
    Ensured,
    JetStreamNotReady,
    StreamLimits,
    ensure_config_bucket,
    ensure_event_stream,
)
from voltana.common.errors import ConfigError
from voltana.common.logs import get_logger

log = get_logger("nats.init")


def add_stream_args(p: argparse.ArgumentParser) -> None:
    """Flags of the event stream and the bucket, shared by ``voltana nats`` and ``nats init``."""
    g = p.add_argument_group("event stream and config bucket (applied when created)")
    g.add_argument(
        "--replicas",
        type=int,
        default=1,
        help="copies of the stream and the bucket: 1 for one server, 3 for a three-node "
        "cluster (default 1)",
    )
    g.add_argument(
        "--stream-max-age-s",
        type=float,
        default=24 * 3600,
        help="event log retention in seconds (default 86400)",
    )
    g.add_argument(
        "--stream-max-bytes",
        type=int,
        default=-1,
        help="event log size cap in bytes; -1 sizes it from --events-per-s and the "
        "retention (default -1)",
    )
    g.add_argument(
        "--events-per-s",
        type=float,
        default=StreamLimits().events_per_s,
        help="expected events per second the log is sized for (138 measured for one "
        "idle node with three instances; default %(default)s)",
    )
    g.add_argument(
        "--max-msg-size",
        type=int,
        default=StreamLimits().max_msg_size,
        help="largest event the log stores, bytes (default %(default)s)",
    )
    g.add_argument(
        "--max-msgs-per-subject",
        type=int,
        default=-1,
        help="events one subject may keep; -1 = 25 per second of retention (default -1)",
    )


def limits_from_args(args: argparse.Namespace) -> tuple[StreamLimits, BucketSettings]:
    """Stream and bucket settings from :func:`add_stream_args` flags, checked."""
    if args.replicas not in (1, 2, 3, 4, 5):
        raise ConfigError(f"--replicas must be 1 to 5 (JetStream's limit), got {args.replicas}")
    if args.stream_max_age_s <= 0:
        raise ConfigError(f"--stream-max-age-s must be > 0, got {args.stream_max_age_s}")
    if args.events_per_s <= 0:
        raise ConfigError(f"--events-per-s must be > 0, got {args.events_per_s}")
    if args.max_msg_size < 1024:
        raise ConfigError(f"--max-msg-size must be at least 1024 bytes, got {args.max_msg_size}")
    limits = StreamLimits(
        max_age_s=args.stream_max_age_s,
        max_bytes=args.stream_max_bytes,
        events_per_s=args.events_per_s,
        max_msg_size=args.max_msg_size,
        max_msgs_per_subject=args.max_msgs_per_subject,
        replicas=args.replicas,
    )
    return limits, BucketSettings(replicas=args.replicas)


def register(sub: Any) -> None:
    p = sub.add_parser(
        "init",
        help="create or check the event stream and config bucket on a NATS server or cluster",
        description=__doc__.split("\n\n", 1)[1] if __doc__ else None,
    )
    add_stream_args(p)
    p.add_argument(
        "--apply",
        action="store_true",
        help="change the limits of an existing stream or bucket and raise its replicas "
        "(never lowers them)",
    )
    p.add_argument(
        "--wait-s",
        type=float,
        default=30.0,
        help="how long to wait for JetStream to answer, e.g. while a new cluster elects "
        "its leader (default 30)",
    )
    add_nats_args(p)
    p.set_defaults(func=_run_init)


async def ensure_state(
    bus: Bus,
    limits: StreamLimits,
    bucket: BucketSettings,
    *,
    apply: bool = False,
    wait_s: float = 30.0,
) -> list[Ensured]:
    """Ensure the stream and the bucket, retrying while JetStream cannot answer yet.

    Raises:
        BusError: JetStream still did not answer after ``wait_s``, or refused a creation.
    """
    deadline = time.monotonic() + wait_s
    while True:
        try:
            stream = await ensure_event_stream(bus.js, limits, apply=apply)
            kv = await ensure_config_bucket(bus.js, bucket, apply=apply)
            return [stream, kv]
        except JetStreamNotReady as exc:
            if time.monotonic() > deadline:
                raise
            log.info("jetstream_not_ready", error=str(exc))
            await asyncio.sleep(0.5)


def _run_init(args: argparse.Namespace) -> int:
    limits, bucket = limits_from_args(args)

    async def run() -> list[Ensured]:
        bus = await Bus.connect(bus_options_from_args(args, name="voltana-nats-init"))
        try:
            return await ensure_state(bus, limits, bucket, apply=args.apply, wait_s=args.wait_s)
        finally:
            await bus.close()

    results = asyncio.run(run())
    for r in results:
        print(r.summary())
    return 2 if any(r.mismatches for r in results) else 0
