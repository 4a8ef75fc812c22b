"""Benchmark: ``voltana router --processes N`` against one process, same minimal workers.

Starts W minimal SGLang-shaped workers (``--worker PORT``: a fixed ``/generate`` answer,
or ``--output-len`` SSE chunks when streaming, no model time) and one voltana router
per process count asked for (colocated workers, ``--worker-urls``), all at once; then
drives each router in turn, interleaved over rounds, with a closed loop of C clients
(each sends its next request when the previous one ended). Prints requests/s, p50/p99
end-to-end latency and the CPU seconds per request of each router's whole process tree
(supervisor and router processes), with the ratio to the first process count.

Everything shares this machine's cores: the client and the workers take part of them,
so the figures are what the router reaches next to its load, not alone.

Usage:
    .venv/bin/python bench/router_processes.py [--processes 1 2] [--clients 32 256]
        [--seconds 5] [--rounds 3] [--policy round-robin]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
from children import Children, tree_cpu_s
from voltana.common.ports import free_port


def busy_s() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine so far, all cores (/proc/stat)."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + fields[4]  # idle + iowait
    total = sum(fields[:8])
    hz = os.sysconf("SC_CLK_TCK")
    return (total - idle) / hz, total / hz


def worker_main(port: int, output_len: int) -> None:
    """A minimal worker: what a router needs from SGLang, at no model cost."""
    from aiohttp import web

    meta = {"completion_tokens": output_len, "finish_reason": {"type": "length"}}
    answer = json.dumps({"text": "x" * output_len, "meta_info": meta}).encode()
    chunks = [
        b"data: "
        + json.dumps({"text": "x" * (i + 1), "meta_info": {"completion_tokens": i + 1}}).encode()
        + b"\n\n"
        for i in range(output_len)
    ]

    async def health(request: web.Request) -> web.Response:
        return web.Response(text="ok")

    async def generate(request: web.Request) -> web.StreamResponse:
        body = await request.json()
        if not body.get("stream"):
            return web.Response(body=answer, content_type="application/json")
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        for c in chunks:
            await resp.write(c)
        await resp.write(b"data: [DONE]\n\n")
        return resp

    app = web.Application()
    app.router.add_get("/health", health)
    app.router.add_post("/generate", generate)
    web.run_app(app, host="127.0.0.1", port=port, print=None, access_log=None)


@dataclass
class Run:
    processes: int
    stream: bool
    clients: int
    seconds: float = 0.0
    ok: int = 0
    errors: int = 0
    e2e_s: list[float] = field(default_factory=list)
    cpu_s: float = 0.0
    machine_busy: float = 0.0  # share of all cores busy during the run (any process)

    @property
    def rps(self) -> float:
        return self.ok / self.seconds if self.seconds else 0.0

    def ms(self, q: float) -> float:
        return float(np.percentile(self.e2e_s, q)) * 1e3 if self.e2e_s else float("nan")


async def closed_loop(url: str, run: Run, seconds: float, input_len: int) -> None:
    body = json.dumps({"input_ids": list(range(1, input_len + 1)), "stream": run.stream}).encode()
    headers = {"Content-Type": "application/json"}
    timeout = aiohttp.ClientTimeout(total=60)
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0), timeout=timeout) as s:

        async def one(record: bool) -> None:
            t0 = time.perf_counter()
            try:
                async with s.post(url, data=body, headers=headers) as r:
                    await r.read()
                    ok = r.status == 200
            except aiohttp.ClientError:
                ok = False
            if record:
                run.ok += ok
                run.errors += not ok
                if ok:
                    run.e2e_s.append(time.perf_counter() - t0)

        await asyncio.gather(*(one(False) for _ in range(min(run.clients, 64))))  # warm
        stop_at = time.perf_counter() + seconds

        async def client() -> None:
            while time.perf_counter() < stop_at:
                await one(True)

        t0 = time.perf_counter()
        await asyncio.gather(*(client() for _ in range(run.clients)))
        run.seconds = time.perf_counter() - t0


def run_client(coro: Any) -> None:
    """The load generator on uvloop when installed (the same client for every router)."""
    try:
        import uvloop

        factory: Any = uvloop.new_event_loop
    except ImportError:
        factory = None
    with asyncio.Runner(loop_factory=factory) as runner:
        runner.run(coro)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--worker", type=int, default=None, help=argparse.SUPPRESS)
    ap.add_argument("--processes", type=int, nargs="+", default=[1, 2], help="router processes")
    ap.add_argument("--workers", type=int, default=2, help="minimal workers behind the routers")
    ap.add_argument("--clients", type=int, nargs="+", default=[32, 256])
    ap.add_argument("--seconds", type=float, default=5.0, help="measured time per run")
    ap.add_argument("--rounds", type=int, default=3, help="interleaved runs per cell (medians)")
    ap.add_argument("--input-len", type=int, default=128)
    ap.add_argument("--output-len", type=int, default=16)
    ap.add_argument("--policy", default="round-robin", help="the routers' policy")
    ap.add_argument("--out", default=None, help="also write the runs as JSON here")
    args = ap.parse_args()
    if args.worker is not None:
        worker_main(args.worker, args.output_len)
        return 0
    logdir = Path(tempfile.mkdtemp(prefix="voltana-bench-router-processes-"))
    load0 = round(os.getloadavg()[0], 2)
    runs: list[Run] = []
    with Children(logdir, env={"VOLTANA_LOG_LEVEL": "warning"}, stop_timeout_s=15) as kids:
        urls = []
        for i in range(args.workers):
            port = free_port()
            argv = [sys.executable, __file__, "--worker", str(port)]
            kids.spawn(f"worker-{i}", [*argv, "--output-len", str(args.output_len)])
            urls.append(f"http://127.0.0.1:{port}")
        for i, u in enumerate(urls):
            kids.wait_http(f"worker-{i}", u + "/health")
        routers = {}
        for n in args.processes:
            port = free_port()
            argv = ["router", "--port", str(port), "--no-nats", "--policy", args.policy]
            argv += ["--processes", str(n), "--health-check-interval-s", "0", "--worker-urls"]
            kids.voltana(f"router-{n}", [*argv, *urls])
            routers[n] = f"http://127.0.0.1:{port}"
        for n, u in routers.items():
            kids.wait_http(f"router-{n}", u + "/health")
        cells = [(s, c) for s in (False, True) for c in args.clients]
        for k in range(args.rounds):
            for stream, clients in cells:
                order = args.processes if k % 2 == 0 else list(reversed(args.processes))
                for n in order:
                    run = Run(n, stream, clients)
                    pid = kids.procs[f"router-{n}"].pid
                    c0, (b0, t0) = tree_cpu_s(pid), busy_s()
                    run_client(
                        closed_loop(routers[n] + "/generate", run, args.seconds, args.input_len)
                    )
                    run.cpu_s = tree_cpu_s(pid) - c0
                    b1, t1 = busy_s()
                    run.machine_busy = (b1 - b0) / max(t1 - t0, 1e-9)
                    runs.append(run)
                    print(
                        f"  processes={n} stream={stream!s:5s} clients={clients:4d} "
                        f"{run.rps:8.1f} req/s  p50 {run.ms(50):6.1f} ms  p99 {run.ms(99):6.1f} ms"
                        f"  cpu {run.cpu_s * 1e3 / max(run.ok, 1):5.2f} ms/req  "
                        f"machine busy {run.machine_busy:4.0%}  errors {run.errors}",
                        flush=True,
                    )
    report(runs, args, load0)
    if args.out:
        Path(args.out).write_text(
            json.dumps(
                [
                    {
                        "processes": r.processes,
                        "stream": r.stream,
                        "clients": r.clients,
                        "rps": r.rps,
                        "p50_ms": r.ms(50),
                        "p99_ms": r.ms(99),
                        "cpu_ms_per_req": r.cpu_s * 1e3 / max(r.ok, 1),
                        "machine_busy": r.machine_busy,
                        "errors": r.errors,
                    }
                    for r in runs
                ],
                indent=1,
            )
        )
    return 0


def report(runs: list[Run], args: argparse.Namespace, load0: float) -> None:
    print(
        f"\nmedians over {args.rounds} rounds, {args.seconds:g} s each; {os.cpu_count()} cores; "
        f"policy {args.policy}; load average at start {load0}, at end "
        f"{round(os.getloadavg()[0], 2)}"
    )
    print(
        f"{'stream':>6} {'clients':>7} {'proc':>4} {'req/s':>8} {'ratio':>6} "
        f"{'p50 ms':>7} {'p99 ms':>7} {'cpu ms/req':>10} {'busy':>5}"
    )
    base = args.processes[0]
    for stream in (False, True):
        for clients in args.clients:
            med = {}
            for n in args.processes:
                cell = [
                    r for r in runs if (r.processes, r.stream, r.clients) == (n, stream, clients)
                ]
                med[n] = (
                    float(np.median([r.rps for r in cell])),
                    float(np.median([r.ms(50) for r in cell])),
                    float(np.median([r.ms(99) for r in cell])),
                    float(np.median([r.cpu_s * 1e3 / max(r.ok, 1) for r in cell])),
                    float(np.median([r.machine_busy for r in cell])),
                )
            for n in args.processes:
                rps, p50, p99, cpu, busy = med[n]
                print(
                    f"{stream!s:>6} {clients:7d} {n:4d} {rps:8.1f} {rps / med[base][0]:6.2f} "
                    f"{p50:7.1f} {p99:7.1f} {cpu:10.2f} {busy:5.0%}"
                )


if __name__ == "__main__":
    sys.exit(main())
