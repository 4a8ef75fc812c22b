"""GpuTelemetry building (seq, interval power) and InstanceTelemetry from engine readings."""

from __future__ import annotations

import msgspec
import pytest
from voltana.gpu.device import GpuSample
from voltana.schemas import codec
from voltana.schemas.telemetry import GpuTelemetry, InstanceTelemetry
from voltana.services.telemetry.config import InstanceConfig
from voltana.services.telemetry.engine import EngineReading, EngineState
from voltana.services.telemetry.engine_metrics import LoadSnapshot, parse_metrics
from voltana.services.telemetry.gpu_messages import GpuMessageBuilder


def sample(index: int, mono_s: float, energy_j: float, power_w: float = 300.0) -> GpuSample:
    return GpuSample(
        index=index,
        t_ns=int(1.7e18 + mono_s * 1e9),
        mono_ns=int(mono_s * 1e9),
        power_w=power_w,
        energy_j=energy_j,
        sm_clock_mhz=1980,
        source="emulated",
    )


def test_gpu_messages_seq_and_interval_power() -> None:
    b = GpuMessageBuilder("n1", "decode-0", "decode")
    m1 = b.build(sample(3, 10.0, 1000.0))
    m2 = b.build(sample(3, 10.05, 1020.0))
    other = b.build(sample(4, 10.05, 5.0))
    m3 = b.build(sample(3, 10.10, 1050.0))
    assert (m1.seq, m2.seq, m3.seq, other.seq) == (1, 2, 3, 1)
    assert m1.avg_power_w is None and m1.interval_s is None
    assert m2.interval_s == pytest.approx(0.05) and m2.avg_power_w == pytest.approx(400.0)
    assert m3.avg_power_w == pytest.approx(600.0)
    assert m2.instance == "decode-0" and m2.role == "decode" and m2.node == "n1"
    # the interval powers reproduce the counter exactly
    total = sum(m.avg_power_w * m.interval_s for m in (m2, m3) if m.avg_power_w and m.interval_s)
    assert total == pytest.approx(m3.energy_j - m1.energy_j)
    assert codec.decode(codec.encode(m3), GpuTelemetry) == m3


def test_gpu_message_stale_energy_has_no_interval_power() -> None:
    b = GpuMessageBuilder("n1")
    b.build(sample(0, 1.0, 10.0))
    stale = msgspec.structs.replace(
        sample(0, 1.05, 10.0), energy_fresh=False, energy_mono_ns=int(1e9), energy_t_ns=123
    )
    m = b.build(stale)
    assert m.avg_power_w is None and m.interval_s is None and m.energy_t_ns == 123
    fresh = b.build(sample(0, 1.5, 60.0))
    assert fresh.interval_s == pytest.approx(0.5) and fresh.avg_power_w == pytest.approx(100.0)


def test_gpu_message_same_instant_has_no_interval() -> None:
    b = GpuMessageBuilder("n1")
    b.build(sample(0, 1.0, 10.0))
    m = b.build(sample(0, 1.0, 10.0))
    assert m.avg_power_w is None and m.seq == 2 and m.instance is None


INST = InstanceConfig(name="d0", role="decode", url="http://127.0.0.1:1", gpus=[0, 1])

TEXT = """# TYPE sglang:num_running_reqs gauge
sglang:num_running_reqs{engine_type="decode",tp_rank="0"} 9
# TYPE sglang:num_queue_reqs gauge
sglang:num_queue_reqs{engine_type="decode",tp_rank="0"} 4
# TYPE sglang:num_used_tokens gauge
sglang:num_used_tokens{engine_type="decode",tp_rank="0"} 777
# TYPE sglang:num_decode_prealloc_queue_reqs gauge
sglang:num_decode_prealloc_queue_reqs{engine_type="decode",tp_rank="0"} 2
# TYPE sglang:time_to_first_token_seconds histogram
sglang:time_to_first_token_seconds_bucket{le="0.1"} COUNT
sglang:time_to_first_token_seconds_bucket{le="+Inf"} COUNT
sglang:time_to_first_token_seconds_sum 0.5
sglang:time_to_first_token_seconds_count COUNT
"""


def reading(mono_s: float, count: int, load: LoadSnapshot | None = None) -> EngineReading:
    m = parse_metrics(TEXT.replace("COUNT", str(count)))
    return EngineReading(
        t_ns=int(mono_s * 1e9),
        mono_s=mono_s,
        latency_s=0.002,
        metrics=m,
        load=load,
        version=m.looks_like,
    )


def test_engine_state_gauges_only() -> None:
    st = EngineState(INST, "n1", window_s=1.0)
    first = st.on_reading(reading(0.0, 10))
    assert first.seq == 1 and first.healthy and first.gpus == [0, 1]
    assert (first.num_running_reqs, first.num_queue_reqs, first.kv_used_tokens) == (9, 4, 777)
    assert first.num_prealloc_queue_reqs == 2 and first.engine_version == "0.5.23"
    assert first.ttft is not None and first.ttft.count == 0  # no baseline yet
    second = st.on_reading(reading(1.0, 16))
    assert second.ttft is not None and second.ttft.count == 6 and second.ttft.window_s == 1.0
    assert second.itl is None
    assert codec.decode(codec.encode(second), InstanceTelemetry) == second


def test_engine_state_prefers_load_endpoint() -> None:
    st = EngineState(INST, "n1")
    ld = LoadSnapshot(
        endpoint="/v1/loads",
        running_reqs=11,
        waiting_reqs=0,
        used_tokens=5,
        capacity_tokens=1000,
        token_usage=0.005,
        transfer_queue_reqs=3,
    )
    m = st.on_reading(reading(0.0, 1, ld))
    assert (m.num_running_reqs, m.num_queue_reqs, m.kv_used_tokens) == (11, 0, 5)
    assert m.kv_capacity_tokens == 1000 and m.num_transfer_queue_reqs == 3


def test_engine_failure_keeps_last_values_and_counts_seq() -> None:
    st = EngineState(INST, "n1")
    bad0 = st.on_failure(5, "refused")
    assert not bad0.healthy and bad0.error == "refused" and bad0.seq == 1
    assert bad0.num_running_reqs == 0 and bad0.role == "decode"
    st.on_reading(reading(0.0, 1))
    bad = st.on_failure(99, "no answer in time")
    assert not bad.healthy and bad.seq == 3 and bad.t_ns == 99
    assert bad.num_running_reqs == 9 and bad.ttft is None  # last known engine values
