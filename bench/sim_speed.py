"""Simulator speed: simulated seconds per wall (and CPU) second.

1. 2P2D on the Azure LLM 2023 conversation trace (one hour, 19,366 requests),
   per policy and control mode (target: >= 200x on one core);
2. scaling with cluster size up to 64 instances: the arrival rate is scaled
   with the number of instances (2P2D at 1x), so per-instance load stays the
   same, over a window of simulated time.

The simulator is single-threaded: CPU seconds are one core's. On a shared
machine wall time inflates with the load; the CPU-time figure is the stable one.

    .venv/bin/python bench/sim_speed.py [--trace PATH] [--window 3600] [--scaling-window 120]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import msgspec
from voltana.schemas.config import SloConfig
from voltana.sim.config import ClusterSpec, SimConfig
from voltana.sim.policies import POLICIES
from voltana.sim.runner import profile_for, run_policy
from voltana.sim.workload import load_trace, scale_rate, window

DEFAULT_TRACE = Path(__file__).resolve().parents[1] / "sim/data/azure_llm_2023_conv.csv.gz"


def _one(wl, spec, cfg, profile) -> dict[str, float]:
    c0, w0 = time.process_time(), time.perf_counter()
    run = run_policy(wl, spec, cfg, profile)
    cpu, wall = time.process_time() - c0, time.perf_counter() - w0
    return {
        "sim_s": run.window_s,
        "wall_s": wall,
        "cpu_s": cpu,
        "x_wall": run.window_s / wall,
        "x_cpu": run.window_s / cpu,
        "iterations": run.iterations,
        "requests": len(run.requests),
        "energy_kj": run.energy_j / 1e3,
        "slo_attainment": float(run.summary()["slo_attainment"] or 0.0),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--trace", default=str(DEFAULT_TRACE))
    ap.add_argument("--window", type=float, default=3600.0, help="seconds of trace (part 1)")
    ap.add_argument("--policies", default="static-max,voltana-ref,voltana")
    ap.add_argument("--controls", default="telemetry,iteration")
    ap.add_argument("--scaling-window", type=float, default=120.0)
    ap.add_argument("--sizes", default="2,4,8,16,32,64")
    ap.add_argument("--scaling-policy", default="voltana")
    ap.add_argument("--scaling-control", default="telemetry", choices=["telemetry", "iteration"])
    ap.add_argument("--skip-trace", action="store_true", help="only the scaling part")
    args = ap.parse_args()
    if not Path(args.trace).is_file():
        print(f"skipped: trace {args.trace} not found", file=sys.stderr)
        return 0
    try:
        load = os.getloadavg()[0]
    except OSError:
        load = float("nan")
    print(f"# simulator speed (host load average {load:.1f}, {os.cpu_count()} CPUs)")
    base = load_trace(args.trace)
    cfg = SimConfig(slo=SloConfig(ttft_s=0.3, itl_s=0.015))
    profile = profile_for(cfg)
    wl = window(base, 0.0, args.window)
    print(f"\n## 2P2D, {wl.name}, {len(wl.requests)} requests, {wl.duration_s:.0f} s of arrivals")
    print(
        "| policy | control | simulated s | wall s | CPU s | x wall | x CPU | iterations "
        "| energy kJ | SLO att. |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for control in [] if args.skip_trace else args.controls.split(","):
        for name in args.policies.split(","):
            r = _one(wl, POLICIES[name], msgspec.structs.replace(cfg, control=control), profile)
            print(
                f"| {name} | {control} | {r['sim_s']:.0f} | {r['wall_s']:.1f} | {r['cpu_s']:.1f} "
                f"| {r['x_wall']:.0f} | {r['x_cpu']:.0f} | {r['iterations']} "
                f"| {r['energy_kj']:.0f} | {r['slo_attainment'] * 100:.2f}% |",
                flush=True,
            )
    print(
        f"\n## scaling: {args.scaling_policy}, {args.scaling_control} control, rate x (instances / 4), "
        f"{args.scaling_window:.0f} s window"
    )
    print(
        "| instances | cluster | requests | simulated s | wall s | CPU s | x wall | x CPU "
        "| CPU us / iteration |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for n in (int(x) for x in args.sizes.split(",")):
        half = max(n // 2, 1)
        c = msgspec.structs.replace(
            cfg, cluster=ClusterSpec(n_prefill=half, n_decode=half), control=args.scaling_control
        )
        wl_n = window(scale_rate(base, 2 * half / 4), 0.0, args.scaling_window)
        r = _one(wl_n, POLICIES[args.scaling_policy], c, profile)
        print(
            f"| {2 * half} | {half}p{half}d | {r['requests']} | {r['sim_s']:.0f} | "
            f"{r['wall_s']:.1f} | {r['cpu_s']:.1f} | {r['x_wall']:.0f} | {r['x_cpu']:.0f} | "
            f"{r['cpu_s'] / max(r['iterations'], 1) * 1e6:.0f} |",
            flush=True,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
