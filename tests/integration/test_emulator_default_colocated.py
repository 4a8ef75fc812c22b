"""Over real HTTP on the emulator: the ``default`` clock physics (boost under load, cap
throttling, hold then decay when idle) and colocated serving with mixed chunks."""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
from emulator_helpers import Factory, sse, url
from helpers import wait_for
from voltana.groundtruth.gpu_model import GPUS

H100 = GPUS["h100"]


async def _gpu(http: aiohttp.ClientSession, app: Any) -> dict[str, Any]:
    async with http.get(url(app, "/voltana/gpus")) as r:
        gpu: dict[str, Any] = (await r.json())["gpus"][0]
        return gpu


async def _iterations(http: aiohttp.ClientSession, app: Any) -> list[dict[str, Any]]:
    async with http.get(url(app, "/voltana/iterations")) as r:
        its: list[dict[str, Any]] = (await r.json())["iterations"]
        return its


async def _generate(http: aiohttp.ClientSession, app: Any, n_prompt: int, n_out: int) -> None:
    body = {
        "input_ids": [7] * n_prompt,
        "sampling_params": {"max_new_tokens": n_out, "ignore_eos": True},
    }
    async with http.post(url(app, "/generate"), json=body) as r:
        assert r.status == 200, await r.text()


async def test_default_clocks_boost_throttle_hold_and_decay(
    make_emulator: Factory, http: aiohttp.ClientSession
) -> None:
    # short hold and decay (flags of the emulator) so the test waits well under a second
    app = await make_emulator(role="unified", default_idle_hold_s=0.4, default_idle_decay_s=0.05)
    state: dict[str, Any] = {}

    async def poll_floor(timeout_s: float = 10.0) -> None:
        """Wait (event-driven poll) until the idle GPU's clock reaches its floor."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while True:
            state["g"] = await _gpu(http, app)
            if state["g"]["sm_clock_mhz"] == H100.min_clock_mhz:
                return
            assert loop.time() < deadline, f"idle clock never reached the floor: {state['g']}"
            await asyncio.sleep(0.05)

    # start-up counts as work: held, then at the floor
    await poll_floor()
    assert state["g"]["locked_clock_mhz"] is None
    assert abs(state["g"]["power_w"] - H100.idle_min_clock_w) < 1.0
    # under load: boost clock for decode, the power cap throttles a big prefill
    await _generate(http, app, 8192, 16)
    its = await _iterations(http, app)
    pre = [i for i in its if i["kind"] == "prefill"]
    dec = [i for i in its if i["kind"] == "decode"]
    assert pre and dec
    assert all(i["clock_mhz"] == H100.max_clock_mhz for i in its)  # requested: the boost clock
    assert pre[0]["effective_clock_mhz"] < H100.max_clock_mhz  # throttled at the cap
    assert abs(pre[0]["power_w"] - H100.power_limit_w) < 0.03 * H100.power_limit_w
    assert all(i["effective_clock_mhz"] == H100.max_clock_mhz for i in dec)
    # right after work: the boost clock and its idle power are held ...
    g = await _gpu(http, app)
    assert g["sm_clock_mhz"] == H100.max_clock_mhz
    assert abs(g["power_w"] - H100.idle_max_clock_w) < 1.0
    # ... then the clock falls to the floor, and the power with it
    await poll_floor()
    assert abs(state["g"]["power_w"] - H100.idle_min_clock_w) < 1.0


async def test_colocated_mixed_chunks_keep_decoding_during_prefill(
    make_emulator: Factory, http: aiohttp.ClientSession
) -> None:
    """A long prompt arriving while a request streams: with mixed chunks every iteration
    carries the running request's token (longer gaps, no stall); without, it stalls."""
    results = {}
    for mixed in (True, False):
        app = await make_emulator(
            role="unified", enable_mixed_chunk=mixed, chunked_prefill_size=2048
        )
        body = {
            "input_ids": [5] * 64,
            "sampling_params": {"max_new_tokens": 400, "ignore_eos": True},
            "stream": True,
        }
        async with http.post(url(app, "/generate"), json=body) as r:
            reader = asyncio.create_task(sse(r))
            await wait_for(lambda a=app: len(a.server.iterations) >= 5, timeout_s=10)
            await _generate(http, app, 6000, 2)
            chunks = await reader
        assert chunks[-1][1] == "[DONE]"
        results[mixed] = await _iterations(http, app)
    mixed_its = [i for i in results[True] if i["kind"] == "mixed"]
    assert len(mixed_its) == 3  # 2047 + 2047 + 1906 prompt tokens, each with the decode token
    assert all(i["batch_size"] == 2 for i in mixed_its)
    assert not any(i["kind"] == "prefill" for i in results[True][1:])
    plain = [i for i in results[True] if i["kind"] == "decode"]
    # ITL effect: the running request's gap during a mixed iteration is the whole chunk
    assert min(i["model_time_s"] for i in mixed_its) > 4 * max(
        i["model_time_s"] for i in plain if i["batch_size"] == 1
    )
    # without mixing the decode stalls: prefill iterations carry no decode token
    stalls = [i for i in results[False][1:] if i["kind"] == "prefill"]
    assert len(stalls) == 3 and all(i["batch_size"] == 1 for i in stalls)
