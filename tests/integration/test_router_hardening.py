"""Hostile clients against a real router and real emulated workers.

Client disconnects never open a worker's circuit; oversized batches, deep
nesting and wrongly typed fields get a 400 (not a frozen loop or a 500); slow
bodies get a 408 and slow headers a closed connection; admin paths need the
API key; a taken port ends start-up with a clear error.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from typing import Any

import aiohttp
import pytest
from helpers import emulated_pd_pair
from voltana.common.errors import ConfigError
from voltana.services.router.config import RouterConfig, WorkerSpec
from voltana.services.router.server import Router

STREAM = {
    "text": "count slowly",
    "stream": True,
    "sampling_params": {"max_new_tokens": 200, "ignore_eos": True},
}
SHORT = {"text": "hi", "sampling_params": {"max_new_tokens": 3, "ignore_eos": True}}


@pytest.fixture(scope="module")
def real() -> Iterator[dict[str, Any]]:
    with emulated_pd_pair() as workers:
        yield workers


async def make_router(real: dict[str, Any], **kw: Any) -> Router:
    p_url, p_port = real["prefill"]
    cfg = RouterConfig(
        port=0,
        prefill=[WorkerSpec(url=p_url, role="prefill", bootstrap_port=p_port)],
        decode=[WorkerSpec(url=real["decode"], role="decode")],
        health_check_interval_s=0,
        **kw,
    )
    return await Router(cfg).start()


def metric(router: Router, name: str, **labels: str) -> float:
    v = router.metrics.registry.get_sample_value(name, labels)
    return 0.0 if v is None else v


async def test_disconnect_storm_opens_no_circuit(real: dict[str, Any]) -> None:
    r = await make_router(real, breaker_failures=3)
    n = 60
    try:

        async def abandon(s: aiohttp.ClientSession) -> None:
            resp = await s.post(r.url + "/generate", json=STREAM)
            got = 0
            async for _ in resp.content.iter_any():
                got += 1
                if got >= 2:
                    break
            resp.close()

        async with aiohttp.ClientSession() as s:
            await asyncio.gather(*(abandon(s) for _ in range(n)))
        deadline = time.monotonic() + 10
        while metric(r, "voltana_router_client_cancelled_total") < n:
            assert time.monotonic() < deadline, "not every disconnect was seen"
            await asyncio.sleep(0.05)
        now = time.monotonic()
        for w in r.state.workers.values():
            assert not w.breaker.is_open(now), w.name
        assert (
            metric(
                r,
                "voltana_router_upstream_errors_total",
                role="decode",
                kind="ClientConnectionResetError",
            )
            == 0
        )
        async with aiohttp.ClientSession() as s, s.post(r.url + "/generate", json=SHORT) as resp:
            assert resp.status == 200
    finally:
        await r.stop()


@pytest.mark.parametrize(
    ("path", "body", "match"),
    [
        ("/v1/chat/completions", {"messages": [], "n": 10_000_000}, "over the limit"),
        ("/generate", {"text": ["x"] * 2000}, "over the limit"),
        ("/generate", {"text": "x", "stream": "false"}, "'stream'"),
        ("/generate", {"text": 5}, "'text'"),
        ("/v1/chat/completions", {"messages": [], "n": True}, "'n'"),
        ("/v1/completions", {"prompt": {"a": 1}}, "'prompt'"),
    ],
)
async def test_bad_requests_get_400(
    real: dict[str, Any], path: str, body: dict[str, Any], match: str
) -> None:
    r = await make_router(real)
    try:
        async with aiohttp.ClientSession() as s, s.post(r.url + path, json=body) as resp:
            assert resp.status == 400
            assert match in (await resp.json())["error"]["message"]
    finally:
        await r.stop()


async def test_deep_nesting_is_a_400_not_a_500(real: dict[str, Any]) -> None:
    r = await make_router(real, max_json_depth=16)
    try:
        async with aiohttp.ClientSession() as s:
            for raw in (b"[" * 100_000, b'{"text":"x","a":' + b"[" * 20 + b"]" * 20 + b"}"):
                async with s.post(r.url + "/generate", data=raw) as resp:
                    assert resp.status == 400
                    assert "nested" in (await resp.json())["error"]["message"]
            async with s.post(r.url + "/generate", json=SHORT) as resp:
                assert resp.status == 200
    finally:
        await r.stop()


async def _raw_http(port: int, data: bytes, wait_s: float) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(data)
    await writer.drain()
    try:
        async with asyncio.timeout(wait_s):
            return await reader.read()
    finally:
        writer.close()


async def test_slow_body_408_and_slow_headers_closed(real: dict[str, Any]) -> None:
    r = await make_router(real, body_read_timeout_s=0.3, idle_timeout_s=0.5)
    try:
        head = (
            b"POST /generate HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: 100\r\n\r\n{"
        )
        got = await _raw_http(r.port, head, 5)
        assert got.startswith(b"HTTP/1.1 408"), got[:80]
        assert metric(r, "voltana_router_rejected_total", reason="slow_body") == 1
        assert r.admission.body_bytes == 0 and r.admission.active == 0
        t0 = time.monotonic()
        got = await _raw_http(r.port, b"POST /generate HTTP/1.1\r\nHost: x\r\n", 5)
        assert got == b"" and time.monotonic() - t0 < 3  # closed, no request started
    finally:
        await r.stop()


async def test_body_budget_refuses_beyond_it(real: dict[str, Any]) -> None:
    r = await make_router(
        real, max_request_bytes=1000, max_body_buffer_bytes=1500, body_read_timeout_s=2
    )
    try:
        head = (
            b"POST /generate HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: 900\r\n\r\n{"
        )
        slow = asyncio.create_task(_raw_http(r.port, head, 5))  # holds 900 bytes of budget
        deadline = time.monotonic() + 5
        while r.admission.body_bytes < 900:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.01)
        async with aiohttp.ClientSession() as s:
            body = json.dumps({"text": "y" * 800}).encode()
            async with s.post(r.url + "/generate", data=body) as resp:
                assert resp.status == 503
        assert (await slow).startswith(b"HTTP/1.1 408")
        assert r.admission.body_bytes == 0
    finally:
        await r.stop()


async def test_admin_paths_need_the_key(real: dict[str, Any]) -> None:
    r = await make_router(real, api_key="sesame")
    auth = {"Authorization": "Bearer sesame"}
    try:
        async with aiohttp.ClientSession() as s:
            for method, path in (
                ("GET", "/metrics"),
                ("GET", "/get_server_info"),
                ("GET", "/voltana/router/state"),
                ("POST", "/flush_cache"),
                ("GET", "/v1/models"),
            ):
                async with s.request(method, r.url + path) as resp:
                    assert resp.status == 401, path
                async with s.request(method, r.url + path, headers=auth) as resp:
                    assert resp.status == 200, path
            async with s.get(r.url + "/health") as resp:
                assert resp.status == 200  # probes stay open
    finally:
        await r.stop()


async def test_taken_port_fails_start_cleanly(real: dict[str, Any]) -> None:
    first = await make_router(real)
    try:
        p_url, p_port = real["prefill"]
        cfg = RouterConfig(
            port=first.port,
            prefill=[WorkerSpec(url=p_url, role="prefill", bootstrap_port=p_port)],
            decode=[WorkerSpec(url=real["decode"], role="decode")],
            nats="nats://127.0.0.1:1",
        )
        second = Router(cfg)
        with pytest.raises(ConfigError, match="cannot listen"):
            await second.start()
        async with asyncio.timeout(5):
            await second.stop()
        assert not second.bus._tasks  # the bus was never started
    finally:
        await first.stop()
