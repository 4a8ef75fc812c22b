"""Every bus message round-trips through msgpack and JSON; subject builders and parsers agree."""

from __future__ import annotations

import msgspec
import pytest
from voltana.schemas import (
    ClockDecision,
    ClockState,
    ControllerConfig,
    GpuTelemetry,
    InstanceState,
    InstanceTelemetry,
    LatencyWindow,
    RequestRecord,
    ResetClock,
    RouteDecision,
    SetClock,
    SloConfig,
    codec,
    now_ns,
    subjects,
)
from voltana.schemas.clock import ClockCommand

T = now_ns()
WIN = LatencyWindow(
    count=12, window_s=1.0, mean_s=0.02, p50_s=0.018, p90_s=0.03, p99_s=0.05, max_s=0.06
)

SAMPLES = [
    GpuTelemetry(
        t_ns=T,
        node="n1",
        gpu=3,
        seq=7,
        instance="p0",
        role="prefill",
        power_w=412.5,
        energy_j=123456.789,
        avg_power_w=410.0,
        interval_s=0.05,
        sm_clock_mhz=1410,
        locked_clock_mhz=1410,
        throttle_reasons=4,
        source="emulated",
    ),
    InstanceTelemetry(
        t_ns=T,
        instance="d0",
        role="decode",
        node="n1",
        url="http://127.0.0.1:30001",
        seq=9,
        gpus=[0, 1],
        num_running_reqs=17,
        num_queue_reqs=2,
        kv_used_tokens=9000,
        ttft=WIN,
        itl=WIN,
        healthy=False,
        error="timeout",
    ),
    InstanceState(
        t_ns=T,
        instance="p0",
        role="prefill",
        url="http://127.0.0.1:30000",
        seq=1,
        in_flight_requests=3,
        in_flight_tokens=4096,
        oldest_wait_s=0.2,
        ttft=WIN,
    ),
    RouteDecision(
        t_ns=T,
        request_id="r1",
        prefill="p0",
        decode="d1",
        prefill_policy="random",
        decode_policy="ecoroute",
        bootstrap_room=(1 << 63) - 1,
        input_tokens=100,
    ),
    RequestRecord(
        t_ns=T,
        request_id="r1",
        prefill="p0",
        decode="d1",
        status="ok",
        arrival_t_ns=T - 10**9,
        output_tokens=128,
        ttft_s=0.3,
        itl_mean_s=0.02,
        slo_met=True,
    ),
    SetClock(t_ns=T, node="n1", gpu=0, sm_clock_mhz=1005, lease_s=1.5, seq=4, issued_by="freqctl"),
    ResetClock(t_ns=T, node="n1", gpu=0, seq=5),
    ClockState(
        t_ns=T,
        node="n1",
        gpu=0,
        seq=2,
        status="rejected",
        locked_clock_mhz=None,
        requested_clock_mhz=1234,
        reason="not a supported clock",
        backend="dry-run",
    ),
    ClockDecision(
        t_ns=T,
        instance="d0",
        role="decode",
        policy="voltana",
        clock_mhz=1200,
        reason="min energy within ITL budget",
        predicted_latency_s=0.031,
        budget_s=0.045,
    ),
    SloConfig(ttft_s=0.5, itl_s=0.04),
    ControllerConfig(policy="ecofreq", slo=SloConfig(ttft_s=2.0), static_clock_mhz=None),
]


@pytest.mark.parametrize("msg", SAMPLES, ids=lambda m: type(m).__name__)
def test_msgpack_and_json_round_trip(msg: msgspec.Struct) -> None:
    typ = type(msg)
    assert codec.decode(codec.encode(msg), typ) == msg
    assert codec.from_json(codec.to_json(msg), typ) == msg


@pytest.mark.parametrize("msg", SAMPLES[:9], ids=lambda m: type(m).__name__)
def test_every_event_has_version_and_timestamp(msg: msgspec.Struct) -> None:
    assert msg.v == 1  # type: ignore[attr-defined]
    assert msg.t_ns == T  # type: ignore[attr-defined]


def test_clock_command_union_decodes_by_tag() -> None:
    for cmd in (
        SetClock(t_ns=T, node="n", gpu=1, sm_clock_mhz=990),
        ResetClock(t_ns=T, node="n", gpu=1),
    ):
        assert codec.decode(codec.encode(cmd), ClockCommand) == cmd


def test_strict_decoding_reports_the_failing_path() -> None:
    bad = msgspec.msgpack.encode(
        {
            "t_ns": T,
            "node": "n1",
            "gpu": 0,
            "seq": 1,
            "power_w": "high",
            "energy_j": 1.0,
            "sm_clock_mhz": 1980,
        }
    )
    with pytest.raises(msgspec.ValidationError, match=r"\$\.power_w"):
        codec.decode(bad, GpuTelemetry)


def test_unknown_fields_from_newer_senders_are_ignored() -> None:
    raw = msgspec.msgpack.encode(
        {"type": "reset", "t_ns": T, "node": "n", "gpu": 2, "future_field": 1}
    )
    assert codec.decode(raw, ClockCommand) == ResetClock(t_ns=T, node="n", gpu=2)


BUILT = [
    (
        subjects.telemetry_gpu("node-1", 3),
        "telemetry.gpu",
        {"node": "node-1", "gpu": "3"},
        GpuTelemetry,
    ),
    (
        subjects.telemetry_engine("decode", "d_0"),
        "telemetry.engine",
        {"role": "decode", "instance": "d_0"},
        InstanceTelemetry,
    ),
    (
        subjects.router_state("prefill", "p0"),
        "router.state",
        {"role": "prefill", "instance": "p0"},
        InstanceState,
    ),
    (subjects.ROUTE_DECISION, "route.decision", {}, RouteDecision),
    (subjects.REQUEST_DONE, "request.done", {}, RequestRecord),
    (subjects.clock_set("n1", 0), "clock.set", {"node": "n1", "gpu": "0"}, ClockCommand),
    (subjects.clock_state("n1", 7), "clock.state", {"node": "n1", "gpu": "7"}, ClockState),
    (subjects.freqctl_decision("d0"), "freqctl.decision", {"instance": "d0"}, ClockDecision),
]


@pytest.mark.parametrize(("subject", "kind", "fields", "typ"), BUILT, ids=[b[1] for b in BUILT])
def test_subject_builders_and_parser_agree(
    subject: str, kind: str, fields: dict[str, str], typ: object
) -> None:
    parsed = subjects.parse(subject)
    assert parsed.kind == kind
    assert parsed.fields == fields
    assert parsed.message_type is typ
    assert subject.startswith("voltana.")


@pytest.mark.parametrize("bad", ["a.b", "with space", "x*", ">", "", "ü"])
def test_builders_reject_unsafe_tokens(bad: str) -> None:
    with pytest.raises(subjects.SubjectError, match="invalid node"):
        subjects.clock_set(bad, 0)


@pytest.mark.parametrize(
    "bad",
    [
        "other.telemetry.gpu.n.0",
        "voltana.telemetry.gpu.n",
        "voltana.nope",
        "voltana.clock.set.n.0.extra",
    ],
)
def test_parser_rejects_unknown_subjects(bad: str) -> None:
    with pytest.raises(subjects.SubjectError):
        subjects.parse(bad)


def test_node_wildcard_matches_only_that_node() -> None:
    assert subjects.clock_set_node("n1") == "voltana.clock.set.n1.*"
