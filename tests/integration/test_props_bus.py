"""Property tests: every bus message type against arbitrary payloads, and live subscribers
under a flood of garbage and forged messages (real nats-server).

A payload decodes into its type or fails with msgspec's clean error; names that
are not subject tokens, oversized text, newer schema versions and absurd counts
fail decoding. A flood of garbage on many subjects leaves a bounded number of
log lines and metric series, and the subscriber (and the router's state loop)
goes on.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import msgspec
import pytest
from helpers import wait_for
from hypothesis import given, settings
from hypothesis import strategies as st
from structlog.testing import capture_logs
from voltana.bus.client import DECODE_ERRORS, Bus
from voltana.bus.natsserver import NatsServer
from voltana.schemas import codec, subjects
from voltana.schemas.base import SCHEMA_VERSION
from voltana.schemas.router import InstanceState
from voltana.schemas.telemetry import InstanceTelemetry
from voltana.services.router.config import RouterConfig, WorkerSpec
from voltana.services.router.server import Router

TYPES = [typ for _, _, typ in subjects._PATTERNS]
_values = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**63), 2**64 - 1),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=20),
    st.sampled_from(["a.b", "²", "x" * 5000, "decode", "prefill", "set", "reset"]),
    st.lists(st.integers(-5, 2**40), max_size=70),
)


def _fields(typ: Any) -> list[str]:
    types = typ.__args__ if hasattr(typ, "__args__") else (typ,)
    return sorted({f for t in types for f in t.__struct_fields__} | {"type"})


@settings(max_examples=60, deadline=None)
@given(data=st.data(), index=st.integers(0, len(TYPES) - 1))
def test_every_message_type_decodes_or_fails_cleanly(data: st.DataObject, index: int) -> None:
    typ = TYPES[index]
    payload = data.draw(
        st.one_of(
            st.dictionaries(st.sampled_from(_fields(typ)), _values, max_size=12).map(
                msgspec.msgpack.encode
            ),
            st.binary(max_size=80),
        )
    )
    try:
        value = codec.decoder(typ).decode(payload)
    except (msgspec.DecodeError, msgspec.ValidationError):
        return
    assert value.v <= SCHEMA_VERSION
    for name in ("node", "instance", "issued_by"):
        text = getattr(value, name, None)
        if text:
            assert subjects._TOKEN.fullmatch(text), text


def telemetry(instance: str, url: str, **kw: Any) -> dict[str, Any]:
    return {
        "t_ns": time.time_ns(),
        "instance": instance,
        "role": "decode",
        "node": "n1",
        "url": url,
        "seq": 1,
        **kw,
    }


@pytest.mark.parametrize(
    "bad",
    [
        {"instance": "a.b"},
        {"instance": "x" * 500},
        {"instance": "²"},
        {"v": SCHEMA_VERSION + 1},
        {"kv_used_tokens": 2**62},
        {"num_running_reqs": -1},
        {"url": "u" * 10_000},
        {"gpus": list(range(100))},
    ],
)
def test_forged_telemetry_fails_decoding(bad: dict[str, Any]) -> None:
    payload = msgspec.msgpack.encode({**telemetry("d0", "http://w:1"), **bad})
    with pytest.raises(msgspec.ValidationError):
        codec.decode(payload, InstanceTelemetry)


async def test_garbage_flood_is_bounded_and_the_router_goes_on(nats_server: NatsServer) -> None:
    cfg = RouterConfig(
        port=0,
        prefill=[WorkerSpec(url="http://127.0.0.1:9", role="prefill")],
        decode=[WorkerSpec(url="http://127.0.0.1:10", role="decode")],
        nats=nats_server.url,
        health_check_interval_s=0,
        state_publish_hz=20,
    )
    router = await Router(cfg).start()
    pub = await Bus.connect(servers=[nats_server.url])
    states: list[InstanceState] = []
    await pub.subscribe(subjects.ROUTER_STATE_ALL, InstanceState, lambda m, s: states.append(m))
    try:
        await wait_for(lambda: router.bus.connected and len(states) > 0, 10)
        decode_url = router.cfg.decode[0].url
        series_before = len(next(iter(DECODE_ERRORS.collect())).samples)
        with capture_logs() as logs:
            for i in range(2000):
                subject = f"voltana.telemetry.engine.decode.junk{i % 500}"
                await pub.nc.publish(subject, b"\xc1" + bytes([i % 256]) * (i % 7))
            # forged: a URL that matches a real worker under a name that is not a token
            forged = msgspec.msgpack.encode(telemetry("a.b c", decode_url))
            await pub.nc.publish("voltana.telemetry.engine.decode.x", forged)
            await pub.nc.flush()
            sub_bus = router.bus.bus
            assert sub_bus is not None
            await wait_for(lambda: sub_bus.decode_error_total() >= 2001, 10)
        dropped = [e for e in logs if e["event"] == "bus_payload_dropped"]
        assert 1 <= len(dropped) <= 4, len(dropped)
        series_after = len(next(iter(DECODE_ERRORS.collect())).samples)
        assert series_after - series_before <= 4  # per subscription and kind, not per subject
        # a real telemetry message still lands, and the state loop still publishes
        good = InstanceTelemetry(**telemetry("decode-0", decode_url, num_running_reqs=3))
        await pub.publish(subjects.telemetry_engine("decode", "decode-0"), good)
        n = len(states)
        await wait_for(
            lambda: any(s.instance == "decode-0" for s in states[n:]) and len(states) > n + 4, 10
        )
        assert all(subjects._TOKEN.fullmatch(s.instance) for s in states)
        assert all(not t.done() for t in router._tasks)
    finally:
        await pub.close()
        await router.stop()
    await asyncio.sleep(0)
