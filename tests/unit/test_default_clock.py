"""The ``default`` clock policy (no lock): boost under load, cap throttling, and an idle
GPU that holds its boost clock after work ends: while the serving process lives (the
GPUs' default, measured on the H200), or for a finite hold before it decays to its floor
(the physics of ``--default-idle-hold-s``, tested here with the earlier 5 s / 1 s)."""

from __future__ import annotations

import itertools
import json
import math

import msgspec
import pytest
from voltana.common.errors import ConfigError
from voltana.groundtruth.default_clock import (
    default_idle_clock_mhz,
    default_idle_energy_j,
    default_idle_power_w,
)
from voltana.groundtruth.gpu_clock import idle_power_w
from voltana.groundtruth.gpu_model import GPUS, MODELS, GpuModel
from voltana.predictor.profile import Profile
from voltana.schemas.config import SloConfig
from voltana.sim.config import ClusterSpec, SimConfig, config_params
from voltana.sim.policies import POLICIES
from voltana.sim.runner import evaluate, profile_for, run_policy
from voltana.sim.workload import SimRequest, Workload

G = GPUS["h100"]
# a finite hold and decay, to test the decay physics (the GPUs' own hold is unbounded)
G5 = msgspec.structs.replace(G, default_idle_hold_s=5.0, default_idle_decay_s=1.0)
H100 = GpuModel(G, MODELS["llama-3.1-8b"])
CFG = SimConfig(
    cluster=ClusterSpec(n_prefill=1, n_decode=1), slo=SloConfig(ttft_s=1.0, itl_s=0.05), noise=0.0
)
CFG5 = msgspec.structs.replace(CFG, default_idle_hold_s=5.0, default_idle_decay_s=1.0)


def _wl(*reqs: tuple[float, int, int]) -> Workload:
    return Workload("t", tuple(SimRequest(f"r{i}", t, n, o) for i, (t, n, o) in enumerate(reqs)))


@pytest.fixture(scope="module")
def profile() -> Profile:
    return profile_for(CFG, quick=True)


def test_the_gpus_hold_their_boost_clock_while_the_worker_lives() -> None:
    """Measured on the H200 (assumed the same on the H100 and A100): with a CUDA context
    open the clock never leaves the maximum, however long the GPU idles."""
    for name in ("h100", "a100", "h200"):
        g = GPUS[name]
        assert math.isinf(g.default_idle_hold_s)
        for age in (0.0, 5.0, 60.0, 3600.0, 1e9):
            assert default_idle_clock_mhz(g, age) == g.max_clock_mhz
            assert default_idle_power_w(g, age) == pytest.approx(g.idle_max_clock_w)
        # a day of idle costs the held clock's idle power, in closed form
        e = default_idle_energy_j(g, 0.0, 86400.0)
        assert e == pytest.approx(86400.0 * g.idle_max_clock_w, rel=1e-12)
        assert math.isfinite(default_idle_energy_j(g, 1e9, 1e9 + 10))


def test_idle_clock_holds_then_decays_to_the_floor() -> None:
    G = G5
    hold, tau = G.default_idle_hold_s, G.default_idle_decay_s
    assert hold > 0 and tau > 0
    assert default_idle_clock_mhz(G, 0.0) == G.max_clock_mhz
    assert default_idle_clock_mhz(G, hold) == G.max_clock_mhz
    assert default_idle_power_w(G, 0.0) == pytest.approx(G.idle_max_clock_w)
    mid = default_idle_clock_mhz(G, hold + tau)
    floor = G.min_clock_mhz
    assert mid == pytest.approx(floor + (G.max_clock_mhz - floor) / math.e)
    assert default_idle_clock_mhz(G, hold + 20 * tau) == pytest.approx(floor, abs=1e-3)
    assert default_idle_power_w(G, 1e6) == pytest.approx(G.idle_min_clock_w)
    # monotone fall after the hold
    ages = [hold + k * tau / 4 for k in range(20)]
    powers = [default_idle_power_w(G, a) for a in ages]
    assert all(a > b for a, b in itertools.pairwise(powers))


def test_idle_energy_is_the_integral_of_the_idle_power() -> None:
    G = G5
    a, b = 1.0, G.default_idle_hold_s + 3 * G.default_idle_decay_s
    n = 20000
    dt = (b - a) / n
    riemann = sum(default_idle_power_w(G, a + (k + 0.5) * dt) for k in range(n)) * dt
    assert default_idle_energy_j(G, a, b) == pytest.approx(riemann, rel=1e-6)
    # split anywhere, same total
    m = G.default_idle_hold_s + 0.3
    split = default_idle_energy_j(G, a, m) + default_idle_energy_j(G, m, b)
    assert split == pytest.approx(default_idle_energy_j(G, a, b), rel=1e-12)
    assert default_idle_energy_j(G, b, a) == 0.0
    # far from the last work: the floor's power
    assert default_idle_energy_j(G, 1e5, 1e5 + 10) == pytest.approx(10 * G.idle_min_clock_w)


def test_hold_and_decay_are_the_one_place_to_change(profile: Profile) -> None:
    """A refit replaces the constants in GpuSpec; the physics follows them."""
    quick = msgspec.structs.replace(G, default_idle_hold_s=0.0, default_idle_decay_s=0.0)
    assert default_idle_power_w(quick, 0.001) == pytest.approx(quick.idle_min_clock_w)
    slow = msgspec.structs.replace(G, default_idle_hold_s=60.0)
    assert default_idle_power_w(slow, 59.0) == pytest.approx(idle_power_w(G, G.max_clock_mhz))


def _idle_gap_run(profile: Profile, gap_s: float, policy: str, cfg: SimConfig = CFG5) -> float:
    wl = _wl((0.0, 500, 3), (gap_s, 500, 3))
    return run_policy(wl, POLICIES[policy], cfg, profile).energy_j


def test_sim_default_boosts_under_load_like_static_max(profile: Profile) -> None:
    """Under load the unlocked GPU runs at its boost clock: the same latencies as static-max."""
    wl = _wl((0.0, 1000, 4))
    d = run_policy(wl, POLICIES["default"], CFG, profile).requests[0]
    m = run_policy(wl, POLICIES["static-max"], CFG, profile).requests[0]
    assert d.ttft_s == pytest.approx(m.ttft_s, rel=1e-12)
    assert d.finish_s == pytest.approx(m.finish_s, rel=1e-12)
    # a capped prefill: throttled the same way (the cap binds at the boost clock)
    big = _wl((0.0, 8192, 2))
    d = run_policy(big, POLICIES["default"], CFG, profile).requests[0]
    pre = H100.prefill(1980, 8192)
    assert pre.power_capped and pre.effective_clock_mhz < G.max_clock_mhz
    assert d.prefill_done_s == pytest.approx(pre.time_s, rel=1e-9)


def test_sim_default_idle_gap_costs_hold_then_floor(profile: Profile) -> None:
    """Between two requests the unlocked GPUs pay the held clock's idle power, then decay:
    a short gap costs what static-max pays, a long one far less (a finite hold)."""
    hold = G5.default_idle_hold_s
    short = 0.5 * hold
    wl = _wl((0.0, 500, 3), (short, 500, 3))
    run = run_policy(wl, POLICIES["default"], CFG5, profile)
    # long idle before the trace: the decode GPU sits at its floor until its first token;
    # after that, gaps shorter than the hold cost the held clock's idle power
    before = run.requests[0].first_token_s
    assert before is not None
    diff = _idle_gap_run(profile, short, "static-max") - run.energy_j
    assert diff == pytest.approx((G.idle_max_clock_w - G.idle_min_clock_w) * before, rel=1e-5)
    long = hold + 60.0
    e_def = _idle_gap_run(profile, long, "default")
    e_max = _idle_gap_run(profile, long, "static-max")
    # two GPUs, ~60 s past the hold at (nearly) the floor instead of the top clock's idle power
    expect_gap = 2 * 60.0 * (G.idle_max_clock_w - G.idle_min_clock_w)
    assert e_max - e_def == pytest.approx(expect_gap, rel=0.05)


def test_sim_default_serving_gpu_idles_at_the_boost_clock(profile: Profile) -> None:
    """The GPUs' own (measured) hold: an idle serving GPU under default clocks pays the
    maximum clock's idle power however long it idles, as a locked maximum clock does; a
    finite hold would have saved ~48 W per GPU over the long gap."""
    for gap in (10.0, 600.0):
        e_def = _idle_gap_run(profile, gap, "default", CFG)
        e_max = _idle_gap_run(profile, gap, "static-max", CFG)
        assert e_def == pytest.approx(e_max, rel=1e-9)
    e_held = _idle_gap_run(profile, 600.0, "default", CFG)
    e_5s = _idle_gap_run(profile, 600.0, "default", CFG5)
    assert e_held - e_5s > 2 * 500.0 * (G.idle_max_clock_w - G.idle_min_clock_w)
    ev = evaluate(_wl((0.0, 500, 5), (300.0, 500, 5)), [POLICIES["static-min"]], CFG)
    row = ev.policies["static-min"]
    assert row["saving_vs_default"] == pytest.approx(row["saving_vs_static_max"], abs=1e-6)


def test_results_carry_saving_vs_default_for_every_policy(profile: Profile) -> None:
    wl = _wl((0.0, 500, 20), (30.0, 700, 20), (31.0, 300, 5))
    ev = evaluate(
        wl, [POLICIES["static-min"], POLICIES["voltana"]], CFG5, oracle=True, quick_profile=True
    )
    for row in [*ev.policies.values(), ev.oracle]:
        assert row is not None
        assert "saving_vs_default" in row and "saving_vs_static_max" in row
        assert row["saving_vs_default"] is not None
    # with a finite hold the default run idles lower than static-max, so the same energy
    # saves less against it
    for row in ev.policies.values():
        assert row["saving_vs_default"] < row["saving_vs_static_max"]


def test_sim_idle_overrides_replace_the_gpu_constants(profile: Profile) -> None:
    """--default-idle-hold-s 0, 5 s, 60 s and inf: the longer the hold, the more idle energy."""
    wl = _wl((0.0, 500, 3), (20.0, 500, 3))
    e = {}
    for hold in (0.0, 5.0, 60.0, math.inf):
        cfg = msgspec.structs.replace(CFG, default_idle_hold_s=hold)
        assert cfg.gpu_spec().default_idle_hold_s == hold
        e[hold] = run_policy(wl, POLICIES["default"], cfg, profile).energy_j
    assert e[0.0] < e[5.0] < e[60.0] < e[math.inf]
    # a hold longer than every gap: default idles like static-max (after the first work);
    # an unbounded one also before it (a worker's start-up is work)
    e_max = run_policy(wl, POLICIES["static-max"], CFG, profile).energy_j
    assert e[60.0] < e_max < e[60.0] + 48.0 * 2 * 1.0
    assert e[math.inf] == pytest.approx(e_max, rel=1e-9)
    assert run_policy(wl, POLICIES["default"], CFG, profile).energy_j == e[math.inf]
    with pytest.raises(ConfigError, match="idle hold and decay"):
        msgspec.structs.replace(CFG, default_idle_hold_s=math.nan).gpu_spec()
    with pytest.raises(ConfigError, match="idle hold and decay"):
        msgspec.structs.replace(CFG, default_idle_decay_s=-1.0).gpu_spec()


def test_results_params_record_the_hold_as_valid_json() -> None:
    """JSON has no infinity: an unbounded hold is written as "inf", given or the GPU's own."""
    p = config_params(msgspec.structs.replace(CFG, default_idle_hold_s=math.inf))
    assert p["default_idle_hold_s"] == "inf" and p["gpu_default_idle_hold_s"] == "inf"
    json.loads(json.dumps(p, allow_nan=False))
    p = config_params(CFG)
    assert p["default_idle_hold_s"] is None and p["gpu_default_idle_hold_s"] == "inf"
    p = config_params(CFG5)
    assert p["gpu_default_idle_hold_s"] == 5.0 and p["gpu_default_idle_decay_s"] == 1.0
