"""``voltana replay``: re-run controller decisions from the JetStream event log (or a file)."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

from voltana.bus.cliopts import add_nats_args, bus_options_from_args
from voltana.services.freqctl.cli import add_profile_args, profile_from_args


def register(sub: Any) -> None:
    p = sub.add_parser(
        "replay",
        help="replay recorded bus events through the controllers and compare decisions",
        description="Read the VOLTANA event stream (or a JSON-lines export of it), feed the "
        "recorded telemetry, router state and clock state through the same controllers the "
        "freqctl service runs, and report how often the replayed clock equals the recorded "
        "one. With --policy or SLO flags, answer what another controller would have done "
        "from the same inputs. --export writes the events as JSON lines instead.",
    )
    p.add_argument("--file", default=None, help="replay a JSON-lines export instead of NATS")
    p.add_argument(
        "--export", default=None, metavar="FILE", help="write events as JSON lines and exit"
    )
    p.add_argument(
        "--since-s", type=float, default=None, help="only events from the last N seconds"
    )
    p.add_argument(
        "--policy", default="voltana", help="controller policy to replay (default voltana)"
    )
    p.add_argument("--slo-ttft-s", type=float, default=1.0, help="TTFT SLO (default 1.0)")
    p.add_argument("--slo-itl-s", type=float, default=0.05, help="ITL SLO (default 0.05)")
    add_profile_args(p)
    p.add_argument(
        "--wait-s",
        type=float,
        default=15.0,
        help="how long to wait for the stream while it elects a leader (default 15)",
    )
    p.add_argument("--show", type=int, default=10, help="divergences to print (default 10)")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    add_nats_args(p)
    p.set_defaults(func=_run)


async def read_stream(args: argparse.Namespace) -> AsyncIterator[tuple[float, str, bytes]]:
    """Every stored event (arrival time s, subject, payload) in stream order, up to the last
    one stored when the replay started.

    Rides out a leader election: the stream lookup, the consumer's creation and a stalled
    read are retried for ``--wait-s`` before giving up with a clear error.
    """
    import datetime as dt

    from nats.js.api import ConsumerConfig, DeliverPolicy
    from voltana.bus.client import Bus
    from voltana.bus.jsstate import event_stream_info, read_event_log
    from voltana.common.errors import BusError
    from voltana.schemas import subjects

    bus = await Bus.connect(bus_options_from_args(args, name="voltana-replay"))
    sub = None
    try:
        info = await event_stream_info(bus.js, args.wait_s)
        last = info.state.last_seq
        if info.state.messages == 0:
            return
        config = ConsumerConfig(deliver_policy=DeliverPolicy.ALL)
        if args.since_s is not None:
            start = dt.datetime.now(dt.UTC) - dt.timedelta(seconds=args.since_s)
            config = ConsumerConfig(
                deliver_policy=DeliverPolicy.BY_START_TIME, opt_start_time=start
            )
        sub = await read_event_log(bus.js, subjects.ALL, config, args.wait_s)
        stalled_since = time.monotonic()
        while True:
            try:
                m = await sub.next_msg(timeout=1.0)
            except TimeoutError:
                if time.monotonic() - stalled_since > args.wait_s:
                    raise BusError(
                        f"the {subjects.STREAM_NAME} stream sent nothing for {args.wait_s:g} s "
                        "before its last event"
                    ) from None
                if args.since_s is not None and sub.pending_msgs == 0:
                    # nothing newer than the start time may exist at all
                    with contextlib.suppress(Exception):
                        if (await sub.consumer_info()).num_pending == 0:
                            return
                continue
            stalled_since = time.monotonic()
            md = m.metadata
            yield md.timestamp.timestamp(), m.subject, m.data
            if md.sequence.stream >= last:
                return
    finally:
        if sub is not None:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()
        await bus.close()


def read_file(path: Path) -> Iterator[tuple[float, str, Any]]:
    import msgspec
    from voltana.schemas import codec, subjects

    with path.open("rb") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = msgspec.json.decode(line)
                typ = subjects.message_type(row["subject"])
                msg = codec.from_json(msgspec.json.encode(row["msg"]), typ)
            except (
                msgspec.DecodeError,
                msgspec.ValidationError,
                KeyError,
                TypeError,
                ValueError,
            ) as exc:
                print(f"{path}:{n}: skipped: {exc}", file=sys.stderr)
                continue
            yield float(row["at_s"]), row["subject"], msg


def _run(args: argparse.Namespace) -> int:
    import msgspec
    from voltana.schemas import ControllerConfig, SloConfig, codec, subjects
    from voltana.services.freqctl.replay import Replayer

    events: list[tuple[float, str, Any]] = []
    skipped = 0

    async def collect() -> None:
        nonlocal skipped
        async for at_s, subject, data in read_stream(args):
            try:
                events.append((at_s, subject, codec.decode(data, subjects.message_type(subject))))
            except (subjects.SubjectError, msgspec.DecodeError, msgspec.ValidationError):
                skipped += 1

    if args.file:
        events.extend(read_file(Path(args.file)))
    else:
        asyncio.run(collect())

    if args.export:
        with open(args.export, "wb") as f:
            for at_s, subject, msg in events:
                f.write(
                    b'{"at_s":%.6f,"subject":%s,"msg":%s}\n'
                    % (at_s, msgspec.json.encode(subject), codec.to_json(msg))
                )
        print(f"wrote {len(events)} events to {args.export} ({skipped} undecodable skipped)")
        return 0

    profile = profile_from_args(args)
    config = ControllerConfig(
        policy=args.policy, slo=SloConfig(ttft_s=args.slo_ttft_s, itl_s=args.slo_itl_s)
    )
    replayer = Replayer(profile, lambda _instance: config)
    report = replayer.run((at_s, msg) for at_s, _subject, msg in events)
    out = report.as_dict() | {"events": len(events), "undecodable_skipped": skipped}
    if args.json:
        print(msgspec.json.encode(out).decode())
        return 0
    from rich.console import Console
    from rich.table import Table

    console = Console()
    table = Table(title=f"replay of {len(events)} events with policy {args.policy}")
    for col in ("instance", "replayed", "compared", "agreed", "most used clocks (MHz x n)"):
        table.add_column(col)
    for inst in sorted(report.decisions):
        top: dict[int, int] = dict(report.clocks.get(inst, {}))
        common = ", ".join(f"{c}x{n}" for c, n in sorted(top.items(), key=lambda kv: -kv[1])[:4])
        table.add_row(
            inst,
            str(report.decisions[inst]),
            str(report.compared[inst]),
            str(report.agreed[inst]),
            common,
        )
    console.print(table)
    agreement = report.agreement
    console.print(
        f"agreement with recorded decisions: {'n/a' if agreement is None else f'{agreement:.1%}'}"
    )
    for d in report.divergences[: args.show]:
        console.print(
            f"  {d.instance} @ {d.at_s:.3f}: recorded {d.recorded_mhz} MHz ({d.recorded_reason}) "
            f"vs replayed {d.replayed_mhz} MHz ({d.replayed_reason})"
        )
    return 0
