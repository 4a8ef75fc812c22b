"""Clock backends: NVML adapter (pynvml replaced by a stand-in, no GPU here) and dry-run."""

from __future__ import annotations

import types
from typing import Any

import pytest
from voltana.common.errors import ConfigError, GpuError
from voltana.gpu.backends import ClockBackend, make_backend
from voltana.gpu.dryrun import DryRunBackend
from voltana.gpu.nvml_clocks import NvmlBackend

H100_SM_MHZ = list(range(1980, 344, -15))


class FakeNvmlError(Exception):
    def __init__(self, value: int) -> None:
        super().__init__(f"nvml error {value}")
        self.value = value


def fake_pynvml(*, count: int = 2, privileged: bool = True) -> tuple[Any, list[tuple[Any, ...]]]:
    """A pynvml stand-in recording every call; raises NO_PERMISSION on setters if unprivileged."""
    calls: list[tuple[Any, ...]] = []
    m = types.SimpleNamespace(
        NVMLError=FakeNvmlError,
        NVML_ERROR_NO_PERMISSION=4,
        NVML_ERROR_INVALID_ARGUMENT=2,
        NVML_ERROR_NOT_SUPPORTED=3,
    )

    def setter(name: str):
        def f(*args: Any) -> None:
            calls.append((name, *args))
            if not privileged:
                raise FakeNvmlError(4)

        return f

    m.nvmlInit = lambda: calls.append(("nvmlInit",))
    m.nvmlShutdown = lambda: calls.append(("nvmlShutdown",))
    m.nvmlDeviceGetCount = lambda: count
    m.nvmlDeviceGetHandleByIndex = lambda i: f"handle{i}"
    m.nvmlDeviceGetSupportedMemoryClocks = lambda h: [2619]
    m.nvmlDeviceGetSupportedGraphicsClocks = lambda h, mem: list(H100_SM_MHZ)
    m.nvmlDeviceSetGpuLockedClocks = setter("set")
    m.nvmlDeviceResetGpuLockedClocks = setter("reset")
    return m, calls


def test_nvml_backend_is_a_clock_backend() -> None:
    nvml, _ = fake_pynvml()
    backend = NvmlBackend(nvml=nvml)
    assert isinstance(backend, ClockBackend)
    assert backend.gpu_indices() == [0, 1]
    assert backend.supported_sm_clocks_mhz(1)[:2] == [1980, 1965]


def test_nvml_setters_skip_value_already_applied() -> None:
    nvml, calls = fake_pynvml()
    backend = NvmlBackend([1], nvml=nvml)
    assert backend.locked_clock_mhz(1) is None
    assert backend.set_locked_sm_clock_mhz(1, 1410) is True
    assert backend.set_locked_sm_clock_mhz(1, 1410) is False
    assert backend.locked_clock_mhz(1) == 1410
    assert backend.reset_locked_clocks(1) is True
    assert backend.reset_locked_clocks(1) is False
    driver = [c for c in calls if c[0] in ("set", "reset")]
    assert driver == [("set", "handle1", 1410, 1410), ("reset", "handle1")]


def test_nvml_first_reset_is_always_issued() -> None:
    """At start NVML cannot tell whether a lock is left over: the first reset goes out."""
    nvml, calls = fake_pynvml()
    backend = NvmlBackend([0], nvml=nvml)
    assert backend.reset_locked_clocks(0) is True
    assert ("reset", "handle0") in calls


@pytest.mark.parametrize(
    ("gpu", "mhz", "code"),
    [(0, 1412, "UNSUPPORTED_CLOCK"), (0, 2100, "UNSUPPORTED_CLOCK"), (5, 1410, "UNKNOWN_GPU")],
)
def test_nvml_rejects_bad_requests_before_the_driver(gpu: int, mhz: int, code: str) -> None:
    nvml, calls = fake_pynvml()
    backend = NvmlBackend([0], nvml=nvml)
    with pytest.raises(GpuError) as info:
        backend.set_locked_sm_clock_mhz(gpu, mhz)
    assert info.value.code == code
    assert not [c for c in calls if c[0] == "set"]


def test_nvml_errors_mapped_through_table() -> None:
    nvml, _ = fake_pynvml(privileged=False)
    backend = NvmlBackend([0], nvml=nvml)
    with pytest.raises(GpuError) as info:
        backend.set_locked_sm_clock_mhz(0, 1410)
    assert info.value.code == "NVML_ERROR_NO_PERMISSION"
    assert "CAP_SYS_ADMIN" in str(info.value)
    assert info.value.gpu == 0
    # the failed set did not record a lock
    assert backend.locked_clock_mhz(0) is None


def test_nvml_unknown_index_at_start() -> None:
    nvml, calls = fake_pynvml(count=1)
    with pytest.raises(GpuError, match="does not exist"):
        NvmlBackend([3], nvml=nvml)
    assert ("nvmlShutdown",) in calls


def test_dry_run_reads_inner_and_never_writes() -> None:
    nvml, calls = fake_pynvml()
    backend = DryRunBackend(NvmlBackend(nvml=nvml))
    assert backend.supported_sm_clocks_mhz(0) == H100_SM_MHZ
    assert backend.set_locked_sm_clock_mhz(0, 1005) is True
    assert backend.set_locked_sm_clock_mhz(0, 1005) is False
    assert backend.locked_clock_mhz(0) == 1005
    assert backend.reset_locked_clocks(0) is True
    with pytest.raises(GpuError):
        backend.set_locked_sm_clock_mhz(0, 1006)
    assert not [c for c in calls if c[0] in ("set", "reset")]
    assert [(a.action, a.sm_clock_mhz) for a in backend.actions] == [
        ("lock", 1005),
        ("reset", None),
    ]
    assert backend.actions[0].call == "nvmlDeviceSetGpuLockedClocks(gpu=0, min=1005, max=1005)"


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"name": "bogus"}, "unknown clock backend"),
        ({"name": "emulated"}, "emulator-url"),
        ({"name": "dry-run", "dry_run_source": "dry-run"}, "cannot wrap"),
    ],
)
def test_make_backend_config_errors(kwargs: dict[str, Any], match: str) -> None:
    name = kwargs.pop("name")
    with pytest.raises(ConfigError, match=match):
        make_backend(name, **kwargs)
