"""Router state: accounting, breaker, health, telemetry merge with ages."""

from __future__ import annotations

import pytest
from voltana.common.errors import ConfigError
from voltana.schemas.telemetry import GpuTelemetry, InstanceTelemetry
from voltana.services.router.accounting import InstanceLoad
from voltana.services.router.config import RouterConfig, WorkerSpec, instance_name
from voltana.services.router.state import Breaker, ClusterState


def config() -> RouterConfig:
    """One prefill and one decode worker, their URLs written loosely (normalised by validate)."""
    return RouterConfig(
        prefill=[WorkerSpec(url="127.0.0.1:1", role="prefill")],
        decode=[WorkerSpec(url="http://127.0.0.1:2/", role="decode")],
    ).validate()


def cluster(**kw: float) -> ClusterState:
    cfg = config()
    return ClusterState([*cfg.prefill, *cfg.decode], **kw)


def gpu_reading(instance: str, gpu: int, power_w: float, sm_clock_mhz: int) -> GpuTelemetry:
    """A GPU reading of node "n" (energy_j set, but the router merges only power and clock)."""
    return GpuTelemetry(
        t_ns=1,
        node="n",
        gpu=gpu,
        seq=1,
        instance=instance,
        power_w=power_w,
        energy_j=1.0,
        sm_clock_mhz=sm_clock_mhz,
    )


P, D = "127-0-0-1_1", "127-0-0-1_2"


def test_config_normalises_and_names_workers() -> None:
    cfg = config()
    assert cfg.prefill[0].url == "http://127.0.0.1:1" and cfg.decode[0].url == "http://127.0.0.1:2"
    assert instance_name("http://a.b:5") == "a-b_5"
    with pytest.raises(ConfigError, match="decode"):
        RouterConfig(prefill=cfg.prefill).validate()
    with pytest.raises(ConfigError, match="twice"):
        RouterConfig(prefill=cfg.prefill, decode=[*cfg.decode, *cfg.decode]).validate()
    with pytest.raises(ConfigError, match="http"):
        RouterConfig(
            prefill=[WorkerSpec(url="ftp://x:1", role="prefill")], decode=cfg.decode
        ).validate()


def test_accounting_round_trip_returns_to_zero() -> None:
    st = cluster()
    st.dispatched(P, D, "r1", 100, 20, now=1.0)
    st.dispatched(P, D, "r2", 50, 10, now=2.0)
    v = st.instance_view(st.workers[P], 3.0)
    assert (v.in_flight_requests, v.queued_prefill_tokens, v.oldest_wait_s) == (2, 150, 2.0)
    d = st.instance_view(st.workers[D], 3.0)
    assert (d.in_flight_requests, d.in_flight_tokens) == (2, 180)
    st.prefill_done(P, "r1", 100)
    st.prefill_done(P, "r1", 100)  # twice: counted once
    st.first_token(D, "r1", 0.3, 3.0)
    st.decode_done(D, "r1", 100, 20, [0.01, 0.02], 4.0)
    st.prefill_done(P, "r2", 50)
    st.decode_done(D, "r2", 50, 10, [], 4.0)
    for name in (P, D):
        assert st.workers[name].load == InstanceLoad(), name  # nothing in flight or waiting
    msg = st.instance_state(D, 4.0, 123)
    assert msg.seq == 1 and msg.ttft is not None and msg.ttft.count == 1
    assert msg.itl is not None and msg.itl.max_s == pytest.approx(0.02)


def test_breaker_opens_then_half_opens_and_closes() -> None:
    b = Breaker(failures_to_open=2, open_s=5.0)
    assert not b.record(False, 0.0) and b.allows(0.0)
    assert b.record(False, 1.0) and not b.allows(2.0) and b.is_open(2.0)
    assert b.allows(6.5)  # half-open: one trial
    b.on_dispatch(6.5)
    assert not b.allows(6.6)
    assert not b.record(False, 7.0) and not b.allows(7.5)  # trial failed: open again
    assert b.allows(12.5)
    assert b.record(True, 12.6) and b.allows(12.6) and b.failures == 0


def test_unhealthy_after_threshold_and_back() -> None:
    st = cluster(health_failure_threshold=2)
    assert not st.health_result(D, False, "refused")
    assert st.view("decode", 0)[0].healthy
    assert st.health_result(D, False, "refused")
    assert not st.view("decode", 0)[0].healthy
    assert st.health_result(D, True, None) and st.view("decode", 0)[0].healthy


def test_telemetry_merges_by_url_and_goes_stale() -> None:
    st = cluster(telemetry_stale_s=1.0)
    st.on_instance_telemetry(
        InstanceTelemetry(
            t_ns=1,
            instance="decode-0",
            role="decode",
            node="n",
            url="http://127.0.0.1:2",
            seq=1,
            num_running_reqs=7,
            kv_used_tokens=900,
            num_queue_reqs=2,
        ),
        now=10.0,
    )
    st.on_gpu_telemetry(gpu_reading(D, 0, 300.0, 1005), now=10.2)
    assert st.on_gpu_telemetry(gpu_reading("decode-0", 1, 100.0, 990), now=10.2)
    assert not st.on_gpu_telemetry(gpu_reading("other", 1, 1.0, 1), now=10.2)
    v = st.instance_view(st.workers[D], 10.5)
    assert (v.running_batch, v.kv_tokens, v.clock_mhz, v.power_w, v.engine_queue_reqs) == (
        7,
        900,
        1005,
        400.0,
        2,
    )
    assert v.telemetry_age_s == pytest.approx(0.3)
    stale = st.instance_view(st.workers[D], 12.0)
    assert stale.running_batch is None and stale.clock_mhz is None
    assert stale.telemetry_age_s == pytest.approx(1.8)
    assert st.instance_view(st.workers[P], 12.0).telemetry_age_s is None
