"""How many concurrent streams one emulated decode worker paces within 5% of the model.

Starts ``voltana emulator --role decode`` pinned to one CPU core (taskset, when
available), sends N concurrent streaming /generate requests (fake bootstrap host, so
no prefill partner is needed) from this process, then reads the worker's
/voltana/iterations and compares when each decode iteration really ended with when the model's
timeline says it should have (``late_s``), relative to the iteration's model time. Prints a table and the largest N whose mean |error| stays under 5%.

Usage: .venv/bin/python bench/emulator_pacing.py [N ...]   (default 64 128 256 384 512)
"""

from __future__ import annotations

import asyncio
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import aiohttp
from children import Children, cpu_s
from rich.console import Console
from rich.table import Table
from voltana.common.ports import free_port

OUTPUT_TOKENS = 48
PROMPT_TOKENS = 512


async def _one(session: aiohttp.ClientSession, url: str, i: int) -> int:
    body = {
        "input_ids": [1] * PROMPT_TOKENS,
        "stream": True,
        "bootstrap_host": "2.2.2.2",
        "bootstrap_room": i,
        "sampling_params": {"max_new_tokens": OUTPUT_TOKENS, "ignore_eos": True},
    }
    n = 0
    async with session.post(url, json=body) as r:
        async for line in r.content:
            n += line.startswith(b"data: {")
    return n


async def _run(n: int, core: int, logdir: Path) -> dict[str, float]:
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    pin = ["taskset", "-c", str(core)] if shutil.which("taskset") else []
    with Children(logdir) as kids:
        args = ["--log-level", "warning", "emulator", "--role", "decode", "--port", str(port)]
        proc = kids.voltana(f"emulator-{n}", [*args, "--max-running-requests", "1024"], pin)
        kids.wait_http(f"emulator-{n}", f"{base}/health", timeout_s=20)
        conn = aiohttp.TCPConnector(limit=0)
        async with aiohttp.ClientSession(connector=conn) as s:
            t0, cpu0 = time.monotonic(), cpu_s(proc.pid)
            counts = await asyncio.gather(*(_one(s, f"{base}/generate", i) for i in range(n)))
            wall, cpu = time.monotonic() - t0, cpu_s(proc.pid) - cpu0
            async with s.get(f"{base}/voltana/iterations") as r:
                its = (await r.json())["iterations"]
        dec = [it for it in its if it["kind"] == "decode" and it["batch_size"] >= 0.9 * n]
        # Lateness of each iteration's end against the model's timeline, relative to its time.
        errs = [abs(it["late_s"]) / it["model_time_s"] for it in dec]
        return {
            "n": n,
            "ok": float(sum(c == OUTPUT_TOKENS for c in counts)),
            "iters": float(len(dec)),
            "model_ms": statistics.mean(it["model_time_s"] for it in dec) * 1e3 if dec else 0.0,
            "mean_err": statistics.mean(errs) if errs else float("nan"),
            "p90_err": sorted(errs)[int(0.9 * (len(errs) - 1))] if errs else float("nan"),
            "wall_s": wall,
            # CPU the worker spent per model-second of GPU work: the share of one
            # dedicated core it needs to keep pace (derived, independent of other load).
            "core_share": cpu / sum(it["model_time_s"] for it in its) if its else float("nan"),
        }


def main() -> int:
    ns = [int(a) for a in sys.argv[1:]] or [64, 128, 256, 384, 512]
    core = (os.cpu_count() or 1) - 1
    if core > 0 and hasattr(os, "sched_setaffinity"):
        # Keep the client off the worker's core: the worker alone owns core `core`.
        os.sched_setaffinity(0, set(range(core)))
    with tempfile.TemporaryDirectory(prefix="voltana-bench-pacing-") as logdir:
        rows = [asyncio.run(_run(n, core, Path(logdir))) for n in ns]
    t = Table(
        title=f"one emulated decode worker on CPU core {core} (H100, Llama-3.1-8B, "
        f"prompt {PROMPT_TOKENS}, {OUTPUT_TOKENS} tokens each, full-batch iterations)"
    )
    for col in (
        "streams",
        "all chunks",
        "iterations",
        "model ms/iter",
        "mean |err|",
        "p90 |err|",
        "wall s",
        "core share",
    ):
        t.add_column(col, justify="right")
    for r in rows:
        t.add_row(
            f"{r['n']}",
            f"{r['ok']:.0f}",
            f"{r['iters']:.0f}",
            f"{r['model_ms']:.2f}",
            f"{r['mean_err'] * 100:.1f}%",
            f"{r['p90_err'] * 100:.1f}%",
            f"{r['wall_s']:.1f}",
            f"{r['core_share']:.2f}",
        )
    Console(width=140).print(t)
    # "all chunks": streams that got one SSE chunk per token (a lagging server coalesces).
    good = [r["n"] for r in rows if r["mean_err"] < 0.05]
    print(f"largest N paced with mean iteration-time error < 5%: {max(good) if good else 'none'}")
    fits = [r["n"] for r in rows if r["core_share"] < 0.8]
    print(
        "largest N whose worker needs < 80% of one dedicated core (CPU time / model time): "
        f"{max(fits) if fits else 'none'}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
