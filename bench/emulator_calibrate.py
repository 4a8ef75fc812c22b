"""Refit the H100 efficiency and power knobs of the GPU model to probe measurements.

Reads ../shared/data/calibration/h100_llama8b_shape_probe.json (or a file given as the
first argument, same format), fits the knobs in ``FIT_KNOBS`` by least squares on the
log error of iteration time and power at the measured points, and prints the fitted
values and the per-anchor errors. Paste the values into ``GPUS["h100"]`` in
services/emulator/gpu_model.py. Needs scipy (not a runtime dependency).

Usage: .venv/bin/python bench/emulator_calibrate.py [probe.json]
"""

from __future__ import annotations

import json
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
from voltana.services.emulator.gpu_model import GPUS, MODELS, GpuModel

FIT_KNOBS = [
    "sm_power_w",
    "hbm_power_w",
    "mem_sm_activity",
    "volt_floor",
    "weight_bw_eff",
    "kv_bw_eff",
    "decode_compute_eff",
    "prefill_linear_eff",
    "prefill_attn_eff",
    "prefill_half_tokens",
    "prefill_linear_activity",
    "prefill_attn_activity",
    "decode_fixed_s",
    "prefill_fixed_s",
]
DEFAULT_PROBE = (
    Path(__file__).resolve().parents[2] / "shared/data/calibration/h100_llama8b_shape_probe.json"
)


def _points(probe: dict) -> list[tuple[str, int, int, float, float, int]]:
    pts = []
    for e in probe["prefill"]:
        if e["tokens"] >= 1024:  # below, the eager probe was launch-bound (gpu-model.md)
            pts.append(
                ("prefill", e["tokens"], 0, e["ms"] / 1e3, e["avg_power_w"], e["sm_mhz_med"])
            )
    for e in probe["decode"]:
        pts.append(
            (
                "decode",
                e["batch"],
                e["batch"] * e["context"],
                e["ms"] / 1e3,
                e["avg_power_w"],
                e["sm_mhz_med"],
            )
        )
    return pts


def _costs(model: GpuModel, pts: list) -> list:
    out = []
    for kind, a, b, *_ in pts:
        c = model.prefill(1980, a) if kind == "prefill" else model.decode(1980, a, b)
        out.append(c)
    return out


def main() -> int:
    from scipy.optimize import least_squares

    path = Path(sys.argv[1]) if len(sys.argv) > 1 else DEFAULT_PROBE
    if not path.exists():
        print(f"probe file {path} not found (../shared/data is not here); nothing to fit")
        return 1
    pts = _points(json.loads(path.read_text()))
    base = GPUS["h100"]
    x0 = np.array([getattr(base, k) for k in FIT_KNOBS], dtype=float)

    def residuals(x: np.ndarray) -> np.ndarray:
        spec = replace(base, **dict(zip(FIT_KNOBS, (float(v) for v in x), strict=True)))
        costs = _costs(GpuModel(spec, MODELS["llama-3.1-8b"]), pts)
        r = []
        for c, (_, _, _, t, p, f) in zip(costs, pts, strict=True):
            r.append(np.log(c.time_s / t))
            r.append(0.7 * np.log(c.power_w / p))
            r.append(2.0 * np.log(c.effective_clock_mhz / f))
        return np.array(r)

    lo = x0 * 0.2
    hi = x0 * 3.0
    for i, k in enumerate(FIT_KNOBS):
        if k.endswith("_eff") or k in ("volt_floor", "mem_sm_activity", "prefill_linear_activity"):
            hi[i] = 1.0
        if k == "volt_floor":
            lo[i] = 0.6
    fit = least_squares(residuals, np.clip(x0, lo, hi), bounds=(lo, hi))
    spec = replace(base, **dict(zip(FIT_KNOBS, (float(v) for v in fit.x), strict=True)))
    for k in FIT_KNOBS:
        print(f"{k} = {getattr(spec, k):.4g}")
    model = GpuModel(spec, MODELS["llama-3.1-8b"])
    print(
        f"{'work':>22} {'t_meas':>8} {'t_model':>8} {'err':>6} {'P_meas':>7} {'P_model':>7} {'err':>6} {'f':>5} {'f_meas':>6}"
    )
    for c, (kind, a, b, t, p, f) in zip(_costs(model, pts), pts, strict=True):
        print(
            f"{kind + ' ' + str(a) + '/' + str(b):>22} {t * 1e3:8.2f} {c.time_s * 1e3:8.2f} "
            f"{(c.time_s / t - 1) * 100:+5.1f}% {p:7.0f} {c.power_w:7.0f} "
            f"{(c.power_w / p - 1) * 100:+5.1f}% {c.effective_clock_mhz:5d} {f:6d}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
