"""EmulatedGpu: NVML-like clocks, energy integration and throttle reasons."""

from __future__ import annotations

import msgspec
import pytest
from voltana.common.errors import GpuError
from voltana.groundtruth.default_clock import default_idle_energy_j
from voltana.groundtruth.gpu_model import GPUS, MODELS, GpuModel
from voltana.services.emulator.config import EmulatorConfig, emulated_spec
from voltana.services.emulator.gpu_device import (
    THROTTLE_GPU_IDLE,
    THROTTLE_SW_POWER_CAP,
    EmulatedGpu,
)

MODEL = GpuModel(GPUS["h100"], MODELS["llama-3.1-8b"])
# a finite idle hold (--default-idle-hold-s 5 --default-idle-decay-s 1), to test the decay
MODEL_5S = GpuModel(
    msgspec.structs.replace(GPUS["h100"], default_idle_hold_s=5.0, default_idle_decay_s=1.0),
    MODELS["llama-3.1-8b"],
)


def test_idle_energy_follows_the_clock() -> None:
    g = EmulatedGpu(0, MODEL, now_s=0.0)
    # default clocks: the clock just after work (start-up) is held, then decays
    assert g.energy_mj(10.0) == pytest.approx(
        default_idle_energy_j(MODEL.gpu, 0.0, 10.0) * 1e3, rel=1e-6
    )
    g.set_locked_clocks(345, 345, now_s=10.0)
    assert g.sm_clock_mhz() == 345
    e0 = g.energy_mj(10.0)
    assert g.energy_mj(20.0) - e0 == pytest.approx(69.0 * 10 * 1e3, rel=1e-6)
    assert g.throttle_reasons() & THROTTLE_GPU_IDLE


def test_busy_energy_and_late_iterations() -> None:
    g = EmulatedGpu(3, MODEL, now_s=0.0)
    cost = MODEL.prefill(1980, 4096)
    g.begin_busy(1.0, cost)
    assert g.power_w(1.0 + cost.time_s / 2) == pytest.approx(cost.power_w)
    assert g.sm_clock_mhz() == cost.effective_clock_mhz < 1980
    assert g.throttle_reasons() & THROTTLE_SW_POWER_CAP
    late = 1.0 + cost.time_s * 1.5
    g.end_busy(late)
    expected = 117.0 * 1.0 + cost.power_w * (late - 1.0)
    assert g.energy_mj(late) == pytest.approx(expected * 1e3, abs=1.0)
    assert g.util_gpu_pct(late) == pytest.approx(100 * (late - 1.0), rel=1e-3)
    snap = g.snapshot(late)
    assert snap["index"] == 3 and snap["power_limit_w"] == 700.0
    assert snap["supported_sm_clocks_mhz"][0] == 1980


def test_locked_clocks_drive_the_busy_clock() -> None:
    g = EmulatedGpu(0, MODEL, now_s=0.0)
    g.set_locked_clocks(900, 1200, now_s=0.0)
    assert g.busy_clock_mhz == 1200 and g.idle_clock_mhz == 900
    assert g.snapshot(0.0)["locked_clock_mhz"] == 1200
    g.reset_locked_clocks(now_s=1.0)
    assert g.busy_clock_mhz == 1980 and g.snapshot(1.0)["locked_clock_mhz"] is None


@pytest.mark.parametrize(("lo", "hi"), [(1000, 1200), (1200, 900), (300, 300), (1980, 1995)])
def test_bad_locked_clocks_raise(lo: int, hi: int) -> None:
    g = EmulatedGpu(0, MODEL, now_s=0.0)
    with pytest.raises(GpuError) as err:
        g.set_locked_clocks(lo, hi, now_s=0.0)
    assert err.value.code == "NVML_ERROR_INVALID_ARGUMENT"
    assert g.locked_max_mhz is None


def test_default_clocks_hold_after_work_then_decay_to_the_floor() -> None:
    """No lock: boost while busy, the held clock right after work, the floor later;
    gaps of a few milliseconds between iterations never leave the boost clock (a finite
    hold: what --default-idle-hold-s sets)."""
    g = EmulatedGpu(0, MODEL_5S, now_s=0.0)
    spec = MODEL_5S.gpu
    t = 100.0  # long after start-up: at the floor
    assert g.sm_clock_mhz(t) == spec.min_clock_mhz
    assert g.power_w(t) == pytest.approx(spec.idle_min_clock_w, rel=1e-3)
    for _ in range(20):  # steps separated by 3 ms host gaps
        cost = MODEL_5S.decode(g.busy_clock_mhz, 8, 4096)
        g.begin_busy(t, cost)
        assert g.sm_clock_mhz(t) == spec.max_clock_mhz
        t += cost.time_s
        g.end_busy(t)
        t += 0.003
        assert g.sm_clock_mhz(t) == spec.max_clock_mhz
    end, last_work = t, t - 0.003
    e0 = g.energy_mj(end)
    assert g.power_w(end + 0.5 * spec.default_idle_hold_s) == pytest.approx(spec.idle_max_clock_w)
    later = end + spec.default_idle_hold_s + 10 * spec.default_idle_decay_s
    assert g.sm_clock_mhz(later) == spec.min_clock_mhz
    assert g.power_w(later) < spec.idle_min_clock_w + 0.01 * spec.idle_max_clock_w
    # the energy counter integrates the same curve
    expect = default_idle_energy_j(spec, end - last_work, later - last_work)
    assert g.energy_mj(later) - e0 == pytest.approx(expect * 1e3, abs=2)
    # a big prefill under default clocks: throttled at the cap, as with any clock
    cap = MODEL_5S.prefill(g.busy_clock_mhz, 8192)
    g.begin_busy(later, cap)
    assert g.throttle_reasons() & THROTTLE_SW_POWER_CAP
    assert g.sm_clock_mhz(later) == cap.effective_clock_mhz < spec.max_clock_mhz


def test_default_clocks_serving_gpu_never_leaves_the_boost_clock() -> None:
    """The GPU's own hold (measured on the H200): while the worker lives an idle GPU under
    default clocks stays at the maximum clock and its idle power, however long it idles."""
    g = EmulatedGpu(0, MODEL, now_s=0.0)
    spec = MODEL.gpu
    cost = MODEL.decode(g.busy_clock_mhz, 8, 4096)
    g.begin_busy(10.0, cost)
    end = 10.0 + cost.time_s
    g.end_busy(end)
    e0 = g.energy_mj(end)
    for idle in (1.0, 6.0, 60.0, 3600.0, 86400.0):
        assert g.sm_clock_mhz(end + idle) == spec.max_clock_mhz
        assert g.power_w(end + idle) == pytest.approx(spec.idle_max_clock_w)
    assert g.energy_mj(end + 86400.0) - e0 == pytest.approx(
        86400.0 * spec.idle_max_clock_w * 1e3, rel=1e-9
    )
    assert emulated_spec(EmulatorConfig(default_idle_hold_s=float("inf"))) == GPUS["h100"]
    with pytest.raises(ValueError, match="must be >= 0"):
        emulated_spec(EmulatorConfig(default_idle_hold_s=float("nan")))
