"""Compare the emulator's GPU model with real probe runs, and refit its H100 knobs to them.

Usage:

    .venv/bin/python bench/gpu/compare_model.py                 # table: model vs the H100 runs
    .venv/bin/python bench/gpu/compare_model.py --fit           # refit (needs scipy)
    .venv/bin/python bench/gpu/compare_model.py --gpu h200      # the model's prediction, no run
    .venv/bin/python bench/gpu/compare_model.py --gpu h200 --runs bench/results/h200_llm_probe.json

Every comparison ends with one line: ``time MAPE x%, power MAPE y%, energy MAPE z%
over N points`` (the points the model describes; excluded points are listed, not
counted). Without a run (``--gpu NAME`` other than h100, or ``--predict``) it prints
the model's time, power, energy and clock at the points ``llm_probe.py`` measures.

``bench/emulator_calibrate.py`` is the calibration entry point and runs ``--fit``
here: one fit, one set of data. Reads the probe files written by
``bench/gpu/llm_probe.py`` (default: the two H100 runs in bench/results/). The lent
GPU ran at default clocks, which is what the model calls a request for the maximum
clock (1980 MHz on an H100): the model throttles that request to its power cap
itself, so its effective clock is compared with the median SM clock NVML reported. A
run made under a locked clock (on a GPU of your own, see docs/gpu-in-the-loop.md) is
compared at that clock. The earlier probe in bench/results/h100_llama8b_shape_probe.json (``--legacy``;
the emulator's own tests hold the model to it) is compared and fitted as well, and
ML.ENERGY's serving runs bound the fit; ``--fit`` fits the knobs in ``FIT_KNOBS`` to
all of them at once and prints them.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import msgspec
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from voltana_path import ensure_voltana

ensure_voltana()

from model_fit import FIT_KNOBS, HINGE, LEGACY_POWER_WEIGHT, fit  # noqa: E402
from probe_data import (  # noqa: E402, F401  (re-exported: the tests and clock_sweeps use them)
    Point,
    compare,
    exclusion,
    legacy_points,
    locked_clock_mhz,
    model_cost,
    probe_points,
)
from probe_points import DECODE_POINTS, PREFILL_EAGER_TOKENS, PREFILL_TOKENS  # noqa: E402
from voltana.groundtruth.gpu_model import (  # noqa: E402
    GPUS,
    MODELS,
    GpuModel,
)
from voltana.groundtruth.spec_file import spec_changes  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
RUNS = [ROOT / "bench/results/h100_llm_probe.json", ROOT / "bench/results/h100_llm_probe_run2.json"]
LEGACY = ROOT / "bench" / "results" / "h100_llama8b_shape_probe.json"
TOLERANCE = 0.10


def predicted_points() -> list[Point]:
    """The points ``llm_probe.py`` measures by default, with nothing measured (NaN)."""
    nan = float("nan")
    pts = [
        Point("model", "prefill", t, 0, nan, nan, nan, exclusion("prefill", t, 0, graph))
        for graph, toks in ((True, PREFILL_TOKENS), (False, PREFILL_EAGER_TOKENS))
        for t in toks
    ]
    pts += [
        Point("model", "decode", b, k, nan, nan, nan, exclusion("decode", b, k))
        for b, k in DECODE_POINTS
    ]
    return pts


def predict(model: GpuModel, points: list[Point]) -> list[dict[str, Any]]:
    """The model alone at each point (default clocks): time, power, energy, clock, cap."""
    rows = []
    for p in points:
        c = model_cost(model, p)
        label = p.label() + ("" if p.kind == "decode" or not p.excluded else " eager")
        rows.append(
            {
                "point": label,
                "kind": p.kind,
                "size": p.size,
                "kv_tokens": p.kv_tokens,
                "excluded": p.excluded,
                "model_time_ms": 1e3 * c.time_s,
                "model_power_w": c.power_w,
                "model_energy_j": c.energy_j,
                "model_clock_mhz": c.effective_clock_mhz,
                "power_capped": c.power_capped,
            }
        )
    return rows


def _print_prediction(name: str, rows: list[dict[str, Any]]) -> None:
    print(f"model prediction for {name} at default clocks (no measurement)")
    print(f"{'point':26s} {'t_ms':>8s} {'P_W':>6s} {'E_J':>8s} {'MHz':>5s} cap  note")
    for r in rows:
        print(
            f"{r['point']:26s} {r['model_time_ms']:8.2f} {r['model_power_w']:6.0f} "
            f"{r['model_energy_j']:8.3f} {r['model_clock_mhz']:5d} "
            f"{'yes' if r['power_capped'] else 'no ':3s}  {r['excluded']}"
        )


def summary_line(rows: list[dict[str, Any]]) -> str:
    """``time MAPE x%, power MAPE y%, energy MAPE z% over N points`` (in-domain points)."""
    held = [r for r in rows if not r["excluded"]]
    if not held:
        return "time MAPE n/a, power MAPE n/a, energy MAPE n/a over 0 points"
    m = {
        k: 100 * float(np.mean([abs(r[f"{k}_err"]) for r in held]))
        for k in ("time", "power", "energy")
    }
    return (
        f"time MAPE {m['time']:.1f}%, power MAPE {m['power']:.1f}%, "
        f"energy MAPE {m['energy']:.1f}% over {len(held)} points"
    )


def _print(rows: list[dict[str, Any]]) -> None:
    print(
        f"{'run':7s} {'point':22s} {'t_ms':>7s} {'model':>7s} {'err':>6s}  {'P_W':>5s} "
        f"{'model':>5s} {'err':>6s}  {'MHz':>5s} {'model':>5s}  note"
    )
    for r in rows:
        print(
            f"{r['source']:7s} {r['point']:22s} {r['time_ms']:7.2f} {r['model_time_ms']:7.2f} "
            f"{100 * r['time_err']:+5.1f}%  {r['power_w']:5.0f} {r['model_power_w']:5.0f} "
            f"{100 * r['power_err']:+5.1f}%  {r['clock_mhz']:5.0f} {r['model_clock_mhz']:5d}  "
            f"{r['excluded'] or ''}"
        )
    held = [r for r in rows if not r["excluded"]]
    if held:
        worst_t = max(abs(r["time_err"]) for r in held)
        worst_p = max(abs(r["power_err"]) for r in held)
        worst_e = max(abs(r["energy_err"]) for r in held)
        print(
            f"in-domain points: {len(held)}; worst |error|: time {100 * worst_t:.1f}%, "
            f"power {100 * worst_p:.1f}%, energy {100 * worst_e:.1f}%"
        )
    print(summary_line(rows))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs_pos", nargs="*", type=Path, metavar="RUN", help="same as --runs")
    ap.add_argument(
        "--runs",
        nargs="+",
        type=Path,
        default=[],
        metavar="FILE",
        help="llm_probe.py results to compare (default: the two H100 runs for --gpu h100, "
        "none otherwise)",
    )
    ap.add_argument(
        "--gpu",
        default="h100",
        choices=sorted(GPUS),
        help="GPU spec of the model (default: %(default)s)",
    )
    ap.add_argument("--model", default="llama-3.1-8b", choices=sorted(MODELS), help="model shape")
    ap.add_argument("--predict", action="store_true", help="the model's table only, no run")
    ap.add_argument(
        "--legacy", type=Path, default=LEGACY, help="earlier H100 probe (old format; h100 only)"
    )
    ap.add_argument("--fit", action="store_true", help="refit FIT_KNOBS (needs scipy)")
    ap.add_argument("--hinge", type=float, default=HINGE, help="runs' error bound in the fit")
    ap.add_argument(
        "--legacy-power-weight",
        type=float,
        default=LEGACY_POWER_WEIGHT,
        help="weight of the earlier probe's decode power in the fit",
    )
    ap.add_argument("--out", type=Path, default=None, help="write the table as JSON")
    ap.add_argument(
        "--spec-out",
        type=Path,
        default=None,
        help="with --fit: write the fitted GPU as a spec file (voltana sim/plan --gpu-spec)",
    )
    args = ap.parse_args(argv)
    if args.spec_out and not args.fit:
        ap.error("--spec-out writes the fitted GPU: it needs --fit")

    model = GpuModel(GPUS[args.gpu], MODELS[args.model])
    runs = [*args.runs_pos, *args.runs]
    if not runs and args.gpu == "h100" and not args.predict:
        runs = RUNS
    if args.predict or not runs:
        if args.fit:
            ap.error("--fit needs at least one run (--runs FILE...)")
        rows = predict(model, predicted_points())
        _print_prediction(f"{args.gpu} ({model.gpu.name}, {model.model.name})", rows)
        if args.out:
            doc = {"gpu": args.gpu, "spec": msgspec.to_builtins(model.gpu), "rows": rows}
            args.out.write_text(json.dumps(doc, indent=1))
        return 0

    points: list[Point] = []
    for i, path in enumerate(runs):
        try:
            doc = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            ap.error(f"cannot read probe results {path}: {exc}")
        points += probe_points(doc, f"run{i + 1}")
    if args.gpu == "h100" and args.legacy.exists():
        points += legacy_points(json.loads(args.legacy.read_text()))
    elif args.gpu == "h100":
        print(f"(earlier probe {args.legacy} absent: comparing with the runs only)")
    if not points:
        ap.error("no measured point in the runs given")
    if args.fit:
        model = fit(model, points, args.hinge, args.legacy_power_weight)
        print(f"fitted knobs (GPUS[{args.gpu!r}]):")
        for k in FIT_KNOBS:
            print(f"    {k}={getattr(model.gpu, k):.4g},")
        if args.spec_out:
            refit = msgspec.structs.replace(model.gpu, name=f"{model.gpu.name} (refit)")
            args.spec_out.write_text(json.dumps(spec_changes(args.gpu, refit), indent=1) + "\n")
            print(f"wrote {args.spec_out}: voltana sim --gpu {args.gpu} --gpu-spec {args.spec_out}")
    rows = compare(model, points)
    _print(rows)
    if args.out:
        doc = {"gpu": args.gpu, "tolerance": TOLERANCE, "summary": summary_line(rows), "rows": rows}
        args.out.write_text(json.dumps(doc, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
