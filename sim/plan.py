"""The configuration advisor behind ``voltana plan``: which split and clock policy to run.

For a workload, a GPU type and count and the SLOs, it simulates every configuration
worth considering on the same requests: colocated (``Nu``) and every PD split
(``pPdD`` with p + d = N), each under the driver's ``default`` clocks (with the routing
users have: ``default`` and ``default-p2``) and under the project's controller
(``voltana``; optionally ``voltana-clocks``, the controller alone behind an existing
router). It ranks them by energy, recommends the cheapest that meets the attainment
target, and states that recommendation's saving against what users run today:
default clocks on the best colocated configuration, and default clocks on the even
PD split. Runs are independent and deterministic (seeded), so they run in parallel
processes and the answer does not depend on their order.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from typing import Any

import msgspec
from voltana.common.errors import ConfigError
from voltana.predictor.profile import Profile
from voltana.sim.config import ClusterSpec, SimConfig, config_params
from voltana.sim.policies import POLICIES
from voltana.sim.runner import profile_for, run_policy
from voltana.sim.workload import Workload

__all__ = [
    "BASELINE_POLICIES",
    "CONTROLLED_POLICIES",
    "PlanResult",
    "PlanRow",
    "cluster_options",
    "plan",
    "recommend",
]

BASELINE_POLICIES: tuple[str, ...] = ("default", "default-p2")
"""Default clocks (no lock) with the routing users have."""
CONTROLLED_POLICIES: tuple[str, ...] = ("voltana",)
"""The project's controller and routing."""
_KEEP = (
    "energy_j",
    "energy_per_output_token_j",
    "slo_attainment",
    "ttft_attainment",
    "itl_attainment",
    "ttft_p99_ms",
    "itl_p99_ms",
    "finished",
    "requests",
)


class PlanRow(msgspec.Struct, kw_only=True):
    """One simulated (configuration, policy) pair and its figures."""

    cluster: str
    policy: str
    clocks: str  # "default" | "controlled"
    figures: dict[str, Any]

    @property
    def energy_j(self) -> float:
        return float(self.figures["energy_j"])

    @property
    def attainment(self) -> float:
        return float(self.figures["slo_attainment"])


class PlanResult(msgspec.Struct, kw_only=True):
    """Every row (ranked), the recommendation and its savings against today's setups."""

    params: dict[str, Any]
    workload: dict[str, Any]
    rows: list[PlanRow]
    recommendation: PlanRow | None
    reference_colocated: PlanRow | None
    reference_pd: PlanRow | None
    saving_vs_default_colocated: float | None
    saving_vs_default_pd: float | None


def cluster_options(instances: int) -> list[str]:
    """Colocated and every PD split of ``instances`` instances: ``4u, 1p3d, 2p2d, 3p1d``."""
    if instances < 1:
        raise ConfigError(f"need at least one instance, got {instances}")
    return [f"{instances}u"] + [f"{p}p{instances - p}d" for p in range(1, instances)]


def _run(args: tuple[Workload, SimConfig, str, str, bool]) -> PlanRow:
    workload, cfg, cluster, policy, quick = args
    c = cfg.cluster
    spec = POLICIES[policy]
    cfg = msgspec.structs.replace(
        cfg, cluster=ClusterSpec.parse(cluster, gpu=c.gpu, model=c.model, tp=c.tp)
    )
    figures = run_policy(workload, spec, cfg, _profile(cfg, quick)).summary()
    clocks = "default" if spec.static_clock == "default" else "controlled"
    return PlanRow(
        cluster=cluster,
        policy=policy,
        clocks=clocks,
        figures={k: figures[k] for k in _KEEP if k in figures},
    )


_PROFILES: dict[tuple[Any, ...], Profile] = {}


def _profile(cfg: SimConfig, quick: bool) -> Profile:
    """The fitted profile (per process: it depends on the hardware, noise and seed only)."""
    c = cfg.cluster
    key = (c.gpu, cfg.gpu_override, c.model, c.tp, cfg.noise, cfg.seed, quick)
    if key not in _PROFILES:
        _PROFILES[key] = profile_for(cfg, quick=quick)
    return _PROFILES[key]


def _best(rows: Sequence[PlanRow], target: float) -> PlanRow | None:
    """The cheapest row meeting ``target``; else the one of highest attainment."""
    if not rows:
        return None
    ok = [r for r in rows if r.attainment >= target]
    if ok:
        return min(ok, key=lambda r: (r.energy_j, r.cluster, r.policy))
    return max(rows, key=lambda r: (r.attainment, -r.energy_j))


def recommend(
    rows: Sequence[PlanRow], target: float, even_split: str
) -> tuple[PlanRow | None, PlanRow | None, PlanRow | None]:
    """(recommendation, default-clock colocated reference, default-clock even-split reference).

    The recommendation is the cheapest row whose attainment meets ``target`` (None when
    none does); each reference is the best default-clock row of its configuration.
    """
    ok = [r for r in rows if r.attainment >= target]
    rec = min(ok, key=lambda r: (r.energy_j, r.cluster, r.policy)) if ok else None
    base = [r for r in rows if r.clocks == "default"]
    colo = _best([r for r in base if r.cluster.endswith("u")], target)
    pd = _best([r for r in base if r.cluster == even_split], target)
    return rec, colo, pd


def _saving(rec: PlanRow | None, ref: PlanRow | None) -> float | None:
    if rec is None or ref is None or ref.energy_j <= 0:
        return None
    return round(1.0 - rec.energy_j / ref.energy_j, 6)


def plan(
    workload: Workload,
    cfg: SimConfig,
    *,
    gpus: int,
    target: float = 0.99,
    clocks_only: bool = False,
    quick_profile: bool = False,
    jobs: int = 1,
    progress: Callable[[PlanRow, int, int], None] | None = None,
) -> PlanResult:
    """Simulate every configuration of ``gpus`` GPUs (see the module docstring).

    Raises:
        ConfigError: ``gpus`` not a positive multiple of the TP size, or a bad target.
    """
    tp = cfg.cluster.tp
    if gpus < 1 or gpus % tp:
        raise ConfigError(f"--gpus must be a positive multiple of --tp ({tp}), got {gpus}")
    if not 0.0 < target <= 1.0:
        raise ConfigError(f"the attainment target must be in (0, 1], got {target}")
    n = gpus // tp
    policies = (
        BASELINE_POLICIES + CONTROLLED_POLICIES + (("voltana-clocks",) if clocks_only else ())
    )
    tasks = [(workload, cfg, c, p, quick_profile) for c in cluster_options(n) for p in policies]
    rows: list[PlanRow] = []
    if jobs <= 1:
        for t in tasks:
            rows.append(_run(t))
            if progress is not None:
                progress(rows[-1], len(rows), len(tasks))
    else:
        with ProcessPoolExecutor(max_workers=jobs) as pool:
            for fut in as_completed([pool.submit(_run, t) for t in tasks]):
                rows.append(fut.result())
                if progress is not None:
                    progress(rows[-1], len(rows), len(tasks))
    rows.sort(key=lambda r: (r.attainment < target, r.energy_j, r.cluster, r.policy))
    even = f"{n // 2}p{n - n // 2}d" if n >= 2 else f"{n}u"
    rec, colo, pd = recommend(rows, target, even)
    params = config_params(cfg)
    params.update(gpus=gpus, attainment_target=target, clocks_only=clocks_only, even_split=even)
    return PlanResult(
        params=params,
        workload=dict(workload.summary()),
        rows=rows,
        recommendation=rec,
        reference_colocated=colo,
        reference_pd=pd,
        saving_vs_default_colocated=_saving(rec, colo),
        saving_vs_default_pd=_saving(rec, pd),
    )
