"""The closed-form steady decode batch against a brute-force root search."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from voltana.predictor.profile import Profile, default_profile
from voltana.services.freqctl.controllers.steady import DecodeSteadyState

PROFILES = [default_profile("h100", "llama-3.1-8b"), default_profile("a100", "llama-3.1-8b")]


def _reference(prof: Profile, clock: int, b0: float, kv_per: float, rate: float) -> float:
    """Walk from b0 (up while B < rate * ITL(B), else down) to where the batch settles."""

    def excess(b: float) -> float:
        return rate * prof.decode_latency_s(clock, b, kv_per * b) - b

    grows = excess(b0) > 1e-9 * b0
    cap = max(float(prof.buckets[-1]), 2.0 * b0)
    pts = [b0]
    for bk in prof.buckets:
        if (b0 < bk < cap) if grows else (0 < bk < b0):
            pts += [float(bk), bk + 1e-7]
    pts = sorted([*pts, cap if grows else 1e-9], reverse=not grows)
    for near, far in itertools.pairwise(pts):
        if (excess(far) <= 0) if grows else (excess(far) > 0):
            lo, hi = sorted((near, far))
            for _ in range(80):
                mid = 0.5 * (lo + hi)
                lo, hi = (mid, hi) if excess(mid) > 0 else (lo, mid)
            return max(hi, min(b0, 1.0))
    return math.inf if grows else min(b0, 1.0)


@settings(max_examples=60, deadline=None)
@given(
    which=st.sampled_from([0, 1]),
    b0=st.integers(min_value=1, max_value=400),
    kv_per=st.floats(min_value=20.0, max_value=6000.0),
    cur_pos=st.floats(min_value=0.0, max_value=1.0),
)
def test_closed_form_matches_a_root_search(
    which: int, b0: int, kv_per: float, cur_pos: float
) -> None:
    prof = PROFILES[which]
    index = np.arange(len(prof.clocks_mhz), dtype=np.int64)
    solver = DecodeSteadyState(prof, index)
    cur = prof.clocks_mhz[int(cur_pos * (len(prof.clocks_mhz) - 1))]
    k0 = kv_per * b0
    itl_cur = prof.decode_latency_s(cur, b0, k0)
    got = solver.solve(float(b0), k0, itl_cur)
    rate = b0 / itl_cur
    for i in range(0, len(prof.clocks_mhz), 5):
        want = _reference(prof, prof.clocks_mhz[i], float(b0), kv_per, rate)
        if math.isinf(want):
            assert math.isinf(got.batch[i])
        else:
            assert got.batch[i] == pytest.approx(want, rel=1e-6, abs=1e-6)
            b, c = got.batch[i], prof.clocks_mhz[i]
            # Power at the settled batch is the profile's own (a batch settled on a step
            # between buckets is priced just past it, in the upper bucket).
            assert any(
                got.power_w[i] == pytest.approx(prof.decode_power_w(c, x, kv_per * x), rel=1e-7)
                for x in (b, b + 1e-7)
            )
    # The clock running the batch now keeps it.
    assert got.batch[prof.clocks_mhz.index(cur)] == pytest.approx(b0)


def test_without_a_current_clock_the_batch_stays() -> None:
    prof = PROFILES[0]
    solver = DecodeSteadyState(prof, np.arange(len(prof.clocks_mhz), dtype=np.int64))
    got = solver.solve(24.0, 24_000.0, None)
    assert (got.batch == 24.0).all()
    want = [prof.decode_power_w(c, 24, 24_000) for c in prof.clocks_mhz]
    assert got.power_w == pytest.approx(want, rel=1e-9)
