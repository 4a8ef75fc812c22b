"""Benchmark: ``voltana router --processes N`` against one process, same minimal workers.

Starts W minimal SGLang-shaped workers (``minimal_worker.py``: a fixed answer, or
``--output-len`` SSE events when streaming, no model time) and one voltana router per
process count asked for (colocated workers, ``--worker-urls``), all at once; then drives
each router in turn, interleaved over rounds, with the routers' load generator
(``raw_load.py``: a closed loop of C keep-alive clients, each sending its next request
when the previous one ended). Prints requests/s, p50/p99 of the latency the router adds
(end to end minus the worker's own time) and the CPU seconds per request of each
router's whole process tree (supervisor and router processes), with the ratio to the
first process count.

Everything shares this machine's cores: the client and the workers take part of them,
so the figures are what the router reaches next to its load, not alone.

Usage:
    .venv/bin/python bench/router_processes.py [--processes 1 2] [--clients 32 256]
        [--seconds 5] [--rounds 3] [--policy round-robin]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from children import Children, tree_cpu_s
from raw_load import RunResult, closed_loop, generate_body, pct, run_loop
from voltana.common.ports import free_port

WORKER = str(Path(__file__).with_name("minimal_worker.py"))


def busy_s() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine so far, all cores (/proc/stat)."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + fields[4]  # idle + iowait
    total = sum(fields[:8])
    hz = os.sysconf("SC_CLK_TCK")
    return (total - idle) / hz, total / hz


@dataclass
class Run:
    """One measured run: the router's process count, the load's figures, how busy the
    whole machine was meanwhile (any process, all cores)."""

    processes: int
    result: RunResult
    machine_busy: float = 0.0

    def ms(self, q: float) -> float:
        return pct(self.result.added_s, q)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
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
    logdir = Path(tempfile.mkdtemp(prefix="voltana-bench-router-processes-"))
    load0 = round(os.getloadavg()[0], 2)
    runs: list[Run] = []
    with Children(logdir, env={"VOLTANA_LOG_LEVEL": "warning"}, stop_timeout_s=15) as kids:
        urls = []
        for i in range(args.workers):
            port = free_port()
            argv = [sys.executable, WORKER, "--role", "decode", "--port", str(port)]
            kids.spawn(f"worker-{i}", [*argv, "--output-len", str(args.output_len)])
            urls.append(f"http://127.0.0.1:{port}")
        for i, u in enumerate(urls):
            kids.wait_http(f"worker-{i}", u + "/health")
        routers = {}
        for n in args.processes:
            port = routers[n] = free_port()
            argv = ["router", "--port", str(port), "--no-nats", "--policy", args.policy]
            argv += ["--processes", str(n), "--health-check-interval-s", "0", "--worker-urls"]
            kids.voltana(f"router-{n}", [*argv, *urls])
        for n, port in routers.items():
            kids.wait_http(f"router-{n}", f"http://127.0.0.1:{port}/health")
        cells = [(s, c) for s in (False, True) for c in args.clients]
        for k in range(args.rounds):
            for stream, clients in cells:
                body = generate_body(args.input_len, args.output_len, stream)
                order = args.processes if k % 2 == 0 else list(reversed(args.processes))
                for n in order:
                    pid = kids.procs[f"router-{n}"].pid
                    c0, (b0, t0) = tree_cpu_s(pid), busy_s()
                    r = run_loop(
                        closed_loop(routers[n], f"x{n}", stream, clients, args.seconds, body)
                    )
                    r.router_cpu_s = tree_cpu_s(pid) - c0
                    b1, t1 = busy_s()
                    run = Run(n, r, (b1 - b0) / max(t1 - t0, 1e-9))
                    kids.check_running()
                    runs.append(run)
                    print(
                        f"  processes={n} stream={stream!s:5s} clients={clients:4d} "
                        f"{r.rps:8.1f} req/s  added p50 {run.ms(50):6.2f} ms  "
                        f"p99 {run.ms(99):7.2f} ms  cpu {r.cpu_ms_per_req:5.3f} ms/req  "
                        f"machine busy {run.machine_busy:4.0%}  errors {r.errors}",
                        flush=True,
                    )
    report(runs, args, load0)
    if args.out:
        Path(args.out).write_text(
            json.dumps(
                [
                    {
                        "processes": r.processes,
                        "stream": r.result.stream,
                        "clients": r.result.clients,
                        "rps": r.result.rps,
                        "added_p50_ms": r.ms(50),
                        "added_p99_ms": r.ms(99),
                        "cpu_ms_per_req": r.result.cpu_ms_per_req,
                        "machine_busy": r.machine_busy,
                        "errors": r.result.errors,
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
        f"{'added p50 ms':>12} {'p99 ms':>7} {'cpu ms/req':>10} {'busy':>5}"
    )
    base = args.processes[0]
    for stream in (False, True):
        for clients in args.clients:
            med = {}
            for n in args.processes:
                cell = [
                    r
                    for r in runs
                    if (r.processes, r.result.stream, r.result.clients) == (n, stream, clients)
                ]
                med[n] = (
                    float(np.median([r.result.rps for r in cell])),
                    float(np.median([r.ms(50) for r in cell])),
                    float(np.median([r.ms(99) for r in cell])),
                    float(np.median([r.result.cpu_ms_per_req for r in cell])),
                    float(np.median([r.machine_busy for r in cell])),
                )
            for n in args.processes:
                rps, p50, p99, cpu, busy = med[n]
                print(
                    f"{stream!s:>6} {clients:7d} {n:4d} {rps:8.1f} {rps / med[base][0]:6.2f} "
                    f"{p50:12.2f} {p99:7.2f} {cpu:10.3f} {busy:5.0%}"
                )


if __name__ == "__main__":
    sys.exit(main())
