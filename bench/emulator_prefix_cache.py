"""TTFT of the emulated worker with and without a cached prefix, over real HTTP.

Starts one unified emulated worker in this process, sends a prompt of
``--shared`` random token ids plus 100 of its own (cold), then two more prompts
sharing the same ``--shared`` ids (warm), streaming each and timing its first
chunk; then the worker's cache metrics. The model runs in real time, so the TTFTs
are the GPU model's prefill times plus HTTP overhead.

    .venv/bin/python bench/emulator_prefix_cache.py [--shared 7900]
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time

import aiohttp
import numpy as np
from voltana.common.ports import free_port
from voltana.services.emulator.app import EmulatorApp
from voltana.services.emulator.config import EmulatorConfig


async def _ttft(s: aiohttp.ClientSession, url: str, ids: list[int]) -> float:
    body = {
        "input_ids": ids,
        "stream": True,
        "sampling_params": {"max_new_tokens": 2, "ignore_eos": True},
    }
    t0 = time.monotonic()
    first: float | None = None
    async with s.post(url + "/generate", json=body) as r:
        r.raise_for_status()
        async for line in r.content:
            if first is None and line.startswith(b"data: "):
                first = time.monotonic() - t0
    assert first is not None
    return first


async def main(shared_n: int) -> int:
    app = EmulatorApp(EmulatorConfig(port=free_port(), bootstrap_port=free_port()))
    await app.start()
    rng = np.random.default_rng(0)
    shared = [int(x) for x in rng.integers(0, 128_000, shared_n)]
    url = f"http://127.0.0.1:{app.config.port}"
    want = app.server.model.prefill(app.server.model.max_clock_mhz, shared_n + 100).time_s
    print(f"# emulated H100, Llama-3.1-8B, unified; prompts of {shared_n} shared + 100 own ids")
    print(f"model prefill time of a whole prompt: {want * 1e3:.1f} ms\n")
    print("| request | TTFT ms |\n|---|---|")
    try:
        async with aiohttp.ClientSession() as s:
            for label in ("cold", "warm", "warm"):
                own = [int(x) for x in rng.integers(0, 128_000, 100)]
                print(f"| {label} | {await _ttft(s, url, shared + own) * 1e3:.1f} |", flush=True)
            async with s.get(url + "/metrics") as r:
                text = await r.text()
        print()
        for line in text.splitlines():
            if line.startswith(("sglang:cache_hit_rate", "sglang:cached_tokens_total")):
                print(line)
    finally:
        await app.stop()
    return 0


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--shared", type=int, default=7900, help="shared prefix length (ids)")
    sys.exit(asyncio.run(main(ap.parse_args().shared)))
