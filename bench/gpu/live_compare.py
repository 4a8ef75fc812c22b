"""A live GPU run against its model twin and the simulator, figure by figure.

    python bench/gpu/live_compare.py bench/results/h200_live/run2 [--trace PATH]

Reads the live run's report (``RUN/live/live_report.json``, or ``RUN/live_report.json``)
and, when there, its model twin's (``RUN/twin/live_report.json``: the same slice through
the worker paced by the GPU model). Runs ``voltana sim`` on the same slice and settings:
one colocated instance of the same GPU kind at default clocks, the worker's
``--max-running-requests`` and chunk size, and no mixed chunks, as the worker ran (the
simulator's default mixes them). Writes ``RUN/sim_1u_default/results.json``,
``RUN/compare.json`` and ``RUN/compare.md`` (the table docs/gpu-in-the-loop.md quotes), and
prints the table. The goal per figure: energy within 10%, TTFT and ITL p50/p99 within 15%.

Runs on a CPU (the simulator takes seconds); ``bench/gpu/live_h200.sh`` calls it after its
runs.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

SIM_DIR = "sim_1u_default"
# figure -> goal (largest relative error), None: reported only
FIGURES: dict[str, float | None] = {
    "energy_j": 0.10,
    "energy_per_output_token_j": None,
    "ttft_p50_ms": 0.15,
    "ttft_p99_ms": 0.15,
    "itl_p50_ms": 0.15,
    "itl_p99_ms": 0.15,
    "duration_s": None,
    "slo_attainment": None,
}
LABELS = {
    "energy_j": "GPU energy over the slice (J)",
    "energy_per_output_token_j": "energy per output token (J)",
    "ttft_p50_ms": "TTFT p50 (ms)",
    "ttft_p99_ms": "TTFT p99 (ms)",
    "itl_p50_ms": "ITL p50, token gaps (ms)",
    "itl_p99_ms": "ITL p99, token gaps (ms)",
    "duration_s": "last token at (s)",
    "slo_attainment": "SLO attainment (TTFT, mean ITL)",
}

REQUIRED_ARGS = {"trace", "window", "rate_scale", "gpu", "slo_ttft_s", "slo_itl_s"}


class CompareError(Exception):
    """A run folder or trace this script cannot use; the message says which."""


def load_report(path: Path) -> dict[str, Any]:
    try:
        report: dict[str, Any] = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise CompareError(f"cannot read the run report {path}: {exc}") from None
    if not isinstance(report.get("live"), dict) or not isinstance(report.get("args"), dict):
        raise CompareError(f"{path} holds no finished run (no 'live' figures or 'args')")
    missing = sorted(REQUIRED_ARGS - set(report["args"]))
    if missing:
        raise CompareError(f"{path} lacks the run arguments {', '.join(missing)}")
    return report


def find_reports(run: Path) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """The live report and, if the run has one, its model twin's."""
    for candidate in (run / "live" / "live_report.json", run / "live_report.json"):
        if candidate.exists():
            live = load_report(candidate)
            break
    else:
        raise CompareError(f"no live_report.json in {run} or {run / 'live'}")
    twin_path = run / "twin" / "live_report.json"
    return live, (load_report(twin_path) if twin_path.exists() else None)


def sim_command(args: dict[str, str], trace: Path, out: Path) -> list[str]:
    """``voltana sim`` on the live run's slice and engine settings, at default clocks."""
    try:
        t0, span = (float(x) for x in json.loads(args["window"]))
    except (ValueError, TypeError):
        raise CompareError(f"the run's window {args['window']!r} is not [T0, SPAN]") from None
    return [
        *("sim", "--trace", str(trace), "--window", f"{t0},{span}"),
        *("--rate-scale", args["rate_scale"], "--cluster", "1u", "--gpu", args["gpu"]),
        *("--policies", "default", "--slo-ttft-s", args["slo_ttft_s"]),
        *("--slo-itl-s", args["slo_itl_s"]),
        *("--max-running-requests", args.get("max_running_requests", "256")),
        *("--no-enable-mixed-chunk", "--no-progress", "--no-plots", "--out", str(out)),
    ]


def sim_figures(results: dict[str, Any]) -> dict[str, Any]:
    """The simulator's row under the live report's names."""
    row = dict(results["policies"]["default"])
    row["duration_s"] = row.get("window_s")
    row["completed"] = row.get("finished")
    return row


def rel(model: float | None, live: float | None) -> float | None:
    if model is None or live is None or live == 0:
        return None
    return round(model / live - 1.0, 4)


def compare(live: dict[str, Any], columns: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """Per figure: the live value, each column's value and error, and whether it meets the
    goal. ``columns``: label -> figures (the twin, the simulator, ...), in table order."""
    rows = []
    for name, goal in FIGURES.items():
        row: dict[str, Any] = {"figure": name, "goal": goal, "live": live.get(name)}
        for label, other in columns.items():
            err = rel(other.get(name), live.get(name))
            row[label], row[f"{label}_vs_live"] = other.get(name), err
            if goal is not None:
                row[f"{label}_met"] = err is not None and abs(err) <= goal
        rows.append(row)
    return rows


def _cell(name: str, value: Any) -> str:
    if value is None:
        return "-"
    if name == "slo_attainment":
        return f"{value * 100:.1f}%"
    if abs(value) >= 1000:
        return f"{value:,.0f}"
    return f"{value:.4g}" if abs(value) < 100 else f"{value:.1f}"


def _diff(name: str, row: dict[str, Any], who: str) -> str:
    if name == "slo_attainment":  # a share: the difference in points reads better
        other, live = row.get(who), row.get("live")
        return "-" if other is None or live is None else f"{(other - live) * 100:+.1f} pt"
    err = row.get(f"{who}_vs_live")
    return "-" if err is None else f"{err * 100:+.1f}%"


def table(rows: list[dict[str, Any]], titles: dict[str, str]) -> str:
    """Markdown: a value and an error column per label of ``titles`` (label -> title)."""
    head = ["figure", "live GPU"]
    for label, title in titles.items():
        head += [title, f"{label} vs live"]
    head.append("goal")
    lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    for r in rows:
        name = r["figure"]
        cells = [LABELS[name], _cell(name, r["live"])]
        for label in titles:
            cells += [_cell(name, r.get(label)), _diff(name, r, label)]
        if r["goal"] is None:
            cells.append("")
        else:
            met = [f"{who} {'met' if r[f'{who}_met'] else 'not met'}" for who in titles]
            cells.append(f"within {r['goal'] * 100:.0f}%: " + ", ".join(met))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def run_sim(cmd: list[str], out: Path) -> dict[str, Any]:
    proc = subprocess.run([sys.executable, "-m", "voltana", *cmd], capture_output=True, text=True)
    if proc.returncode != 0:
        raise CompareError(f"voltana sim failed ({proc.returncode}): {proc.stderr[-2000:]}")
    return sim_figures(json.loads((out / "results.json").read_text()))


def gpu_line(run: Path) -> dict[str, str]:
    """Device name and driver from the run's ``nvidia-smi -q`` snapshot, if it has one."""
    found: dict[str, str] = {}
    smi = run / "nvidia_smi_before.txt"
    if smi.exists():
        for key, pattern in (
            ("name", r"Product Name\s*:\s*(.+)"),
            ("driver", r"Driver Version\s*:\s*(.+)"),
        ):
            m = re.search(pattern, smi.read_text(errors="replace"))
            if m:
                found[key] = m.group(1).strip()
    return found


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("run", type=Path, help="the run folder (live_h200.sh's OUTDIR)")
    ap.add_argument(
        "--trace", type=Path, default=None, help="the trace, if not where the run recorded it"
    )
    ap.add_argument(
        "--gpu-spec",
        type=Path,
        default=None,
        metavar="FILE",
        help="also simulate with this GPU spec file (e.g. a refit: compare_model.py --spec-out)",
    )
    args = ap.parse_args(argv)
    try:
        live, twin = find_reports(args.run)
        trace = args.trace or Path(live["args"]["trace"])
        if not trace.exists():
            raise CompareError(f"the run's trace {trace} is not here: pass --trace PATH")
        if args.gpu_spec is not None and not args.gpu_spec.exists():
            raise CompareError(f"no GPU spec file {args.gpu_spec}")
        columns: dict[str, dict[str, Any]] = {"twin": twin["live"]} if twin else {}
        titles = {"twin": "model twin"} if twin else {}
        commands = {}
        sim_out = args.run / SIM_DIR
        commands["sim"] = sim_command(live["args"], trace, sim_out)
        columns["sim"], titles["sim"] = run_sim(commands["sim"], sim_out), "simulator"
        if args.gpu_spec is not None:
            spec_out = args.run / f"{SIM_DIR}_{args.gpu_spec.stem}"
            cmd = sim_command(live["args"], trace, spec_out)
            commands["spec"] = [*cmd, "--gpu-spec", str(args.gpu_spec)]
            columns["spec"] = run_sim(commands["spec"], spec_out)
            titles["spec"] = f"simulator, {args.gpu_spec.name}"
    except CompareError as exc:
        print(f"live_compare: {exc}", file=sys.stderr)
        return 1
    rows = compare(live["live"], columns)
    doc = {
        "gpu": gpu_line(args.run),
        "live": live["live"],
        "model_twin": twin["live"] if twin else None,
        "sim": {k: columns["sim"].get(k) for k in FIGURES},
        "sim_gpu_spec": {k: columns["spec"].get(k) for k in FIGURES} if args.gpu_spec else None,
        "sim_commands": {k: "voltana " + " ".join(v) for k, v in commands.items()},
        "replay": live.get("replay"),
        "compare": rows,
    }
    (args.run / "compare.json").write_text(json.dumps(doc, indent=1))
    md = table(rows, titles)
    (args.run / "compare.md").write_text(md + "\n")
    print(md)
    for cmd_line in doc["sim_commands"].values():
        print(f"simulator: {cmd_line}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
