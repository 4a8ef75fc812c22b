"""Live-vs-simulator cross-check: the simulator's figures for a trace slice, and the comparison.

Run the same slice through the live services (router + freqctl + emulated
SGLang workers) and through :func:`sim_figures` with matching settings, then
:func:`compare` the two dicts. The figures and their definitions are those of
:mod:`voltana.sim.metrics`; for the live side, energy is the sum over every
GPU of its energy counter delta from the first request's arrival to the last
token, and attainment uses the same per-request definition
(``RequestRecord.slo_met``).

Match the live deployment: the cluster (``1p1d``), the controller cadence
(``control="telemetry"`` with the telemetry service's engine scrape period,
``engine_hz = 4`` -> 0.25 s), the lag from a decision to a clock in effect
(bus + actuator + NVML, ``control_lag_s``), the emulator's ``--noise`` and the
routing policies.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from voltana.schemas.config import SloConfig
from voltana.sim.config import ClusterSpec, SimConfig
from voltana.sim.policies import POLICIES
from voltana.sim.runner import profile_for, run_policy
from voltana.sim.workload import Workload, load_trace, scale_rate, window

__all__ = ["FIGURES", "compare", "sim_figures"]

FIGURES: tuple[str, ...] = (
    "energy_j",
    "energy_per_output_token_j",
    "slo_attainment",
    "ttft_attainment",
    "itl_attainment",
)


def sim_figures(
    trace: str | Path | Workload,
    *,
    window_s: tuple[float, float] = (0.0, 60.0),
    rate_scale: float = 1.0,
    policy: str = "voltana",
    slo_ttft_s: float = 0.5,
    slo_itl_s: float = 0.025,
    slo_margin: float = 0.1,
    cluster: str = "1p1d",
    gpu: str = "h100",
    model: str = "llama-3.1-8b",
    seed: int = 0,
    noise: float = 0.0,
    control: Literal["iteration", "telemetry"] = "telemetry",
    telemetry_period_s: float = 0.25,
    control_lag_s: float = 0.02,
) -> dict[str, Any]:
    """The simulator's figures for a trace slice (a dict, JSON-ready)."""
    wl = trace if isinstance(trace, Workload) else load_trace(trace)
    wl = window(scale_rate(wl, rate_scale), window_s[0], window_s[1])
    cfg = SimConfig(
        cluster=ClusterSpec.parse(cluster, gpu=gpu, model=model),
        slo=SloConfig(ttft_s=slo_ttft_s, itl_s=slo_itl_s, margin=slo_margin),
        seed=seed,
        noise=noise,
        control=control,
        telemetry_period_s=telemetry_period_s,
        control_lag_s=control_lag_s,
    )
    run = run_policy(wl, POLICIES[policy], cfg, profile_for(cfg))
    out: dict[str, Any] = dict(run.summary())
    out["energy_j_by_instance"] = {k: round(v, 3) for k, v in run.energy_j_by_instance.items()}
    out["workload"] = wl.summary()
    out["settings"] = {
        "window_s": list(window_s),
        "rate_scale": rate_scale,
        "policy": policy,
        "slo_ttft_s": slo_ttft_s,
        "slo_itl_s": slo_itl_s,
        "cluster": cluster,
        "gpu": gpu,
        "model": model,
        "seed": seed,
        "noise": noise,
        "control": control,
        "telemetry_period_s": telemetry_period_s,
        "control_lag_s": control_lag_s,
    }
    return out


def compare(
    sim: dict[str, Any],
    live: dict[str, Any],
    *,
    rel_tol: float = 0.05,
    figures: tuple[str, ...] = FIGURES,
) -> list[dict[str, Any]]:
    """Per figure: both values, the relative difference (vs live) and whether it is within tolerance.

    Attainments (fractions) are compared by absolute difference in percentage
    points scaled the same way (``|a - b| <= rel_tol``).
    """
    rows: list[dict[str, Any]] = []
    for k in figures:
        s, lv = sim.get(k), live.get(k)
        if s is None or lv is None:
            rows.append({"figure": k, "sim": s, "live": lv, "diff": None, "ok": False})
            continue
        if k.endswith("attainment"):
            diff = abs(float(s) - float(lv))
        else:
            diff = abs(float(s) - float(lv)) / max(abs(float(lv)), 1e-12)
        rows.append(
            {"figure": k, "sim": s, "live": lv, "diff": round(diff, 5), "ok": diff <= rel_tol}
        )
    return rows


def main(argv: list[str] | None = None) -> int:
    """``python -m voltana.sim.crosscheck --trace T [--window 0,60] [--live live.json]``.

    Prints the simulator's figures as JSON; with ``--live`` (a JSON object with
    the same keys, measured on the live services) also the comparison.
    """
    import argparse
    import json

    ap = argparse.ArgumentParser(prog="python -m voltana.sim.crosscheck")
    ap.add_argument("--trace", required=True)
    ap.add_argument("--window", default="0,60", help="START,DURATION seconds")
    ap.add_argument("--rate-scale", type=float, default=1.0)
    ap.add_argument("--policy", default="voltana")
    ap.add_argument("--cluster", default="1p1d")
    ap.add_argument("--slo-ttft-s", type=float, default=0.5)
    ap.add_argument("--slo-itl-s", type=float, default=0.025)
    ap.add_argument("--noise", type=float, default=0.0)
    ap.add_argument("--control", choices=["iteration", "telemetry"], default="telemetry")
    ap.add_argument("--telemetry-period", type=float, default=0.25)
    ap.add_argument("--control-lag", type=float, default=0.02)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--live", default=None, help="JSON file with the live figures")
    ap.add_argument("--tol", type=float, default=0.05)
    a = ap.parse_args(argv)
    start, dur = (float(x) for x in a.window.split(","))
    figs = sim_figures(
        a.trace,
        window_s=(start, dur),
        rate_scale=a.rate_scale,
        policy=a.policy,
        slo_ttft_s=a.slo_ttft_s,
        slo_itl_s=a.slo_itl_s,
        cluster=a.cluster,
        seed=a.seed,
        noise=a.noise,
        control=a.control,
        telemetry_period_s=a.telemetry_period,
        control_lag_s=a.control_lag,
    )
    out: dict[str, Any] = {"sim": figs}
    if a.live:
        with open(a.live, encoding="utf-8") as fh:
            live = json.load(fh)
        out["comparison"] = compare(figs, live, rel_tol=a.tol)
    print(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
