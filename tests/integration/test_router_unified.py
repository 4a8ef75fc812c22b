"""The router in ``unified`` mode: colocated emulated SGLang workers (mixed chunks), one
worker per request as sglang-router without ``--pd-disaggregation``, over real HTTP."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import aiohttp
import pytest
from emulator_helpers import Factory
from helpers import post_json
from voltana.common.errors import ConfigError
from voltana.services.emulator.app import EmulatorApp
from voltana.services.router.accounting import InstanceLoad
from voltana.services.router.config import RouterConfig, WorkerSpec
from voltana.services.router.server import Router


def _cfg(apps: list[EmulatorApp], policy: str) -> RouterConfig:
    return RouterConfig(
        port=0,
        mode="unified",
        workers=[WorkerSpec(url=f"http://127.0.0.1:{a.config.port}", role="unified") for a in apps],
        decode_policy=policy,
        health_check_interval_s=0.5,
    )


@pytest.fixture
async def unified(make_emulator: Factory) -> AsyncIterator[tuple[Router, list[EmulatorApp]]]:
    apps = [
        await make_emulator(role="unified", enable_mixed_chunk=True, gpu_ids=(i,)) for i in range(2)
    ]
    r = Router(_cfg(apps, "round-robin"))
    await r.start()
    try:
        yield r, apps
    finally:
        await r.stop()


@pytest.mark.parametrize("stream", [False, True])
async def test_unified_generate(unified: tuple[Router, list[EmulatorApp]], stream: bool) -> None:
    router, _ = unified
    body = {
        "text": "tell me about clocks",
        "stream": stream,
        "sampling_params": {"max_new_tokens": 6, "ignore_eos": True},
    }
    status, got = await post_json(router.url + "/generate", body)
    assert status == 200, got
    if stream:  # a slow reader may get several tokens in one event, as from SGLang
        assert got[-1] == "[DONE]"
        counts = [c["meta_info"]["completion_tokens"] for c in got[:-1]]
        assert counts == sorted(set(counts)) and counts[0] >= 1 and counts[-1] == 6
        got = got[-2]
    assert got["meta_info"]["finish_reason"] == {"type": "length", "length": 6}


async def test_unified_spreads_and_books_return_to_zero(
    unified: tuple[Router, list[EmulatorApp]],
) -> None:
    router, apps = unified
    body = {
        "text": "x" * 800,
        "stream": True,
        "sampling_params": {"max_new_tokens": 8, "ignore_eos": True},
    }
    res = await asyncio.gather(*(post_json(router.url + "/generate", body) for _ in range(12)))
    assert all(s == 200 and r[-1] == "[DONE]" for s, r in res)
    for w in router.state.workers.values():
        assert w.spec.role == "unified"
        assert w.load == InstanceLoad()  # nothing in flight, queued or waiting
        assert len(w.ttft_samples) == 6  # round robin over two workers
    # each worker served its half: prompt and decode on the same emulated GPU
    assert [len(a.server.iterations) > 0 for a in apps] == [True, True]
    view = router.state.view("unified", 0.0)
    assert [v.role for v in view] == ["unified", "unified"]
    async with aiohttp.ClientSession() as s, s.get(router.url + "/health") as r:
        assert r.status == 200  # healthy with unified workers only
    async with aiohttp.ClientSession() as s, s.get(router.url + "/get_server_info") as r:
        assert r.status == 200
        assert len((await r.json())["unified"]) == 2


def test_unified_mode_config_is_checked() -> None:
    w = WorkerSpec(url="127.0.0.1:30000", role="unified")
    with pytest.raises(ConfigError, match="unified mode needs"):
        RouterConfig(mode="unified").validate()
    with pytest.raises(ConfigError, match="not prefill/decode"):
        RouterConfig(mode="unified", workers=[w], decode=[w]).validate()
    with pytest.raises(ConfigError, match="set mode unified"):
        RouterConfig(prefill=[w], decode=[w], workers=[w]).validate()
    cfg = RouterConfig(mode="unified", workers=[w]).validate()
    assert cfg.workers[0].url == "http://127.0.0.1:30000" and cfg.workers[0].role == "unified"
