"""``voltana report``: energy per request, per token, per class, tenant and model.

Two sources, one set of tables (classes from
:mod:`voltana.services.router.energy_classes`):

- the event log: the ``RequestRecord`` events (``voltana.request.done``) of the
  JetStream stream over a time range, or a JSON-lines export of it
  (``voltana replay --export``), grouped by request class, tenant and model;
- a simulator ``results.json``: per policy, attributed and unattributed energy
  and J per request / output token by request class.

``--plot`` writes a PNG (J per request and per output token by class).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from voltana.bus.cliopts import add_nats_args, bus_options_from_args

__all__ = ["records_report", "register", "results_report"]


def register(sub: Any) -> None:
    p = sub.add_parser(
        "report",
        help="energy per request and per token, by request class, tenant and model",
        description="Energy per request from the event log (RequestRecord events over a "
        "time range, from NATS or a JSON-lines export) or from a simulator results.json: "
        "J per request, per output token and per token, by request class (prompt and output "
        "length), tenant and model, with attributed against unattributed energy. See "
        "docs/energy.md for the attribution rule.",
    )
    src = p.add_mutually_exclusive_group()
    src.add_argument("--results", default=None, help="a simulator results.json to report on")
    src.add_argument(
        "--file", default=None, help="a JSON-lines event export (voltana replay --export)"
    )
    p.add_argument(
        "--since-s", type=float, default=3600.0, help="event log: the last N seconds (default 3600)"
    )
    p.add_argument(
        "--until-s",
        type=float,
        default=0.0,
        help="event log: up to N seconds ago (default 0: now)",
    )
    p.add_argument(
        "--wait-s",
        type=float,
        default=15.0,
        help="event log: how long to ride out a JetStream leader election (default 15)",
    )
    p.add_argument("--markdown", action="store_true", help="print markdown tables")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.add_argument("--plot", default=None, metavar="PNG", help="also write a plot to this file")
    add_nats_args(p)
    p.set_defaults(func=_run)


# -- pure reports ------------------------------------------------------------------------


def records_report(records: Iterable[Any]) -> dict[str, Any]:
    """Per class, tenant and model (and ``all``) from RequestRecords with energy."""
    from voltana.services.router.energy_classes import EnergyItem, class_summary

    items: list[tuple[Any, EnergyItem]] = []
    missing = 0
    for r in records:
        if r.energy_j is None:
            missing += 1
            continue
        items.append(
            (
                r,
                EnergyItem(
                    r.input_tokens,
                    r.output_tokens,
                    r.energy_prefill_j or 0.0,
                    r.energy_decode_j or 0.0,
                    r.energy_idle_j or 0.0,
                ),
            )
        )
    by: dict[str, dict[str, Any]] = {"class": class_summary(it for _, it in items)}
    for key in ("tenant", "model"):
        groups: dict[str, list[EnergyItem]] = {}
        for r, it in items:
            groups.setdefault(getattr(r, key) or "-", []).append(it)
        by[key] = {name: class_summary(g)["all"] for name, g in sorted(groups.items())}
    return {"requests": len(items), "without_energy": missing, "by": by}


def results_report(doc: dict[str, Any]) -> dict[str, Any]:
    """Per policy of a results.json: attributed/unattributed energy and the class table."""
    out: dict[str, Any] = {}
    for name, row in doc.get("policies", {}).items():
        if "energy_by_class" not in row:
            continue
        out[name] = {
            "energy_j": row.get("energy_j"),
            "attributed_energy_j": row.get("attributed_energy_j"),
            "unattributed_energy_j": row.get("unattributed_energy_j"),
            "energy_by_class": row["energy_by_class"],
        }
    return out


def _table_rows(by_class: dict[str, dict[str, Any]]) -> list[list[str]]:
    rows = []
    for name, r in by_class.items():
        rows.append(
            [
                name,
                str(r["requests"]),
                f"{r['energy_j'] / 1e3:.2f}",
                _f(r["j_per_request"], "{:.2f}"),
                _f(r["j_per_output_token"], "{:.3f}"),
                _f(r["j_per_token"], "{:.4f}"),
            ]
        )
    return rows


HEADS = ["group", "requests", "energy kJ", "J / request", "J / out tok", "J / token"]


def _f(v: Any, fmt: str) -> str:
    return "-" if v is None else fmt.format(v)


def markdown(rows: list[list[str]], heads: list[str] = HEADS) -> str:
    out = ["| " + " | ".join(heads) + " |", "|" + "---|" * len(heads)]
    out += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(out)


def plot(by_name: dict[str, dict[str, dict[str, Any]]], path: Path) -> Path:
    """Grouped bars: J per request and J per output token by class, one group per source."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    classes = [*sorted({c for t in by_name.values() for c in t if c != "all"}), "all"]
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    width = 0.8 / max(len(by_name), 1)
    x = np.arange(len(classes))
    for k, (name, table) in enumerate(by_name.items()):
        for ax, key in zip(axes, ("j_per_request", "j_per_output_token"), strict=True):
            vals = [(table.get(c) or {}).get(key) or 0.0 for c in classes]
            ax.bar(x + k * width, vals, width, label=name)
    for ax, title in zip(axes, ("J per request", "J per output token"), strict=True):
        ax.set_xticks(x + width * (len(by_name) - 1) / 2, classes, rotation=20, fontsize=8)
        ax.set_title(title)
        ax.grid(axis="y", alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


# -- reading the event log ---------------------------------------------------------------


async def read_records(args: argparse.Namespace) -> list[Any]:
    """RequestRecords of the stream whose storage time is in [now - since, now - until]."""
    import datetime as dt

    import msgspec
    from nats.js.api import ConsumerConfig, DeliverPolicy
    from voltana.bus.client import Bus
    from voltana.bus.jsstate import event_stream_info, read_event_log
    from voltana.schemas import codec, subjects
    from voltana.schemas.router import RequestRecord

    now = dt.datetime.now(dt.UTC)
    start, end = now - dt.timedelta(seconds=args.since_s), now - dt.timedelta(seconds=args.until_s)
    bus = await Bus.connect(bus_options_from_args(args, name="voltana-report"))
    out: list[Any] = []
    try:
        await event_stream_info(bus.js, args.wait_s)
        config = ConsumerConfig(deliver_policy=DeliverPolicy.BY_START_TIME, opt_start_time=start)
        sub = await read_event_log(bus.js, subjects.REQUEST_DONE, config, args.wait_s)
        while True:
            try:
                m = await sub.next_msg(timeout=2.0)
            except TimeoutError:
                break
            md = m.metadata
            if md.timestamp > end:
                break
            with contextlib.suppress(msgspec.DecodeError, msgspec.ValidationError):
                out.append(codec.decode(m.data, RequestRecord))
            if md.num_pending == 0:
                break
    finally:
        await bus.close()
    return out


def _run(args: argparse.Namespace) -> int:
    from voltana.common.errors import ConfigError

    if args.since_s <= args.until_s:
        raise ConfigError("--since-s must be larger than --until-s")
    if args.results:
        try:
            doc = json.loads(Path(args.results).read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise ConfigError(f"cannot read {args.results}: {exc}") from exc
        report = results_report(doc)
        if not report:
            raise ConfigError(f"{args.results} has no energy per request class")
        tables = {name: r["energy_by_class"] for name, r in report.items()}
        notes = {
            name: f"attributed {r['attributed_energy_j'] / 1e3:.1f} kJ, unattributed "
            f"{r['unattributed_energy_j'] / 1e3:.1f} kJ of {r['energy_j'] / 1e3:.1f} kJ"
            for name, r in report.items()
        }
    else:
        if args.file:
            from voltana.schemas.router import RequestRecord
            from voltana.tools.replay import read_file

            recs = [m for _, _, m in read_file(Path(args.file)) if isinstance(m, RequestRecord)]
        else:
            recs = asyncio.run(read_records(args))
        report = records_report(recs)
        tables = {f"by {k}": v for k, v in report["by"].items()}
        notes = {"records": f"{report['requests']} with energy, {report['without_energy']} without"}
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        for name, table in tables.items():
            print(f"\n{name}" + (f" ({notes[name]})" if name in notes else ""))
            rows = _table_rows(table)
            if args.markdown:
                print(markdown(rows))
            else:
                widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(HEADS)]
                for r in [HEADS, *rows]:
                    print("  ".join(c.rjust(w) for c, w in zip(r, widths, strict=True)))
        for line in notes.values() if "records" in notes else ():
            print(line)
    if args.plot:
        if not args.results:
            tables = {"requests": report["by"]["class"]}
        print(f"wrote {plot(tables, Path(args.plot))}")
    return 0
