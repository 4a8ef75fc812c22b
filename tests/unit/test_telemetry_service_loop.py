"""Service loop behaviour with an in-process source: rate, failing publisher, failing source."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import msgspec
import pytest
from prometheus_client import REGISTRY
from voltana.common.errors import GpuError
from voltana.gpu.device import BackendName, GpuSample
from voltana.gpu.energy import EnergyCounter
from voltana.schemas.telemetry import GpuTelemetry
from voltana.services.telemetry.config import parse_config
from voltana.services.telemetry.service import TelemetryService

CFG = parse_config("""
node = "n1"
[rates]
gpu_hz = 50.0
[metrics]
port = -1
[[instances]]
name = "loop-i"
role = "decode"
url = "http://127.0.0.1:9"
gpus = [3]
gpu_backend = "emulated"
engine = false
""")


class CountingSource:
    """A 300 W GPU whose counter advances with real time; can be told to fail."""

    name: BackendName = "emulated"

    def __init__(self) -> None:
        self.fail = False
        self._t0 = time.monotonic_ns()
        self._energy = EnergyCounter()

    @property
    def indices(self) -> tuple[int, ...]:
        return (3,)

    def sample(self) -> list[GpuSample]:
        if self.fail:
            raise GpuError("GPU 3 fell over", gpu=3)
        mono = time.monotonic_ns()
        raw_mj = (mono - self._t0) * 300 // 1_000_000
        return [
            GpuSample(
                index=3,
                t_ns=time.time_ns(),
                mono_ns=mono,
                power_w=300.0,
                energy_j=self._energy.update(raw_mj),
                sm_clock_mhz=1980,
                source="emulated",
            )
        ]

    def close(self) -> None:
        pass


class FlakyPublisher:
    def __init__(self, fail_first: int) -> None:
        self.fail_left = fail_first
        self.got: list[tuple[str, Any]] = []

    async def publish(self, subject: str, msg: msgspec.Struct) -> None:
        if self.fail_left > 0:
            self.fail_left -= 1
            raise ConnectionError("nats: outbound buffer full")
        self.got.append((subject, msg))


def _value(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


async def test_loop_rate_publish_errors_and_source_errors() -> None:
    src, pub = CountingSource(), FlakyPublisher(fail_first=5)
    svc = TelemetryService(CFG, pub, sources={"loop-i": src})
    pub_err0 = _value("voltana_telemetry_errors_total", kind="publish", source="loop-i")
    gpu_err0 = _value("voltana_telemetry_errors_total", kind="gpu", source="loop-i")
    await svc.start()
    await asyncio.sleep(0.6)
    src.fail = True
    await asyncio.sleep(0.3)
    n_while_failing = len(pub.got)
    await asyncio.sleep(0.2)
    assert len(pub.got) == n_while_failing  # nothing published while the source fails
    src.fail = False
    await asyncio.sleep(0.4)
    await asyncio.wait_for(svc.stop(), 5.0)

    msgs = [m for _, m in pub.got]
    assert all(s == "voltana.telemetry.gpu.n1.3" for s, _ in pub.got)
    assert all(isinstance(m, GpuTelemetry) and m.instance == "loop-i" for m in msgs)
    # about 50 Hz for ~1 s of healthy time, minus the 5 failed publications
    assert 25 <= len(msgs) <= 60, len(msgs)
    assert _value("voltana_telemetry_errors_total", kind="publish", source="loop-i") - pub_err0 == 5
    assert _value("voltana_telemetry_errors_total", kind="gpu", source="loop-i") - gpu_err0 >= 5
    seqs = [m.seq for m in msgs]
    assert seqs == sorted(seqs) and seqs[0] == 6  # the lost ones leave a visible gap
    powers = [m.avg_power_w for m in msgs if m.avg_power_w is not None]
    assert powers and all(abs(p - 300.0) < 30.0 for p in powers)
    assert svc.published["gpu"] == len(msgs)


class BrokenSource(CountingSource):
    """A source failing in a way the loop does not expect (not a GpuError)."""

    def __init__(self) -> None:
        super().__init__()
        self.closed = False

    def sample(self) -> list[GpuSample]:
        raise RuntimeError("driver returned garbage")

    def close(self) -> None:
        self.closed = True


async def test_a_loop_that_dies_ends_done_with_its_error_and_stop_still_runs() -> None:
    src = BrokenSource()
    svc = TelemetryService(CFG, FlakyPublisher(fail_first=0), sources={"loop-i": src})
    await svc.start()
    try:
        with pytest.raises(RuntimeError, match="garbage"):
            await asyncio.wait_for(svc.done(), 2.0)
    finally:
        await asyncio.wait_for(svc.stop(), 5.0)
        await svc.stop()  # twice is harmless
    assert not src.closed  # given sources stay open: their owner closes them
