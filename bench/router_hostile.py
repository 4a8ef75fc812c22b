"""Benchmark: the router under 2,000 concurrent clients, a client-disconnect storm and big bodies.

Starts one emulated prefill and two emulated decode workers and ``voltana router``
in front of them (real processes, loopback only), then:

1. ``--clients`` concurrent streaming clients (2,000 by default), each holding one
   request open to its end: answers, errors, the router's peak RSS;
2. a disconnect storm: ``--storm-waves`` waves of ``--clients`` clients, each
   reading two chunks of a stream and closing its connection;
3. ``--big-bodies`` concurrent requests with 30 MiB bodies (the router's
   ``--max-body-buffer-bytes`` bounds how many are held; the rest get 503);

and reports after each phase the router's peak RSS (``VmHWM``), its client and
upstream error counts, and whether any worker's circuit breaker opened
(``voltana_router_worker_circuit_open``). A plain request must still succeed at
the end. Figures are printed as JSON and written to ``--out``.

Usage:
    .venv/bin/python bench/router_hostile.py [--clients 2000] [--storm-waves 2] [--out FILE]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp
from children import Children
from prometheus_client.parser import text_string_to_metric_families
from voltana.common.ports import free_port

ROOT = Path(__file__).resolve().parents[1]
STREAM = {"text": "hello", "stream": True, "sampling_params": {"max_new_tokens": 16}}


def rss_mib(pid: int) -> tuple[float, float]:
    """(current RSS, peak RSS) of a process in MiB, from /proc."""
    vals = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, rest = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            vals[key] = int(rest.split()[0]) / 1024
    return vals["VmRSS"], vals["VmHWM"]


def router_metrics(url: str) -> dict[str, float]:
    """Circuit state and error counters from the router's /metrics."""
    import urllib.request

    with urllib.request.urlopen(url + "/metrics", timeout=10) as r:
        text = r.read().decode()
    out: dict[str, float] = {"circuit_open_max": 0.0, "upstream_errors": 0.0, "cancelled": 0.0}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            if s.name == "voltana_router_worker_circuit_open":
                out["circuit_open_max"] = max(out["circuit_open_max"], s.value)
            elif s.name == "voltana_router_upstream_errors_total":
                out["upstream_errors"] += s.value
            elif s.name == "voltana_router_client_cancelled_total":
                out["cancelled"] += s.value
            elif s.name == "voltana_router_rejected_total":
                out[f"rejected_{s.labels['reason']}"] = s.value
    return out


async def hold_stream(s: aiohttp.ClientSession, url: str) -> str:
    try:
        async with s.post(url + "/generate", json=STREAM) as resp:
            data = await resp.read()
            if resp.status != 200:
                return f"http_{resp.status}"
            return (
                "ok"
                if data.rstrip().endswith(b"data: [DONE]") and b'"error"' not in data
                else "error"
            )
    except (aiohttp.ClientError, TimeoutError) as exc:
        return type(exc).__name__


async def abandon_stream(s: aiohttp.ClientSession, url: str) -> str:
    try:
        resp = await s.post(
            url + "/generate", json={**STREAM, "sampling_params": {"max_new_tokens": 200}}
        )
        got = 0
        async for _ in resp.content.iter_any():
            got += 1
            if got >= 2:
                break
        resp.close()
        return "abandoned"
    except (aiohttp.ClientError, TimeoutError) as exc:
        return type(exc).__name__


async def big_body(s: aiohttp.ClientSession, url: str, mib: int) -> str:
    body = b'{"text": "' + b"x" * (mib << 20) + b'"}'
    try:
        async with s.post(url + "/generate", data=body) as resp:
            await resp.read()
            return f"http_{resp.status}"
    except (aiohttp.ClientError, TimeoutError) as exc:
        return type(exc).__name__


class RssSampler:
    """Samples the router's RSS every 50 ms while a phase runs."""

    def __init__(self, pid: int) -> None:
        self.pid, self.peak = pid, 0.0
        self._task: asyncio.Task[None] | None = None

    async def _run(self) -> None:
        while True:
            self.peak = max(self.peak, rss_mib(self.pid)[0])
            await asyncio.sleep(0.05)

    def __enter__(self) -> RssSampler:
        self._task = asyncio.get_running_loop().create_task(self._run())
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._task is not None
        self._task.cancel()


def tally(results: list[str]) -> dict[str, int]:
    out: dict[str, int] = {}
    for r in results:
        out[r] = out.get(r, 0) + 1
    return out


async def phases(url: str, pid: int, args: argparse.Namespace) -> dict[str, Any]:
    conn = aiohttp.TCPConnector(limit=0)
    report: dict[str, Any] = {"rss_start_mib": round(rss_mib(pid)[0], 1)}
    async with aiohttp.ClientSession(connector=conn, timeout=aiohttp.ClientTimeout(total=300)) as s:
        with RssSampler(pid) as rss:
            t0 = time.monotonic()
            res = await asyncio.gather(*(hold_stream(s, url) for _ in range(args.clients)))
            report["concurrent"] = {
                "clients": args.clients,
                "seconds": round(time.monotonic() - t0, 2),
                "results": tally(res),
                "peak_rss_mib": round(rss.peak, 1),
                **router_metrics(url),
            }
        with RssSampler(pid) as rss:
            storm: list[str] = []
            t0 = time.monotonic()
            for _ in range(args.storm_waves):
                storm += await asyncio.gather(
                    *(abandon_stream(s, url) for _ in range(args.clients))
                )
            await asyncio.sleep(1.0)  # let the router notice the last disconnects
            report["disconnect_storm"] = {
                "streams": len(storm),
                "seconds": round(time.monotonic() - t0, 2),
                "results": tally(storm),
                "peak_rss_mib": round(rss.peak, 1),
                **router_metrics(url),
            }
        with RssSampler(pid) as rss:
            res = await asyncio.gather(*(big_body(s, url, 30) for _ in range(args.big_bodies)))
            report["big_bodies"] = {
                "requests": args.big_bodies,
                "body_mib": 30,
                "results": tally(res),
                "peak_rss_mib": round(rss.peak, 1),
            }
        report["after"] = {"plain_request": await hold_stream(s, url), **router_metrics(url)}
    report["router_peak_rss_mib_vmhwm"] = round(rss_mib(pid)[1], 1)
    return report


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    ap.add_argument("--clients", type=int, default=2000, help="concurrent clients (default 2000)")
    ap.add_argument("--storm-waves", type=int, default=2, help="disconnect-storm waves (default 2)")
    ap.add_argument(
        "--big-bodies", type=int, default=20, help="concurrent 30 MiB bodies (default 20)"
    )
    ap.add_argument("--out", type=Path, default=None, help="write the JSON report here")
    ap.add_argument("--logdir", type=Path, default=Path("/tmp/voltana-bench-hostile"))
    args = ap.parse_args()
    pp, bp, d1, d2, rp = (free_port() for _ in range(5))
    with Children(args.logdir) as kids:
        boot = ["--disaggregation-bootstrap-port", str(bp), "--gpu-ids", "0"]
        kids.voltana("prefill", ["emulator", "--role", "prefill", "--port", str(pp), *boot])
        kids.voltana("d1", ["emulator", "--role", "decode", "--port", str(d1), "--gpu-ids", "1"])
        kids.voltana("d2", ["emulator", "--role", "decode", "--port", str(d2), "--gpu-ids", "2"])
        for name, port in (("prefill", pp), ("d1", d1), ("d2", d2)):
            kids.wait_http(name, f"http://127.0.0.1:{port}/health")
        router = kids.voltana("router", [
            "router", "--no-nats", "--host", "127.0.0.1", "--port", str(rp),
            "--prefill", f"http://127.0.0.1:{pp}", str(bp),
            "--decode", f"http://127.0.0.1:{d1}", "--decode", f"http://127.0.0.1:{d2}",
        ])  # fmt: skip  # reason: flag/value pairs read better on shared lines
        url = f"http://127.0.0.1:{rp}"
        kids.wait_http("router", url + "/health")
        report = asyncio.run(phases(url, router.pid, args))
        kids.check_running()
    report["machine"] = {
        "cpus": os.cpu_count(),
        "python": sys.version.split()[0],
        "platform": platform.platform(),
    }
    text = json.dumps(report, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")
    ok = report["after"]["plain_request"] == "ok"
    opened = max(report[k]["circuit_open_max"] for k in ("concurrent", "disconnect_storm", "after"))
    return 0 if ok and opened == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
