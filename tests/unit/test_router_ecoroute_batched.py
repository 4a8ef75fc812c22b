"""EcoRoute evaluates all candidates in one vectorised step: the same answers, bit for bit.

The reference below is the per-candidate what-if written out with the scalar
profile lookups; the policy's batched evaluation must agree with it exactly.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from voltana.predictor.profile import Profile, default_profile
from voltana.schemas.config import SloConfig
from voltana.services.router.policies import ClusterView, InstanceView, RouteRequest
from voltana.services.router.policies.ecoroute import EcoRoutePolicy, WhatIf, cheapest_within

PROF = default_profile("h100", "llama-3.1-8b")
SLO = SloConfig(ttft_s=0.5, itl_s=0.03)


def _reference(prof: Profile, v: InstanceView, req: RouteRequest, now: float) -> WhatIf:
    clocks = tuple(prof.clocks_mhz)
    idle_w = float(prof.idle_power_table_w().min())
    if v.role == "decode":
        budget = SLO.itl_s * (1.0 - SLO.margin)
        b, kv = v.batch_size, v.kv_tokens_est
        kv1 = kv + max(req.input_tokens, 0)
        lat1, en1 = prof.decode_latency_table_s(b + 1, kv1), prof.decode_energy_table_j(b + 1, kv1)
        ch1 = cheapest_within(clocks, lat1, en1, budget)
        if b <= 0:
            f0, e0 = prof.min_clock_mhz, idle_w * ch1.latency_s
        else:
            ch0 = cheapest_within(
                clocks,
                prof.decode_latency_table_s(b, kv),
                prof.decode_energy_table_j(b, kv),
                budget,
            )
            f0, e0 = ch0.clock_mhz, ch0.energy_j
        added = (ch1.energy_j - e0) * max(req.max_new_tokens, 1)
        return WhatIf(
            v.instance, ch1.feasible, f0, ch1.clock_mhz, ch1.latency_s, float(lat1[-1]), added, b
        )
    full = SLO.ttft_s * (1.0 - SLO.margin)

    def tables(tokens: float) -> tuple[np.ndarray, np.ndarray]:
        lat = prof.prefill_latency_table_s(tokens)
        return lat, prof.prefill_energy_table_j(tokens) - idle_w * lat

    q = max(v.queued_prefill_tokens, 0)
    f0, i0, e0 = prof.min_clock_mhz, 0, 0.0
    if q > 0:
        ch0 = cheapest_within(clocks, *tables(q), full - v.oldest_wait_s)
        f0, i0, e0 = ch0.clock_mhz, ch0.index, ch0.energy_j
    lat1, en1 = tables(q + max(req.input_tokens, 1))
    budget = full - max(now - req.arrival_t, 0.0)
    ch1 = cheapest_within(clocks[i0:], lat1[i0:], en1[i0:], budget)
    return WhatIf(
        v.instance,
        ch1.feasible,
        f0,
        ch1.clock_mhz,
        ch1.latency_s,
        float(lat1[-1]),
        ch1.energy_j - e0,
        q,
    )


decode_view = st.builds(
    lambda i, b, ctx, telemetry: InstanceView(
        instance=f"d{i}",
        role="decode",
        in_flight_requests=b,
        in_flight_tokens=b * ctx,
        running_batch=b if telemetry else None,
        kv_tokens=b * ctx if telemetry else None,
    ),
    st.integers(0, 999),
    st.integers(0, 600),
    st.integers(10, 8000),
    st.booleans(),
)
prefill_view = st.builds(
    lambda i, q, wait: InstanceView(
        instance=f"p{i}", role="prefill", queued_prefill_tokens=q, oldest_wait_s=wait
    ),
    st.integers(0, 999),
    st.integers(0, 60_000),
    st.floats(0.0, 0.6),
)


@settings(max_examples=150, deadline=None)
@given(
    views=st.lists(
        st.one_of(decode_view, prefill_view),
        min_size=1,
        max_size=12,
        unique_by=lambda v: v.instance,
    ),
    input_tokens=st.integers(0, 20_000),
    max_new=st.integers(0, 2000),
    waited=st.floats(0.0, 0.5),
)
def test_batched_whatifs_equal_the_per_candidate_reference(
    views: list[InstanceView], input_tokens: int, max_new: int, waited: float
) -> None:
    policy = EcoRoutePolicy(PROF, SLO)
    now = 10.0
    req = RouteRequest(
        request_id="r", input_tokens=input_tokens, max_new_tokens=max_new, arrival_t=now - waited
    )
    got = policy.evaluate(ClusterView(views), req, now)
    want = [_reference(PROF, v, req, now) for v in views]
    assert got == want


def test_batched_tables_equal_the_scalar_ones() -> None:
    b = np.array([0, 1, 3, 8, 9, 129, 300, 700], dtype=float)
    k = b * 1234.0
    lat, en = PROF.decode_tables(b, k)
    for i in range(len(b)):
        assert (lat[i] == PROF.decode_latency_table_s(b[i], k[i])).all()
        assert (en[i] == PROF.decode_energy_table_j(b[i], k[i])).all()
    t = np.array([0, 1, 500, 8191, 8192, 8193, 16384, 40_000], dtype=float)
    lat, en = PROF.prefill_tables(t)
    for i in range(len(t)):
        assert (lat[i] == PROF.prefill_latency_table_s(t[i])).all()
        assert (en[i] == PROF.prefill_energy_table_j(t[i])).all()
    with pytest.raises(ValueError):
        PROF.decode_tables(np.array([-1.0]), np.array([0.0]))
    with pytest.raises(ValueError):
        PROF.prefill_tables(np.array([np.nan]))
