"""Run policies over a workload and collect the report: the simulator's entry points.

``run_policy`` wires one :class:`~voltana.sim.policies.PolicySpec` to the
service objects (``make_controller``, ``make_policy``) and simulates it;
``evaluate`` runs several plus the oracle and computes savings against
static max; ``sweep`` repeats that over request-rate scales and SLO scales.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import msgspec
from voltana.predictor.profile import Profile
from voltana.schemas.config import ControllerConfig, SloConfig
from voltana.services.freqctl.controllers.factory import make_controller
from voltana.services.router.policies.factory import make_policy
from voltana.sim.colocated import simulator_class
from voltana.sim.config import SimConfig, config_params
from voltana.sim.core import Simulator
from voltana.sim.metrics import RunMetrics
from voltana.sim.oracle import OracleChooser
from voltana.sim.policies import POLICIES, PolicySpec
from voltana.sim.profiles import simulated_profile
from voltana.sim.workload import Workload, scale_rate

__all__ = ["Evaluation", "evaluate", "profile_for", "run_oracle", "run_policy", "sweep"]

Progress = Callable[[str, float], None]


def profile_for(cfg: SimConfig, *, quick: bool = False) -> Profile:
    """The profile the controllers get: fitted by profiling the simulated hardware."""
    c = cfg.cluster
    return simulated_profile(
        c.gpu, c.model, c.tp, noise=cfg.noise, seed=cfg.seed, quick=quick, spec=cfg.gpu_override
    )


def run_policy(
    workload: Workload,
    spec: PolicySpec,
    cfg: SimConfig,
    profile: Profile,
    *,
    progress: Progress | None = None,
    controller_overrides: dict[str, Any] | None = None,
) -> RunMetrics:
    """Simulate ``workload`` under ``spec`` with controllers/routers built from ``profile``."""
    kw: dict[str, Any] = {"slo": cfg.slo, **(controller_overrides or {})}
    if spec.controller == "static":
        kw["static_clock_mhz"] = (
            None  # no lock: the driver's default clocks
            if spec.static_clock == "default"
            else profile.max_clock_mhz
            if spec.static_clock == "max"
            else profile.min_clock_mhz
        )
    if spec.wake_on_dispatch is not None:
        cfg = msgspec.structs.replace(cfg, wake_on_dispatch=spec.wake_on_dispatch)
    ccfg = ControllerConfig(policy=spec.controller, **kw)
    ctl = make_controller(ccfg, profile)
    sim = simulator_class(cfg)(
        cfg,
        controllers={"prefill": ctl, "decode": ctl, "unified": ctl},
        prefill_policy=make_policy(spec.prefill_routing, profile=profile, slo=cfg.slo),
        decode_policy=make_policy(spec.decode_routing, profile=profile, slo=cfg.slo),
        name=spec.name,
    )
    cb = None if progress is None else (lambda t: progress(spec.name, t))
    return sim.run(workload, cb)


def run_oracle(
    workload: Workload,
    cfg: SimConfig,
    *,
    progress: Progress | None = None,
    routing: tuple[str, str] = ("ecoroute", "ecoroute"),
    profile: Profile | None = None,
) -> RunMetrics:
    """The oracle reference (see :mod:`voltana.sim.oracle`): ground truth, no lag, per iteration."""
    c = cfg.cluster
    chooser = OracleChooser(c.gpu, c.model, c.tp, cfg.slo, spec=cfg.gpu_override)
    sim = Simulator(
        msgspec.structs.replace(
            cfg, noise=0.0
        ),  # perfect knowledge: the hardware does what the model says
        controllers={},
        prefill_policy=make_policy(routing[0], profile=profile, slo=cfg.slo),
        decode_policy=make_policy(routing[1], profile=profile, slo=cfg.slo),
        name="oracle",
        oracle=chooser,
    )
    cb = None if progress is None else (lambda t: progress("oracle", t))
    return sim.run(workload, cb)


class Evaluation(msgspec.Struct, kw_only=True):
    """Summary rows per policy, the oracle row, and the run's parameters."""

    params: dict[str, Any]
    workload: dict[str, Any]
    policies: dict[str, dict[str, Any]]
    oracle: dict[str, Any] | None = None


def _params(cfg: SimConfig, extra: dict[str, Any]) -> dict[str, Any]:
    d = config_params(cfg)
    d["cluster_label"] = cfg.cluster.label
    d.update(extra)
    return d


def evaluate(
    workload: Workload,
    specs: Sequence[PolicySpec],
    cfg: SimConfig,
    *,
    oracle: bool = True,
    quick_profile: bool = False,
    progress: Progress | None = None,
    keep_runs: list[RunMetrics] | None = None,
) -> Evaluation:
    """Run every policy (and the oracle) on the same workload; add savings vs the references.

    ``saving_vs_default`` is ``1 - E_policy / E_default`` (the driver's default clocks,
    no lock: what users run today) and ``saving_vs_static_max`` is
    ``1 - E_policy / E_static_max``; both references are run too if not asked for.
    The oracle is defined for PD clusters only. ``keep_runs`` receives the raw runs
    (for plots).
    """
    profile = profile_for(cfg, quick=quick_profile)
    wanted = list(specs)
    refs = [POLICIES["static-max"], POLICIES["default"]]
    runs: dict[str, RunMetrics] = {}
    for spec in [r for r in refs if r not in wanted] + wanted:
        runs[spec.name] = run_policy(workload, spec, cfg, profile, progress=progress)
    if cfg.cluster.n_unified:
        oracle = False
    orc = run_oracle(workload, cfg, progress=progress, profile=profile) if oracle else None
    ref = runs["static-max"].energy_j
    ref_default = runs["default"].energy_j
    rows: dict[str, dict[str, Any]] = {}
    for spec in wanted:
        row: dict[str, Any] = runs[spec.name].summary()
        if runs[spec.name].prefix_by_instance:
            row["prefix_hit_rate_by_instance"] = runs[spec.name].prefix_hit_rate_by_instance()
        e = runs[spec.name].energy_j
        row["saving_vs_default"] = round(1.0 - e / ref_default, 6) if ref_default else None
        row["saving_vs_static_max"] = round(1.0 - e / ref, 6) if ref else None
        if orc is not None and orc.energy_j > 0:
            row["energy_vs_oracle"] = round(runs[spec.name].energy_j / orc.energy_j, 4)
        rows[spec.name] = row
    orow: dict[str, Any] | None = None
    if orc is not None:
        orow = dict(orc.summary())
        if orc.prefix_by_instance:
            orow["prefix_hit_rate_by_instance"] = orc.prefix_hit_rate_by_instance()
        orow["saving_vs_default"] = (
            round(1.0 - orc.energy_j / ref_default, 6) if ref_default else None
        )
        orow["saving_vs_static_max"] = round(1.0 - orc.energy_j / ref, 6) if ref else None
    if keep_runs is not None:
        keep_runs.extend(runs[s.name] for s in wanted)
        if orc is not None:
            keep_runs.append(orc)
    return Evaluation(
        params=_params(
            cfg,
            {
                "profile_source": profile.file.source,
                "profile_accuracy": msgspec.to_builtins(profile.file.accuracy),
            },
        ),
        workload=dict(workload.summary()),
        policies=rows,
        oracle=orow,
    )


def sweep(
    workload: Workload,
    specs: Sequence[PolicySpec],
    cfg: SimConfig,
    *,
    rate_scales: Sequence[float] = (1.0,),
    slo_scales: Sequence[float] = (1.0,),
    oracle: bool = False,
    quick_profile: bool = False,
    progress: Progress | None = None,
) -> list[dict[str, Any]]:
    """One table row per (rate scale, SLO scale, policy): the evaluation grid."""
    rows: list[dict[str, Any]] = []
    for rs in rate_scales:
        wl = scale_rate(workload, rs)
        for ss in slo_scales:
            slo = SloConfig(
                ttft_s=cfg.slo.ttft_s * ss, itl_s=cfg.slo.itl_s * ss, margin=cfg.slo.margin
            )
            ev = evaluate(
                wl,
                specs,
                msgspec.structs.replace(cfg, slo=slo),
                oracle=oracle,
                quick_profile=quick_profile,
                progress=progress,
            )
            entries = list(ev.policies.items())
            if ev.oracle is not None:
                entries.append(("oracle", ev.oracle))
            for name, row in entries:
                rows.append(
                    {
                        "rate_scale": rs,
                        "rate_rps": round(wl.rate_rps, 3),
                        "slo_scale": ss,
                        "slo_ttft_s": slo.ttft_s,
                        "slo_itl_s": slo.itl_s,
                        **row,
                        "policy": name,
                    }
                )
    return rows
