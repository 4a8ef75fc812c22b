"""The one fitting routine: exact NNLS, robustness to outliers, recovery of known profiles."""

from __future__ import annotations

import itertools

import msgspec
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from voltana.predictor.buckets import default_buckets
from voltana.predictor.fitting import fit_profile, nnls, robust_nnls
from voltana.predictor.measurements import (
    DecodeSample,
    HardwareInfo,
    IdleSample,
    Measurements,
    PrefillSample,
)
from voltana.predictor.profile import Profile


def _brute_force_rss(x: np.ndarray, y: np.ndarray) -> float:
    """Reference: projected gradient descent run long enough to converge."""
    lip = np.linalg.norm(x, 2) ** 2
    c = np.zeros(x.shape[1])
    for _ in range(20_000):
        c = np.maximum(0.0, c - (x.T @ (x @ c - y)) / lip)
    return float(np.sum((x @ c - y) ** 2))


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**31), n_feat=st.integers(1, 3))
def test_nnls_is_optimal_and_nonnegative(seed: int, n_feat: int) -> None:
    rng = np.random.default_rng(seed)
    x = rng.uniform(0.0, 1.0, size=(12, n_feat))
    y = x @ rng.normal(0.0, 1.0, n_feat) + rng.normal(0.0, 0.1, 12)
    c = nnls(x, y)
    assert (c >= 0).all()
    rss = float(np.sum((x @ c - y) ** 2))
    assert rss <= _brute_force_rss(x, y) + 1e-6


def test_nnls_matches_least_squares_when_unconstrained_optimum_is_positive() -> None:
    rng = np.random.default_rng(3)
    x = np.column_stack([rng.uniform(1, 1000, 50), rng.uniform(1, 1e5, 50), np.ones(50)])
    true = np.array([2e-5, 3e-8, 0.004])
    c = nnls(x, x @ true)
    assert c == pytest.approx(true, rel=1e-6)


@pytest.mark.parametrize("relative", [True, False])
def test_robust_fit_recovers_coefficients_despite_outliers(relative: bool) -> None:
    rng = np.random.default_rng(7)
    b = rng.integers(1, 129, 200).astype(float)
    k = b * rng.uniform(100, 3000, 200)
    x = np.column_stack([b, k, np.ones_like(b)])
    true = np.array([5e-5, 2e-8, 0.007])
    y = (x @ true) * np.exp(rng.normal(0, 0.02, 200))
    y[rng.choice(200, 12, replace=False)] *= 8.0  # stragglers
    c = robust_nnls(x, y, relative=relative)
    assert c == pytest.approx(true, rel=0.08)
    plain = nnls(x, y)
    assert abs(plain[2] - true[2]) > abs(c[2] - true[2])  # the outliers do tilt plain NNLS


def test_robust_fit_clamps_a_negative_truth_to_zero() -> None:
    rng = np.random.default_rng(1)
    t = rng.uniform(10, 8000, 60)
    x = np.column_stack([t, t * t, np.ones_like(t)])
    y = 3e-5 * t - 1e-10 * t * t + 0.01
    c = robust_nnls(x, y)
    assert (c >= 0).all() and c[1] == 0.0


def _synthetic(rng: np.random.Generator, noise: float) -> tuple[Measurements, dict]:
    """Measurements from a known per-clock, per-bucket linear truth."""
    buckets = default_buckets(256)
    clocks = [600, 1000, 1400, 1800]
    truth: dict = {}
    pre, dec, idle = [], [], []
    for c in clocks:
        s = 1800 / c
        truth[("p", c)] = (2e-5 * s, 0.0, 0.004, 0.01 + c * 1e-5, 0.0, 0.5)
        for t in (64, 256, 1024, 2048, 4096, 8192):
            lat = (2e-5 * s * t + 0.004) * np.exp(rng.normal(0, noise))
            en = ((0.01 + c * 1e-5) * t + 0.5) * np.exp(rng.normal(0, noise))
            pre.append(PrefillSample(clock_mhz=c, batched_tokens=t, latency_s=lat, energy_j=en))
        prev = 0
        for i, bk in enumerate(buckets):
            a, beta, g = 4e-5 * s, 1.5e-8, 0.006 + 0.0002 * i
            truth[("d", c, bk)] = (a, beta, g)
            for b in sorted({prev + 1, (prev + 1 + bk) // 2, bk}):
                for ctx in (128, 1024, 2048):
                    kv = b * ctx
                    lat = (a * b + beta * kv + g) * np.exp(rng.normal(0, noise))
                    en = lat * (300 + c / 10)
                    dec.append(
                        DecodeSample(
                            clock_mhz=c, batch_size=b, kv_tokens=kv, latency_s=lat, energy_j=en
                        )
                    )
            prev = bk
        idle.append(IdleSample(clock_mhz=c, power_w=60 + c / 40))
    hw = HardwareInfo(gpu="g", model="m", tp=1, supported_clocks_mhz=list(range(600, 1801, 100)))
    return Measurements(hardware=hw, source="synthetic", prefill=pre, decode=dec, idle=idle), truth


def test_fit_profile_recovers_known_coefficients() -> None:
    m, truth = _synthetic(np.random.default_rng(11), noise=0.01)
    pf = fit_profile(m, buckets=default_buckets(256), heldout_fraction=0.2, seed=1)
    for p in pf.prefill:
        want = truth[("p", p.clock_mhz)]
        assert p.latency_s_per_token == pytest.approx(want[0], rel=0.05)
        assert p.latency_s == pytest.approx(want[2], rel=0.25, abs=1e-3)
        assert p.energy_j_per_token == pytest.approx(want[3], rel=0.05)
    for d in pf.decode:
        for b in d.buckets:
            a, beta, g = truth[("d", d.clock_mhz, b.bucket)]
            pred = b.latency_s_per_req * b.bucket + b.latency_s_per_kv_token * b.bucket * 1024
            pred += b.latency_s
            assert pred == pytest.approx(a * b.bucket + beta * b.bucket * 1024 + g, rel=0.03)
    assert pf.accuracy is not None
    assert pf.accuracy.decode_latency_mae_pct < 2.0 and pf.accuracy.prefill_latency_mae_pct < 2.0
    assert pf.accuracy.decode_points > 0 and pf.accuracy.prefill_points > 0
    prof = Profile(pf)
    # Between profiled clocks the prediction is the linear blend of its neighbours.
    mid = prof.decode_latency_s(1200, 20, 20_000)
    ends = prof.decode_latency_s(1000, 20, 20_000), prof.decode_latency_s(1400, 20, 20_000)
    assert mid == pytest.approx(sum(ends) / 2)


def test_heldout_points_are_not_used_for_fitting() -> None:
    from voltana.predictor.fitting import split_heldout

    m, _ = _synthetic(np.random.default_rng(5), noise=0.01)
    _, test = split_heldout(m, 0.3, np.random.default_rng(2), default_buckets(256))
    held = {id(s) for s in test.decode}
    assert held
    # Corrupt exactly the held-out decode points: the fit must not move, the accuracy must.
    corrupt = [
        msgspec.structs.replace(s, latency_s=s.latency_s * 3) if id(s) in held else s
        for s in m.decode
    ]
    pf_a = fit_profile(m, buckets=default_buckets(256), heldout_fraction=0.3, seed=2)
    pf_b = fit_profile(
        msgspec.structs.replace(m, decode=corrupt),
        buckets=default_buckets(256),
        heldout_fraction=0.3,
        seed=2,
    )
    assert pf_a.decode == pf_b.decode
    assert pf_a.accuracy is not None and pf_b.accuracy is not None
    assert pf_a.accuracy.decode_latency_mae_pct < 2.0 < pf_b.accuracy.decode_latency_mae_pct


def test_missing_buckets_borrow_a_neighbour_and_every_lookup_works() -> None:
    m, _ = _synthetic(np.random.default_rng(2), noise=0.01)
    only_small = [d for d in m.decode if d.batch_size <= 40]
    m2 = msgspec.structs.replace(m, decode=only_small)
    prof = Profile(fit_profile(m2, buckets=default_buckets(256), heldout_fraction=0.0))
    for b, c in itertools.product((1, 50, 200, 256, 1000), (600, 1234, 1800)):
        assert prof.decode_latency_s(c, b, b * 500) > 0


def test_fit_needs_every_kind_of_measurement() -> None:
    m, _ = _synthetic(np.random.default_rng(2), noise=0.01)
    with pytest.raises(ValueError, match="idle"):
        fit_profile(msgspec.structs.replace(m, idle=[]), buckets=default_buckets(256))
