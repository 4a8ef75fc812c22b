"""Clock setters: the NVML device (pynvml replaced by a stand-in, no GPU here) and dry-run."""

from __future__ import annotations

from typing import Any

import pytest
from fake_pynvml import H100_SM_MHZ, fake_pynvml
from voltana.common.errors import ConfigError, GpuError
from voltana.gpu.device import AppliedClocks, ClockSetter, GpuDevice
from voltana.gpu.dryrun import DryRunDevice
from voltana.gpu.nvml import NvmlDevice
from voltana.gpu.nvml_errors import nvml_error
from voltana.gpu.open import open_device


def test_nvml_device_reads_and_sets_through_one_object() -> None:
    nvml = fake_pynvml()
    device = NvmlDevice(nvml=nvml)
    assert isinstance(device, ClockSetter) and isinstance(device, GpuDevice)
    assert device.indices == (0, 1)
    assert device.supported_sm_clocks_mhz(1)[:2] == [1980, 1965]
    assert device.set_locked_sm_clock_mhz(1, 1410) is True
    assert [s.index for s in device.sample()] == [0, 1]
    assert nvml.driver == [("set", 101, 1410, 1410)]


def test_nvml_locks_skip_value_already_applied_but_resets_always_go_out() -> None:
    nvml = fake_pynvml()
    device = NvmlDevice([1], nvml=nvml)
    assert device.locked_clock_mhz(1) is None
    assert device.set_locked_sm_clock_mhz(1, 1410) is True
    assert device.set_locked_sm_clock_mhz(1, 1410) is False
    assert device.locked_clock_mhz(1) == 1410
    assert device.reset_locked_clocks(1) is True
    # the cache says default clocks, but a lock made by anything else is invisible to it
    assert device.reset_locked_clocks(1) is False
    assert nvml.driver == [("set", 101, 1410, 1410), ("reset", 101), ("reset", 101)]


def test_nvml_first_reset_is_always_issued() -> None:
    """At start NVML cannot tell whether a lock is left over: the first reset goes out."""
    nvml = fake_pynvml()
    device = NvmlDevice([0], nvml=nvml)
    assert device.reset_locked_clocks(0) is True
    assert ("reset", 100) in nvml.driver


def test_a_failed_reset_is_issued_again() -> None:
    nvml = fake_pynvml(fail={"reset": 15})
    device = NvmlDevice([0], nvml=nvml)
    for _ in range(2):
        with pytest.raises(GpuError) as info:
            device.reset_locked_clocks(0)
        assert info.value.code == "NVML_ERROR_GPU_IS_LOST"
    assert nvml.driver == [("reset", 100), ("reset", 100)]
    assert device.locked_clock_mhz(0) is None


@pytest.mark.parametrize(
    ("gpu", "mhz", "code"),
    [(0, 1412, "UNSUPPORTED_CLOCK"), (0, 2100, "UNSUPPORTED_CLOCK"), (5, 1410, "UNKNOWN_GPU")],
)
def test_nvml_rejects_bad_requests_before_the_driver(gpu: int, mhz: int, code: str) -> None:
    nvml = fake_pynvml()
    device = NvmlDevice([0], nvml=nvml)
    with pytest.raises(GpuError) as info:
        device.set_locked_sm_clock_mhz(gpu, mhz)
    assert info.value.code == code
    assert not nvml.driver


def test_nvml_errors_mapped_through_the_one_table() -> None:
    nvml = fake_pynvml(privileged=False)
    device = NvmlDevice([0], nvml=nvml)
    with pytest.raises(GpuError) as info:
        device.set_locked_sm_clock_mhz(0, 1410)
    assert info.value.code == "NVML_ERROR_NO_PERMISSION"
    assert "CAP_SYS_ADMIN" in str(info.value) and "dry-run" in str(info.value)
    assert info.value.gpu == 0
    # the same table maps a reading's error
    read = nvml_error(nvml.NVMLError(4), "read power", gpu=0)
    assert read.code == info.value.code and "CAP_SYS_ADMIN" in str(read)
    # the failed set did not record a lock
    assert device.locked_clock_mhz(0) is None


def test_nvml_unknown_index_at_start() -> None:
    nvml = fake_pynvml(count=1)
    with pytest.raises(GpuError, match="GPU index 3 out of range") as info:
        NvmlDevice([3], nvml=nvml)
    assert info.value.code == "INDEX_OUT_OF_RANGE"
    assert nvml.calls["shutdown"] == 1


def test_applied_clocks_start_from_what_is_known() -> None:
    applied = AppliedClocks({0: None, 1: 1410})
    issued: list[str] = []
    assert applied.reset(0, lambda: issued.append("reset 0")) is False
    assert applied.lock(1, 1410, lambda: issued.append("lock 1") and None) is False
    assert applied.reset(2, lambda: issued.append("reset 2")) is True
    assert applied.lock(0, 990, lambda: 975) is True and applied.get(0) == 975
    assert issued == ["reset 0", "reset 2"]  # resets are never skipped


def test_dry_run_reads_inner_and_never_writes() -> None:
    nvml = fake_pynvml()
    device = DryRunDevice(NvmlDevice(nvml=nvml))
    assert isinstance(device, GpuDevice) and device.indices == (0, 1)
    assert device.supported_sm_clocks_mhz(0) == H100_SM_MHZ
    assert [s.source for s in device.sample()] == ["nvml", "nvml"]
    assert device.set_locked_sm_clock_mhz(0, 1005) is True
    assert device.set_locked_sm_clock_mhz(0, 1005) is False
    assert device.locked_clock_mhz(0) == 1005
    assert device.reset_locked_clocks(0) is True
    with pytest.raises(GpuError):
        device.set_locked_sm_clock_mhz(0, 1006)
    assert not nvml.driver
    assert [(a.action, a.sm_clock_mhz) for a in device.actions] == [
        ("lock", 1005),
        ("reset", None),
    ]
    assert device.actions[0].call == "nvmlDeviceSetGpuLockedClocks(gpu=0, min=1005, max=1005)"


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"name": "bogus"}, "unknown GPU backend"),
        ({"name": "emulated"}, "emulator-url"),
        ({"name": "dry-run", "dry_run_source": "dry-run"}, "cannot wrap"),
    ],
)
def test_open_device_config_errors(kwargs: dict[str, Any], match: str) -> None:
    name = kwargs.pop("name")
    with pytest.raises(ConfigError, match=match):
        open_device(name, **kwargs)
