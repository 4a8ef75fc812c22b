"""How the headline saving moves if the GPU's clock-dependent power is off by +-20%.

The clock dimension of the GPU model (power and time against a locked SM clock) rests
on published data, not on a measurement here (lent GPUs' clocks must not change). This
scales the model's clock-dependent power (``sm_power_w``: the SMs' dynamic power, which
scales with f V(f)^2; memory and static power are left alone) by each ``--scales``
factor and re-runs one setting of the results table with static max and the controller:

- ``re-profiled``: the controllers' profile is fitted to the scaled hardware, as it would
  be by profiling the real GPU (what a deployment does);
- ``stale profile``: the controllers keep the nominal model's profile (a profile that is
  wrong by that much).

    .venv/bin/python bench/sim_power_sensitivity.py --load 3 --slo relaxed

Prints one row per scale and writes ``--out`` (JSON) if given.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import msgspec
from voltana.groundtruth import gpu_specs
from voltana.schemas.config import SloConfig
from voltana.sim.config import SimConfig
from voltana.sim.policies import POLICIES
from voltana.sim.profiles import simulated_profile
from voltana.sim.runner import profile_for, run_policy
from voltana.sim.traces import packaged_trace
from voltana.sim.workload import load_trace, scale_rate, window

ROOT = Path(__file__).resolve().parents[1]
TRACE = packaged_trace()  # the Azure 2023 conversation trace shipped in sim/data
SLOS = {"tight": (0.3, 0.015), "relaxed": (1.0, 0.03)}


def saving(wl: Any, cfg: SimConfig, policy: str, profile: Any) -> dict[str, Any]:
    ref = run_policy(wl, POLICIES["static-max"], cfg, profile)
    run = run_policy(wl, POLICIES[policy], cfg, profile)
    s = run.summary()
    return {
        "saving_vs_static_max": round(1.0 - run.energy_j / ref.energy_j, 4),
        "slo_attainment": s.get("slo_attainment"),
        "energy_j": round(run.energy_j, 1),
        "static_max_energy_j": round(ref.energy_j, 1),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trace", type=Path, default=TRACE, help="trace CSV")
    ap.add_argument("--gpu", default="h100", choices=sorted(gpu_specs.GPUS), help="GPU model")
    ap.add_argument("--load", type=float, default=3.0, help="rate scale (default: %(default)s)")
    ap.add_argument("--slo", default="relaxed", choices=sorted(SLOS))
    ap.add_argument("--window", type=float, default=600.0, help="seconds after scaling")
    ap.add_argument("--policy", default="voltana", help="controller (default: %(default)s)")
    ap.add_argument("--scales", default="0.8,1.0,1.2", help="factors on sm_power_w")
    ap.add_argument("--out", type=Path, default=None, help="JSON to write")
    args = ap.parse_args(argv)
    if not args.trace.is_file():
        ap.error(f"trace not found: {args.trace}")
    wl = window(scale_rate(load_trace(args.trace), args.load), 0.0, args.window)
    ttft, itl = SLOS[args.slo]
    cfg = SimConfig(slo=SloConfig(ttft_s=ttft, itl_s=itl))
    cfg = msgspec.structs.replace(cfg, cluster=msgspec.structs.replace(cfg.cluster, gpu=args.gpu))
    nominal_spec = gpu_specs.GPUS[args.gpu]
    nominal_profile = profile_for(cfg)
    rows = []
    for k in (float(x) for x in args.scales.split(",")):
        t0 = time.perf_counter()
        spec = msgspec.structs.replace(nominal_spec, sm_power_w=nominal_spec.sm_power_w * k)
        gpu_specs.GPUS[args.gpu] = spec  # the one dict every model reads its spec from
        simulated_profile.cache_clear()
        try:
            row: dict[str, Any] = {"sm_power_scale": k}
            row["re-profiled"] = saving(wl, cfg, args.policy, profile_for(cfg))
            if k != 1.0:
                row["stale profile"] = saving(wl, cfg, args.policy, nominal_profile)
        finally:
            gpu_specs.GPUS[args.gpu] = nominal_spec
            simulated_profile.cache_clear()
        rows.append(row)
        print(json.dumps(row), f"({time.perf_counter() - t0:.0f} s)", flush=True)
    print(f"{args.gpu}, load {args.load:g}x, SLO {args.slo}, policy {args.policy}:")
    for r in rows:
        line = f"  sm_power x{r['sm_power_scale']:.2f}: saving vs static max "
        line += f"{100 * r['re-profiled']['saving_vs_static_max']:.1f}% (re-profiled)"
        if "stale profile" in r:
            line += f", {100 * r['stale profile']['saving_vs_static_max']:.1f}% (stale profile, "
            line += f"attainment {100 * (r['stale profile']['slo_attainment'] or 0):.2f}%)"
        print(line)
    if args.out:
        doc = {"gpu": args.gpu, "load": args.load, "slo": args.slo, "policy": args.policy}
        args.out.write_text(json.dumps({**doc, "window_s": args.window, "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
