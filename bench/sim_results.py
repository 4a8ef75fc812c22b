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
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import msgspec
from voltana.schemas.config import SloConfig
from voltana.sim.config import SimConfig
from voltana.sim.policies import parse_policies
from voltana.sim.report import markdown_table
from voltana.sim.runner import evaluate
from voltana.sim.workload import load_trace, scale_rate, window

ROOT = Path(__file__).resolve().parents[1]
TRACE = ROOT / "sim/data/azure_llm_2023_conv.csv.gz"  # the packaged trace
SLOS = {"tight": (0.3, 0.015), "relaxed": (1.0, 0.03)}


def _one(job: tuple[argparse.Namespace, float, str]) -> tuple[dict[str, Any], list[str]]:
    args, load, slo_name = job
    base = load_trace(args.trace)
    specs = parse_policies(args.policies)
    wl = window(scale_rate(base, load), 0.0, args.window)
    ttft, itl = SLOS[slo_name]
    cfg = SimConfig(slo=SloConfig(ttft_s=ttft, itl_s=itl), control=args.control)
    if args.control_lag is not None:
        cfg = msgspec.structs.replace(cfg, control_lag_s=args.control_lag)
    t0 = time.perf_counter()
    ev = evaluate(wl, specs, cfg)
    rows = [dict(r, policy=k) for k, r in ev.policies.items()]
    if ev.oracle is not None:
        rows.append(dict(ev.oracle, policy="oracle (reference)"))
    head = (
        f"### load {load:g}x ({wl.rate_rps:.1f} req/s, {len(wl.requests)} requests), "
        f"SLO {slo_name}: TTFT {ttft * 1e3:.0f} ms, ITL {itl * 1e3:.0f} ms"
    )
    print(head, f"({time.perf_counter() - t0:.0f} s)", flush=True)
    print(markdown_table(rows), flush=True)
    result = {
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
    return result, [head, "", markdown_table(rows), ""]


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--trace", default=str(TRACE))
    ap.add_argument("--window", type=float, default=600.0)
    ap.add_argument("--loads", default="1,3,6")
    ap.add_argument("--slos", default="tight,relaxed")
    ap.add_argument("--policies", default="static-max,static-min,ecofreq,voltana-ref,voltana")
    ap.add_argument("--control", default="telemetry", choices=["telemetry", "iteration"])
    ap.add_argument(
        "--control-lag", type=float, default=None, help="s (default: SimConfig's, 10 ms)"
    )
    ap.add_argument("--out", default=str(ROOT / "bench/results/sim_results"))
    ap.add_argument("--jobs", type=int, default=1, help="settings simulated in parallel")
    args = ap.parse_args()
    if not Path(args.trace).is_file():
        print(f"skipped: {args.trace} not found ", file=sys.stderr)
        return 0
    jobs = [(float(x), name) for x in args.loads.split(",") for name in args.slos.split(",")]
    order = sorted(range(len(jobs)), key=lambda i: -jobs[i][0])  # heaviest first
    with ProcessPoolExecutor(max_workers=max(1, args.jobs)) as pool:
        ran = list(pool.map(_one, [(args, *jobs[i]) for i in order]))
    done = [ran[order.index(i)] for i in range(len(jobs))]
    results = [r for r, _ in done]
    md: list[str] = []
    for _, lines in done:
        md += lines
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(results, indent=1) + "\n")
    out.with_suffix(".md").write_text("\n".join(md) + "\n")
    print(f"wrote {out.with_suffix('.md')} and .json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
