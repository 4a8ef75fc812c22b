"""The router against real emulated SGLang workers (both SGLang lines), and SGLang's own client.

Prefill and decode workers run as ``voltana emulator`` subprocesses with real PD
rendezvous on ``bootstrap_room`` (a wrong host, port or room would leave the
decode waiting for KV, so every successful answer proves the pairing). The
router runs in the test's event loop and speaks real HTTP.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import urllib.request
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Any

import aiohttp
import pytest
from helpers import (
    check_generate,
    free_port,
    post_json,
    sglang_request,
    start_emulator,
    stop_processes,
    voltana_argv,
    wait_for,
    wait_http,
)
from voltana.services.router.accounting import InstanceLoad
from voltana.services.router.config import RouterConfig, WorkerSpec
from voltana.services.router.server import Router

VERSIONS = ("0.4.7", "0.5.23")


@dataclass
class Workers:
    version: str
    prefill: list[tuple[str, int]]
    decode: list[str]


@pytest.fixture(scope="module")
def workers() -> Iterator[dict[str, Workers]]:
    """Per SGLang line: one prefill and one decode emulated worker (started in parallel)."""
    procs: list[tuple[str, subprocess.Popen[bytes]]] = []
    out: dict[str, Workers] = {}
    try:
        gpu = 0
        for v in VERSIONS:
            pp, bp, dp = free_port(), free_port(), free_port()
            procs.append(
                (
                    f"http://127.0.0.1:{pp}",
                    start_emulator("prefill", pp, gpu=gpu, version=v, boot=bp),
                )
            )
            procs.append(
                (f"http://127.0.0.1:{dp}", start_emulator("decode", dp, gpu=gpu + 1, version=v))
            )
            out[v] = Workers(v, [(f"http://127.0.0.1:{pp}", bp)], [f"http://127.0.0.1:{dp}"])
            gpu += 2
        for url, p in procs:
            wait_http(url + "/health", p)
        yield out
    finally:
        stop_processes(p for _, p in procs)


def config(w: Workers, **kw: Any) -> RouterConfig:
    return RouterConfig(
        port=0,
        prefill=[WorkerSpec(url=u, role="prefill", bootstrap_port=b) for u, b in w.prefill],
        decode=[WorkerSpec(url=u, role="decode") for u in w.decode],
        health_check_interval_s=kw.pop("health_check_interval_s", 0.5),
        **kw,
    )


@pytest.fixture(params=VERSIONS)
async def router(
    request: pytest.FixtureRequest, workers: dict[str, Workers]
) -> AsyncIterator[Router]:
    r = Router(config(workers[request.param]))
    await r.start()
    try:
        yield r
    finally:
        await r.stop()


@pytest.mark.parametrize("stream", [False, True])
async def test_generate_single(router: Router, stream: bool) -> None:
    await check_generate(router.url, stream)


@pytest.mark.parametrize("stream", [False, True])
async def test_generate_batch(router: Router, stream: bool) -> None:
    body = {
        "text": ["a", "bb", "ccc"],
        "stream": stream,
        "sampling_params": {"max_new_tokens": 4, "ignore_eos": True},
    }
    status, got = await post_json(router.url + "/generate", body)
    assert status == 200, got
    if stream:
        assert got[-1] == "[DONE]"
        finals = [c for c in got[:-1] if c["meta_info"]["finish_reason"] is not None]
        assert sorted(c["index"] for c in finals) == [0, 1, 2]
    else:
        finals = got
        assert isinstance(got, list) and len(got) == 3
    assert all(c["meta_info"]["completion_tokens"] == 4 for c in finals)
    # the batch's input_ids form too
    status, got2 = await post_json(
        router.url + "/generate",
        {"input_ids": [[1, 2, 3], [4, 5]], "sampling_params": {"max_new_tokens": 2}},
    )
    assert status == 200 and len(got2) == 2, got2


@pytest.mark.parametrize("stream", [False, True])
async def test_chat_and_completions(router: Router, stream: bool) -> None:
    body = {
        "model": "m",
        "messages": [{"role": "user", "content": "hi"}],
        "max_tokens": 5,
        "stream": stream,
        "stream_options": {"include_usage": True},
    }
    status, got = await post_json(router.url + "/v1/chat/completions", body)
    assert status == 200, got
    if stream:
        assert got[-1] == "[DONE]"
        deltas = [c for c in got[:-1] if c["choices"]]
        assert all(c["object"] == "chat.completion.chunk" for c in deltas)
        text = "".join(c["choices"][0]["delta"].get("content") or "" for c in deltas)
    else:
        assert got["object"] == "chat.completion" and got["usage"]["completion_tokens"] == 5
        text = got["choices"][0]["message"]["content"]
    assert len(text.split()) == 5
    status, comp = await post_json(
        router.url + "/v1/completions",
        {"model": "m", "prompt": "once upon", "max_tokens": 3, "stream": stream},
    )
    assert status == 200, comp


async def test_introspection_endpoints(router: Router) -> None:
    async with aiohttp.ClientSession() as s:
        async with s.get(router.url + "/v1/models") as r:
            assert r.status == 200 and (await r.json())["object"] == "list"
        async with s.get(router.url + "/get_model_info") as r:
            assert r.status == 200 and "model_path" in await r.json()
        async with s.get(router.url + "/get_server_info") as r:
            info = await r.json()
            assert r.status == 200 and len(info["prefill"]) == 1 and len(info["decode"]) == 1
        async with s.get(router.url + "/health") as r:
            assert r.status == 200
        await post_json(
            router.url + "/generate", {"text": "x", "sampling_params": {"max_new_tokens": 2}}
        )
        async with s.get(router.url + "/metrics") as r:
            text = await r.text()
    assert 'voltana_router_requests_total{path="/generate",status="ok"} 1.0' in text
    assert "voltana_router_nats_connected 0.0" in text


async def test_current_gateway_routes_one_error_shape(router: Router) -> None:
    async with aiohttp.ClientSession() as s:
        async with s.get(router.url + "/model_info") as r:  # 0.4.7 workers: /get_model_info
            assert r.status == 200 and "model_path" in await r.json()
        async with s.get(router.url + "/server_info") as r:
            assert r.status == 200 and len((await r.json())["decode"]) == 1
        async with s.get(router.url + "/no/such/path") as r:
            got = await r.json()
            assert r.status == 404 and "/no/such/path" in got["error"]["message"]
    # the worker's OpenAI-shaped error ({"object": "error", ...}) comes back in the router's shape
    body = {"model": "m", "prompt": "x", "max_tokens": 2, "logprobs": 1}
    status, got = await post_json(router.url + "/v1/completions", body)
    assert status == 400 and "logprobs" in got["error"]["message"], got
    assert got["error"]["code"] == 400


async def test_prefill_only_and_several_choices_through_pd(router: Router) -> None:
    body = {"input_ids": list(range(300)), "sampling_params": {"max_new_tokens": 0}}
    status, got = await post_json(router.url + "/generate", body)
    assert status == 200, got
    assert got["meta_info"]["completion_tokens"] == 0 and got["text"] == ""
    body = {"model": "m", "prompt": ["one", "two"], "n": 2, "max_tokens": 3, "ignore_eos": True}
    status, got = await post_json(router.url + "/v1/completions", body)
    assert status == 200, got
    assert [c["index"] for c in got["choices"]] == [0, 1, 2, 3]
    assert got["usage"]["completion_tokens"] == 12
    for w in router.state.workers.values():
        assert w.load == InstanceLoad()


async def test_accounting_returns_to_zero_after_load(router: Router) -> None:
    body = {
        "text": "x" * 400,
        "stream": True,
        "sampling_params": {"max_new_tokens": 8, "ignore_eos": True},
    }
    res = await asyncio.gather(*(post_json(router.url + "/generate", body) for _ in range(24)))
    assert all(s == 200 and r[-1] == "[DONE]" for s, r in res)
    for w in router.state.workers.values():
        assert w.load == InstanceLoad()  # nothing in flight, queued or waiting
    d = next(w for w in router.state.workers.values() if w.spec.role == "decode")
    # one gap per event after the first, as the client saw them (a slow reader may get
    # several tokens in one event, as from SGLang)
    assert len(d.ttft_samples) == 24
    assert len(d.itl_samples) == sum(len(r) - 2 for _, r in res)


async def test_sglang_client_functions_through_router(router: Router, bench_serving: Any) -> None:
    bs = bench_serving
    gen = sglang_request(bs, list(range(2000)), router.url + "/generate", 12, prompt_len=2000)
    res = await bs.async_request_sglang_generate(gen)
    assert res.success, res.error
    assert res.output_len == 12 and len(res.itl) == 11 and 0 < res.ttft < 1.0
    comp = sglang_request(bs, "an emulated prompt " * 50, router.url + "/v1/completions", 8)
    res2 = await bs.async_request_openai_completions(comp)
    assert res2.success, res2.error
    assert len(res2.generated_text.split()) == 8 and res2.ttft > 0
    # the router measured the same stream: its TTFT is within the client's
    d = next(w for w in router.state.workers.values() if w.spec.role == "decode")
    await wait_for(lambda: len(d.ttft_samples) >= 2)
    assert d.ttft_samples[0][1] <= res.ttft + 0.005


def test_cli_router_with_energy_aware_policies(workers: dict[str, Workers]) -> None:
    """`voltana router` as a process, ecoroute for prefill and the tile packer for decode."""
    w = workers["0.4.7"]
    port = free_port()
    argv = voltana_argv(
        "router",
        "--port",
        str(port),
        "--prefill-policy",
        "ecoroute",
        "--decode-policy",
        "ecoroute-tile",
        "--no-nats",
        "--prefill",
        w.prefill[0][0],
        str(w.prefill[0][1]),
        "--decode",
        w.decode[0],
        "--prometheus-port",
        str(metrics_port := free_port()),
    )
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        wait_http(f"http://127.0.0.1:{port}/health", proc)
        req = urllib.request.Request(
            f"http://127.0.0.1:{port}/generate",
            method="POST",
            data=json.dumps({"text": "hi", "sampling_params": {"max_new_tokens": 3}}).encode(),
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(req, timeout=10) as r:
            assert r.status == 200 and json.loads(r.read())["meta_info"]["completion_tokens"] >= 1
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
            text = r.read().decode()
        assert 'voltana_router_decisions_total{instance="' in text
        with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5) as r:
            assert "voltana_router_requests_total" in r.read().decode()
        # a second router on the same port: one clear line, no traceback
        again = subprocess.run(
            voltana_argv(
                "router",
                "--port",
                str(port),
                "--no-nats",
                "--prefill",
                w.prefill[0][0],
                "--decode",
                w.decode[0],
            ),
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert again.returncode == 1 and "in use" in again.stderr
        assert "Traceback" not in again.stderr
    finally:
        proc.terminate()
        try:
            _, err = proc.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            _, err = proc.communicate()
    assert proc.returncode == 0, err.decode()[-2000:]
