"""Acceptance against real peers: sglang-router (PD mode) and SGLang's own client functions.

Emulated prefill and decode servers run as ``voltana emulator`` subprocesses behind
``python -m sglang_router.launch_router --pd-disaggregation``; SGLang 0.4.7's
``bench_serving`` request functions parse the streams and measure TTFT/ITL, which
must match the GPU model's pacing.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import aiohttp
import pytest
from helpers import free_port, wait_http
from voltana.groundtruth.gpu_model import GPUS, MODELS, GpuModel

if importlib.util.find_spec("sglang_router") is None:
    pytest.skip("sglang-router (test extra) is not installed", allow_module_level=True)

MODEL = GpuModel(GPUS["h100"], MODELS["llama-3.1-8b"])
PROMPT_IDS = list(range(4000))


@dataclass
class Cluster:
    router: str
    prefill: str
    decode: str


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    procs: list[subprocess.Popen[bytes]] = []
    p_port, d_port, boot, r_port = free_port(), free_port(), free_port(), free_port()
    emu = [
        sys.executable,
        "-m",
        "voltana",
        "--log-level",
        "warning",
        "emulator",
        "--host",
        "127.0.0.1",
    ]
    try:
        prefill = subprocess.Popen(
            [
                *emu,
                "--role",
                "prefill",
                "--port",
                str(p_port),
                "--disaggregation-bootstrap-port",
                str(boot),
                "--bootstrap-timeout-s",
                "20",
            ],
            stdout=subprocess.DEVNULL,
        )
        procs.append(prefill)
        decode = subprocess.Popen(
            [
                *emu,
                "--role",
                "decode",
                "--port",
                str(d_port),
                "--gpu-ids",
                "1",
                "--bootstrap-timeout-s",
                "20",
            ],
            stdout=subprocess.DEVNULL,
        )
        procs.append(decode)
        wait_http(f"http://127.0.0.1:{p_port}/health", prefill)
        wait_http(f"http://127.0.0.1:{d_port}/health", decode)
        router = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "sglang_router.launch_router",
                "--pd-disaggregation",
                "--prefill",
                f"http://127.0.0.1:{p_port}",
                str(boot),
                "--decode",
                f"http://127.0.0.1:{d_port}",
                "--host",
                "127.0.0.1",
                "--port",
                str(r_port),
                "--policy",
                "random",
                "--prometheus-port",
                str(free_port()),
                "--worker-startup-check-interval",
                "1",
                "--log-level",
                "warning",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        procs.append(router)
        # sglang-router 0.1.5 answers /health with 500 in PD mode ("PrefillDecode mode
        # doesn't use select_first_worker"); /v1/models is proxied once it serves.
        wait_http(f"http://127.0.0.1:{r_port}/v1/models", router)
        yield Cluster(
            f"http://127.0.0.1:{r_port}", f"http://127.0.0.1:{p_port}", f"http://127.0.0.1:{d_port}"
        )
    finally:
        for p in reversed(procs):
            p.terminate()
        for p in procs:
            try:
                p.wait(timeout=5)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()


async def _post(url: str, body: dict[str, Any]) -> tuple[int, list[Any]]:
    async with aiohttp.ClientSession() as s, s.post(url, json=body) as r:
        raw = await r.read()
    if not body.get("stream"):
        return r.status, [json.loads(raw)]
    chunks = []
    for line in raw.split(b"\n"):
        if line.startswith(b"data: "):
            data = line[6:].decode()
            chunks.append(data if data == "[DONE]" else json.loads(data))
    return r.status, chunks


@pytest.mark.parametrize("stream", [False, True])
async def test_router_pd_generate(cluster: Cluster, stream: bool) -> None:
    body = {
        "text": "tell me about clocks",
        "sampling_params": {"max_new_tokens": 6, "ignore_eos": True},
        "stream": stream,
    }
    status, chunks = await _post(f"{cluster.router}/generate", body)
    assert status == 200, chunks
    if stream:
        assert chunks[-1] == "[DONE]"
        assert [c["meta_info"]["completion_tokens"] for c in chunks[:-1]] == [1, 2, 3, 4, 5, 6]
        final = chunks[-2]
    else:
        final = chunks[0]
    assert final["meta_info"]["finish_reason"] == {"type": "length", "length": 6}
    assert len(final["text"].split()) == 6


@pytest.mark.parametrize("stream", [False, True])
async def test_router_pd_chat(cluster: Cluster, stream: bool) -> None:
    body = {
        "model": "m",
        "messages": [{"role": "user", "content": "hi"}],
        "max_tokens": 5,
        "stream": stream,
    }
    status, chunks = await _post(f"{cluster.router}/v1/chat/completions", body)
    assert status == 200, chunks
    if stream:
        assert chunks[-1] == "[DONE]"
        text = "".join(c["choices"][0]["delta"]["content"] for c in chunks[:-1])
        assert chunks[-2]["choices"][0]["finish_reason"] == "length"
    else:
        text = chunks[0]["choices"][0]["message"]["content"]
        assert chunks[0]["usage"]["completion_tokens"] == 5
    assert len(text.split()) == 5


async def test_router_pd_completions(cluster: Cluster) -> None:
    # sglang-router 0.1.5 rewrites /v1/completions into text + parameters.max_new_tokens.
    body = {"model": "m", "prompt": "complete this", "max_tokens": 4}
    status, chunks = await _post(f"{cluster.router}/v1/completions", body)
    assert status == 200, chunks
    assert chunks[0]["object"] == "text_completion" and chunks[0]["usage"]["completion_tokens"] == 4


@pytest.fixture(scope="module")
def bench_serving() -> Any:
    try:
        import sglang.bench_serving as bs
    except ImportError as exc:
        pytest.skip(f"sglang 0.4.7 (pip install --no-deps sglang==0.4.7) is not importable: {exc}")
    bs.args = argparse.Namespace(
        disable_ignore_eos=False, disable_stream=False, return_logprob=False
    )
    return bs


async def test_sglang_client_measures_emulated_ttft_and_itl(
    cluster: Cluster, bench_serving: Any
) -> None:
    bs = bench_serving
    out_len = 16
    inp = bs.RequestFuncInput(
        prompt=PROMPT_IDS,
        api_url=f"{cluster.router}/generate",
        prompt_len=len(PROMPT_IDS),
        output_len=out_len,
        model="m",
        lora_name=None,
        image_data=None,
        extra_request_body={},
    )
    res = await bs.async_request_sglang_generate(inp)
    assert res.success, res.error
    assert res.output_len == out_len and len(res.itl) == out_len - 1
    # TTFT on the client: prefill + KV transfer (+ router and HTTP hops).
    want_ttft = MODEL.prefill(1980, len(PROMPT_IDS)).time_s + MODEL.kv_transfer_s(len(PROMPT_IDS))
    assert want_ttft * 0.95 < res.ttft < want_ttft + 0.2, (res.ttft, want_ttft)
    want_itl = MODEL.decode(1980, 1, len(PROMPT_IDS) + out_len // 2).time_s
    mean_itl = sum(res.itl) / len(res.itl)
    assert abs(mean_itl / want_itl - 1) < 0.35, (mean_itl, want_itl)


async def test_sglang_client_openai_completions(cluster: Cluster, bench_serving: Any) -> None:
    bs = bench_serving
    inp = bs.RequestFuncInput(
        prompt="an emulated prompt " * 50,
        api_url=f"{cluster.decode}/v1/completions",
        prompt_len=0,
        output_len=8,
        model="m",
        lora_name=None,
        image_data=None,
        extra_request_body={"bootstrap_host": "2.2.2.2", "bootstrap_room": 3},
    )
    res = await bs.async_request_openai_completions(inp)
    assert res.success, res.error
    assert len(res.generated_text.split()) == 8 and len(res.itl) >= 6
    assert res.ttft > 0 and all(x < 0.1 for x in res.itl)


async def test_router_pd_concurrent_requests_all_finish_and_free(cluster: Cluster) -> None:
    import asyncio

    async def one(i: int) -> list[Any]:
        body = {
            "input_ids": list(range(200 + 300 * i)),
            "stream": True,
            "sampling_params": {"max_new_tokens": 5 + i, "ignore_eos": True},
        }
        status, chunks = await _post(f"{cluster.router}/generate", body)
        assert status == 200, chunks
        return chunks

    results = await asyncio.gather(*(one(i) for i in range(12)))
    for i, chunks in enumerate(results):
        assert chunks[-1] == "[DONE]"
        assert chunks[-2]["meta_info"]["completion_tokens"] == 5 + i
        assert chunks[-2]["meta_info"]["prompt_tokens"] == 200 + 300 * i
    async with aiohttp.ClientSession() as s:
        for base in (cluster.prefill, cluster.decode):
            for _ in range(50):  # the prefill side finishes its transfer bookkeeping async
                async with s.get(f"{base}/get_load") as r:
                    load = (await r.json())["load"]
                if load == 0:
                    break
                await asyncio.sleep(0.05)
            assert load == 0, base
