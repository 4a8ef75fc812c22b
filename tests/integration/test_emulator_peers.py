"""Acceptance against real peers: the current SGLang routers (PD mode) and SGLang's client.

Emulated prefill and decode servers (SGLang 0.5.x line) run as ``voltana emulator``
subprocesses behind each current router in PD mode: sglang-router 0.3.2
(``python -m sglang_router.launch_router``) and smg 1.13, the SGLang model gateway
(``python -m smg.launch_router``). Neither may warn about a deprecated route. SGLang's
``bench_serving`` request functions parse the streams and measure TTFT/ITL, which
must match the GPU model's pacing.
"""

from __future__ import annotations

import asyncio
import importlib.util
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from helpers import (
    check_generate,
    emulated_pd_pair,
    free_port,
    post_json,
    sglang_request,
    stop_processes,
    wait_routable,
)
from voltana.groundtruth.gpu_model import GPUS, MODELS, GpuModel

MODEL = GpuModel(GPUS["h100"], MODELS["llama-3.1-8b"])
PROMPT_IDS = list(range(4000))
PEERS = {"sglang-router": "sglang_router", "smg": "smg"}  # distribution -> module


@dataclass
class Cluster:
    router: str
    prefill: str
    decode: str
    log: Path


@pytest.fixture(scope="module")
def workers() -> Iterator[dict[str, Any]]:
    with emulated_pd_pair(bootstrap_timeout_s=20, version="0.5.23") as w:
        yield w


@pytest.fixture(scope="module", params=list(PEERS))
def cluster(
    request: pytest.FixtureRequest,
    workers: dict[str, Any],
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Cluster]:
    """The emulated pair behind ``<peer>.launch_router --pd-disaggregation``."""
    module = PEERS[request.param]
    if importlib.util.find_spec(module) is None:
        pytest.skip(f"{request.param} (test extra) is not installed")
    (prefill, boot), decode = workers["prefill"], workers["decode"]
    r_port = free_port()
    log = tmp_path_factory.mktemp(request.param) / "router.log"
    argv = [sys.executable, "-m", f"{module}.launch_router", "--pd-disaggregation"]
    argv += ["--prefill", prefill, str(boot), "--decode", decode, "--host", "127.0.0.1"]
    argv += ["--port", str(r_port), "--policy", "random", "--prometheus-port", str(free_port())]
    argv += ["--worker-startup-check-interval", "1", "--log-level", "warn"]
    with log.open("wb") as out:
        router = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT)
        try:
            wait_routable(f"http://127.0.0.1:{r_port}", router, log=log)
            yield Cluster(f"http://127.0.0.1:{r_port}", prefill, decode, log)
        finally:
            stop_processes([router])


def test_no_deprecation_warning(cluster: Cluster) -> None:
    """The emulator answers the current routes (/model_info, /server_info, /v1/loads)."""
    text = cluster.log.read_text(errors="replace").lower()
    assert "deprecat" not in text, text[-3000:]


@pytest.mark.parametrize("stream", [False, True])
async def test_router_pd_generate(cluster: Cluster, stream: bool) -> None:
    await check_generate(cluster.router, stream)


@pytest.mark.parametrize("stream", [False, True])
async def test_router_pd_chat(cluster: Cluster, stream: bool) -> None:
    async with aiohttp.ClientSession() as session, session.get(f"{cluster.router}/v1/models") as r:
        model = (await r.json(content_type=None))["data"][0][
            "id"
        ]  # the gateways route chat by served model
    body = {
        "model": model,
        "messages": [{"role": "user", "content": "hi"}],
        "max_tokens": 5,
        "stream": stream,
        "ignore_eos": True,
    }
    status, got = await post_json(f"{cluster.router}/v1/chat/completions", body)
    assert status == 200, got
    if stream:
        assert got[-1] == "[DONE]"
        text = "".join(c["choices"][0]["delta"]["content"] for c in got[:-1])
        assert got[-2]["choices"][0]["finish_reason"] == "length"
    else:
        text = got["choices"][0]["message"]["content"]
        assert got["usage"]["completion_tokens"] == 5
    assert len(text.split()) == 5


async def test_router_pd_completions(cluster: Cluster) -> None:
    async with aiohttp.ClientSession() as session, session.get(f"{cluster.router}/v1/models") as r:
        model = (await r.json(content_type=None))["data"][0]["id"]
    body = {"model": model, "prompt": "complete this", "max_tokens": 4, "ignore_eos": True}
    status, got = await post_json(f"{cluster.router}/v1/completions", body)
    assert status == 200, got
    assert got["object"] == "text_completion" and got["usage"]["completion_tokens"] == 4


async def test_sglang_client_measures_emulated_ttft_and_itl(
    cluster: Cluster, bench_serving: Any
) -> None:
    out_len = 16
    # a prompt no earlier request sent: a prefix-cache hit would shorten the TTFT
    ids = [int(cluster.router.rsplit(":", 1)[1]), *PROMPT_IDS[1:]]  # one per router
    inp = sglang_request(
        bench_serving,
        ids,
        f"{cluster.router}/generate",
        out_len,
        prompt_len=len(ids),
    )
    res = await bench_serving.async_request_sglang_generate(inp)
    assert res.success, res.error
    assert res.output_len == out_len and len(res.itl) == out_len - 1
    # TTFT on the client: prefill + KV transfer (+ router and HTTP hops).
    want_ttft = MODEL.prefill(1980, len(PROMPT_IDS)).time_s + MODEL.kv_transfer_s(len(PROMPT_IDS))
    assert want_ttft * 0.95 < res.ttft < want_ttft + 0.2, (res.ttft, want_ttft)
    want_itl = MODEL.decode(1980, 1, len(PROMPT_IDS) + out_len // 2).time_s
    mean_itl = sum(res.itl) / len(res.itl)
    assert abs(mean_itl / want_itl - 1) < 0.35, (mean_itl, want_itl)


async def test_sglang_client_openai_completions(cluster: Cluster, bench_serving: Any) -> None:
    inp = sglang_request(
        bench_serving,
        "an emulated prompt " * 50,
        f"{cluster.decode}/v1/completions",
        8,
        extra_request_body={"bootstrap_host": "2.2.2.2", "bootstrap_room": 3},
    )
    res = await bench_serving.async_request_openai_completions(inp)
    assert res.success, res.error
    assert len(res.generated_text.split()) == 8 and len(res.itl) >= 6
    assert res.ttft > 0 and all(x < 0.1 for x in res.itl)


async def test_router_pd_concurrent_requests_all_finish_and_free(cluster: Cluster) -> None:
    async def one(i: int) -> list[Any]:
        body = {
            "input_ids": list(range(200 + 300 * i)),
            "stream": True,
            "sampling_params": {"max_new_tokens": 5 + i, "ignore_eos": True},
        }
        status, chunks = await post_json(f"{cluster.router}/generate", body)
        assert status == 200, chunks
        return list(chunks)

    results = await asyncio.gather(*(one(i) for i in range(12)))
    for i, chunks in enumerate(results):
        assert chunks[-1] == "[DONE]"
        assert chunks[-2]["meta_info"]["completion_tokens"] == 5 + i
        assert chunks[-2]["meta_info"]["prompt_tokens"] == 200 + 300 * i
    async with aiohttp.ClientSession() as s:
        for base in (cluster.prefill, cluster.decode):
            for _ in range(50):  # the prefill side finishes its transfer bookkeeping async
                async with s.get(f"{base}/v1/loads") as r:
                    loads = (await r.json())["loads"][0]
                load = loads["num_running_reqs"] + loads["num_waiting_reqs"]
                if load == 0:
                    break
                await asyncio.sleep(0.05)
            assert load == 0, base
