"""Failure paths against real workers: a decode killed mid-stream, a prefill answering 500,
a worker that never answers, a client that goes away, and the admission limits.

Healthy workers are real ``voltana emulator`` subprocesses; a failing worker is a
real HTTP server that fails the way a broken SGLang server does (500, or accepting
the connection and never answering).
"""

from __future__ import annotations

import asyncio
import json
import signal
import time
import urllib.request
from collections.abc import AsyncIterator, Iterator
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from helpers import (
    emulated_pd_pair,
    free_port,
    serve_app,
    start_emulator,
    stop_processes,
    wait_for,
    wait_http,
)
from prometheus_client.parser import text_string_to_metric_families
from voltana.services.router.config import RouterConfig, WorkerSpec
from voltana.services.router.server import Router

LONG = {
    "text": "count slowly",
    "stream": True,
    "sampling_params": {"max_new_tokens": 400, "ignore_eos": True},
}
SHORT = {"text": "hi", "sampling_params": {"max_new_tokens": 3, "ignore_eos": True}}


@pytest.fixture(scope="module")
def real() -> Iterator[dict[str, Any]]:
    """One real prefill and one real decode worker shared by the module."""
    with emulated_pd_pair() as workers:
        yield workers


@pytest.fixture
async def broken() -> AsyncIterator[dict[str, str]]:
    """Real HTTP workers that fail: ``/generate`` answers 500, or never answers."""
    hits: dict[str, int] = {"500": 0, "hang": 0}

    async def fail(request: web.Request) -> web.Response:
        await request.read()
        hits["500"] += 1
        return web.json_response({"error": {"message": "boom"}}, status=500)

    async def hang(request: web.Request) -> web.Response:
        hits["hang"] += 1
        await asyncio.sleep(3600)
        raise AssertionError("unreachable")

    async def ok(_: web.Request) -> web.Response:
        return web.Response(text="ok")

    runners, urls = [], {}
    for name, handler in (("500", fail), ("hang", hang)):
        app = web.Application()
        for path in ("/generate", "/v1/completions", "/v1/chat/completions"):
            app.router.add_post(path, handler)
        app.router.add_get("/health", ok)
        runner, urls[name] = await serve_app(app)
        runners.append(runner)
    try:
        yield {**urls, "hits": hits}  # type: ignore[dict-item]
    finally:
        for r in runners:
            await r.cleanup()


async def make_router(
    prefill: list[tuple[str, int | None]], decode: list[str], **kw: Any
) -> Router:
    cfg = RouterConfig(
        port=0,
        prefill=[WorkerSpec(url=u, role="prefill", bootstrap_port=b) for u, b in prefill],
        decode=[WorkerSpec(url=u, role="decode") for u in decode],
        health_check_interval_s=kw.pop("health_check_interval_s", 0),
        **kw,
    )
    return await Router(cfg).start()


def engine_counts(url: str) -> tuple[float, float]:
    """(running + queued requests, aborted requests total) from a worker's /metrics."""
    with urllib.request.urlopen(url + "/metrics", timeout=2) as r:
        text = r.read().decode()
    vals: dict[str, float] = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            vals[s.name] = vals.get(s.name, 0.0) + s.value
    busy = vals.get("sglang:num_running_reqs", 0) + vals.get("sglang:num_queue_reqs", 0)
    return busy, vals.get("sglang:num_aborted_requests_total", 0.0)


def metric(router: Router, name: str, **labels: str) -> float:
    v = router.metrics.registry.get_sample_value(name, labels)
    return 0.0 if v is None else v


async def test_prefill_500_is_retried_on_another_prefill(
    real: dict[str, Any], broken: dict[str, Any]
) -> None:
    r = await make_router(
        [(broken["500"], None), real["prefill"]], [real["decode"]], prefill_policy="round-robin"
    )
    try:
        async with aiohttp.ClientSession() as s:
            for stream in (False, True):
                async with s.post(r.url + "/generate", json={**SHORT, "stream": stream}) as resp:
                    body = await resp.read()
                    assert resp.status == 200, body
        assert broken["hits"]["500"] >= 1
        assert metric(r, "voltana_router_prefill_retries_total") == broken["hits"]["500"]
        assert metric(r, "voltana_router_requests_total", path="/generate", status="ok") == 2
    finally:
        await r.stop()


@pytest.mark.parametrize("stream", [False, True])
async def test_prefill_500_ends_request_with_error_and_cancels_decode(
    real: dict[str, Any], broken: dict[str, Any], stream: bool
) -> None:
    _, aborted0 = engine_counts(real["decode"])
    r = await make_router([(broken["500"], None)], [real["decode"]])
    try:
        t0 = time.monotonic()
        async with (
            aiohttp.ClientSession() as s,
            s.post(r.url + "/generate", json={**LONG, "stream": stream}) as resp,
        ):
            body = await resp.json()
        assert time.monotonic() - t0 < 3
        assert resp.status == 500 and "prefill failed" in body["error"]["message"]
        # the decode side was cancelled: nothing left running there (it was aborted, or
        # closed before it even reached the worker: the 500 can come back that fast)
        await wait_for(lambda: engine_counts(real["decode"])[0] == 0, 5)
        assert engine_counts(real["decode"])[1] in (aborted0, aborted0 + 1)
        st = r.state.workers[r.cfg.prefill[0].name]
        assert st.breaker.failures == 1 and st.load.in_flight_requests == 0
    finally:
        await r.stop()


@pytest.mark.parametrize("side", ["prefill", "decode"])
async def test_worker_never_answering_times_out(
    real: dict[str, Any], broken: dict[str, Any], side: str
) -> None:
    pf = [(broken["hang"], None)] if side == "prefill" else [real["prefill"]]
    dc = [broken["hang"]] if side == "decode" else [real["decode"]]
    r = await make_router(pf, dc, read_timeout_s=1.0, prefill_retries=0)
    try:
        t0 = time.monotonic()
        async with aiohttp.ClientSession() as s, s.post(r.url + "/generate", json=LONG) as resp:
            body = await resp.json()
        took = time.monotonic() - t0
        assert resp.status == 504, body
        assert "timed out" in body["error"]["message"] and 0.9 < took < 4, (took, body)
        await wait_for(
            lambda: all(w.load.in_flight_requests == 0 for w in r.state.workers.values())
        )
        if side == "prefill":  # the real decode partner was cancelled, not left waiting
            await wait_for(lambda: engine_counts(real["decode"])[0] == 0, 5)
    finally:
        await r.stop()


async def test_decode_killed_mid_stream_ends_with_error_chunk(real: dict[str, Any]) -> None:
    dp = free_port()
    proc = start_emulator("decode", dp, gpu=7)
    try:
        wait_http(f"http://127.0.0.1:{dp}/health", proc)
        r = await make_router(
            [real["prefill"]],
            [f"http://127.0.0.1:{dp}"],
            health_check_interval_s=0.2,
            health_failure_threshold=1,
        )
        try:
            chunks: list[bytes] = []
            async with aiohttp.ClientSession() as s, s.post(r.url + "/generate", json=LONG) as resp:
                assert resp.status == 200
                t_kill = None
                async for chunk in resp.content.iter_any():
                    chunks.append(chunk)
                    if t_kill is None and len(chunks) >= 3:
                        proc.send_signal(signal.SIGKILL)
                        t_kill = time.monotonic()
            assert t_kill is not None and time.monotonic() - t_kill < 3
            events = [e.strip() for e in b"".join(chunks).split(b"\n\n") if e.strip()]
            assert events[-1] == b"data: [DONE]"
            err = json.loads(events[-2][5:])
            assert "decode failed mid-stream" in err["error"]["message"]
            await wait_for(lambda: not r.state.workers[r.cfg.decode[0].name].healthy, 5)
            async with aiohttp.ClientSession() as s:
                async with s.get(r.url + "/health") as h:
                    assert h.status == 503
                async with s.post(r.url + "/generate", json=SHORT) as resp2:
                    assert resp2.status == 503 and "no healthy" in (await resp2.text())
            assert metric(r, "voltana_router_requests_total", path="/generate", status="error") == 1
        finally:
            await r.stop()
    finally:
        stop_processes([proc])


async def test_client_disconnect_cancels_both_upstreams(real: dict[str, Any]) -> None:
    _, p_aborted0 = engine_counts(real["prefill"][0])
    _, d_aborted0 = engine_counts(real["decode"])
    r = await make_router([real["prefill"]], [real["decode"]])
    try:
        async with aiohttp.ClientSession() as s:
            resp = await s.post(r.url + "/generate", json=LONG)
            got = 0
            async for _ in resp.content.iter_any():
                got += 1
                if got >= 2:
                    break
            resp.close()  # the client goes away mid-stream
        await wait_for(lambda: metric(r, "voltana_router_client_cancelled_total") == 1, 5)
        await wait_for(lambda: engine_counts(real["decode"]) == (0, d_aborted0 + 1), 5)
        assert engine_counts(real["prefill"][0])[1] == p_aborted0  # prefill had finished
        assert all(w.load.in_flight_requests == 0 for w in r.state.workers.values())
        # gone while the prefill is still running: both upstream requests are closed
        big = {**LONG, "input_ids": list(range(16000))}
        big.pop("text")
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=0.05)) as s:
            with pytest.raises(TimeoutError):
                await s.post(r.url + "/generate", json=big)
        await wait_for(lambda: metric(r, "voltana_router_client_cancelled_total") == 2, 5)
        await wait_for(lambda: engine_counts(real["decode"]) == (0, d_aborted0 + 2), 5)
        assert all(
            w.load.in_flight_requests == 0 and not w.load.waiting_since
            for w in r.state.workers.values()
        )
        # (the emulated prefill finishes a prefill whose client left; SGLang aborts it)
        await wait_for(lambda: engine_counts(real["prefill"][0])[0] == 0, 5)
    finally:
        await r.stop()


async def test_admission_limits_and_auth(real: dict[str, Any]) -> None:
    r = await make_router(
        [real["prefill"]],
        [real["decode"]],
        max_concurrent_requests=1,
        max_queued_requests=1,
        queue_timeout_s=0.3,
        max_request_bytes=4096,
        api_key="sesame",
    )
    auth = {"Authorization": "Bearer sesame"}
    try:
        async with aiohttp.ClientSession() as s:
            async with s.post(r.url + "/generate", json=SHORT) as resp:
                assert resp.status == 401
            async with s.post(
                r.url + "/generate", json=SHORT, headers={"Authorization": "Bearer x"}
            ) as resp:
                assert resp.status == 401
            async with s.post(r.url + "/generate", data=b"{", headers=auth) as resp:
                assert resp.status == 400 and "invalid JSON" in await resp.text()
            async with s.post(r.url + "/generate", json={"text": "x" * 5000}, headers=auth) as resp:
                assert resp.status == 413
            hold = await s.post(r.url + "/generate", json=LONG, headers=auth)  # takes the slot
            await hold.content.readany()
            queued = asyncio.create_task(s.post(r.url + "/generate", json=SHORT, headers=auth))
            await wait_for(lambda: r.admission.waiting == 1)
            async with s.post(r.url + "/generate", json=SHORT, headers=auth) as resp:
                assert resp.status == 429 and "queue is full" in await resp.text()
            q = await queued
            assert q.status == 503 and "free slot" in await q.text()
            hold.close()
            await wait_for(lambda: r.admission.active == 0)
            async with s.post(r.url + "/generate", json=SHORT, headers=auth) as resp:
                assert resp.status == 200
        for reason in ("auth", "bad_request", "too_large", "queue_full", "queue_timeout"):
            assert metric(r, "voltana_router_rejected_total", reason=reason) >= 1, reason
    finally:
        await r.stop()


async def test_prefill_failing_after_the_stream_started(real: dict[str, Any]) -> None:
    """A prefill that does its work (the real one, behind a relay) but then answers 500
    while the decode is already streaming: the client gets an error chunk, decode closed."""
    purl, pboot = real["prefill"]

    async def relay(request: web.Request) -> web.Response:
        body = await request.read()
        async with (
            aiohttp.ClientSession() as s,
            s.post(
                purl + request.path, data=body, headers={"Content-Type": "application/json"}
            ) as r,
        ):
            await r.read()
        await asyncio.sleep(0.3)  # the decode has the KV and streams meanwhile
        return web.json_response({"error": {"message": "lost after transfer"}}, status=500)

    app = web.Application()
    app.router.add_post("/generate", relay)
    runner, url = await serve_app(app)
    _, d_aborted0 = engine_counts(real["decode"])
    # the relay's host, the real prefill's bootstrap port: the KV rendezvous still works
    r = await make_router([(url, pboot)], [real["decode"]])
    try:
        async with aiohttp.ClientSession() as s, s.post(r.url + "/generate", json=LONG) as resp:
            assert resp.status == 200
            raw = await resp.read()
        events = [e.strip() for e in raw.split(b"\n\n") if e.strip()]
        assert len(events) > 3 and events[-1] == b"data: [DONE]"
        err = json.loads(events[-2][5:])
        assert "prefill failed" in err["error"]["message"], err
        await wait_for(lambda: engine_counts(real["decode"]) == (0, d_aborted0 + 1), 5)
        assert metric(r, "voltana_router_requests_total", path="/generate", status="error") == 1
    finally:
        await r.stop()
        await runner.cleanup()


async def test_circuit_breaker_opens_then_a_trial_closes_it(real: dict[str, Any]) -> None:
    purl, pboot = real["prefill"]
    st = {"fail": True, "hits": 0}

    async def flaky(request: web.Request) -> web.Response:
        body = await request.read()
        st["hits"] += 1
        if st["fail"]:
            return web.json_response({"error": {"message": "sick"}}, status=500)
        async with (
            aiohttp.ClientSession() as s,
            s.post(
                purl + request.path, data=body, headers={"Content-Type": "application/json"}
            ) as r,
        ):
            return web.Response(body=await r.read(), status=r.status, content_type=r.content_type)

    app = web.Application()
    app.router.add_post("/generate", flaky)
    runner, url = await serve_app(app)
    r = await make_router(
        [(url, pboot)],
        [real["decode"]],
        breaker_failures=2,
        breaker_open_s=0.5,
        prefill_retries=0,
    )
    name = r.cfg.prefill[0].name
    try:
        async with aiohttp.ClientSession() as s:
            for _ in range(2):
                async with s.post(r.url + "/generate", json=SHORT) as resp:
                    assert resp.status == 500
            async with s.post(r.url + "/generate", json=SHORT) as resp:
                assert resp.status == 503 and "no healthy" in await resp.text()
            assert st["hits"] == 2  # the open circuit kept the third request away
            await wait_for(
                lambda: metric(r, "voltana_router_worker_circuit_open", instance=name) == 1
            )
            st["fail"] = False
            await asyncio.sleep(0.6)  # cool-down over: one trial request may pass
            async with s.post(r.url + "/generate", json=SHORT) as resp:
                assert resp.status == 200, await resp.text()
            assert r.state.workers[name].breaker.opened_at is None
            async with s.post(r.url + "/generate", json=SHORT) as resp:
                assert resp.status == 200
        await wait_for(lambda: metric(r, "voltana_router_worker_circuit_open", instance=name) == 0)
    finally:
        await r.stop()
        await runner.cleanup()
