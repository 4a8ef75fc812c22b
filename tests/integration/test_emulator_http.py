"""The emulated SGLang worker over real HTTP: formats, PD rendezvous, errors, pacing."""

from __future__ import annotations

import asyncio
import itertools
import json
import time
from typing import Any

import aiohttp
import pytest
from emulator_helpers import JSON, Factory, generate_unpaired, sse, url
from helpers import free_port, wait_for
from prometheus_client.parser import text_string_to_metric_families

# ----- formats and pacing ----------------------------------------------------------------


async def test_generate_stream_paced_by_the_model(
    make_emulator: Factory, http: aiohttp.ClientSession
) -> None:
    app = await make_emulator()
    model = app.server.model
    body = {
        "input_ids": list(range(4096)),
        "sampling_params": {"max_new_tokens": 12, "ignore_eos": True},
        "stream": True,
    }
    t0 = time.monotonic()
    async with http.post(url(app, "/generate"), json=body) as r:
        chunks = await sse(r)
    assert chunks[-1][1] == "[DONE]"
    data = [c for _, c in chunks[:-1]]
    assert [c["meta_info"]["completion_tokens"] for c in data] == list(range(1, 13))
    assert data[-1]["meta_info"]["finish_reason"] == {"type": "length", "length": 12}
    assert data[-1]["text"].startswith(data[0]["text"]) and len(data[-1]["text"].split()) == 12
    assert data[0]["meta_info"]["prompt_tokens"] == 4096 and "e2e_latency" in data[-1]["meta_info"]
    ttft = chunks[0][0] - t0
    want_ttft = model.prefill(1980, 4096).time_s
    # Upper bounds are generous: CI machines are shared and the worker can be preempted.
    assert want_ttft * 0.95 < ttft < want_ttft + 0.15
    itl = [b[0] - a[0] for a, b in itertools.pairwise(chunks[:12])]
    want_itl = model.decode(1980, 1, 4100).time_s
    assert abs(sum(itl) / len(itl) / want_itl - 1) < 0.3
    # A lower locked clock slows prefill (compute-bound) as the model says.
    async with http.post(
        url(app, "/voltana/gpus/0/locked_clocks"), json={"min_mhz": 900, "max_mhz": 900}
    ) as r:
        assert r.status == 200
    t0 = time.monotonic()
    fresh = {**body, "input_ids": list(range(4096, 8192))}  # the same prompt would hit the cache
    async with http.post(url(app, "/generate"), json=fresh) as r:
        chunks = await sse(r)
    slow = model.prefill(900, 4096).time_s
    assert slow * 0.95 < chunks[0][0] - t0 < slow + 0.15
    async with http.get(url(app, "/voltana/iterations?after=0")) as r:
        its = (await r.json())["iterations"]
    assert {
        "seq",
        "t_start_s",
        "t_end_s",
        "kind",
        "batch_size",
        "new_tokens",
        "kv_tokens",
        "clock_mhz",
        "effective_clock_mhz",
        "energy_j",
    } <= set(its[0])
    assert its[-1]["clock_mhz"] == 900 and its[0]["clock_mhz"] == 1980
    async with http.get(url(app, f"/voltana/iterations?after={its[-3]['seq']}")) as r:
        assert len((await r.json())["iterations"]) == 2


async def test_clock_change_mid_iteration_retimes_it(
    make_emulator: Factory, http: aiohttp.ClientSession
) -> None:
    # A GPU changes clock mid-kernel: a prefill started at the lowest clock and
    # raised a quarter of the way through finishes far sooner than at the low clock.
    app = await make_emulator()
    model = app.server.model
    lock = url(app, "/voltana/gpus/0/locked_clocks")
    async with http.post(lock, json={"min_mhz": 345, "max_mhz": 345}) as r:
        assert r.status == 200
    slow, fast = model.prefill(345, 8000).time_s, model.prefill(1980, 8000).time_s
    body = {
        "input_ids": list(range(8000)),
        "sampling_params": {"max_new_tokens": 1, "ignore_eos": True},
    }
    t0 = time.monotonic()
    req = asyncio.create_task(http.post(url(app, "/generate"), json=body))
    await asyncio.sleep(slow / 4)
    async with http.delete(lock) as r:  # back to default clocks: the maximum
        assert r.status == 200
    async with await req as r:
        assert r.status == 200
    took = time.monotonic() - t0
    assert took < slow * 0.25 + fast * 0.75 + 0.15 < slow
    async with http.get(url(app, "/voltana/iterations?after=0")) as r:
        it = (await r.json())["iterations"][0]
    assert it["kind"] == "prefill" and it["clock_mhz"] == 345 and it["end_clock_mhz"] == 1980
    assert it["clock_changes"] == 1
    assert it["model_time_s"] == pytest.approx(took, abs=0.1)
    # Power is the two stretches' blend: between the low clock's and the top clock's.
    assert model.prefill(345, 8000).power_w < it["power_w"] < model.prefill(1980, 8000).power_w
    assert it["energy_j"] == pytest.approx(it["power_w"] * it["model_time_s"])


async def test_generate_batch_and_openai_routes(
    make_emulator: Factory, http: aiohttp.ClientSession
) -> None:
    app = await make_emulator()
    body = {
        "text": ["a b c", "d e f g h"],
        "sampling_params": {"max_new_tokens": 3, "ignore_eos": True},
    }
    async with http.post(url(app, "/generate"), json=body) as r:
        out = await r.json()
    assert isinstance(out, list) and len(out) == 2
    assert all(o["meta_info"]["completion_tokens"] == 3 for o in out)
    chat = {"model": "m", "messages": [{"role": "user", "content": "hi there"}], "max_tokens": 4}
    async with http.post(url(app, "/v1/chat/completions"), json=chat) as r:
        c = await r.json()
    assert c["object"] == "chat.completion" and c["usage"]["completion_tokens"] == 4
    assert (
        c["choices"][0]["message"]["role"] == "assistant"
        and c["choices"][0]["finish_reason"] == "length"
    )
    stream = {**chat, "stream": True, "stream_options": {"include_usage": True}}
    async with http.post(url(app, "/v1/chat/completions"), json=stream) as r:
        chunks = [c for _, c in await sse(r)]
    assert chunks[-1] == "[DONE]" and chunks[-2]["usage"]["completion_tokens"] == 4
    assert all(c["object"] == "chat.completion.chunk" for c in chunks[:-1])
    assert (
        "".join(c["choices"][0]["delta"]["content"] for c in chunks[:-2])
        == c["choices"][0]["message"]["content"]
    )
    async with http.post(
        url(app, "/v1/completions"), json={"model": "m", "prompt": "x y", "max_tokens": 2}
    ) as r:
        comp = await r.json()
    assert comp["object"] == "text_completion" and comp["usage"]["completion_tokens"] == 2
    async with http.get(url(app, "/v1/models")) as r:
        assert (await r.json())["data"][0]["id"] == app.config.model_name
    for path in ("/health", "/get_model_info", "/get_server_info"):
        async with http.get(url(app, path)) as r:
            assert r.status == 200, path


@pytest.mark.parametrize("version", ["0.4.7", "0.5.23"])
async def test_metrics_and_loads_per_sglang_line(
    make_emulator: Factory, http: aiohttp.ClientSession, version: str
) -> None:
    app = await make_emulator(role="decode", sglang_version=version)
    await generate_unpaired(http, app, "hello", 3, room=7)
    async with http.get(url(app, "/metrics")) as r:
        text = await r.text()
    fams = {f.name: f for f in text_string_to_metric_families(text)}
    for name in (
        "sglang:num_running_reqs",
        "sglang:num_queue_reqs",
        "sglang:token_usage",
        "sglang:gen_throughput",
        "sglang:time_to_first_token_seconds",
        "sglang:inter_token_latency_seconds",
        "sglang:e2e_request_latency_seconds",
        "sglang:prompt_tokens",
        "sglang:generation_tokens",
        "sglang:num_requests",
    ):
        assert name in fams, name
    gen = fams["sglang:generation_tokens"].samples[0]
    assert gen.value == 3
    engine_type = fams["sglang:num_running_reqs"].samples[0].labels["engine_type"]
    itl = [
        s for s in fams["sglang:inter_token_latency_seconds"].samples if s.name.endswith("_count")
    ]
    assert itl[0].value == 2
    async with http.get(url(app, "/get_load")) as r1, http.get(url(app, "/v1/loads")) as r2:
        if version == "0.4.7":
            assert engine_type == "unified" and r1.status == 200 and r2.status == 404
            assert (await r1.json()) == {"load": 0}
            assert "sglang:num_prefill_infight_queue_reqs" in fams
        else:
            assert engine_type == "decode" and r1.status == 404 and r2.status == 200
            loads = await r2.json()
            assert loads["loads"][0]["disaggregation"]["mode"] == "decode"
            assert (
                "sglang:kv_used_tokens" in fams
                and "sglang:request_time_per_output_token_seconds" in fams
            )


# ----- PD -------------------------------------------------------------------------------


async def test_pd_decode_waits_for_prefill_and_transfer(
    make_emulator: Factory, http: aiohttp.ClientSession
) -> None:
    p = await make_emulator(role="prefill")
    d = await make_emulator(role="decode")
    room = 2**62 + 5
    body = {
        "input_ids": list(range(8192)),
        "sampling_params": {"max_new_tokens": 4, "ignore_eos": True},
        "bootstrap_host": "127.0.0.1",
        "bootstrap_port": p.config.bootstrap_port,
        "bootstrap_room": room,
        "stream": True,
    }
    t0 = time.monotonic()
    dec = asyncio.create_task(_stream(http, url(d, "/generate"), body))
    await asyncio.sleep(0.3)
    assert not dec.done() and d.server.engine.stats().transfer_reqs == 1  # KV allocated, no token
    t_prefill = time.monotonic()
    async with http.post(url(p, "/generate"), json={**body, "stream": False}) as r:
        pre = await r.json()
    assert pre["meta_info"]["finish_reason"] == {"type": "length", "length": 0}
    assert pre["meta_info"]["completion_tokens"] == 1
    chunks = await dec
    model = p.server.model
    need = model.prefill(1980, 8192).time_s + model.kv_transfer_s(8192)
    assert chunks[0][0] - t_prefill >= need * 0.95
    assert chunks[0][0] - t0 > 0.3 + need * 0.95
    assert [c["meta_info"]["completion_tokens"] for _, c in chunks[:-1]] == [1, 2, 3, 4]
    await wait_for(lambda: p.server.engine.idle and d.server.engine.idle)


async def _stream(
    http: aiohttp.ClientSession, u: str, body: dict[str, Any]
) -> list[tuple[float, Any]]:
    async with http.post(u, json=body) as r:
        assert r.status == 200
        return await sse(r)


async def test_fake_bootstrap_host_needs_no_partner(
    make_emulator: Factory, http: aiohttp.ClientSession
) -> None:
    for role in ("prefill", "decode"):
        app = await make_emulator(role=role)
        await generate_unpaired(http, app, "warm up", 2, room=1)


# ----- errors free what they held ---------------------------------------------------------


async def test_bad_requests_get_sglang_errors(
    make_emulator: Factory, http: aiohttp.ClientSession
) -> None:
    app = await make_emulator(kv_capacity_tokens=1000)
    dec = await make_emulator(role="decode")
    cases = [
        (app, "/generate", b"{not json", 400),
        (
            app,
            "/generate",
            json.dumps({"text": "x", "return_logprob": True}).encode(),
            400,
        ),
        (
            app,
            "/generate",
            json.dumps({"text": "x", "sampling_params": {"max_new_tokens": -5}}).encode(),
            400,
        ),
        (
            app,
            "/generate",
            json.dumps({"input_ids": list(range(2000))}).encode(),
            400,
        ),  # > KV capacity
        (app, "/v1/chat/completions", b"[1, 2", 400),
        (app, "/v1/completions", json.dumps({"prompt": "x", "max_tokens": -1}).encode(), 400),
        (dec, "/generate", json.dumps({"text": "x"}).encode(), 400),  # PD mode, no bootstrap fields
    ]
    for srv, path, raw, status in cases:
        async with http.post(url(srv, path), data=raw, headers=JSON) as r:
            body = await r.json()
            assert r.status == status, (path, raw, body)
            msg = body["message"] if path.startswith("/v1") else body["error"]["message"]
            assert msg
    assert app.server.engine.idle and dec.server.engine.idle
    assert app.server.engine.stats().kv_reserved_tokens == 0


async def test_client_disconnect_mid_stream_frees_slot_and_kv(
    make_emulator: Factory, http: aiohttp.ClientSession
) -> None:
    app = await make_emulator()
    body = {
        "text": "x " * 400,
        "sampling_params": {"max_new_tokens": 5000, "ignore_eos": True},
        "stream": True,
    }
    async with http.post(url(app, "/generate"), json=body) as r:
        n = 0
        async for line in r.content:
            n += line.startswith(b"data: ")
            if n == 3:
                break
        assert app.server.engine.stats().running_reqs == 1
        r.close()
    await wait_for(lambda: app.server.engine.idle, timeout_s=3.0)
    s = app.server.engine.stats()
    assert s.kv_used_tokens == 0 and s.kv_reserved_tokens == 0 and s.running_reqs == 0


async def test_prefill_without_decode_partner_times_out_and_frees(
    make_emulator: Factory, http: aiohttp.ClientSession
) -> None:
    p = await make_emulator(role="prefill", bootstrap_timeout_s=0.4)
    body = {
        "text": "y" * 400,
        "sampling_params": {"max_new_tokens": 4},
        "bootstrap_host": "127.0.0.1",
        "bootstrap_port": p.config.bootstrap_port,
        "bootstrap_room": 99,
    }
    t0 = time.monotonic()
    async with http.post(url(p, "/generate"), json=body) as r:
        assert r.status == 500
        assert "bootstrap" in (await r.json())["error"]["message"]
    assert 0.35 < time.monotonic() - t0 < 2.0
    assert p.server.engine.idle and p.server.engine.stats().kv_reserved_tokens == 0


async def test_decode_gets_an_error_when_prefill_is_unreachable(
    make_emulator: Factory, http: aiohttp.ClientSession
) -> None:
    d = await make_emulator(role="decode", bootstrap_timeout_s=2.0)
    body = {
        "text": "z",
        "sampling_params": {"max_new_tokens": 4},
        "stream": True,
        "bootstrap_host": "127.0.0.1",
        "bootstrap_port": free_port(),
        "bootstrap_room": 5,
    }
    async with http.post(url(d, "/generate"), json=body) as r:
        chunks = [c for _, c in await sse(r)]
    assert "unreachable" in chunks[0]["error"]["message"] and chunks[-1] == "[DONE]"
    await wait_for(lambda: d.server.engine.idle)
