"""The discrete-event core: conservation, energy books, latency physics, determinism."""

from __future__ import annotations

from typing import Any

import msgspec
import pytest
from voltana.groundtruth.engine import BatchPlan, EngineConfig
from voltana.groundtruth.gpu_model import GPUS, MODELS, GpuModel
from voltana.predictor.profile import Profile
from voltana.schemas.config import SloConfig
from voltana.sim.config import ClusterSpec, SimConfig
from voltana.sim.instance import Instance
from voltana.sim.policies import POLICIES
from voltana.sim.runner import Evaluation, evaluate, profile_for, run_oracle, run_policy
from voltana.sim.workload import SimRequest, Workload, synthetic

H100 = GpuModel(GPUS["h100"], MODELS["llama-3.1-8b"])
CFG = SimConfig(
    cluster=ClusterSpec(n_prefill=1, n_decode=1), slo=SloConfig(ttft_s=1.0, itl_s=0.05), noise=0.0
)


def _wl(*reqs: tuple[float, int, int]) -> Workload:
    return Workload("t", tuple(SimRequest(f"r{i}", t, n, o) for i, (t, n, o) in enumerate(reqs)))


@pytest.fixture(scope="module")
def profile() -> Profile:
    return profile_for(CFG, quick=True)


def test_single_request_latency_is_the_physics(profile: Profile) -> None:
    run = run_policy(_wl((0.0, 1000, 4)), POLICIES["static-max"], CFG, profile)
    r = run.requests[0]
    pre = H100.prefill(1980, 1000).time_s
    assert r.prefill_done_s == pytest.approx(pre, rel=1e-9)
    assert r.ttft_s == pytest.approx(pre + H100.kv_transfer_s(1000), rel=1e-9)
    # three decode steps of batch 1 at 1001, 1002, 1003 KV tokens
    steps = sum(H100.decode(1980, 1, 1000 + k).time_s for k in range(1, 4))
    assert r.finish_s - r.first_token_s == pytest.approx(steps, rel=1e-9)
    assert run.itl.total() == 3


def test_energy_books_busy_plus_idle(profile: Profile) -> None:
    """Two requests 60 s apart: idle time is charged at the held clock's idle power."""
    wl = _wl((0.0, 500, 3), (60.0, 500, 3))
    run = run_policy(wl, POLICIES["static-max"], CFG, profile)
    assert run.unfinished == 0
    busy = sum(run.busy_s_by_instance.values())
    n_gpu = 2
    idle_w = H100.idle_power_w(1980)
    e_busy = 2 * (
        H100.prefill(1980, 500).energy_j
        + sum(H100.decode(1980, 1, 500 + k).energy_j for k in range(1, 3))
    )
    expect = e_busy + idle_w * (n_gpu * run.window_s - busy)
    assert run.energy_j == pytest.approx(expect, rel=1e-6)
    run_min = run_policy(wl, POLICIES["static-min"], CFG, profile)
    assert run_min.energy_j < 0.7 * run.energy_j


def test_all_finish_and_tokens_add_up(profile: Profile) -> None:
    wl = synthetic(rate_rps=4, duration_s=30, seed=2)
    cfg = msgspec.structs.replace(CFG, cluster=ClusterSpec(n_prefill=2, n_decode=2), noise=0.02)
    for name in ("static-max", "ecofreq", "voltana-ref", "voltana"):
        run = run_policy(wl, POLICIES[name], cfg, profile)
        s = run.summary()
        assert s["finished"] == len(wl.requests), name
        assert run.itl.total() == sum(r.output_tokens - 1 for r in wl.requests)
        for r in run.requests:
            assert r.arrival_s < r.prefill_done_s <= r.first_token_s <= r.finish_s
        lo = 4 * H100.idle_power_w(345) * run.window_s
        hi = 4 * 700.0 * run.window_s
        assert lo < run.energy_j < hi, name


def test_determinism_same_seed_same_results() -> None:
    wl = synthetic(rate_rps=3, duration_s=20, arrival="gamma", seed=5)
    cfg = msgspec.structs.replace(
        CFG, cluster=ClusterSpec(n_prefill=2, n_decode=2), noise=0.03, seed=11
    )
    specs = [POLICIES["static-max"], POLICIES["voltana-ref"], POLICIES["voltana"]]
    a = evaluate(wl, specs, cfg, quick_profile=True)
    b = evaluate(wl, specs, cfg, quick_profile=True)

    def strip(ev: Evaluation) -> dict[str, dict[str, Any]]:
        return {
            k: {m: v for m, v in row.items() if m != "wall_s"} for k, row in ev.policies.items()
        }

    assert strip(a) == strip(b)
    c = evaluate(wl, specs, msgspec.structs.replace(cfg, seed=12), quick_profile=True, oracle=False)
    assert strip(c) != strip(a)


def test_kv_capacity_rejects_oversized_and_queues(profile: Profile) -> None:
    # capacity 3000 tokens: the 5000-token request can never run; the others queue for KV.
    wl = _wl((0.0, 1000, 50), (0.0, 1000, 50), (0.0, 1000, 50), (0.1, 5000, 10))
    cfg = msgspec.structs.replace(CFG, kv_capacity_override_tokens=3000)
    run = run_policy(wl, POLICIES["static-max"], cfg, profile)
    assert run.unfinished == 1
    assert run.summary()["slo_attainment"] == pytest.approx(0.75)
    done = sorted(r.first_token_s for r in run.requests if r.first_token_s is not None)
    # only two fit at once (1050 reserved each): the third waits for one to finish
    last = max(r.finish_s for r in run.requests[:2] if r.finish_s is not None)
    assert done[2] >= min(r.finish_s for r in run.requests[:3] if r.finish_s) - 1e-9
    assert last > 0


def test_mid_iteration_clock_change_is_blended() -> None:
    inst = Instance("d0", "decode", EngineConfig(role="decode"), H100, 345)
    inst.engine.submit("a", prompt_tokens=100, max_new_tokens=10, now=0.0)
    inst.engine.admit(0.0)
    inst.engine.kv_arrived("a", 0.0)
    slow = H100.decode(345, 1, 101).time_s
    fast = H100.decode(1980, 1, 101).time_s
    t_c = slow / 2
    inst.command_clock(t_c, 1980)
    run = inst.start_iteration(0.0)
    assert run is not None and isinstance(run.plan, BatchPlan)
    assert run.t_end == pytest.approx(t_c + 0.5 * fast)
    assert inst.clock_mhz == 1980 and inst.switches == 1


def test_clock_change_after_the_iteration_started_retimes_its_rest() -> None:
    # A telemetry-driven decision lands while a long prefill runs: the GPU switches
    # clock then, not at the next iteration.
    inst = Instance("p0", "prefill", EngineConfig(role="prefill"), H100, 345)
    inst.engine.submit("a", prompt_tokens=4000, max_new_tokens=5, now=0.0)
    run = inst.start_iteration(0.0)
    assert run is not None
    slow_s, slow_j = run.t_end, run.energy_j
    t_c = slow_s / 4
    inst.command_clock(t_c, 1980)
    assert not inst.retime(t_c / 2)  # not due yet
    assert inst.retime(t_c)
    fast = H100.prefill(1980, 4000)
    assert run.t_end == pytest.approx(t_c + 0.75 * fast.time_s, rel=0.05)  # new noise draw
    assert run.t_end < slow_s
    assert run.energy_j == pytest.approx(0.25 * slow_j + 0.75 * run.stretch.full_j, rel=1e-12)
    assert run.clock_mhz == inst.clock_mhz == 1980 and inst.switches == 1
    assert not inst.retime(t_c)  # nothing pending any more


def test_telemetry_control_acts_within_the_iteration(profile: Profile) -> None:
    # One long prompt on a parked prefill instance, tight TTFT: the decision on
    # dispatch must speed up the very prefill it was taken for.
    cfg = msgspec.structs.replace(CFG, control="telemetry", slo=SloConfig(ttft_s=0.3, itl_s=0.03))
    run = run_policy(_wl((1.0, 4000, 20)), POLICIES["voltana"], cfg, profile)
    ttft = run.requests[0].ttft_s
    assert ttft is not None and ttft < 0.3


def test_control_input_reflects_prefill_queue() -> None:
    inst = Instance(
        "p0", "prefill", EngineConfig(role="prefill", chunked_prefill_size=1024), H100, 1980
    )
    for i, n in enumerate((800, 900, 700)):
        inst.engine.submit(f"r{i}", prompt_tokens=n, max_new_tokens=5, now=float(i))
    run = inst.start_iteration(3.0)
    assert run is not None
    ci = inst.control_input(3.5)
    assert ci.role == "prefill"
    assert ci.prefill_tokens == 800 + 900 + 700
    assert ci.queue_reqs == 1  # r2 still waiting behind the 1024-token chunk
    assert ci.oldest_wait_s == pytest.approx(3.5)


def test_oracle_keeps_slo_and_is_cheap(profile: Profile) -> None:
    wl = synthetic(rate_rps=3, duration_s=40, seed=4)
    cfg = msgspec.structs.replace(
        CFG, cluster=ClusterSpec(n_prefill=1, n_decode=1), slo=SloConfig(ttft_s=0.6, itl_s=0.02)
    )
    orc = run_oracle(wl, cfg).summary()
    smax = run_policy(wl, POLICIES["static-max"], cfg, profile).summary()
    assert orc["slo_attainment"] >= 0.99
    assert orc["energy_j"] < 0.75 * smax["energy_j"]
