"""freqctl service core: instance specs, controller inputs from bus messages, config, renewal."""

from __future__ import annotations

import math
from typing import Any

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from voltana.common.errors import ConfigError
from voltana.predictor.profile import default_profile
from voltana.schemas import subjects
from voltana.schemas.base import Role
from voltana.schemas.config import ControllerConfig
from voltana.schemas.router import InstanceState
from voltana.schemas.telemetry import InstanceTelemetry, LatencyWindow
from voltana.services.freqctl.controllers import ControlInput, make_controller
from voltana.services.freqctl.core import (
    ConfigStore,
    InstanceSpec,
    Sent,
    build_input,
    control_input,
    missing_input,
    needs_send,
    parse_instances,
)


@pytest.mark.parametrize(
    ("text", "want"),
    [
        ("d0", [InstanceSpec("d0")]),
        ("p0, d0", [InstanceSpec("p0"), InstanceSpec("d0")]),
        ("d0@n1:0+1,p0@n2:3", [InstanceSpec("d0", "n1", (0, 1)), InstanceSpec("p0", "n2", (3,))]),
    ],
)
def test_parse_instances(text: str, want: list[InstanceSpec]) -> None:
    assert parse_instances(text) == want


@pytest.mark.parametrize(
    "text", ["", " , ", "d0@n1", "d0@n1:x", "d.0", "d0@n.1:0", "d0,d0", "d0@n1:-1"]
)
def test_parse_instances_rejects(text: str) -> None:
    with pytest.raises(ConfigError):
        parse_instances(text)


def tel(**kw: object) -> InstanceTelemetry:
    base: dict[str, object] = dict(
        t_ns=100_000_000_000, instance="d0", role="decode", node="n1", url="http://x", seq=1
    )
    base.update(kw)
    return InstanceTelemetry(**base)


def router_queue(tokens: int, oldest_wait_s: float, **over: Any) -> InstanceState:
    """The router's state of prefill instance "p0": ``tokens`` queued, the oldest waiting so long."""
    state = InstanceState(
        t_ns=100_000_000_000,
        instance="p0",
        role="prefill",
        url="u",
        seq=1,
        queued_prefill_tokens=tokens,
        oldest_wait_s=oldest_wait_s,
    )
    return msgspec.structs.replace(state, **over)


def build(
    message: InstanceTelemetry,
    *,
    received_s: float,
    now_s: float,
    router: InstanceState | None = None,
    clock: int | None = None,
) -> ControlInput:
    """``build_input`` with 1 s staleness; a router state arrives with the telemetry."""
    return build_input(
        message,
        received_s=received_s,
        router=router,
        router_received_s=None if router is None else received_s,
        now_s=now_s,
        stale_after_s=1.0,
        current_clock_mhz=clock,
    )


def test_build_input_decode_fields() -> None:
    itl = LatencyWindow(count=10, window_s=1.0, mean_s=0.02, p50_s=0.019)
    inp = build(
        tel(num_running_reqs=12, num_queue_reqs=1, kv_used_tokens=9000, itl=itl),
        received_s=100.01,
        now_s=100.02,
        clock=1410,
    )
    assert (inp.queue_reqs, inp.running_reqs, inp.batch_size, inp.kv_tokens) == (
        1,
        12,
        12.0,
        9000.0,
    )
    assert inp.observed_itl_s == 0.02 and inp.observed_ttft_s is None
    assert inp.t == 100.0 and inp.current_clock_mhz == 1410
    # busy and no router state: prefill work unknown -> None (the controller's safe clock)
    assert inp.prefill_tokens is None and inp.oldest_wait_s is None


def test_build_input_uses_fresh_router_state_only() -> None:
    rs = router_queue(4096, 0.3)
    t = tel(instance="p0", role="prefill", num_running_reqs=1)
    fresh = build(t, received_s=100.0, now_s=100.5, router=rs)
    assert (fresh.prefill_tokens, fresh.oldest_wait_s) == (4096.0, 0.3)
    stale = build(t, received_s=100.0, now_s=101.5, router=rs)
    assert stale.prefill_tokens is None


def test_build_input_idle_is_known_without_router() -> None:
    inp = build(tel(role="prefill"), received_s=100.0, now_s=100.0)
    assert (inp.prefill_tokens, inp.oldest_wait_s) == (0.0, 0.0)


def test_future_timestamp_cannot_hide_staleness() -> None:
    """A sender whose clock runs ahead: arrival time bounds the telemetry time."""
    inp = build(tel(t_ns=500_000_000_000), received_s=100.0, now_s=102.0)
    assert inp.t == 100.0


@pytest.mark.parametrize("policy", ["voltana", "ecofreq", "ecofreq-2level"])
def test_missing_and_stale_input_give_the_safe_clock(policy: str) -> None:
    profile = default_profile("h100", "llama-3.1-8b")
    ctl = make_controller(ControllerConfig(policy=policy), profile)
    d = ctl.decide(missing_input("d0"), 1000.0)
    assert d.clock_mhz == profile.max_clock_mhz
    idle = build(tel(), received_s=100.0, now_s=105.0)
    assert ctl.decide(idle, 105.0).clock_mhz == profile.max_clock_mhz


def test_config_store_precedence() -> None:
    base = ControllerConfig(policy="voltana")
    store = ConfigStore(base)
    assert store.for_instance("d0") is base
    default = ControllerConfig(policy="ecofreq")
    store.put(subjects.KV_DEFAULT_CONTROLLER_KEY, default)
    assert store.for_instance("d0") is default
    own = ControllerConfig(policy="static", static_clock_mhz=1005)
    store.put(subjects.kv_controller_key("d0"), own)
    assert store.for_instance("d0") is own and store.for_instance("d1") is default
    store.put(subjects.kv_controller_key("d0"), None)
    assert store.for_instance("d0") is default


@pytest.mark.parametrize(
    ("last", "clock", "now", "want"),
    [
        (None, 1410, 0.0, True),
        (Sent(1410, 0.0), 1410, 0.5, False),
        (Sent(1410, 0.0), 1410, 0.8, True),  # 0.4 of a 2 s lease
        (Sent(1410, 0.0), 1005, 0.1, True),
        (Sent(None, 0.0), None, 100.0, False),  # default clocks need no renewal
        (Sent(None, 0.0), 1410, 0.1, True),
    ],
)
def test_needs_send(last: Sent | None, clock: int | None, now: float, want: bool) -> None:
    assert needs_send(last, clock, now, 2.0) is want


def test_missing_input_is_maximally_stale() -> None:
    assert math.isinf(missing_input("x").t)


def test_simulated_instance_uses_the_live_mapping() -> None:
    """The simulator's input is what build_input makes of the messages for that state."""
    from voltana.groundtruth.engine import EngineConfig
    from voltana.groundtruth.gpu_model import GPUS, MODELS, GpuModel
    from voltana.sim.instance import Instance

    inst = Instance(
        "p0",
        "prefill",
        EngineConfig(role="prefill", chunked_prefill_size=1024),
        GpuModel(GPUS["h100"], MODELS["llama-3.1-8b"]),
        1980,
    )
    for i, n in enumerate((800, 900, 700)):
        inst.engine.submit(f"r{i}", prompt_tokens=n, max_new_tokens=5, now=float(i))
    assert inst.start_iteration(3.0) is not None
    simulated = inst.control_input(3.5)
    live = build(
        tel(
            t_ns=3_500_000_000, instance="p0", role="prefill", num_running_reqs=2, num_queue_reqs=1
        ),
        received_s=3.5,
        now_s=3.5,
        router=router_queue(800 + 900 + 700, 3.5, t_ns=3_500_000_000),
        clock=1980,
    )
    assert simulated == live


counts = st.integers(min_value=0, max_value=1 << 20)
seconds = st.floats(min_value=0.0, max_value=1e4, allow_nan=False)
window = st.one_of(st.none(), st.floats(min_value=1e-4, max_value=10.0))


@settings(max_examples=300, deadline=None)
@given(
    role=st.sampled_from(["prefill", "decode", "unified"]),
    t_ns=st.integers(min_value=0, max_value=10**13),
    queued=counts,
    running=counts,
    kv=counts,
    prefill_tokens=counts,
    oldest_wait=seconds,
    ttft=window,
    itl=window,
    clock=st.one_of(st.none(), st.integers(min_value=210, max_value=1980)),
    healthy=st.booleans(),
)
def test_build_input_is_control_input_of_the_message_fields(
    role: Role,
    t_ns: int,
    queued: int,
    running: int,
    kv: int,
    prefill_tokens: int,
    oldest_wait: float,
    ttft: float | None,
    itl: float | None,
    clock: int | None,
    healthy: bool,
) -> None:
    """Live telemetry + a fresh router state map exactly as the simulator's direct call does."""

    def lw(v: float | None) -> LatencyWindow | None:
        return None if v is None else LatencyWindow(count=3, window_s=1.0, mean_s=v)

    t = t_ns / 1e9
    message = tel(
        t_ns=t_ns,
        role=role,
        num_queue_reqs=queued,
        num_running_reqs=running,
        kv_used_tokens=kv,
        ttft=lw(ttft),
        itl=lw(itl),
        healthy=healthy,
    )
    router = router_queue(prefill_tokens, oldest_wait, t_ns=t_ns, instance="d0", role=role)
    live = build(message, received_s=t, now_s=t, router=router, clock=clock)
    direct = control_input(
        instance="d0",
        role=role,
        t=t,
        queue_reqs=queued,
        running_reqs=running,
        kv_used_tokens=kv,
        queued_prefill=(float(prefill_tokens), oldest_wait),
        observed_ttft_s=ttft,
        observed_itl_s=itl,
        current_clock_mhz=clock,
        healthy=healthy,
    )
    assert live == direct


def test_replay_decides_on_router_wakes_like_the_service() -> None:
    """The service decides at once when the router brings an instance new work; the
    replayer must too, or its controller's state (dwell, hysteresis) drifts from the
    live one's and later decisions diverge."""
    from voltana.services.freqctl.core import router_brought_work
    from voltana.services.freqctl.replay import Replayer

    rep = Replayer(default_profile("h100", "llama-3.1-8b"), lambda _i: ControllerConfig())
    state = InstanceState(t_ns=1, instance="d0", role="decode", url="u", seq=1)
    busy = msgspec.structs.replace(state, seq=2, in_flight_requests=3)
    assert rep.feed(100.0, busy) is None  # no telemetry yet: nothing to decide on
    assert rep.feed(100.1, tel(gpus=[0])) is not None
    assert rep.feed(100.2, busy) is None  # no more work than before
    more = msgspec.structs.replace(busy, seq=3, in_flight_requests=5)
    assert router_brought_work(busy, more) and not router_brought_work(more, busy)
    assert rep.feed(100.3, more) is not None  # woken by dispatch
    assert rep.report.decisions["d0"] == 2


def test_replay_reads_the_lock_from_gpu_readings_too_like_the_service() -> None:
    """In a dry run the GPU's readings say nothing is locked while the actuator's state
    says what it would lock; the service takes whichever came last, so must replay."""
    from voltana.schemas.clock import ClockState
    from voltana.schemas.telemetry import GpuTelemetry
    from voltana.services.freqctl.replay import Replayer

    rep = Replayer(default_profile("h100", "llama-3.1-8b"), lambda _i: ControllerConfig())
    rep.feed(1.0, tel(gpus=[0]))
    state = ClockState(t_ns=1, node="n1", gpu=0, seq=1, status="applied", locked_clock_mhz=1200)
    reading = GpuTelemetry(
        t_ns=2, node="n1", gpu=0, seq=1, power_w=300.0, energy_j=1.0, sm_clock_mhz=1980
    )
    rep.feed(1.1, state)
    assert rep._locked[("n1", 0)] == 1200
    rep.feed(1.2, reading)
    assert rep._locked[("n1", 0)] is None
    other = msgspec.structs.replace(reading, node="n2", locked_clock_mhz=900)
    rep.feed(1.3, other)  # a GPU no replayed instance runs on: not kept
    assert ("n2", 0) not in rep._locked
