"""Controller properties: feasibility, fail-safe, energy vs. EcoFreq, the factory and static policies."""

from __future__ import annotations

import math

import msgspec
import numpy as np
import pytest
from freqctl_helpers import PROFILES, cfg, decoding, fits, predicted
from hypothesis import given, settings
from hypothesis import strategies as st
from voltana.common.errors import ConfigError
from voltana.predictor.profile import Profile
from voltana.schemas.clock import ClockDecision
from voltana.schemas.config import SloConfig
from voltana.services.freqctl.controllers import (
    POLICIES,
    ControlInput,
    EcoFreqController,
    VoltanaController,
    VoltanaTuning,
    make_controller,
    to_event,
)


@st.composite
def inputs(draw: st.DrawFn, busy: bool = True) -> ControlInput:
    role = draw(st.sampled_from(["decode", "prefill", "unified"]))
    batch = draw(st.integers(1 if busy else 0, 600))
    ctx = draw(st.integers(1, 4000))
    return ControlInput(
        instance=draw(st.sampled_from(["a", "b"])),
        role=role,
        t=100.0,
        queue_reqs=0,
        running_reqs=batch if busy else 0,
        batch_size=batch + draw(st.sampled_from([0.0, 0.5])) if batch else 0.0,
        kv_tokens=float(batch * ctx),
        prefill_tokens=float(draw(st.integers(1 if busy else 0, 40_000))),
        oldest_wait_s=draw(st.floats(0.0, 0.7)),
        current_clock_mhz=draw(st.sampled_from([None, None, 345, 990, 1410])),
    )


slos = st.builds(
    SloConfig,
    ttft_s=st.floats(0.05, 3.0),
    itl_s=st.floats(0.005, 0.2),
    margin=st.floats(0.0, 0.3),
)


@settings(max_examples=250, deadline=None)
@given(
    prof=st.sampled_from(PROFILES),
    inp=inputs(),
    slo=slos,
    policy=st.sampled_from(["voltana", "ecofreq", "ecofreq-2level"]),
)
def test_never_picks_a_predicted_miss_while_a_feasible_clock_exists(
    prof: Profile, inp: ControlInput, slo: SloConfig, policy: str
) -> None:
    c = cfg(policy, slo=slo)
    ctl = make_controller(c, prof)
    d = ctl.decide(inp, now=100.05)
    allowed = prof.clocks_mhz
    if policy == "ecofreq-2level":
        assert isinstance(ctl, EcoFreqController)
        allowed = tuple(int(x) for x, m in zip(ctl.core.clocks, ctl.levels, strict=True) if m)
    any_fit = any(fits(c, inp, predicted(prof, inp, k)) for k in allowed)
    assert d.clock_mhz in prof.clocks_mhz and d.reason
    if any_fit:
        assert fits(c, inp, predicted(prof, inp, d.clock_mhz)), d
        assert d.rule in ("feasible", "hold")  # hold: a damped clock that still fits
    else:
        assert d.rule == "infeasible"


@settings(max_examples=250, deadline=None)
@given(prof=st.sampled_from(PROFILES), inp=inputs(), slo=slos)
def test_voltana_never_spends_more_than_ecofreq(
    prof: Profile, inp: ControlInput, slo: SloConfig
) -> None:
    check_not_costlier(prof, inp, slo)


def check_not_costlier(prof: Profile, inp: ControlInput, slo: SloConfig) -> None:
    """voltana's clock costs no more than EcoFreq's whenever EcoFreq's is feasible.

    Both are judged by voltana's own account of a clock: decode latency at the batch
    the clock settles at, energy as the meter counts it (VoltanaController.predict).
    No damping (hysteresis, dwell) so that one decision is compared with one.
    """
    eco = make_controller(cfg("ecofreq", slo=slo), prof).decide(inp, 100.0)
    # busy_alpha 0: the sample decide() folds in leaves the cost predict() saw unchanged.
    ctl = VoltanaController(
        cfg("voltana", slo=slo, hysteresis_mhz=0, min_dwell_s=0.0),
        prof,
        VoltanaTuning(busy_alpha=0.0),
    )
    dec_l, pre_l, cost = ctl.predict(inp)
    itl_b, pre_b = ctl.core.budgets(inp)
    fits = (dec_l <= itl_b) & (pre_l <= pre_b)
    volt = ctl.decide(inp, 100.0)
    clocks = [int(c) for c in ctl.core.clocks]
    i_eco, i_volt = clocks.index(eco.clock_mhz), clocks.index(volt.clock_mhz)
    if eco.rule == "feasible" and fits[i_eco]:
        assert volt.rule == "feasible" and fits[i_volt]
        assert cost[i_volt] <= cost[i_eco] + 1e-9 * abs(cost[i_eco])
    if inp.current_clock_mhz is None:
        # Without a known clock voltana judges decode at the current batch, like EcoFreq.
        assert (eco.rule == "feasible") == (volt.rule == "feasible")


@settings(max_examples=150, deadline=None)
@given(
    prof=st.sampled_from(PROFILES),
    inp=inputs(),
    queue=st.integers(1, 50),
    policy=st.sampled_from(["voltana", "ecofreq", "ecofreq-2level"]),
)
def test_non_empty_queue_yields_the_safe_clock(
    prof: Profile, inp: ControlInput, queue: int, policy: str
) -> None:
    inp = msgspec.structs.replace(inp, queue_reqs=queue, current_clock_mhz=prof.min_clock_mhz)
    d = make_controller(cfg(policy), prof).decide(inp, 100.0)
    assert d.rule == "queue"
    if policy != "voltana":
        assert d.clock_mhz == prof.max_clock_mhz
        return
    # voltana: the fastest predicted latency, at the lowest energy among equally fast clocks
    # (above the power-capped effective clock a higher lock buys nothing).
    lat = [
        sum(predicted(prof, inp, k)[:2])
        if inp.role != "unified"
        else max(predicted(prof, inp, k)[:2])
        for k in prof.clocks_mhz
    ]
    chosen = lat[prof.clocks_mhz.index(d.clock_mhz)]
    assert chosen <= min(lat) * 1.005 + 1e-12


@settings(max_examples=100, deadline=None)
@given(
    prof=st.sampled_from(PROFILES),
    inp=inputs(busy=False),
    age=st.floats(1.0001, 1e6),
    policy=st.sampled_from(["voltana", "ecofreq", "ecofreq-2level"]),
)
def test_stale_telemetry_yields_max_clock(
    prof: Profile, inp: ControlInput, age: float, policy: str
) -> None:
    d = make_controller(cfg(policy, stale_after_s=1.0), prof).decide(inp, inp.t + age)
    assert (d.clock_mhz, d.rule) == (prof.max_clock_mhz, "stale")


@pytest.mark.parametrize("policy", ["voltana", "ecofreq", "ecofreq-2level"])
@pytest.mark.parametrize(
    ("field", "value", "rule"),
    [
        ("batch_size", None, "missing"),
        ("kv_tokens", float("nan"), "missing"),
        ("queue_reqs", None, "missing"),
        ("prefill_tokens", -5.0, "missing"),
        ("oldest_wait_s", None, "missing"),
        ("healthy", False, "unhealthy"),
        ("t", float("nan"), "stale"),
    ],
)
def test_missing_or_bad_data_yields_max_clock(
    policy: str, field: str, value: object, rule: str
) -> None:
    prof = PROFILES[0]
    inp = decoding(4, 4000, instance="u", role="unified", prefill_tokens=100)
    d = make_controller(cfg(policy), prof).decide(
        msgspec.structs.replace(inp, **{field: value}), 0.1
    )
    assert (d.clock_mhz, d.rule) == (prof.max_clock_mhz, rule)


@settings(max_examples=60, deadline=None)
@given(
    prof=st.sampled_from(PROFILES),
    seq=st.lists(inputs(), min_size=2, max_size=12),
    dwell=st.floats(0.0, 2.0),
    hyst=st.integers(0, 400),
)
def test_stateful_voltana_never_holds_a_predicted_miss(
    prof: Profile, seq: list[ControlInput], dwell: float, hyst: int
) -> None:
    c = cfg(min_dwell_s=dwell, hysteresis_mhz=hyst)
    ctl = make_controller(c, prof)
    clock: int | None = None
    for i, inp in enumerate(seq):
        t = 0.05 * i
        inp = msgspec.structs.replace(inp, instance="x", t=t, current_clock_mhz=clock)
        d = ctl.decide(inp, t)
        if any(fits(c, inp, predicted(prof, inp, k)) for k in prof.clocks_mhz):
            assert fits(c, inp, predicted(prof, inp, d.clock_mhz)), (i, d)
        clock = d.clock_mhz


@pytest.mark.parametrize("policy", POLICIES)
def test_factory_builds_every_policy(policy: str) -> None:
    prof = PROFILES[0]
    ctl = make_controller(cfg(policy, static_clock_mhz=1003), prof)
    assert ctl.name == policy
    d = ctl.decide(decoding(8, 8000, instance="i"), 0.0)
    assert d.clock_mhz in prof.clocks_mhz and d.reason
    ctl.reset()


def test_static_policies() -> None:
    prof = PROFILES[0]
    inp = ControlInput(instance="i", role="decode", t=0.0, queue_reqs=9)
    assert make_controller(cfg("static-max"), prof).decide(inp, 99.0).clock_mhz == 1980
    assert make_controller(cfg("static-min"), prof).decide(inp, 99.0).clock_mhz == 345
    assert (
        make_controller(cfg("static", static_clock_mhz=1003), prof).decide(inp, 0).clock_mhz == 1005
    )
    dflt = make_controller(cfg("static"), prof).decide(inp, 0.0)
    assert dflt.default_clocks and dflt.clock_mhz == 1980
    with pytest.raises(ConfigError, match="unknown controller policy"):
        make_controller(cfg("bogus"), prof)


@settings(max_examples=80, deadline=None)
@given(
    inp=inputs(),
    lo=st.integers(345, 1980),
    hi=st.integers(345, 1980),
    policy=st.sampled_from(["voltana", "ecofreq"]),
)
def test_clock_range_is_respected(inp: ControlInput, lo: int, hi: int, policy: str) -> None:
    lo, hi = min(lo, hi), max(lo, hi)
    prof = PROFILES[0]
    if not any(lo <= k <= hi for k in prof.clocks_mhz):
        return
    d = make_controller(cfg(policy, min_clock_mhz=lo, max_clock_mhz=hi), prof).decide(inp, 100.0)
    assert lo <= d.clock_mhz <= hi


def test_decision_event_round_trips() -> None:
    prof = PROFILES[0]
    inp = decoding(8, 800, instance="d0", t=10.0)
    d = make_controller(cfg(), prof).decide(inp, 10.25)
    ev = to_event(d, inp, policy="voltana", t_ns=1, now=10.25)
    assert isinstance(ev, ClockDecision) and ev.clock_mhz == d.clock_mhz
    assert ev.reason.startswith(d.rule) and math.isclose(ev.telemetry_age_s or 0, 0.25)
    assert np.isfinite(ev.predicted_power_w or float("nan"))


@st.composite
def random_profiles(draw: st.DrawFn) -> Profile:
    """Arbitrary valid profiles: a few profiled clocks, random non-negative coefficients."""
    from voltana.predictor.profile_format import (
        DecodeBucketFit,
        DecodeClockFit,
        IdlePoint,
        PrefillClockFit,
        ProfileFile,
    )

    table = list(range(300, 2001, 50))
    prof_clocks = sorted(draw(st.sets(st.sampled_from(table), min_size=2, max_size=4)))
    buckets = [8, 16, 128, 256]
    coef = st.floats(0.0, 1.0)

    def pre(c: int) -> PrefillClockFit:
        return PrefillClockFit(
            clock_mhz=c,
            latency_s_per_token=draw(coef) * 1e-4,
            latency_s_per_token2=draw(coef) * 1e-9,
            latency_s=draw(coef) * 0.02,
            energy_j_per_token=draw(coef) * 0.05,
            energy_j_per_token2=draw(coef) * 1e-7,
            energy_j=draw(coef) * 3,
        )

    def dec(c: int) -> DecodeClockFit:
        return DecodeClockFit(
            clock_mhz=c,
            buckets=[
                DecodeBucketFit(
                    bucket=b,
                    latency_s_per_req=draw(coef) * 1e-4,
                    latency_s_per_kv_token=draw(coef) * 1e-7,
                    latency_s=draw(coef) * 0.03,
                    energy_j_per_req=draw(coef) * 0.02,
                    energy_j_per_kv_token=draw(coef) * 1e-5,
                    energy_j=draw(coef) * 5,
                )
                for b in buckets
            ],
        )

    return Profile(
        ProfileFile(
            gpu="g",
            model="m",
            source="synthetic",
            supported_clocks_mhz=table,
            decode_buckets=buckets,
            prefill_max_batched_tokens=8192,
            prefill=[pre(c) for c in prof_clocks],
            decode=[dec(c) for c in prof_clocks],
            idle=[IdlePoint(clock_mhz=c, power_w=draw(st.floats(20, 150))) for c in prof_clocks],
        )
    )


@settings(max_examples=200, deadline=None)
@given(prof=random_profiles(), inp=inputs(), slo=slos)
def test_properties_hold_on_arbitrary_profiles(
    prof: Profile, inp: ControlInput, slo: SloConfig
) -> None:
    c_eco, c_volt = cfg("ecofreq", slo=slo), cfg("voltana", slo=slo)
    eco = make_controller(c_eco, prof).decide(inp, 100.0)
    volt = make_controller(c_volt, prof).decide(inp, 100.0)
    any_fit = any(fits(c_eco, inp, predicted(prof, inp, k)) for k in prof.clocks_mhz)
    for d in (eco, volt):
        assert d.clock_mhz in prof.clocks_mhz
        assert d.predicted_latency_s is not None and math.isfinite(d.predicted_latency_s)
        assert d.predicted_power_w is not None and math.isfinite(d.predicted_power_w)
        if any_fit:
            assert fits(c_eco, inp, predicted(prof, inp, d.clock_mhz)), d
    check_not_costlier(prof, inp, slo)
    stale = make_controller(c_volt, prof).decide(inp, 1e9)
    assert stale.clock_mhz == prof.max_clock_mhz
