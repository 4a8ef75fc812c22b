"""``voltana up``: the whole system on one machine, on emulated GPUs, with demo traffic."""

from __future__ import annotations

import argparse
import asyncio
from pathlib import Path
from typing import Any


def register(sub: Any) -> None:
    p = sub.add_parser(
        "up",
        help="run a local cluster on emulated GPUs (NATS, workers, telemetry, actuator, freqctl, router)",
        description="Start the whole control plane on this machine against emulated SGLang "
        "workers on emulated GPUs, send demo traffic through the router, and print a status "
        "summary every few seconds. Ctrl-C stops everything.",
    )
    p.add_argument("--prefill", type=int, default=1, help="prefill instances (default 1)")
    p.add_argument("--decode", type=int, default=1, help="decode instances (default 1)")
    p.add_argument(
        "--gpu", default="h100", choices=["h100", "a100"], help="emulated GPU (default h100)"
    )
    p.add_argument("--model", default="llama-3.1-8b", help="model shape (default llama-3.1-8b)")
    p.add_argument("--policy", default="voltana", help="clock controller policy (default voltana)")
    p.add_argument("--prefill-policy", default="ecoroute", help="prefill routing policy")
    p.add_argument("--decode-policy", default="ecoroute", help="decode routing policy")
    p.add_argument(
        "--port", type=int, default=8000, help="router port (default 8000; 0 = any free)"
    )
    p.add_argument(
        "--slo-ttft-s", type=float, default=1.0, help="TTFT SLO in seconds (default 1.0)"
    )
    p.add_argument(
        "--slo-itl-s", type=float, default=0.05, help="ITL SLO in seconds (default 0.05)"
    )
    p.add_argument(
        "--demo-rps", type=float, default=2.0, help="demo request rate (0 = no demo traffic)"
    )
    p.add_argument(
        "--duration-s",
        type=float,
        default=0.0,
        help="stop after this many seconds (0 = until Ctrl-C)",
    )
    p.add_argument(
        "--workdir", default=".voltana/up", help="logs, config and NATS data (default .voltana/up)"
    )
    p.add_argument(
        "--seed", type=int, default=0, help="seed for emulator noise, routing and demo traffic"
    )
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    from voltana.bus.client import Bus
    from voltana.common.logs import get_logger
    from voltana.common.shutdown import shutdown_event
    from voltana.tools.demoload import LoadSpec, StatusView, report_status, run_load
    from voltana.tools.localcluster import ClusterSpec, LocalCluster

    log = get_logger("up")
    spec = ClusterSpec(
        prefill=args.prefill,
        decode=args.decode,
        gpu=args.gpu,
        model=args.model,
        policy=args.policy,
        prefill_policy=args.prefill_policy,
        decode_policy=args.decode_policy,
        router_port=args.port,
        slo_ttft_s=args.slo_ttft_s,
        slo_itl_s=args.slo_itl_s,
        seed=args.seed,
        workdir=Path(args.workdir),
    )

    async def main() -> None:
        stop = shutdown_event()
        cluster = LocalCluster(spec)
        await asyncio.to_thread(cluster.start)
        try:
            log.info(
                "cluster_up",
                router=cluster.router_url,
                nats=cluster.nats_url,
                logs=str(spec.workdir / "logs"),
                instances=[f"{i.name}={i.url}" for i in cluster.instances],
            )
            bus = await Bus.connect(servers=[cluster.nats_url], name="voltana-up")
            view = StatusView()
            await view.attach(bus)
            tasks = [asyncio.create_task(report_status(view, stop))]
            if args.demo_rps > 0:
                load = LoadSpec(rate_rps=args.demo_rps, seed=args.seed)
                tasks.append(asyncio.create_task(run_load(cluster.router_url, load, stop)))
            deadline = asyncio.get_running_loop().time() + args.duration_s
            while not stop.is_set():
                await asyncio.sleep(0.5)
                dead = cluster.check_alive()
                if dead:
                    log.error("process_exited", processes=dead, logs=str(spec.workdir / "logs"))
                    stop.set()
                if args.duration_s and asyncio.get_running_loop().time() >= deadline:
                    stop.set()
            await asyncio.gather(*tasks, return_exceptions=True)
            log.info("final", **view.summary())
            await bus.close()
        finally:
            await asyncio.to_thread(cluster.stop)
            log.info("cluster_down")

    asyncio.run(main())
    return 0
