"""Does PD + clock control beat colocated + clock control? The conversation trace on 4 H100s.

For each load (rate scale of the trace, first ``--window`` seconds after scaling) and
SLO it runs ``voltana plan`` (colocated 4u and every PD split, each under default
clocks with random/round-robin and power-of-two routing, under voltana, and under
voltana's clocks alone behind the baseline routing) and writes
bench/results/counterstudy.{json,md}: per setting the best colocated and best PD row
under default clocks and under control, and the plan's recommendation with its
savings against default clocks.

    .venv/bin/python bench/counterstudy.py [--window 600] [--loads 1,3,6] [--jobs 2]

``--default-idle-hold-s``/``--default-idle-decay-s`` replace the GPU's idle hold of
default clocks (unbounded while the worker lives, docs/gpu-model.md); the committed
results were computed with the earlier modelled hold: ``--default-idle-hold-s 5
--default-idle-decay-s 1`` reproduces them.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import msgspec
from voltana.schemas.config import SloConfig
from voltana.sim.config import SimConfig
from voltana.sim.plan import PlanResult, PlanRow, plan
from voltana.sim.traces import packaged_trace
from voltana.sim.workload import load_trace, scale_rate, window

ROOT = Path(__file__).resolve().parents[1]
TRACE = packaged_trace()  # the Azure 2023 conversation trace shipped in sim/data
SLOS = {"relaxed": (1.0, 0.05), "tight": (0.5, 0.025)}


def _best(rows: list[PlanRow], target: float) -> PlanRow | None:
    ok = [r for r in rows if r.attainment >= target]
    if ok:
        return min(ok, key=lambda r: r.energy_j)
    return max(rows, key=lambda r: r.attainment) if rows else None


def _cell(r: PlanRow | None) -> str:
    if r is None:
        return "-"
    return f"{r.cluster} {r.policy}: {r.energy_j / 1e3:.1f} kJ, {r.attainment * 100:.2f}%"


def _pct(v: float | None) -> str:
    return "-" if v is None else f"{v * 100:.1f}%"


def summarise(res: PlanResult, target: float) -> dict[str, Any]:
    rows = res.rows
    pick = {
        (kind, clocks): _best(
            [
                r
                for r in rows
                if r.cluster.endswith("u") == (kind == "colocated") and r.clocks == clocks
            ],
            target,
        )
        for kind in ("colocated", "pd")
        for clocks in ("default", "controlled")
    }
    pd_c, co_c = pick[("pd", "controlled")], pick[("colocated", "controlled")]
    pd_wins = None
    if pd_c is not None and co_c is not None:
        pd_ok, co_ok = pd_c.attainment >= target, co_c.attainment >= target
        if pd_ok and co_ok:  # both serve the load: the cheaper wins
            pd_wins = pd_c.energy_j < co_c.energy_j
        elif pd_ok or co_ok:  # only one serves it
            pd_wins = pd_ok
        else:  # neither: the one that serves more requests within the SLO
            pd_wins = pd_c.attainment > co_c.attainment
    return {
        "best": {
            f"{k}/{c}": None if r is None else msgspec.to_builtins(r) for (k, c), r in pick.items()
        },
        "pd_controlled_vs_colocated_controlled": (
            None if pd_c is None or co_c is None else round(1 - pd_c.energy_j / co_c.energy_j, 4)
        ),
        "pd_wins": pd_wins,
        "cells": {f"{k}/{c}": _cell(r) for (k, c), r in pick.items()},
    }


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--trace", default=str(TRACE))
    ap.add_argument("--window", type=float, default=600.0)
    ap.add_argument("--loads", default="1,3,6")
    ap.add_argument("--slos", default="relaxed,tight")
    ap.add_argument("--gpus", type=int, default=4)
    ap.add_argument("--target", type=float, default=0.99)
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--out", default=str(ROOT / "bench/results/counterstudy"))
    ap.add_argument("--default-idle-hold-s", type=float, default=None, help="default: the GPU's")
    ap.add_argument("--default-idle-decay-s", type=float, default=None, help="default: the GPU's")
    ap.add_argument(
        "--from-json", default=None, help="re-render the table from a previous run's JSON"
    )
    args = ap.parse_args()
    if args.from_json:
        return render(json.loads(Path(args.from_json).read_text()), args)
    if not Path(args.trace).is_file():
        print(f"skipped: {args.trace} not found", file=sys.stderr)
        return 0
    base = load_trace(args.trace)
    t_all = time.perf_counter()
    results: list[dict[str, Any]] = []
    for load in [float(x) for x in args.loads.split(",")]:
        wl = window(scale_rate(base, load), 0.0, args.window)
        for slo_name in args.slos.split(","):
            ttft, itl = SLOS[slo_name]
            cfg = SimConfig(
                slo=SloConfig(ttft_s=ttft, itl_s=itl),
                default_idle_hold_s=args.default_idle_hold_s,
                default_idle_decay_s=args.default_idle_decay_s,
            )
            t0 = time.perf_counter()
            res = plan(
                wl, cfg, gpus=args.gpus, target=args.target, clocks_only=True, jobs=args.jobs
            )
            s = summarise(res, args.target)
            print(f"load {load:g} {slo_name}: {time.perf_counter() - t0:.0f} s", flush=True)
            results.append(
                {
                    "load": load,
                    "slo": slo_name,
                    "workload": res.workload,
                    "summary": s,
                    "plan": msgspec.to_builtins(res),
                }
            )
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(results, indent=1) + "\n")
    args.wall_s = time.perf_counter() - t_all
    return render(results, args)


def render(results: list[dict[str, Any]], args: argparse.Namespace) -> int:
    """The markdown table (``<out>.md``) from the runs' JSON (re-summarised)."""
    md = [
        "| load | req/s | SLO (TTFT, ITL) | colocated, default clocks | PD, default clocks "
        "| colocated, controlled | PD, controlled | PD+control vs colocated+control "
        "| recommendation | saving vs default colocated | saving vs default 2p2d |",
        "|" + "---|" * 11,
    ]
    for r in results:
        res = msgspec.convert(r["plan"], PlanResult)
        s = summarise(res, args.target)
        r["summary"] = s
        ttft, itl = SLOS[r["slo"]]
        c = s["cells"]
        rec = res.recommendation
        md.append(
            f"| {r['load']:g}x | {res.workload['rate_rps']:.1f} | {r['slo']} ({ttft:g} s, "
            f"{itl * 1e3:g} ms) | {c['colocated/default']} | {c['pd/default']} "
            f"| {c['colocated/controlled']} | {c['pd/controlled']} "
            f"| {_pct(s['pd_controlled_vs_colocated_controlled'])}"
            f"{'' if s['pd_wins'] else ' (PD loses)'} "
            f"| {_cell(rec) if rec else 'none meets the target'} "
            f"| {_pct(res.saving_vs_default_colocated)} | {_pct(res.saving_vs_default_pd)} |"
        )
        print(md[-1], flush=True)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(results, indent=1) + "\n")
    wall = getattr(args, "wall_s", None)
    took = "" if wall is None else f", {wall:.0f} s on {args.jobs} processes"
    out.with_suffix(".md").write_text(
        "\n".join(md) + f"\n\n{args.window:g} s windows, {args.gpus} GPUs, target "
        f"{args.target * 100:g}%{took}\n"
    )
    print(f"wrote {out.with_suffix('.md')} and .json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
