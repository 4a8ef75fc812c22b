"""Benchmark: voltana's router against sglang-router and smg (PD mode), same workers, one run.

Starts one prefill and one decode worker -- minimal ones by default
(``minimal_worker.py``: answer at once, so the routers' own cost shows), or
``--workers emulated`` (voltana's emulator, paced in real time by the GPU model) --
and in front of the same pair: voltana's router twice (``round_robin`` and the
energy-aware ``ecoroute``, whose decision cost is then inside every figure),
``python -m sglang_router.launch_router`` and ``python -m smg.launch_router``
(both ``--pd-disaggregation --policy round_robin``). A closed loop of C clients
(each sends its next request when its previous one ended, over one keep-alive
connection) drives each router in turn, on ``/generate``, streaming and not, in
interleaved rounds (the order rotates every round, so slow drifts of a shared
machine fall on all routers alike). Prints requests/s with the ratios to each
peer, the latency each router adds (p50/p99) and CPU seconds per request of each
router's process tree. ``--voltana-processes 1 2`` runs each voltana router once
per process count (``voltana router --processes N``), as rows ``voltana-rr``,
``voltana-rr-x2``, ...; CPU then counts all N processes.

Added latency of one request = the client's end-to-end time minus the decode
worker's own ``meta_info.e2e_latency``: what the router in front costs, both ways.
CPU per request = the router's process tree's user + system CPU over the run
(``/proc``), warm-up requests included, divided by the requests answered.

The load generator is a raw asyncio HTTP/1.1 client (uvloop when installed), so
its own cost per request stays well below any router's.

Usage:
    python bench/router_vs_peers.py [--clients 32 256] [--seconds 5] [--rounds 3]
    python bench/router_vs_peers.py --quick          # a few-second smoke run
    python bench/router_vs_peers.py --voltana-processes 1 2   # 1 and 2 router processes
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from children import Children, tree_cpu_s
from raw_load import RunResult, closed_loop, generate_body, pct, run_loop
from voltana.common.ports import free_port

ROOT = Path(__file__).resolve().parents[1]
PEERS = ("sglang-router", "smg")
VOLTANA = {"voltana-rr": "round_robin", "voltana-eco": "ecoroute"}
BASELINE = {"base-rr": "round_robin", "base-eco": "ecoroute"}  # --baseline: another checkout
ALL_ROUTERS = (*VOLTANA, *PEERS, *BASELINE)


def instances(routers: list[str], processes: list[int]) -> dict[str, tuple[str, int]]:
    """Each router to run, by row name: (router, process count). A voltana router runs
    once per count in ``processes`` (``-xN`` on its name past one); a peer runs once."""
    out: dict[str, tuple[str, int]] = {}
    for name in routers:
        counts = processes if name in VOLTANA or name in BASELINE else [1]
        for n in counts:
            out[name if n == 1 else f"{name}-x{n}"] = (name, n)
    return out


# -- processes ----------------------------------------------------------------------


def start_workers(kids: Children, how: str, output_len: int) -> tuple[tuple[str, int], str]:
    port_p, boot, port_d = free_port(), free_port(), free_port()
    if how == "minimal":
        worker = str(Path(__file__).with_name("minimal_worker.py"))
        for role, port in (("prefill", port_p), ("decode", port_d)):
            argv = [sys.executable, worker, "--role", role, "--port", str(port)]
            kids.spawn(
                role, [*argv, "--bootstrap-port", str(boot), "--output-len", str(output_len)]
            )
    else:
        for i, (role, port) in enumerate((("prefill", port_p), ("decode", port_d))):
            argv = ["emulator", "--role", role, "--port", str(port), "--gpu-ids", str(i)]
            argv += ["--disaggregation-bootstrap-port", str(boot), "--sglang-version", "0.5.23"]
            kids.voltana(role, argv)
    for role, port in (("prefill", port_p), ("decode", port_d)):
        kids.wait_http(role, f"http://127.0.0.1:{port}/health")
    return (f"http://127.0.0.1:{port_p}", boot), f"http://127.0.0.1:{port_d}"


def start_routers(
    kids: Children,
    names: dict[str, tuple[str, int]],
    prefill: tuple[str, int],
    decode: str,
    voltana_args: str,
    baseline: str | None,
) -> dict[str, int]:
    ports: dict[str, int] = {}
    for row, (name, processes) in names.items():
        port = ports[row] = free_port()
        workers = ["--prefill", prefill[0], str(prefill[1]), "--decode", decode]
        if name in VOLTANA or name in BASELINE:
            policy = VOLTANA.get(name) or BASELINE[name]
            argv = [sys.executable, "-m", "voltana", "--log-level", "warning", "router"]
            argv += ["--port", str(port), "--no-nats", "--policy", policy, *workers]
            env = None
            if name in BASELINE:
                if baseline is None:
                    raise SystemExit(f"{name} needs --baseline DIR")
                env = {"PYTHONPATH": baseline}
            if processes > 1:
                argv += ["--processes", str(processes)]
            kids.spawn(row, [*argv, *voltana_args.split()], env)
        else:
            module = "sglang_router" if name == "sglang-router" else "smg"
            argv = [sys.executable, "-m", f"{module}.launch_router", "--pd-disaggregation"]
            argv += ["--host", "127.0.0.1", "--port", str(port), "--policy", "round_robin"]
            argv += ["--prometheus-port", str(free_port()), "--log-level", "warn", *workers]
            kids.spawn(row, argv)
    for name, port in ports.items():
        kids.wait_http(name, f"http://127.0.0.1:{port}/health", 90)
    return ports


# -- the run ------------------------------------------------------------------------


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    ap.add_argument("--clients", type=int, nargs="+", default=[32, 256], help="client counts")
    ap.add_argument("--seconds", type=float, default=5.0, help="measured time per run")
    ap.add_argument("--rounds", type=int, default=3, help="interleaved rounds; medians shown")
    ap.add_argument(
        "--modes",
        nargs="+",
        choices=["stream", "non-stream"],
        default=None,
        help="request modes (default: both)",
    )
    ap.add_argument(
        "--routers",
        nargs="+",
        choices=ALL_ROUTERS,
        default=[*VOLTANA, *PEERS],
        help="routers to run",
    )
    ap.add_argument(
        "--workers",
        choices=["minimal", "emulated"],
        default="minimal",
        help="minimal: answer at once; emulated: paced by the GPU model",
    )
    ap.add_argument("--input-len", type=int, default=128, help="prompt token ids per request")
    ap.add_argument("--output-len", type=int, default=32, help="output tokens (SSE events)")
    ap.add_argument(
        "--voltana-args",
        default="",
        help="extra flags for both voltana routers, e.g. process count or loop choice",
    )
    ap.add_argument(
        "--baseline",
        default=None,
        help="a directory holding another voltana checkout (as voltana/): the base-rr and "
        "base-eco routers run it, for before/after comparisons in one run",
    )
    ap.add_argument(
        "--voltana-processes",
        type=int,
        nargs="+",
        default=[1],
        help="router process counts: each voltana router runs once per count, as its own "
        "row (voltana-rr, voltana-rr-x2, ...)",
    )
    ap.add_argument("--quick", action="store_true", help="smoke run: 1 round of 1 s")
    ap.add_argument("--out", default=None, help="write the results as JSON here")
    args = ap.parse_args()
    if args.quick:
        args.rounds, args.seconds = 1, 1.0
    args.modes = args.modes or ["stream", "non-stream"]
    if any(n < 1 for n in args.voltana_processes):
        ap.error("--voltana-processes: counts are 1 or more")
    args.voltana_processes = sorted(set(args.voltana_processes))
    args.instances = instances(args.routers, args.voltana_processes)
    return args


def main() -> int:
    args = parse_args()
    load_start = round(os.getloadavg()[0], 2)
    logdir = Path(tempfile.mkdtemp(prefix="voltana-bench-peers-"))
    results: list[RunResult] = []
    with Children(logdir, env={"VOLTANA_LOG_LEVEL": "warning"}, stop_timeout_s=8) as kids:
        prefill, decode = start_workers(kids, args.workers, args.output_len)
        ports = start_routers(
            kids, args.instances, prefill, decode, args.voltana_args, args.baseline
        )
        rows_run = list(args.instances)
        cells = [(m == "stream", c) for m in args.modes for c in args.clients]
        for k in range(args.rounds):
            for i, (stream, clients) in enumerate(cells):
                body = generate_body(args.input_len, args.output_len, stream)
                shift = (k + i) % len(rows_run)  # rotate who goes first
                for name in rows_run[shift:] + rows_run[:shift]:
                    pid = kids.procs[name].pid
                    c0 = tree_cpu_s(pid)
                    r = run_loop(
                        closed_loop(ports[name], name, stream, clients, args.seconds, body)
                    )
                    r.router_cpu_s = tree_cpu_s(pid) - c0
                    kids.check_running()
                    results.append(r)
                    print(
                        f"  round {k} {name:16s} {'stream' if stream else 'non-stream':10s} "
                        f"c={clients:4d} {r.rps:8.1f} req/s  added p50 {pct(r.added_s, 50):6.2f} "
                        f"p99 {pct(r.added_s, 99):7.2f} ms  cpu {r.cpu_ms_per_req:5.3f} ms/req  "
                        f"client cpu {r.client_cpu_s * 1e3 / max(r.ok, 1):5.3f} ms/req  "
                        f"errors {r.errors}",
                        flush=True,
                    )
    rows = summarise(results, args)
    report(rows, args)
    if args.out:
        meta = {
            "command": " ".join(["bench/router_vs_peers.py", *sys.argv[1:]]),
            "machine": machine(),
            "load_avg_start": load_start,
            "load_avg_end": round(os.getloadavg()[0], 2),
            "versions": versions(),
            "args": vars(args),
            "logs": str(logdir),
            "rows": rows,
            "runs": [
                {
                    "router": r.router,
                    "stream": r.stream,
                    "clients": r.clients,
                    "rps": r.rps,
                    "cpu_ms_per_req": r.cpu_ms_per_req,
                    "added_p50_ms": pct(r.added_s, 50),
                    "added_p99_ms": pct(r.added_s, 99),
                    "errors": r.errors,
                }
                for r in results
            ],
            "t": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(meta, indent=2))
        print(f"results written to {args.out}")
    return 1 if any(r.ok == 0 for r in results) else 0


def machine() -> str:
    return (
        f"{platform.machine()}, {os.cpu_count()} CPUs (shared with the workers and the load "
        f"generator), Python {platform.python_version()}"
    )


def versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for dist in ("sglang-router", "smg", "aiohttp", "uvloop"):
        try:
            out[dist] = version(dist)
        except PackageNotFoundError:
            out[dist] = "missing"
    return out


def summarise(results: list[RunResult], args: argparse.Namespace) -> list[dict[str, Any]]:
    """One row per router and cell: medians over rounds of req/s and CPU/request, latency
    samples pooled; ratios against each peer and CPU against the better peer."""
    rows = []
    for mode in args.modes:
        for clients in args.clients:
            cell: dict[str, dict[str, Any]] = {}
            for name in args.instances:
                runs = [
                    r
                    for r in results
                    if r.router == name and r.stream == (mode == "stream") and r.clients == clients
                ]
                added = [x for r in runs for x in r.added_s]
                cell[name] = {
                    "mode": mode,
                    "clients": clients,
                    "router": name,
                    "rps": float(np.median([r.rps for r in runs])),
                    "added_p50_ms": pct(added, 50),
                    "added_p99_ms": pct(added, 99),
                    "cpu_ms_per_req": float(np.median([r.cpu_ms_per_req for r in runs])),
                    "errors": sum(r.errors for r in runs),
                    "rounds": len(runs),
                }
            peer_cpu = [cell[p]["cpu_ms_per_req"] for p in PEERS if p in cell]
            best_peer_cpu = min(peer_cpu) if peer_cpu else None
            for row in cell.values():
                for p in PEERS:
                    if p in cell and cell[p]["rps"]:
                        row[f"rps_vs_{p}"] = row["rps"] / cell[p]["rps"]
                if best_peer_cpu:
                    row["cpu_vs_best_peer"] = row["cpu_ms_per_req"] / best_peer_cpu
                rows.append(row)
    return rows


def report(rows: list[dict[str, Any]], args: argparse.Namespace) -> None:
    def f(v: Any, spec: str) -> str:
        return format(v, spec) if isinstance(v, int | float) else "-"

    hdr = (
        f"{'mode':10s} {'clients':>7s} {'router':16s} {'req/s':>8s} {'vs sglr':>7s} {'vs smg':>7s} "
        f"{'add p50':>8s} {'add p99':>8s} {'cpu ms/req':>10s} {'vs best':>7s} {'errors':>6s}"
    )
    print(
        f"\nPD, {args.workers} workers, {args.rounds} round(s) of {args.seconds:g} s; "
        "ratios: voltana / peer (req/s), CPU against the better peer"
    )
    print(hdr)
    for r in rows:
        print(
            f"{r['mode']:10s} {r['clients']:7d} {r['router']:16s} {r['rps']:8.1f} "
            f"{f(r.get('rps_vs_sglang-router'), '7.2f')} {f(r.get('rps_vs_smg'), '7.2f')} "
            f"{r['added_p50_ms']:8.2f} {r['added_p99_ms']:8.2f} {r['cpu_ms_per_req']:10.3f} "
            f"{f(r.get('cpu_vs_best_peer'), '7.2f')} {r['errors']:6d}"
        )
    if not all(p in args.routers for p in PEERS):
        return
    for name, (router, _) in args.instances.items():
        if router in PEERS:
            continue
        mine = [r for r in rows if r["router"] == name]
        if not mine:
            continue
        fast = sum(1 for r in mine if min(r["rps_vs_sglang-router"], r["rps_vs_smg"]) >= 1.0)
        lean = sum(1 for r in mine if r["cpu_vs_best_peer"] <= 1.3)
        print(
            f"goal, {name}: throughput >= 1.0x both peers in {fast}/{len(mine)} cells; "
            f"CPU/request <= 1.3x the better peer in {lean}/{len(mine)} cells"
        )


if __name__ == "__main__":
    sys.exit(main())
