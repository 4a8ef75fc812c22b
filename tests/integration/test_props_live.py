"""Property tests against live services: hostile input, then proof the service still works.

- the actuator (in-process, emulated GPU, real nats-server) gets arbitrary
  payloads on its command subjects, then a valid lock is applied;
- telemetry's scraper reads an HTTP server answering arbitrary ``/metrics`` and
  ``/v1/loads`` bodies: a reading or an ``UpstreamError``, never anything else,
  and a good answer afterwards is read.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import aiohttp
import msgspec
import pytest
from actuator_helpers import emulator, gpus_of
from aiohttp import web
from helpers import serve_app, wait_for
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from voltana.bus.client import Bus, BusOptions
from voltana.bus.natsserver import NatsServer
from voltana.common.errors import UpstreamError
from voltana.gpu.emulated import EmulatedDevice
from voltana.schemas.clock import SetClock
from voltana.services.actuator.core import ActuatorConfig
from voltana.services.actuator.service import Actuator
from voltana.services.telemetry.engine import EngineScraper

NODE = "n1"
LIVE = settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


@pytest.fixture(scope="module")
def emu(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with emulator(gpu_ids=(0,), log_dir=tmp_path_factory.mktemp("emu")) as url:
        yield url


@pytest.fixture(scope="module")
def nats() -> Iterator[NatsServer]:
    with NatsServer() as server:
        yield server


_fields = st.dictionaries(
    st.sampled_from(["type", "t_ns", "node", "gpu", "sm_clock_mhz", "lease_s", "seq", "issued_by"]),
    st.one_of(
        st.integers(-(2**63), 2**64 - 1),
        st.floats(),
        st.text(max_size=300),
        st.sampled_from(["set", "reset", NODE, "²", "a.b"]),
        st.none(),
    ),
    max_size=8,
)
_payloads = st.lists(
    st.one_of(_fields.map(msgspec.msgpack.encode), st.binary(max_size=64)), max_size=6
)
_tokens = st.sampled_from(["0", "1", "²", "00", "99999999999999999999", "x", "-1"])


async def test_actuator_survives_any_payload(nats: NatsServer, emu: str) -> None:
    bus = await Bus.connect(BusOptions(servers=[nats.url]))
    pub = await Bus.connect(BusOptions(servers=[nats.url]))
    actuator = Actuator(bus, EmulatedDevice.discover([emu]), ActuatorConfig(node=NODE))
    await actuator.start()
    mhz = iter(range(1980, 600, -15))
    try:

        @LIVE
        @given(payloads=_payloads, token=_tokens)
        def check(payloads: list[bytes], token: str) -> None:
            asyncio.run_coroutine_threadsafe(one(payloads, token), loop).result(30)

        async def one(payloads: list[bytes], token: str) -> None:
            for p in payloads:
                await pub.nc.publish(f"voltana.clock.set.{NODE}.{token}", p)
            want = next(mhz)
            cmd = SetClock(t_ns=time.time_ns(), node=NODE, gpu=0, sm_clock_mhz=want, issued_by="t")
            await pub.publish(f"voltana.clock.set.{NODE}.0", cmd)
            await wait_for(lambda: gpus_of(emu)[0]["locked_clock_mhz"] == want, 10)

        loop = asyncio.get_running_loop()
        await asyncio.to_thread(check)
        assert actuator._timer is not None and not actuator._timer.done()
        assert all(not w.done() for w in actuator._workers)
    finally:
        await actuator.stop()
        await pub.close()
        await bus.close()
    assert gpus_of(emu)[0]["locked_clock_mhz"] is None


_metrics_lines = st.lists(
    st.one_of(
        st.sampled_from(
            [
                "# TYPE sglang:num_running_reqs gauge",
                "sglang:num_running_reqs 3",
                "sglang:num_running_reqs 1e999",
                'sglang:x_bucket{le="zz"} 1',
                "# TYPE sglang:x histogram",
            ]
        ),
        st.text(max_size=30),
    ),
    max_size=6,
).map(lambda lines: "\n".join(lines).encode("utf-8", "surrogatepass"))
_loads = st.one_of(
    st.binary(max_size=40),
    st.recursive(
        st.one_of(st.none(), st.integers(), st.floats(), st.text(max_size=5)),
        lambda inner: st.one_of(
            st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=20), inner, max_size=3)
        ),
        max_leaves=10,
    ).map(lambda doc: msgspec.json.encode({"loads": [doc]})),
    st.integers(1, 20_000).map(lambda d: b'{"loads": ' + b"[" * d),
)
GOOD_METRICS = b"# TYPE sglang:num_running_reqs gauge\nsglang:num_running_reqs 2\n"
GOOD_LOADS = b'{"loads": [{"num_running_reqs": 2, "num_waiting_reqs": 0}]}'


@pytest.fixture
async def hostile_server() -> AsyncIterator[dict[str, Any]]:
    answer = {"metrics": GOOD_METRICS, "loads": GOOD_LOADS}

    async def metrics(_: web.Request) -> web.Response:
        return web.Response(body=answer["metrics"], content_type="text/plain")

    async def loads(_: web.Request) -> web.Response:
        return web.Response(body=answer["loads"], content_type="application/json")

    app = web.Application()
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/v1/loads", loads)
    runner, url = await serve_app(app)
    try:
        yield {"url": url, "answer": answer}
    finally:
        await runner.cleanup()


async def test_scraper_gives_a_reading_or_upstream_error(hostile_server: dict[str, Any]) -> None:
    answer = hostile_server["answer"]
    async with aiohttp.ClientSession() as session:
        scraper = EngineScraper(session, hostile_server["url"], 2.0)

        @LIVE
        @given(metrics=_metrics_lines, loads=_loads)
        def check(metrics: bytes, loads: bytes) -> None:
            asyncio.run_coroutine_threadsafe(one(metrics, loads), loop).result(30)

        async def one(metrics: bytes, loads: bytes) -> None:
            answer["metrics"], answer["loads"] = metrics, loads
            with contextlib.suppress(UpstreamError):
                await scraper.scrape()
            answer["metrics"], answer["loads"] = GOOD_METRICS, GOOD_LOADS
            reading = await scraper.scrape()  # the next good answer is read as usual
            assert reading is not None

        loop = asyncio.get_running_loop()
        await asyncio.to_thread(check)
