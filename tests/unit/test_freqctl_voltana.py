"""The voltana controller in scenarios: dwell and parking, feedback, power caps, prefill cost, two levels."""

from __future__ import annotations

import msgspec
import pytest
from freqctl_helpers import PROFILES, cfg, decoding, prefilling
from voltana.schemas.config import SloConfig
from voltana.services.freqctl.controllers import (
    VoltanaController,
    VoltanaTuning,
    make_controller,
)


def test_idle_parks_after_dwell_and_wakes_at_once() -> None:
    prof = PROFILES[0]
    ctl = make_controller(cfg(min_dwell_s=0.5, hysteresis_mhz=45), prof)
    busy = decoding(256, 256 * 1500)
    first = ctl.decide(busy, 0.0)
    assert first.rule in ("feasible", "infeasible") and first.clock_mhz > prof.min_clock_mhz
    idle = decoding(0, 0, t=0.1, current_clock_mhz=first.clock_mhz)
    parked = ctl.decide(idle, 0.1)  # parking does not wait for the dwell
    assert (parked.rule, parked.clock_mhz) == ("idle", prof.min_clock_mhz)
    # Work arrives right after parking (inside the dwell): the raise is not delayed.
    woke = ctl.decide(msgspec.structs.replace(busy, t=0.11), 0.11)
    assert woke.clock_mhz == first.clock_mhz and woke.rule != "hold"


def test_hysteresis_and_dwell_hold_only_feasible_clocks() -> None:
    prof = PROFILES[0]
    c = cfg(min_dwell_s=1.0, hysteresis_mhz=200)
    ctl = make_controller(c, prof)
    heavy = decoding(120, 120 * 2000)
    a = ctl.decide(msgspec.structs.replace(heavy, queue_reqs=5), 0.0)  # fastest clock
    light = msgspec.structs.replace(
        heavy, t=0.1, batch_size=8, kv_tokens=8 * 200, running_reqs=8, current_clock_mhz=a.clock_mhz
    )
    b = ctl.decide(light, 0.1)
    assert b.rule == "hold" and b.clock_mhz == a.clock_mhz  # lowering waits for the dwell
    c2 = ctl.decide(msgspec.structs.replace(light, t=1.2), 1.2)
    assert c2.clock_mhz < a.clock_mhz and c2.rule == "feasible"


def test_residual_correction_raises_the_clock_when_the_profile_is_optimistic() -> None:
    prof = PROFILES[0]
    slo = SloConfig(ttft_s=0.6, itl_s=0.02, margin=0.1)
    ctl = VoltanaController(cfg(min_dwell_s=0.0, hysteresis_mhz=0, slo=slo), prof)
    inp = decoding(64, 64 * 1500)
    base = ctl.decide(inp, 0.0)
    clock = base.clock_mhz
    for i in range(1, 15):  # the real engine runs 25% slower than the profile says
        truth = prof.decode_latency_s(clock, 64, 64 * 1500) * 1.25
        d = ctl.decide(
            msgspec.structs.replace(inp, t=0.1 * i, observed_itl_s=truth, current_clock_mhz=clock),
            0.1 * i,
        )
        clock = d.clock_mhz
    assert ctl.state_of("d").decode_correction == pytest.approx(1.25, rel=0.05)
    assert clock > base.clock_mhz
    assert base.predicted_latency_s is not None and base.predicted_latency_s * 1.25 > 0.018
    assert prof.decode_latency_s(clock, 64, 64 * 1500) * 1.25 <= 0.02 * 0.9
    # The same observation twice (same telemetry time) is folded in only once.
    before = ctl.state_of("d").decode_correction
    again = msgspec.structs.replace(inp, t=2.0, observed_itl_s=1.0, current_clock_mhz=clock)
    ctl.decide(again, 2.1)
    once = ctl.state_of("d").decode_correction
    ctl.decide(again, 2.2)
    assert ctl.state_of("d").decode_correction == once != before
    assert ctl.state_of("other").decode_correction == 1.0  # per instance


def test_slo_slack_feedback_tightens_fast_and_relaxes_slowly() -> None:
    prof = PROFILES[0]
    ctl = VoltanaController(cfg(), prof)
    inp = prefilling(4000, observed_ttft_s=0.9)
    ctl.decide(inp, 0.0)
    tight = ctl.state_of("p").ttft_scale
    assert tight < 1.0
    ctl.decide(msgspec.structs.replace(inp, t=0.1, observed_ttft_s=0.05), 0.1)
    assert tight < ctl.state_of("p").ttft_scale < 1.0
    d = ctl.decide(msgspec.structs.replace(inp, t=0.2, observed_ttft_s=None), 0.2)
    assert d.budget_s is not None and d.budget_s < 0.6 * 0.9
    # Inside the margin (above the 0.54 s target, under the 0.6 s SLO): left alone.
    held = ctl.state_of("p").ttft_scale
    ctl.decide(msgspec.structs.replace(inp, t=0.3, observed_ttft_s=0.57), 0.3)
    assert ctl.state_of("p").ttft_scale == held


def test_power_cap_aware_fastest_clock_is_below_max_for_capped_prefill() -> None:
    prof = PROFILES[0]  # H100: a long prefill runs power-capped well below 1980 MHz
    inp = prefilling(8192, queue_reqs=3)
    d = make_controller(cfg(), prof).decide(inp, 0.0)
    assert d.rule == "queue" and d.clock_mhz < prof.max_clock_mhz
    lat = prof.prefill_latency_table_s(8192)
    assert prof.prefill_latency_s(d.clock_mhz, 8192) <= float(lat.min()) * 1.005
    # Same speed for no more energy than the maximum clock (up to the fit's noise).
    assert prof.prefill_energy_j(d.clock_mhz, 8192) <= prof.prefill_energy_j(1980, 8192) * 1.01
    assert prof.prefill_effective_clock_mhz(1980) < 1980


def test_decode_is_judged_at_the_batch_a_clock_settles_at() -> None:
    prof = PROFILES[0]
    # 32 requests at 1k context, running at 1980 MHz: a slow clock lengthens every
    # iteration, requests finish later, and the batch grows until B / ITL matches the
    # token throughput again.
    inp = decoding(32, 32_000, current_clock_mhz=1980)
    eco = make_controller(cfg("ecofreq"), prof).decide(inp, 0.0)
    volt = VoltanaController(cfg(), prof)
    d = volt.decide(inp, 0.0)
    assert d.rule == "feasible" and d.clock_mhz > eco.clock_mhz
    # EcoFreq's clock fits only at today's batch; at its steady batch it misses.
    b = volt.steady_decode(inp).batch
    i_eco = list(volt.core.clocks).index(eco.clock_mhz)
    assert b[i_eco] > 40
    assert prof.decode_latency_s(eco.clock_mhz, b[i_eco], b[i_eco] * 1000) > 0.03 * 0.9
    assert d.predicted_latency_s is not None and d.predicted_latency_s <= 0.027
    assert d.predicted_latency_s >= prof.decode_latency_s(d.clock_mhz, 32, 32_000) - 1e-12
    # At the current clock the steady batch is the current one.
    assert b[list(volt.core.clocks).index(1980)] == pytest.approx(32.0)


def test_prefill_energy_counts_from_the_parked_idle_baseline() -> None:
    prof = PROFILES[0]
    inp = prefilling(8000)
    eco = make_controller(cfg("ecofreq"), prof).decide(inp, 0.0)
    volt = make_controller(cfg(), prof).decide(inp, 0.0)
    base = prof.idle_power_w(prof.min_clock_mhz)

    def above_idle(c: int) -> float:
        return prof.prefill_energy_j(c, 8000) - base * prof.prefill_latency_s(c, 8000)

    assert volt.clock_mhz != eco.clock_mhz
    assert above_idle(volt.clock_mhz) < above_idle(eco.clock_mhz)
    assert min(
        above_idle(c) for c in prof.clocks_mhz if prof.prefill_latency_s(c, 8000) <= 0.54
    ) == pytest.approx(above_idle(volt.clock_mhz))


def test_prefill_cost_moves_from_the_parked_baseline_to_whole_energy_under_load() -> None:
    prof = PROFILES[0]
    busy = prefilling(8000)
    ctl = VoltanaController(cfg(), prof)
    first = ctl.predict(busy)[2]
    for i in range(60):  # a minute of samples, all with work in hand
        ctl.decide(msgspec.structs.replace(busy, t=float(i)), float(i))
    assert ctl.state_of("p").busy > 0.99
    _, lat, cost = ctl.predict(busy)
    whole = prof.prefill_energy_table_j(8000)[ctl.core.index]
    assert cost == pytest.approx(whole, rel=0.01)  # saturated: EcoFreq's whole energy
    base = prof.idle_power_w(prof.min_clock_mhz)
    assert first == pytest.approx(whole - base * lat)  # idle-mostly: above the parked floor
    # Idle samples bring the parked baseline back.
    idle = msgspec.structs.replace(busy, prefill_tokens=0, running_reqs=0)
    for i in range(60, 120):
        ctl.decide(msgspec.structs.replace(idle, t=float(i)), float(i))
    assert ctl.state_of("p").busy < 0.01


def test_two_level_uses_two_clocks() -> None:
    prof = PROFILES[1]  # A100: 1005 and 1410 MHz, as published
    ctl = make_controller(cfg("ecofreq-2level"), prof)
    seen = set()
    for b in (1, 16, 64, 128, 256, 512):
        for ctx in (100, 1000, 3000):
            seen.add(ctl.decide(decoding(b, b * ctx), 0.0).clock_mhz)
    assert seen == {1005, 1410}


def test_prefill_queue_lookahead_budgets_the_whole_backlog() -> None:
    prof = PROFILES[0]
    ctl = VoltanaController(cfg(), prof, VoltanaTuning(prefill_queue_lookahead=True))
    small = prefilling(3000, queue_reqs=2, oldest_wait_s=0.05)
    d = ctl.decide(small, 0.0)
    assert d.rule == "feasible" and d.clock_mhz < 1500
    assert prof.prefill_latency_s(d.clock_mhz, 3000) <= 0.6 * 0.9 - 0.05
    big = msgspec.structs.replace(small, instance="q", prefill_tokens=60_000, queue_reqs=20)
    assert ctl.decide(big, 0.0).rule == "infeasible"
    # Decode queues still go to the safe clock.
    dec = decoding(8, 800, queue_reqs=1)
    assert ctl.decide(dec, 0.0).rule == "queue"
