"""The results table: Azure conversation trace, H100, 2P2D, three loads x two SLO settings.

Writes bench/results/sim_results.{json,md}. Loads are rate scales of the trace
(arrival times divided), each over the first ``--window`` seconds after scaling.

    .venv/bin/python bench/sim_results.py [--window 600] [--loads 1,3,6]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import replace
from pathlib import Path

from voltana.schemas.config import SloConfig
from voltana.sim.core import SimConfig
from voltana.sim.policies import parse_policies
from voltana.sim.report import markdown_table
from voltana.sim.runner import evaluate
from voltana.sim.workload import load_trace, scale_rate, window

ROOT = Path(__file__).resolve().parents[1]
TRACE = ROOT.parent / "shared/data/traces/azure_llm_2023_conv.csv"
SLOS = {"tight": (0.3, 0.015), "relaxed": (1.0, 0.03)}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--trace", default=str(TRACE))
    ap.add_argument("--window", type=float, default=600.0)
    ap.add_argument("--loads", default="1,3,6")
    ap.add_argument("--slos", default="tight,relaxed")
    ap.add_argument("--policies", default="static-max,static-min,ecofreq,voltana-ref,voltana")
    ap.add_argument("--control", default="iteration")
    ap.add_argument("--out", default=str(ROOT / "bench/results/sim_results"))
    args = ap.parse_args()
    if not Path(args.trace).is_file():
        print(f"skipped: {args.trace} not found (needs ../shared/data)", file=sys.stderr)
        return 0
    base = load_trace(args.trace)
    specs = parse_policies(args.policies)
    results = []
    md = []
    for load in (float(x) for x in args.loads.split(",")):
        wl = window(scale_rate(base, load), 0.0, args.window)
        for slo_name in args.slos.split(","):
            ttft, itl = SLOS[slo_name]
            cfg = SimConfig(slo=SloConfig(ttft_s=ttft, itl_s=itl), control=args.control)
            t0 = time.perf_counter()
            ev = evaluate(wl, specs, replace(cfg))
            rows = [dict(r, policy=k) for k, r in ev.policies.items()]
            if ev.oracle is not None:
                rows.append(dict(ev.oracle, policy="oracle (reference)"))
            head = (
                f"### load {load:g}x ({wl.rate_rps:.1f} req/s, {len(wl.requests)} requests), "
                f"SLO {slo_name}: TTFT {ttft * 1e3:.0f} ms, ITL {itl * 1e3:.0f} ms"
            )
            md += [head, "", markdown_table(rows), ""]
            results.append(
                {
                    "load": load,
                    "slo": slo_name,
                    "evaluation": json.loads(
                        json.dumps(
                            {
                                "params": ev.params,
                                "workload": ev.workload,
                                "policies": ev.policies,
                                "oracle": ev.oracle,
                            }
                        )
                    ),
                }
            )
            print(head, f"({time.perf_counter() - t0:.0f} s)", flush=True)
            print(markdown_table(rows), flush=True)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(results, indent=1) + "\n")
    out.with_suffix(".md").write_text("\n".join(md) + "\n")
    print(f"wrote {out.with_suffix('.md')} and .json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
