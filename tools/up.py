"""``voltana up``: the whole system on one machine, on emulated GPUs, with demo traffic."""

from __future__ import annotations

import argparse
import asyncio
from pathlib import Path
from typing import Any

from voltana.bus.client import Bus
from voltana.common.logs import get_logger
from voltana.groundtruth.gpu_specs import GPUS, MODELS
from voltana.services.runner import run_service
from voltana.tools.demoload import LoadSpec, StatusView, report_status, run_load
from voltana.tools.localcluster import LocalCluster, LocalClusterSpec

log = get_logger("up")


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
        "--unified",
        type=int,
        default=0,
        help="colocated (unified) instances instead of prefill/decode ones (default 0: PD)",
    )
    p.add_argument("--gpu", default="h100", choices=list(GPUS), help="emulated GPU (default h100)")
    p.add_argument(
        "--model",
        default="llama-3.1-8b",
        choices=list(MODELS),
        help="model shape (default llama-3.1-8b)",
    )
    p.add_argument("--policy", default="voltana", help="clock controller policy (default voltana)")
    p.add_argument("--prefill-policy", default="ecoroute", help="prefill routing policy")
    p.add_argument("--decode-policy", default="ecoroute", help="decode routing policy")
    p.add_argument(
        "--port", type=int, default=8000, help="router port (default 8000; 0 = any free)"
    )
    p.add_argument(
        "--nats-port",
        type=int,
        default=4222,
        help="NATS client port (default 4222, where `voltana tail` and `voltana replay` look "
        "without --nats; 0 = any free)",
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


class LocalUp:
    """``voltana up`` as a service: the local cluster, demo traffic and a status line.

    Ends by itself when a child process exits or after ``duration_s`` (0: never).
    """

    def __init__(
        self, spec: LocalClusterSpec, load: LoadSpec | None, *, duration_s: float = 0.0
    ) -> None:
        self.spec = spec
        self.load = load
        self.duration_s = duration_s
        self.cluster = LocalCluster(spec)
        self.view = StatusView()
        self._bus: Bus | None = None
        self._quit = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._deadline = 0.0

    async def start(self) -> None:
        cluster = self.cluster
        await asyncio.to_thread(cluster.start)
        log.info(
            "cluster_up",
            router=cluster.router_url,
            nats=cluster.nats_url,
            logs=str(self.spec.workdir / "logs"),
            instances=[f"{i.name}={i.url}" for i in cluster.instances],
        )
        print(how_to_watch(cluster.router_url, cluster.nats_url, self.spec), flush=True)
        self._bus = await Bus.connect(servers=[cluster.nats_url], name="voltana-up")
        await self.view.attach(self._bus)
        self._tasks.append(asyncio.create_task(report_status(self.view, self._quit)))
        if self.load is not None:
            load = run_load(cluster.router_url, self.load, self._quit)
            self._tasks.append(asyncio.create_task(load))
        self._deadline = asyncio.get_running_loop().time() + self.duration_s

    async def done(self) -> None:
        """Return when a child process exited or the duration is over."""
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(0.5)
            dead = self.cluster.check_alive()
            if dead:
                log.error("process_exited", processes=dead, logs=str(self.spec.workdir / "logs"))
                return
            if self.duration_s and loop.time() >= self._deadline:
                return

    async def stop(self) -> None:
        """Let the demo requests finish, print the summary, stop every child."""
        self._quit.set()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._bus is not None:
            log.info("final", **self.view.summary())
            await self._bus.close()
        await asyncio.to_thread(self.cluster.stop)
        log.info("cluster_down")


def how_to_watch(router_url: str, nats_url: str, spec: LocalClusterSpec) -> str:
    """The lines a user needs next: where to send requests, and how to watch and replay."""
    nats = "" if nats_url.endswith("://127.0.0.1:4222") else f" --nats {nats_url}"
    slo = f" --policy {spec.policy} --slo-ttft-s {spec.slo_ttft_s} --slo-itl-s {spec.slo_itl_s}"
    return "\n".join(
        [
            f"router:  {router_url}  (SGLang /generate and the OpenAI API)",
            f"NATS:    {nats_url}",
            f"watch:   voltana tail{nats} 'voltana.>'",
            f"replay:  voltana replay{nats}{slo}",
        ]
    )


def _run(args: argparse.Namespace) -> int:
    spec = LocalClusterSpec(
        prefill=0 if args.unified else args.prefill,
        decode=0 if args.unified else args.decode,
        unified=args.unified,
        gpu=args.gpu,
        model=args.model,
        policy=args.policy,
        prefill_policy=args.prefill_policy,
        decode_policy=args.decode_policy,
        router_port=args.port,
        nats_port=args.nats_port,
        slo_ttft_s=args.slo_ttft_s,
        slo_itl_s=args.slo_itl_s,
        seed=args.seed,
        workdir=Path(args.workdir),
    )
    load = LoadSpec(rate_rps=args.demo_rps, seed=args.seed) if args.demo_rps > 0 else None
    return run_service(lambda: LocalUp(spec, load, duration_s=args.duration_s), name="up", log=log)
