"""Profiles for the simulated controllers, fitted by profiling the simulated hardware.

The controllers and ``ecoroute`` must never see the ground truth: like on a
real GPU, they get a profile produced by the freqctl profiling procedure
(``default_plan`` + ``profile_from_prober``) run against ``SimulatedProber``,
i.e. the ground-truth GPU model measured with noise, then fitted. Fitting
takes a few seconds, so profiles are cached per process and key.
"""

from __future__ import annotations

import functools

from voltana.common.errors import ConfigError
from voltana.groundtruth.gpu_model import GPUS, MODELS, GpuModel, GpuSpec
from voltana.predictor.profile import Profile
from voltana.services.profiler.core import SimulatedProber, default_plan, profile_from_prober

__all__ = ["simulated_profile"]


@functools.cache
def simulated_profile(
    gpu: str = "h100",
    model: str = "llama-3.1-8b",
    tp: int = 1,
    *,
    noise: float = 0.02,
    seed: int = 0,
    quick: bool = False,
    spec: GpuSpec | None = None,
) -> Profile:
    """Profile the simulated ``gpu`` running ``model`` and fit a profile (cached).

    Args:
        noise: measurement noise of the simulated hardware (relative std of time).
        seed: seed of the simulated hardware's noise and of the held-out split.
        quick: the shorter live-style plan (coarser clocks) instead of the full one.
        spec: the GPU's constants, if not the built-in ``GPUS[gpu]`` (a spec file).

    Raises:
        ConfigError: unknown gpu or model.
    """
    if gpu not in GPUS or model not in MODELS:
        raise ConfigError(f"unknown gpu {gpu!r} or model {model!r}")
    gm = GpuModel(spec or GPUS[gpu], MODELS[model], tp, noise=noise, seed=seed + 7919)
    prober = SimulatedProber(gm, gpu, model, seed=seed)
    plan = default_plan(prober.hardware(), quick=quick, max_kv_tokens=gm.kv_capacity_tokens())
    pf, _ = profile_from_prober(
        prober, plan, seed=seed, created_t_ns=0, notes="fitted by the simulator"
    )
    return Profile(pf)
