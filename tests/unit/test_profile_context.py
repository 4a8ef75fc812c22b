"""Profiles with cached context: a prefix-cache hit's prefill cost, measured and fitted."""

from __future__ import annotations

from typing import Any

import msgspec
import numpy as np
import pytest
from voltana.groundtruth.gpu_model import GPUS, MODELS, GpuModel
from voltana.predictor.fitting import fit_profile
from voltana.predictor.profile import Profile
from voltana.services.profiler.core import SimulatedProber, default_plan, run_profiling


@pytest.fixture(scope="module")
def measured() -> tuple[Any, Any]:
    gm = GpuModel(GPUS["h100"], MODELS["llama-3.1-8b"], noise=0.02, seed=2)
    prober = SimulatedProber(gm, "h100", "llama-3.1-8b", seed=2)
    plan = default_plan(prober.hardware(), quick=True, max_kv_tokens=prober.max_kv_tokens())
    return plan, run_profiling(prober, plan)


def test_context_points_are_fitted_without_touching_the_fresh_prompt_fit(
    measured: tuple[Any, Any],
) -> None:
    plan, m = measured
    assert m.prefill_context and all(s.context_tokens > 0 for s in m.prefill_context)
    with_ctx = fit_profile(m, buckets=plan.buckets, seed=0)
    without = fit_profile(
        msgspec.structs.replace(m, prefill_context=[]), buckets=plan.buckets, seed=0
    )
    for a, b in zip(with_ctx.prefill, without.prefill, strict=True):
        assert a.coefficients() == b.coefficients()  # the context term is fitted apart
        assert a.latency_s_per_ctx_token > 0 and a.energy_j_per_ctx_token > 0
        assert b.latency_s_per_ctx_token == 0 == b.energy_j_per_ctx_token
    assert with_ctx.accuracy == without.accuracy
    # a profile without context measurements adds nothing for cached context
    xl, xe = Profile(without).prefill_context_tables(np.array([512.0]), np.array([8000.0]))
    assert not xl.any() and not xe.any()


def test_fitted_hit_cost_tracks_the_hardware(measured: tuple[Any, Any]) -> None:
    plan, m = measured
    prof = Profile(fit_profile(m, buckets=plan.buckets, seed=0))
    truth = GpuModel(GPUS["h100"], MODELS["llama-3.1-8b"])
    top = prof.max_clock_mhz
    i = prof.clocks_mhz.index(top)
    for new, ctx in ((256, 8000), (1024, 12000), (512, 20000)):
        xl, xe = prof.prefill_context_tables(np.array([float(new)]), np.array([float(ctx)]))
        lat = prof.prefill_latency_s(top, new) + xl[0, i]
        want = truth.prefill(top, new, ctx).time_s
        assert abs(lat - want) / want < 0.2, (new, ctx, lat, want)
        # a hit is dearer than the same new tokens alone, cheaper than the whole prompt
        assert prof.prefill_latency_s(top, new) < lat < prof.prefill_latency_s(top, new + ctx)
        e = prof.prefill_energy_j(top, new) + xe[0, i]
        assert prof.prefill_energy_j(top, new) < e < prof.prefill_energy_j(top, new + ctx)
