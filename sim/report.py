"""Reports of evaluations: rich tables, results.json, markdown tables for sweeps."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import msgspec
from voltana.sim.runner import Evaluation

__all__ = [
    "COLUMNS",
    "evaluation_table",
    "markdown_table",
    "sweep_table",
    "write_results",
]

# (key, header, format)
COLUMNS: list[tuple[str, str, str]] = [
    ("energy_j", "energy (kJ)", "kj"),
    ("energy_per_output_token_j", "J/out tok", "{:.4f}"),
    ("saving_vs_default", "vs default", "pct"),
    ("saving_vs_static_max", "vs static max", "pct"),
    ("slo_attainment", "SLO att.", "pct1"),
    ("ttft_attainment", "TTFT att.", "pct1"),
    ("itl_attainment", "ITL att.", "pct1"),
    ("itl_token_attainment", "ITL tok att.", "pct1"),
    ("ttft_p50_ms", "TTFT p50", "{:.0f}"),
    ("ttft_p99_ms", "TTFT p99", "{:.0f}"),
    ("itl_p50_ms", "ITL p50", "{:.1f}"),
    ("itl_p99_ms", "ITL p99", "{:.1f}"),
    ("clock_switches", "switches", "{:d}"),
]
NARROW = ("energy_j", "saving_vs_static_max", "slo_attainment", "ttft_p99_ms", "itl_p99_ms")
"""The columns of a table in a narrow terminal (80 columns): energy, saving, SLO, tails."""
WIDE_TERMINAL = 140
"""Terminals at least this wide get every column."""


def _columns(narrow: bool) -> list[tuple[str, str, str]]:
    return [c for c in COLUMNS if c[0] in NARROW] if narrow else COLUMNS


def _fmt(v: Any, how: str) -> str:
    if v is None:
        return "-"
    if how == "kj":
        return f"{v / 1e3:.1f}"
    if how == "pct":
        return f"{v * 100:+.1f}%" if v else "0.0%"
    if how == "pct1":
        return f"{v * 100:.2f}%"
    try:
        return how.format(v)
    except (ValueError, TypeError):
        return str(v)


def _rows(ev: Evaluation) -> list[tuple[str, dict[str, Any]]]:
    rows = list(ev.policies.items())
    if ev.oracle is not None:
        rows.append(("oracle (reference)", ev.oracle))
    return rows


def evaluation_table(ev: Evaluation, title: str = "", *, narrow: bool = False) -> Any:
    """A rich Table of one evaluation (policies + oracle); ``narrow``: the NARROW columns."""
    from rich.table import Table

    cols = _columns(narrow)
    t = Table(title=title or None, show_lines=False)
    t.add_column("policy", style="bold", no_wrap=True)
    cols = list(COLUMNS)
    if any("prefix_hit_rate" in row for _, row in _rows(ev)):  # a workload with prefixes
        cols.insert(3, ("prefix_hit_rate", "prefix hit", "pct1"))
    for _, head, _ in cols:
        t.add_column(head, justify="right")
    for name, row in _rows(ev):
        style = "dim" if name.startswith("oracle") else None
        t.add_row(name, *[_fmt(row.get(k), f) for k, _, f in cols], style=style)
    return t


def markdown_table(
    rows: Sequence[dict[str, Any]], lead: Sequence[tuple[str, str]] = (("policy", "policy"),)
) -> str:
    """Rows (as from ``sweep``) as a GitHub markdown table."""
    heads = [h for _, h in lead] + [h for _, h, _ in COLUMNS]
    out = ["| " + " | ".join(heads) + " |", "|" + "---|" * len(heads)]
    for r in rows:
        cells = [str(r.get(k, "")) for k, _ in lead]
        cells += [_fmt(r.get(k), f) for k, _, f in COLUMNS]
        out.append("| " + " | ".join(cells) + " |")
    return "\n".join(out)


def sweep_table(rows: Sequence[dict[str, Any]], title: str = "", *, narrow: bool = False) -> Any:
    """A rich Table of sweep rows (rate scale, SLO scale, policy ...)."""
    from rich.table import Table

    cols = _columns(narrow)
    t = Table(title=title or None)
    lead = ("rate x", "SLO x", "policy") if narrow else ("rate x", "req/s", "SLO x", "policy")
    for head in lead:
        t.add_column(head, justify="right" if head != "policy" else "left", no_wrap=True)
    for _, head, _ in cols:
        t.add_column(head, justify="right")
    for r in rows:
        rate = [f"{r['rate_scale']:g}"] + ([] if narrow else [f"{r['rate_rps']:.2f}"])
        t.add_row(
            *rate,
            f"{r['slo_scale']:g}",
            r["policy"],
            *[_fmt(r.get(k), f) for k, _, f in cols],
        )
    return t


def write_results(ev: Evaluation, out_dir: Path, extra: dict[str, Any] | None = None) -> Path:
    """Write ``results.json`` (policies, oracle, params, workload) into ``out_dir``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    data = msgspec.to_builtins(ev)
    data["definitions"] = {
        "slo_attainment": "fraction of requests with TTFT <= SLO and mean ITL <= SLO "
        "(unfinished requests count as misses)",
        "ttft_attainment": "fraction of requests with TTFT <= SLO",
        "itl_attainment": "fraction of requests with mean ITL <= SLO",
        "itl_token_attainment": "fraction of all inter-token gaps <= the ITL SLO",
        "energy_j": "all GPUs of the cluster, first arrival to last token, idle included",
        "saving_vs_default": "1 - energy / energy of default (the driver's default clocks, "
        "no lock; an idle GPU holds its boost clock while the worker lives, measured on the "
        "H200, unless params.default_idle_hold_s says otherwise; docs/gpu-model.md) on the "
        "same workload",
        "saving_vs_static_max": "1 - energy / energy of static-max on the same workload",
        "oracle": "per-iteration minimum energy-above-idle clock meeting the SLO with the "
        "noise-free ground truth, no lag (a reference, see docs/simulator.md)",
    }
    if extra:
        data.update(extra)
    p = out_dir / "results.json"
    p.write_text(json.dumps(data, indent=2, sort_keys=False) + "\n", encoding="utf-8")
    return p
