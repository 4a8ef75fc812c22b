"""CPU cost of one telemetry process publishing many emulated GPUs at 20 Hz.

    .venv/bin/python bench/telemetry_cpu.py --gpus 64 --hz 20 --seconds 20
    .venv/bin/python bench/telemetry_cpu.py --emulators 4 --per-source 2   # 8 GPUs over HTTP

What runs: a real nats-server (its own process), one *telemetry process* (a
child running ``TelemetryService`` with its loops, message building, msgpack
encoding and NATS publishing exactly as in production) and one subscriber
process that counts what arrives. The telemetry process reads its GPUs from an
in-process source wrapping the emulator's ``EmulatedGpu`` devices (kept busy
with modelled decode iterations), so 64 GPUs need no 64 HTTP servers; the
per-GPU read is cheaper than an NVML or HTTP read, which the figure excludes
(``bench/gpu/nvml_sample.py`` reports NVML's per-read cost on a real GPU).
CPU is the telemetry process's user+system time (all its threads) over the
steady window, divided by wall time: 1.0 = one core.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import multiprocessing as mp
import resource
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any


@contextlib.contextmanager
def _emulator(k: int, tp: int) -> Iterator[str]:
    """One `voltana emulator` subprocess (GPUs k*tp..), stopped by PID afterwards."""
    from voltana.common.ports import free_port

    port = free_port()
    gpu_ids = ",".join(str(k * tp + i) for i in range(tp))
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "voltana",
            "emulator",
            "--port",
            str(port),
            "--tp",
            str(tp),
            "--gpu-ids",
            gpu_ids,
            "--disaggregation-bootstrap-port",
            str(free_port()),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        assert proc.stdout is not None
        deadline = time.monotonic() + 60
        for line in proc.stdout:
            if b"fired up and ready" in line or time.monotonic() > deadline:
                break
        threading.Thread(target=proc.stdout.read, daemon=True).start()  # keep the pipe drained
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()


def _cpu_s() -> float:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


class InProcessEmulatedSource:
    """A GPU reader over emulator ``EmulatedGpu`` objects, driven with decode iterations."""

    name = "emulated"

    def __init__(self, indices: list[int], seed: int = 0) -> None:
        from voltana.gpu.energy import EnergyCounter
        from voltana.groundtruth.gpu_model import GPUS, MODELS, GpuModel
        from voltana.services.emulator.gpu_device import EmulatedGpu

        model = GpuModel(GPUS["h100"], MODELS["llama-3.1-8b"], seed=seed)
        now = time.monotonic()
        self._gpus = [EmulatedGpu(i, model, now) for i in indices]
        self._costs = [
            model.decode(model.max_clock_mhz, 16 + 8 * (k % 8), 16_000 + 4000 * k)
            for k in range(len(indices))
        ]
        self._busy_until = [now] * len(indices)
        self._energy = [EnergyCounter() for _ in indices]
        self._indices = tuple(indices)

    @property
    def indices(self) -> tuple[int, ...]:
        return self._indices

    def sample(self) -> list[Any]:
        from voltana.gpu.device import GpuSample

        t_ns, mono_ns = time.time_ns(), time.monotonic_ns()
        now = mono_ns / 1e9
        out = []
        for k, g in enumerate(self._gpus):
            if now >= self._busy_until[k]:
                g.end_busy(now)
                g.begin_busy(now, self._costs[k])
                self._busy_until[k] = now + self._costs[k].time_s
            out.append(
                GpuSample(
                    index=g.index,
                    t_ns=t_ns,
                    mono_ns=mono_ns,
                    power_w=g.power_w(now),
                    energy_j=self._energy[k].update(g.energy_mj(now)),
                    sm_clock_mhz=g.sm_clock_mhz(),
                    source="emulated",
                    name=g.model.gpu.name,
                    locked_clock_mhz=g.locked_max_mhz,
                    mem_clock_mhz=g.model.gpu.mem_clock_mhz,
                    max_sm_clock_mhz=g.model.max_clock_mhz,
                    power_limit_w=g.model.gpu.power_limit_w,
                    throttle_reasons=g.throttle_reasons(),
                    util_gpu_pct=g.util_gpu_pct(now),
                    mem_used_mib=g.mem_used_mib,
                    temperature_c=40.0,
                )
            )
        return out

    def close(self) -> None:
        pass


def _telemetry_process(args: dict[str, Any], out: Any) -> None:
    from voltana.bus.client import Bus, BusOptions
    from voltana.services.telemetry.config import parse_config
    from voltana.services.telemetry.service import TelemetryService

    n, per = args["gpus"], args["per_source"]
    urls: list[str] = args["emulator_urls"]
    if urls:  # real emulators over HTTP, engines scraped too
        inst = "\n".join(
            f'[[instances]]\nname = "i{k}"\nrole = "decode"\nurl = "{u}"\n'
            f"gpus = {list(range(k * per, (k + 1) * per))}\n"
            'gpu_backend = "emulated"\n'
            for k, u in enumerate(urls)
        )
    else:
        inst = "\n".join(
            f'[[instances]]\nname = "i{k}"\nrole = "decode"\nurl = "http://127.0.0.1:9"\n'
            f"gpus = {list(range(k * per, min(n, (k + 1) * per)))}\n"
            'gpu_backend = "emulated"\nengine = false\n'
            for k in range((n + per - 1) // per)
        )
    cfg = parse_config(
        f'node = "bench"\n[rates]\ngpu_hz = {args["hz"]}\n[metrics]\nport = -1\n{inst}'
    )
    sources: dict[str, Any] | None = None
    if not urls:
        sources = {
            i.name: InProcessEmulatedSource(list(i.gpus), seed=k)
            for k, i in enumerate(cfg.instances)
        }

    async def main() -> dict[str, Any]:
        bus = await Bus.connect(BusOptions(servers=[args["nats_url"]]))
        async with TelemetryService(cfg, bus, sources=sources) as service:
            await asyncio.sleep(args["warmup"])
            c0, w0, p0 = _cpu_s(), time.monotonic(), dict(service.published)
            await asyncio.sleep(args["seconds"])
            c1, w1, p1 = _cpu_s(), time.monotonic(), dict(service.published)
        await bus.close()
        return {
            "cpu_s": c1 - c0,
            "wall_s": w1 - w0,
            "published": p1["gpu"] - p0["gpu"],
            "engine_published": p1["engine"] - p0["engine"],
        }

    out.put(asyncio.run(main()))


def _subscriber_process(nats_url: str, ready: Any, stop: Any, out: Any) -> None:
    from voltana.bus.client import Bus, BusOptions
    from voltana.schemas import subjects
    from voltana.schemas.telemetry import GpuTelemetry

    async def main() -> dict[str, Any]:
        bus = await Bus.connect(BusOptions(servers=[nats_url]))
        count = 0
        gpus: set[int] = set()

        def on(msg: GpuTelemetry, _: str) -> None:
            nonlocal count
            count += 1
            gpus.add(msg.gpu)

        await bus.subscribe(subjects.TELEMETRY_GPU_ALL, GpuTelemetry, on)
        await bus.nc.flush()
        ready.set()
        while not stop.is_set():
            await asyncio.sleep(0.05)
        await bus.close()
        return {
            "received": count,
            "gpus_seen": len(gpus),
            "decode_errors": bus.decode_error_total(),
        }

    out.put(asyncio.run(main()))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--gpus", type=int, default=64)
    ap.add_argument(
        "--per-source", type=int, default=8, help="GPUs per instance/source (default 8)"
    )
    ap.add_argument("--hz", type=float, default=20.0)
    ap.add_argument("--seconds", type=float, default=20.0, help="measured window")
    ap.add_argument("--warmup", type=float, default=3.0)
    ap.add_argument("--json", default=None, help="also write the result to this file")
    ap.add_argument(
        "--emulators",
        type=int,
        default=0,
        help="instead of in-process GPUs: start N `voltana emulator` servers with "
        "--per-source GPUs each and read them over HTTP (engines scraped at 4 Hz too)",
    )
    args = ap.parse_args(argv)
    if args.emulators:
        args.gpus = args.emulators * args.per_source

    from voltana.bus.natsserver import NatsServer

    ctx = mp.get_context("spawn")
    with NatsServer() as server, contextlib.ExitStack() as stack:
        urls = [stack.enter_context(_emulator(k, args.per_source)) for k in range(args.emulators)]
        sub_out, tel_out = ctx.Queue(), ctx.Queue()
        ready, stop = ctx.Event(), ctx.Event()
        sub = ctx.Process(target=_subscriber_process, args=(server.url, ready, stop, sub_out))
        sub.start()
        ready.wait(20)
        params = {**vars(args), "nats_url": server.url, "emulator_urls": urls}
        tel = ctx.Process(target=_telemetry_process, args=(params, tel_out))
        tel.start()
        try:
            res = tel_out.get(timeout=args.warmup + args.seconds + 60)
            tel.join(10)
            time.sleep(0.3)
            stop.set()
            sub_res = sub_out.get(timeout=20)
            sub.join(10)
        finally:
            for p in (tel, sub):
                if p.is_alive():
                    p.terminate()
                    p.join(5)
    cpu_frac = res["cpu_s"] / res["wall_s"]
    rate = res["published"] / res["wall_s"]
    result = {
        "gpus": args.gpus,
        "per_source": args.per_source,
        "hz": args.hz,
        "window_s": round(res["wall_s"], 2),
        "cpu_fraction_of_one_core": round(cpu_frac, 4),
        "target": 0.30,
        "messages_per_s": round(rate, 1),
        "source": f"{args.emulators} emulator(s) over HTTP" if args.emulators else "in-process",
        "engine_messages_per_s": round(res["engine_published"] / res["wall_s"], 1),
        "expected_messages_per_s": args.gpus * args.hz,
        "subscriber": sub_res,
        "python": sys.version.split()[0],
    }
    print(json.dumps(result, indent=1))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)
    return 0 if cpu_frac < 0.30 else 1


if __name__ == "__main__":
    sys.exit(main())
