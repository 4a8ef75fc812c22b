"""Benchmark: voltana's router against sglang-router (PD mode), same emulated workers, one run.

Starts P prefill + D decode emulated SGLang workers, the voltana router and
``sglang_router.launch_router --pd-disaggregation`` in front of the same workers,
then drives each router in turn with a closed loop of C clients (each sends its
next request when the previous one ended) for streaming and non-streaming
``/generate``. Prints requests/s and the latency each router adds, as ratios to
sglang-router.

Added latency of one request = client-observed end-to-end time minus the decode
worker's own ``meta_info.e2e_latency`` (time from the decode server receiving the
request to its last token): what the router in front costs, both directions.

Usage:
    .venv/bin/python bench/router_vs_sglang_router.py [--clients 32 256] [--seconds 8]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
from children import Children
from router_processes import tree_cpu_s
from voltana.common.ports import free_port

ROOT = Path(__file__).resolve().parents[1]


@dataclass
class RunResult:
    router: str
    stream: bool
    clients: int
    seconds: float
    ok: int = 0
    errors: int = 0
    e2e_s: list[float] = field(default_factory=list)
    added_s: list[float] = field(default_factory=list)
    ttft_s: list[float] = field(default_factory=list)
    router_cpu_s: float = 0.0

    @property
    def cpu_ms_per_req(self) -> float:
        return self.router_cpu_s * 1e3 / self.ok if self.ok else float("nan")

    @property
    def rps(self) -> float:
        return self.ok / self.seconds

    def pct(self, xs: list[float], q: float) -> float:
        return float(np.percentile(xs, q)) * 1e3 if xs else float("nan")


def _server_e2e(tail: bytes) -> float | None:
    """The decode server's meta_info.e2e_latency from the last data event (or JSON body)."""
    text = tail.decode(errors="replace")
    if "data:" in text:
        events = [
            e.strip()[5:].strip() for e in text.split("\n\n") if e.strip().startswith("data:")
        ]
        events = [e for e in events if e != "[DONE]"]
        if not events:
            return None
        text = events[-1]
    try:
        obj = json.loads(text)
    except ValueError:
        return None
    v = obj.get("meta_info", {}).get("e2e_latency") if isinstance(obj, dict) else None
    return float(v) if isinstance(v, int | float) else None


async def one_request(
    session: aiohttp.ClientSession, url: str, body: bytes, stream: bool, res: RunResult
) -> None:
    t0 = time.perf_counter()
    ttft = None
    try:
        async with session.post(url, data=body, headers={"Content-Type": "application/json"}) as r:
            if stream:
                tail = b""
                async for chunk in r.content.iter_any():
                    if ttft is None:
                        ttft = time.perf_counter() - t0
                    tail = (tail + chunk)[-4096:]
            else:
                tail = await r.read()
            ok = r.status == 200
    except aiohttp.ClientError:
        ok = False
    e2e = time.perf_counter() - t0
    if not ok:
        res.errors += 1
        return
    res.ok += 1
    res.e2e_s.append(e2e)
    if ttft is not None:
        res.ttft_s.append(ttft)
    srv = _server_e2e(tail)
    if srv is not None:
        res.added_s.append(max(e2e - srv, 0.0))


async def closed_loop(
    base: str,
    name: str,
    stream: bool,
    clients: int,
    seconds: float,
    input_len: int,
    output_len: int,
) -> RunResult:
    body = json.dumps(
        {
            "input_ids": list(range(1, input_len + 1)),
            "stream": stream,
            "sampling_params": {"max_new_tokens": output_len, "ignore_eos": True, "temperature": 0},
        }
    ).encode()
    res = RunResult(name, stream, clients, seconds)
    conn = aiohttp.TCPConnector(limit=0)
    timeout = aiohttp.ClientTimeout(total=120)
    async with aiohttp.ClientSession(connector=conn, timeout=timeout) as session:
        url = base + "/generate"
        for _ in range(min(clients, 16)):  # warm the connection pools
            await one_request(session, url, body, stream, RunResult(name, stream, 1, 1))
        stop_at = time.perf_counter() + seconds

        async def client() -> None:
            while time.perf_counter() < stop_at:
                await one_request(session, url, body, stream, res)

        t0 = time.perf_counter()
        await asyncio.gather(*(client() for _ in range(clients)))
        res.seconds = time.perf_counter() - t0
    return res


def run_loop(coro: Any) -> Any:
    """Run the load generator on uvloop when installed (the same client for both routers)."""
    try:
        import uvloop

        factory = uvloop.new_event_loop
    except ImportError:
        factory = None
    with asyncio.Runner(loop_factory=factory) as runner:
        return runner.run(coro)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--prefill", type=int, default=1, help="prefill workers")
    ap.add_argument("--decode", type=int, default=1, help="decode workers")
    ap.add_argument("--clients", type=int, nargs="+", default=[32, 256])
    ap.add_argument("--seconds", type=float, default=5.0, help="measured time per run")
    ap.add_argument(
        "--rounds",
        type=int,
        default=3,
        help="runs per router and setting, interleaved; the table shows medians",
    )
    ap.add_argument("--input-len", type=int, default=128)
    ap.add_argument("--output-len", type=int, default=32)
    ap.add_argument(
        "--policy",
        default="random",
        help="same policy on both routers (both: random, power_of_two, round_robin)",
    )
    ap.add_argument("--emulator-args", default="", help="extra flags for the emulated workers")
    ap.add_argument(
        "--voltana-args", default="", help="extra flags for voltana router, e.g. '--processes 2'"
    )
    ap.add_argument("--out", default=str(ROOT / "bench/results/router_vs_sglang_router.json"))
    args = ap.parse_args()
    args.load_avg_start = round(os.getloadavg()[0], 2)

    import tempfile

    logdir = Path(tempfile.mkdtemp(prefix="voltana-bench-router-"))
    prefill: list[tuple[str, int]] = []
    decode: list[str] = []
    with Children(logdir, env={"VOLTANA_LOG_LEVEL": "warning"}, stop_timeout_s=8) as kids:
        for role, n in (("prefill", args.prefill), ("decode", args.decode)):
            for i in range(n):
                port, boot = free_port(), free_port()
                kids.voltana(
                    f"{role}-{i}",
                    [
                        "emulator",
                        "--role",
                        role,
                        "--port",
                        str(port),
                        "--disaggregation-bootstrap-port",
                        str(boot),
                        "--gpu-ids",
                        str(len(kids.procs)),
                        "--seed",
                        str(i),
                        *args.emulator_args.split(),
                    ],
                )
                url = f"http://127.0.0.1:{port}"
                (prefill.append((url, boot)) if role == "prefill" else decode.append(url))
        for name, url in zip(kids.procs, [u for u, _ in prefill] + decode, strict=True):
            kids.wait_http(name, url + "/health")  # all started first: they boot in parallel
        vport, sport = free_port(), free_port()
        vargv = [
            "--log-level",
            "warning",
            "router",
            "--port",
            str(vport),
            "--policy",
            args.policy,
            "--no-nats",
        ]
        sargv = [
            sys.executable,
            "-m",
            "sglang_router.launch_router",
            "--pd-disaggregation",
            "--port",
            str(sport),
            "--policy",
            args.policy,
            "--log-level",
            "warn",  # sglang-router 0.3.2: debug, info, warn, error
            "--prometheus-port",
            str(free_port()),
        ]
        for url, boot in prefill:
            vargv += ["--prefill", url, str(boot)]
            sargv += ["--prefill", url, str(boot)]
        for url in decode:
            vargv += ["--decode", url]
            sargv += ["--decode", url]
        kids.voltana("voltana-router", vargv + args.voltana_args.split())
        kids.spawn("sglang-router", sargv)
        routers = {
            "voltana": f"http://127.0.0.1:{vport}",
            "sglang-router": f"http://127.0.0.1:{sport}",
        }
        for name, url in routers.items():
            proc_name = "voltana-router" if name == "voltana" else name
            kids.wait_http(proc_name, url + "/health", 60)
        results: list[RunResult] = []
        runs = [
            (stream, clients, k)
            for k in range(args.rounds)
            for stream in (True, False)
            for clients in args.clients
        ]
        for stream, clients, k in runs:
            # alternate which router goes first: slow drifts of a shared machine cancel out
            order = ["sglang-router", "voltana"] if k % 2 == 0 else ["voltana", "sglang-router"]
            for name in order:
                pid = kids.procs["voltana-router" if name == "voltana" else name].pid
                c0 = tree_cpu_s(pid)  # --processes N: the router processes are children
                r = run_loop(
                    closed_loop(
                        routers[name],
                        name,
                        stream,
                        clients,
                        args.seconds,
                        args.input_len,
                        args.output_len,
                    )
                )
                r.router_cpu_s = tree_cpu_s(pid) - c0  # warm-up requests included (few)
                results.append(r)
                print(
                    f"  {name:14s} stream={stream!s:5s} clients={clients:4d} "
                    f"{r.rps:8.1f} req/s  added p50 {r.pct(r.added_s, 50):6.2f} ms "
                    f"p99 {r.pct(r.added_s, 99):6.2f} ms  cpu {r.cpu_ms_per_req:5.2f} ms/req  "
                    f"errors {r.errors}",
                    flush=True,
                )
        report(results, args, logdir)
        return 0


def median_run(runs: list[RunResult]) -> RunResult:
    """Medians of throughput and CPU per request over the runs; latency samples pooled."""
    out = RunResult(runs[0].router, runs[0].stream, runs[0].clients, 1000.0)
    out.ok = round(float(np.median([r.rps for r in runs])) * out.seconds)
    out.errors = sum(r.errors for r in runs)
    for r in runs:
        out.e2e_s += r.e2e_s
        out.added_s += r.added_s
        out.ttft_s += r.ttft_s
    out.router_cpu_s = float(np.median([r.cpu_ms_per_req for r in runs])) * out.ok / 1e3
    return out


def report(results: list[RunResult], args: argparse.Namespace, logdir: Path) -> None:
    from importlib.metadata import version

    from rich.console import Console
    from rich.table import Table

    peer = f"sglang-router {version('sglang-router')}"
    table = Table(title=f"voltana router / {peer} (PD, same emulated workers)")
    for col in (
        "mode",
        "clients",
        "req/s v / s",
        "ratio",
        "added p50 ms v / s",
        "ratio",
        "added p99 ms v / s",
        "ratio",
        "CPU ms/req v / s",
        "errors v / s",
    ):
        table.add_column(col, justify="right")
    rows = []
    for stream in (True, False):
        for clients in args.clients:
            v = median_run(
                [
                    r
                    for r in results
                    if r.router == "voltana" and r.stream == stream and r.clients == clients
                ]
            )
            s = median_run(
                [
                    r
                    for r in results
                    if r.router == "sglang-router" and r.stream == stream and r.clients == clients
                ]
            )
            row = {
                "mode": "stream" if stream else "non-stream",
                "clients": clients,
                "voltana_rps": v.rps,
                "sglang_router_rps": s.rps,
                "rps_ratio": v.rps / s.rps if s.rps else None,
                "voltana_added_p50_ms": v.pct(v.added_s, 50),
                "sglang_router_added_p50_ms": s.pct(s.added_s, 50),
                "voltana_added_p99_ms": v.pct(v.added_s, 99),
                "sglang_router_added_p99_ms": s.pct(s.added_s, 99),
                "voltana_ttft_p50_ms": v.pct(v.ttft_s, 50),
                "sglang_router_ttft_p50_ms": s.pct(s.ttft_s, 50),
                "voltana_errors": v.errors,
                "sglang_router_errors": s.errors,
                "voltana_cpu_ms_per_req": v.cpu_ms_per_req,
                "sglang_router_cpu_ms_per_req": s.cpu_ms_per_req,
            }
            rows.append(row)
            table.add_row(
                row["mode"],
                str(clients),
                f"{v.rps:.1f} / {s.rps:.1f}",
                f"{row['rps_ratio']:.2f}x",
                f"{row['voltana_added_p50_ms']:.2f} / {row['sglang_router_added_p50_ms']:.2f}",
                f"{row['voltana_added_p50_ms'] / row['sglang_router_added_p50_ms']:.2f}x",
                f"{row['voltana_added_p99_ms']:.2f} / {row['sglang_router_added_p99_ms']:.2f}",
                f"{row['voltana_added_p99_ms'] / row['sglang_router_added_p99_ms']:.2f}x",
                f"{v.cpu_ms_per_req:.2f} / {s.cpu_ms_per_req:.2f}",
                f"{v.errors} / {s.errors}",
            )
    Console().print(table)
    meta = {
        "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs (shared), "
        f"load avg at the end {os.getloadavg()[0]:.2f}, Python {platform.python_version()}",
        "load_avg_start": args.load_avg_start,
        "args": vars(args),
        "logs": str(logdir),
        "rows": rows,
        "t": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(meta, indent=2))
    print(f"results written to {args.out}")


if __name__ == "__main__":
    sys.exit(main())
