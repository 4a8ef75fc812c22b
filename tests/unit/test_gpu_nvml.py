"""NVML device readings: error mapping, optional readings, energy counter handling.

There is no GPU (and no libnvidia-ml) on CI machines, so the success paths run
against a stand-in for the pynvml module (``tests/fake_pynvml.py``); the
missing-library path runs against the real pynvml. Clock setters are tested in
``test_gpu_setters.py``.
"""

from __future__ import annotations

import time

import pytest
from fake_pynvml import FakeNvmlError
from fake_pynvml import fake_pynvml as fake_nvml
from voltana.common.errors import GpuError
from voltana.gpu.device import GpuDevice, GpuReader
from voltana.gpu.energy import EnergyCounter, PowerIntegrator
from voltana.gpu.nvml import NvmlDevice
from voltana.gpu.nvml_errors import nvml_error


def test_missing_library_is_a_clear_gpu_error() -> None:
    # The real pynvml on a machine without the NVIDIA driver.
    pynvml = pytest.importorskip("pynvml")
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError:
        pass
    else:  # pragma: no cover - only on GPU hosts
        pynvml.nvmlShutdown()
        pytest.skip("NVML is present here; the missing-library path cannot be exercised")
    with pytest.raises(GpuError) as info:
        NvmlDevice([0])
    assert info.value.code == "NVML_ERROR_LIBRARY_NOT_FOUND"
    assert "libnvidia-ml.so.1" in str(info.value)
    assert "emulated" in str(info.value)


@pytest.mark.parametrize(
    ("indices", "count", "message"),
    [
        ([2], 2, "GPU index 2 out of range: this node has 2 GPU(s) (indices 0..1)"),
        ([0, 5], 4, "GPU index 5 out of range: this node has 4 GPU(s) (indices 0..3)"),
        ([-1], 1, "GPU index -1 out of range"),
        ([0], 0, "GPU index 0 out of range: this node has 0 GPU(s)"),
    ],
)
def test_index_out_of_range(indices: list[int], count: int, message: str) -> None:
    nv = fake_nvml(count)
    with pytest.raises(GpuError, match=message.replace("(", r"\(").replace(")", r"\)")) as info:
        NvmlDevice(indices, nvml=nv)
    assert info.value.code == "INDEX_OUT_OF_RANGE"
    assert nv.calls["shutdown"] == nv.calls["init"] == 1  # NVML released on failure


@pytest.mark.parametrize(
    ("code", "code_name", "fragment"),
    [
        (12, "NVML_ERROR_LIBRARY_NOT_FOUND", "libnvidia-ml.so.1"),
        (9, "NVML_ERROR_DRIVER_NOT_LOADED", "driver is not loaded"),
        (18, "NVML_ERROR_LIB_RM_VERSION_MISMATCH", "versions differ"),
        (4, "NVML_ERROR_NO_PERMISSION", "root"),
        (15, "NVML_ERROR_GPU_IS_LOST", "fell off the bus"),
        (777, "NVML_ERROR_777", "777"),
    ],
)
def test_error_table(code: int, code_name: str, fragment: str) -> None:
    err = nvml_error(FakeNvmlError(code), "read power", gpu=3)
    assert isinstance(err, GpuError)
    assert err.code == code_name and err.gpu == 3
    assert fragment in str(err) and "GPU 3" in str(err)


def test_sample_reads_everything() -> None:
    nv = fake_nvml(2)
    with NvmlDevice([1], nvml=nv) as src:
        assert isinstance(src, GpuReader) and isinstance(src, GpuDevice)
        (s,) = src.sample()
    assert s.index == 1 and s.source == "nvml" and s.name == "NVIDIA H100 80GB HBM3"
    assert s.power_w == 300.0 and s.power_instant_w == 312.5
    assert s.energy_j == 1000.0 and not s.energy_from_power
    assert (s.sm_clock_mhz, s.mem_clock_mhz, s.app_clock_mhz) == (1755, 2619, 1755)
    assert s.max_sm_clock_mhz == 1980 and s.locked_clock_mhz is None
    assert s.throttle_reasons == 0x4 and s.util_gpu_pct == 87.0
    assert s.mem_used_mib == 2048.0 and s.power_limit_w == 700.0 and s.temperature_c == 51.0
    assert nv.calls["shutdown"] == 1


def test_locked_clock_inferred_from_pstate_range() -> None:
    with NvmlDevice([0], nvml=fake_nvml(1, pstate_max=1410)) as src:
        assert src.sample()[0].locked_clock_mhz == 1410


def test_optional_readings_tolerate_not_supported() -> None:
    optional = frozenset(
        {
            "app_clock",
            "pstate",
            "throttle",
            "util",
            "memory",
            "power_limit",
            "temperature",
            "fields",
            "name",
            "max_clock",
        }
    )
    with NvmlDevice([0], nvml=fake_nvml(1, unsupported=optional)) as src:
        a, b = src.sample()[0], src.sample()[0]
    for s in (a, b):
        assert s.power_w == 300.0 and s.sm_clock_mhz == 1755
        assert s.app_clock_mhz is None and s.util_gpu_pct is None and s.temperature_c is None
        assert s.power_instant_w is None and s.name is None and s.throttle_reasons == 0


def test_required_reading_failure_raises() -> None:
    with (
        NvmlDevice([0], nvml=fake_nvml(1, fail={"power": 15})) as src,
        pytest.raises(GpuError, match="read power on GPU 0 failed: the GPU fell off the bus"),
    ):
        src.sample()


def test_no_energy_counter_integrates_power() -> None:
    with NvmlDevice(
        [0], nvml=fake_nvml(1, unsupported=frozenset({"energy"})), energy_period_s=0.0
    ) as src:
        first = src.sample()[0]
        second = src.sample()[0]
    assert first.energy_from_power and first.energy_j == 0.0
    dt_s = (second.mono_ns - first.mono_ns) / 1e9
    assert second.energy_j == pytest.approx(300.0 * dt_s)


def test_energy_counter_restart_never_goes_back() -> None:
    nv = fake_nvml(1, energy_mj=[5_000, 9_000, 1_000, 4_000])
    with NvmlDevice([0], nvml=nv, energy_period_s=0.0) as src:
        values = [src.sample()[0].energy_j for _ in range(4)]
    assert values == [5.0, 9.0, 10.0, 13.0]


def test_expensive_reads_are_rate_limited() -> None:
    """The energy counter (~4 ms a read on an H100) and the slow clocks are not read every tick."""
    nv = fake_nvml(1, energy_mj=[1_000_000, 1_060_000, 1_120_000])
    with NvmlDevice([0], nvml=nv, energy_period_s=0.2, slow_period_s=0.5) as src:
        first = src.sample()[0]
        second = src.sample()[0]
        assert first.energy_fresh and not second.energy_fresh
        assert second.energy_j == first.energy_j == 1000.0
        assert second.energy_t_ns == first.energy_t_ns and second.energy_mono_ns == first.mono_ns
        assert (nv.calls["energy"], nv.calls["app_clock"], nv.calls["pstate"]) == (1, 1, 1)
        assert second.app_clock_mhz == 1755  # cached, not None
        time.sleep(0.2)
        third = src.sample()[0]
        assert third.energy_fresh and third.energy_j == 1060.0 and nv.calls["energy"] == 2
        assert nv.calls["app_clock"] == 1
        time.sleep(0.3)
        src.sample()
        assert nv.calls["app_clock"] == 2 and nv.calls["pstate"] == 2


def test_energy_reads_are_spread_over_the_period() -> None:
    nv = fake_nvml(4, energy_mj=list(range(1_000_000, 2_000_000, 1000)))
    with NvmlDevice([0, 1, 2, 3], nvml=nv, energy_period_s=0.4) as src:
        src.sample()
        assert nv.calls["energy"] == 4  # everyone's baseline at once
        fresh_per_tick = []
        for _ in range(16):
            time.sleep(0.05)
            fresh_per_tick.append(sum(s.energy_fresh for s in src.sample()))
    assert max(fresh_per_tick) < 4 and sum(fresh_per_tick) >= 6  # never all on one tick


def test_closed_source_raises() -> None:
    src = NvmlDevice([0], nvml=fake_nvml(1))
    src.close()
    src.close()
    with pytest.raises(GpuError, match="closed"):
        src.sample()


@pytest.mark.parametrize(
    ("raws", "expected"),
    [
        ([0, 10, 20], [0.0, 0.01, 0.02]),
        ([2**40, 2**40 + 1000], [2**40 / 1000, 2**40 / 1000 + 1.0]),
        ([500, 100, 300], [0.5, 0.6, 0.8]),
        ([500, 500, 0, 0], [0.5, 0.5, 0.5, 0.5]),
    ],
)
def test_energy_counter_table(raws: list[int], expected: list[float]) -> None:
    c = EnergyCounter()
    assert [c.update(r) for r in raws] == pytest.approx(expected)


def test_power_integrator_trapezoid() -> None:
    p = PowerIntegrator()
    assert p.update(0, 100.0) == 0.0
    assert p.update(1_000_000_000, 300.0) == pytest.approx(200.0)
    assert p.update(1_000_000_000, 999.0) == pytest.approx(200.0)  # no time passed
