"""Benchmark: what sharing in-flight accounting costs per request (``--processes N``).

Times one request's bookkeeping (dispatch, then end) and one policy view of one
worker, for the single-process counters (``InstanceLoad``) and the shared ones
(``SharedInstanceLoad`` over a memfd block of P processes x W workers); then one
counter increment and one histogram observation of prometheus-client in its
default mode and in the multiprocess mode the router processes use (each in a
fresh interpreter: the mode is chosen at import).

Usage:
    .venv/bin/python bench/router_shared_load.py [--processes 2] [--workers 3] [--n 200000]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time

from voltana.services.router.accounting import InstanceLoad
from voltana.services.router.shared_load import LoadBlock, SharedInstanceLoad


def metrics_main(n: int) -> None:
    from prometheus_client import CollectorRegistry, Counter, Histogram

    r = CollectorRegistry()
    c = Counter("c", "c", ["a"], registry=r).labels("x")
    h = Histogram("h", "h", registry=r, buckets=(0.01, 0.1, 1))
    t0 = time.perf_counter()
    for _ in range(n):
        c.inc()
    inc = (time.perf_counter() - t0) / n
    t0 = time.perf_counter()
    for _ in range(n):
        h.observe(0.05)
    obs = (time.perf_counter() - t0) / n
    mode = "multiprocess" if os.environ.get("PROMETHEUS_MULTIPROC_DIR") else "default"
    print(f"prometheus {mode:12s} counter.inc {inc * 1e6:5.2f} us   observe {obs * 1e6:5.2f} us")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--processes", type=int, default=2, help="rows of the shared block")
    ap.add_argument("--workers", type=int, default=3, help="columns of the shared block")
    ap.add_argument("--n", type=int, default=200_000, help="iterations per figure")
    ap.add_argument("--metrics-only", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.metrics_only:
        metrics_main(args.n)
        return 0
    fd = os.memfd_create("bench-load")
    os.ftruncate(fd, LoadBlock.size(args.processes, args.workers))
    block = LoadBlock(fd, args.processes, args.workers)
    block.clear()
    loads = {"InstanceLoad": InstanceLoad(), "SharedInstanceLoad": SharedInstanceLoad(block, 0, 1)}
    n = args.n
    for name, load in loads.items():
        t0 = time.perf_counter()
        for _ in range(n):
            load.decode_dispatched("r", 128, 32, 1.0)
            load.decode_done("r", 128, 32)
        book = (time.perf_counter() - t0) / n
        t0 = time.perf_counter()
        for _ in range(n):
            load.view("w", "decode", 2.0, url="http://w", healthy=True)
        view = (time.perf_counter() - t0) / n
        print(f"{name:18s} dispatch+end {book * 1e6:5.2f} us   view {view * 1e6:5.2f} us")
    block.close()
    os.close(fd)
    me = [sys.executable, __file__, "--metrics-only", "--n", str(n)]
    with tempfile.TemporaryDirectory() as d:
        for env in ({}, {"PROMETHEUS_MULTIPROC_DIR": d}):
            subprocess.run(me, env={**os.environ, **env}, check=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
