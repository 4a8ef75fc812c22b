"""Savings against the driver's default clocks for the committed results tables.

bench/sim_results.py reports savings against static max. A ``default`` run (no lock:
boost under load, the modelled idle hold and decay) costs the same whatever the SLO
and control cadence (its clocks and its routing never look at either), so one run
per load, on the same window, cluster and seed, gives every row's
``saving_vs_default = 1 - E / E_default`` from the committed energies. The default run
uses the GPU's idle hold: the boost clock held for as long as the serving process
holds its CUDA context (measured on the H200, docs/gpu-model.md). It is repeated with
an instant drop (hold 0 s, no decay: the lower bound of what a driver could save), the
earlier modelled 5 s hold (1 s decay) and a 60 s hold: ``saving_vs_default_hold_0s``,
``_hold_5s`` and ``_hold_60s``. Writes ``<results>_vs_default.json`` beside each
results file and prints the energies.

    .venv/bin/python bench/vs_default.py [bench/results/sim_results.json ...]
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import msgspec
from voltana.sim.config import SimConfig
from voltana.sim.policies import POLICIES
from voltana.sim.runner import profile_for, run_policy
from voltana.sim.traces import packaged_trace
from voltana.sim.workload import load_trace, scale_rate, window

ROOT = Path(__file__).resolve().parents[1]
TRACE = packaged_trace()  # the Azure 2023 conversation trace shipped in sim/data
FILES = ["bench/results/sim_results.json", "bench/results/sim_results_iteration.json"]


def main() -> int:
    files = [Path(f) for f in (sys.argv[1:] or [str(ROOT / f) for f in FILES])]
    if not TRACE.is_file():
        print(f"skipped: {TRACE} not found", file=sys.stderr)
        return 0
    base = load_trace(TRACE)
    cfg = SimConfig()
    profile = profile_for(cfg)
    e_default: dict[tuple[float, float], float] = {}
    brackets: dict[tuple[float, float], dict[str, float]] = {}
    holds = {"hold_0s": (0.0, 0.0), "hold_5s": (5.0, 1.0), "hold_60s": (60.0, 1.0)}
    for f in files:
        results = json.loads(f.read_text())
        out = []
        for r in results:
            ev = r["evaluation"]
            win = float(ev["workload"]["duration_s"])
            key = (float(r["load"]), round(win, -1))
            if key not in e_default:
                wl = window(scale_rate(base, r["load"]), 0.0, 600.0)
                e_default[key] = run_policy(wl, POLICIES["default"], cfg, profile).energy_j
                # the setup must reproduce the committed static-max run, figure for figure
                e_max = run_policy(wl, POLICIES["static-max"], cfg, profile).energy_j
                committed = ev["policies"]["static-max"]["energy_j"]
                if abs(e_max / committed - 1) > 1e-6:
                    print(f"static-max {e_max} J != committed {committed} J", file=sys.stderr)
                    return 1
                brackets[key] = {}
                for name, (hold, decay) in holds.items():
                    c = msgspec.structs.replace(
                        cfg, default_idle_hold_s=hold, default_idle_decay_s=decay
                    )
                    brackets[key][name] = run_policy(wl, POLICIES["default"], c, profile).energy_j
                print(f"load {r['load']:g}: {brackets[key]} J with other holds", flush=True)
                print(
                    f"load {r['load']:g}: default {e_default[key] / 1e3:.1f} kJ, static-max "
                    f"{e_max / 1e3:.1f} kJ (as committed)",
                    flush=True,
                )
            e_def = e_default[key]
            rows = dict(ev["policies"])
            if ev.get("oracle") is not None:
                rows["oracle"] = ev["oracle"]
            out.append(
                {
                    "load": r["load"],
                    "slo": r["slo"],
                    "default_energy_j": e_def,
                    "saving_vs_default": {
                        k: round(1.0 - v["energy_j"] / e_def, 6) for k, v in rows.items()
                    },
                    **{
                        f"saving_vs_default_{name}": {
                            k: round(1.0 - v["energy_j"] / e, 6) for k, v in rows.items()
                        }
                        for name, e in brackets[key].items()
                    },
                    "default_energy_j_other_holds": brackets[key],
                    "saving_vs_static_max": {
                        k: v.get("saving_vs_static_max") for k, v in rows.items()
                    },
                }
            )
        p = f.with_name(f.stem + "_vs_default.json")
        p.write_text(json.dumps(out, indent=1) + "\n")
        print(f"wrote {p}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
