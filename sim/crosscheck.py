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
from voltana.sim.core import ClusterSpec, SimConfig
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
