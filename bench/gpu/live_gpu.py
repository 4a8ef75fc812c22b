"""The live system on one GPU: NATS, a GPU-backed unified worker, telemetry, freqctl, dry-run actuator.

Usage (on a GPU host; nothing here changes a GPU setting: the actuator is a dry run):

    python bench/gpu/live_gpu.py --trace azure_llm_2023_conv.csv --window 0 150 \\
        --rate-scale 3 --out-dir live/

Starts, as real processes with their logs in ``--out-dir``: ``voltana nats`` (the
JetStream event log), ``voltana emulator --backend torch`` (the GPU-backed worker, role
unified, its decode CUDA graphs captured before serving), ``voltana router
--worker-urls`` (the router in front of it, publishing its state and decisions),
``voltana telemetry`` (real NVML source), ``voltana freqctl`` (deciding) and
``voltana actuator --backend dry-run`` (records what it would apply, applies nothing).
The trace slice is sent through the router in real time as streaming ``/generate``
requests (``input_ids`` of the trace's input length, sharing no prefix the trace does
not share, ``max_new_tokens`` = its output length, ``ignore_eos``; ``--no-router``
sends them straight to the worker). TTFT and ITL are measured per request at the client; GPU energy is NVML's energy counter from
the first request's send to the last token. Then ``voltana replay`` reads the event
log and replays the controller's decisions; the log is exported as JSON lines.

Check it without a GPU: ``--backend torch --device cpu --torch-shape tiny --gpu-source
emulated`` (telemetry and the dry run read the worker's emulated GPU instead of NVML).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "bench"))

from children import Children  # noqa: E402
from crosscheck_live_vs_sim import one  # noqa: E402
from voltana.sim.workload import SimRequest, load_trace, scale_rate, window  # noqa: E402

NODE = "gpunode"
INSTANCE = "gpu0"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Energy:
    """GPU energy in J: NVML's counter, or the emulated GPU's (admin API) in a dry run."""

    def __init__(self, source: str, worker_url: str, gpu: int) -> None:
        self.source, self.url, self.gpu = source, worker_url, gpu
        if source == "nvml":
            import pynvml as nv

            nv.nvmlInit()
            self.nv, self.h = nv, nv.nvmlDeviceGetHandleByIndex(gpu)

    def read(self) -> float:
        if self.source == "nvml":
            return float(self.nv.nvmlDeviceGetTotalEnergyConsumption(self.h)) / 1e3
        with urllib.request.urlopen(self.url + "/voltana/gpus", timeout=5) as r:
            gpus = json.load(r)["gpus"]
        return sum(g["energy_mj"] for g in gpus) / 1e3


async def poll_iterations(
    session: aiohttp.ClientSession, url: str, into: list[dict[str, Any]], stop: asyncio.Event
) -> None:
    """Collect the worker's whole iteration log (its admin API keeps only the last 4096)."""
    after = 0
    while True:
        try:
            async with session.get(f"{url}/voltana/iterations?after={after}") as r:
                new = (await r.json())["iterations"]
        except (aiohttp.ClientError, ValueError, KeyError):
            new = []
        into.extend(new)
        after = max([after, *(it["seq"] for it in new)])
        if stop.is_set():
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), 1.0)


async def drive(front: str, url: str, reqs: list[SimRequest], energy: Energy) -> dict[str, Any]:
    """Send the slice to ``front`` in real time; per-request stamps, the worker's (``url``)
    iterations and the energy over the run."""
    timeout = aiohttp.ClientTimeout(total=1800)
    conn = aiohttp.TCPConnector(limit=0)
    its: list[dict[str, Any]] = []
    stop = asyncio.Event()
    async with aiohttp.ClientSession(timeout=timeout, connector=conn) as session:
        poller = asyncio.create_task(poll_iterations(session, url, its, stop))
        e0, t0 = energy.read(), time.monotonic()
        results = await asyncio.gather(*(one(session, front, r, t0) for r in reqs))
        t_last = max((r["stamps"][-1] for r in results if r.get("stamps")), default=t0)
        e1 = energy.read()
        stop.set()
        await poller
    return {"t0": t0, "t_last": t_last, "energy_j": e1 - e0, "results": results, "its": its}


def summarise(run: dict[str, Any], reqs: list[SimRequest], slo: tuple[float, float]) -> dict:
    res, t0 = run["results"], run["t0"]
    done = [r for r in res if r["ok"] and r["stamps"]]
    ttft = np.array([r["stamps"][0] - r["sent"] for r in done])
    gaps = np.concatenate([np.diff(r["stamps"]) for r in done if len(r["stamps"]) > 1])
    itl_mean = np.array([np.mean(np.diff(r["stamps"])) for r in done if len(r["stamps"]) > 1])
    out_tokens = sum(len(r["stamps"]) for r in done)
    met = (ttft <= slo[0]) & np.array(
        [len(r["stamps"]) < 2 or np.mean(np.diff(r["stamps"])) <= slo[1] for r in done]
    )

    def ms(x: np.ndarray, q: float) -> float | None:
        return round(1e3 * float(np.percentile(x, q)), 3) if x.size else None

    return {
        "requests": len(reqs),
        "completed": len(done),
        "failed": [r.get("error") for r in res if not r["ok"]][:20],
        "output_tokens": out_tokens,
        "input_tokens": sum(q.input_tokens for q in reqs),
        "duration_s": round(run["t_last"] - t0, 3),
        "energy_j": round(run["energy_j"], 3),
        "energy_per_output_token_j": round(run["energy_j"] / max(1, out_tokens), 6),
        "ttft_p50_ms": ms(ttft, 50),
        "ttft_p99_ms": ms(ttft, 99),
        "itl_p50_ms": ms(gaps, 50),
        "itl_p99_ms": ms(gaps, 99),
        "itl_mean_p50_ms": ms(itl_mean, 50),
        "itl_mean_p99_ms": ms(itl_mean, 99),
        "slo_attainment": float(met.mean()) if len(done) else 0.0,
    }


def device_summary(its: list[dict[str, Any]]) -> dict[str, Any]:
    """What the device ran: iterations, busy time, CUDA-graph captures and their share."""
    dev = [it for it in its if "device_device_s" in it or "device_s" in it]
    secs = [float(it.get("device_s", 0.0)) for it in dev]
    cap = [float(it.get("device_s", 0.0)) for it in dev if it.get("device_captured")]
    return {
        "iterations": len(its),
        # prompt tokens the engine computed; fewer than the slice's input tokens means
        # prefix-cache hits (the simulator's workload says what is shared)
        "prefill_tokens": sum(int(it["new_tokens"]) for it in its if it["kind"] != "decode"),
        "device_iterations": len(dev),
        "device_busy_s": round(sum(secs), 3),
        "graph_captures": len(cap),
        "capture_iterations_s": round(sum(cap), 3),
        "clamped": sum(bool(it.get("device_clamped")) for it in dev),
        "decode": sum(it.get("kind") == "decode" for it in its),
        "prefill": sum(it.get("kind") == "prefill" for it in its),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--trace", required=True, help="trace CSV (the bundled conversation trace)")
    ap.add_argument("--window", type=float, nargs=2, default=(0.0, 150.0), metavar=("T0", "SPAN"))
    ap.add_argument("--rate-scale", type=float, default=3.0, help="arrival rate multiplier")
    ap.add_argument("--gpu", default="h200", help="GPU spec of the model and profile")
    ap.add_argument("--gpu-index", type=int, default=0, help="NVML index of the GPU")
    ap.add_argument(
        "--gpu-spec", default=None, help="the worker's GPU constants from this spec file"
    )
    ap.add_argument("--backend", default="torch", choices=["torch", "model"])
    ap.add_argument("--device", default="cuda", help="torch device of the worker")
    ap.add_argument("--torch-shape", default="llama-3.1-8b")
    ap.add_argument("--torch-kv-pool-gib", type=float, default=60.0)
    ap.add_argument("--gpu-source", default="nvml", choices=["nvml", "emulated"])
    ap.add_argument("--policy", default="voltana", help="freqctl policy")
    ap.add_argument("--slo-ttft-s", type=float, default=1.0)
    ap.add_argument("--slo-itl-s", type=float, default=0.05)
    ap.add_argument("--max-running-requests", type=int, default=256)
    ap.add_argument(
        "--torch-warm-decode-kv",
        type=int,
        default=2560,
        help="decode graphs captured before serving up to this KV a sequence (0: on first use)",
    )
    ap.add_argument("--router-policy", default="ecoroute", help="the router's --policy")
    ap.add_argument(
        "--no-router", action="store_true", help="send the slice straight to the worker"
    )
    ap.add_argument("--out-dir", type=Path, required=True)
    args = ap.parse_args(argv)
    # A SIGTERM (e.g. from `timeout`) still stops every child through the finally below.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    out: Path = args.out_dir
    out.mkdir(parents=True, exist_ok=True)
    wl = window(scale_rate(load_trace(args.trace), args.rate_scale), *args.window)
    reqs = list(wl.requests)
    print(f"slice: {len(reqs)} requests over {wl.duration_s:.1f} s", flush=True)

    procs = Children(out, env={"VOLTANA_LOG_FORMAT": "json"}, stop_timeout_s=15.0)
    nats_port, worker_port = free_port(), free_port()
    nats_url, worker_url = f"nats://127.0.0.1:{nats_port}", f"http://127.0.0.1:{worker_port}"
    slo = ["--slo-ttft-s", str(args.slo_ttft_s), "--slo-itl-s", str(args.slo_itl_s)]
    report: dict[str, Any] = {"args": {k: str(v) for k, v in vars(args).items()}}
    try:
        procs.voltana("nats", ["nats", "--port", str(nats_port), "--store-dir", str(out / "js")])
        procs.wait_text("nats", nats_url, 60)
        worker = ["emulator", "--role", "unified", "--gpu", args.gpu, "--port", str(worker_port)]
        worker += ["--backend", args.backend, "--device", args.device, "--seed", "0"]
        worker += [
            "--torch-shape",
            args.torch_shape,
            "--torch-kv-pool-gib",
            str(args.torch_kv_pool_gib),
        ]
        worker += ["--max-running-requests", str(args.max_running_requests)]
        worker += ["--torch-warm-decode-kv", str(args.torch_warm_decode_kv)]
        worker += ["--disaggregation-bootstrap-port", str(free_port())]
        if args.gpu_spec:  # the model's constants (--backend model paces by them)
            worker += ["--gpu-spec", args.gpu_spec]
        procs.voltana("worker", worker)
        t_boot = time.monotonic()
        procs.wait_text("worker", "fired up and ready", 900)
        report["worker_start_s"] = round(time.monotonic() - t_boot, 1)
        front = worker_url
        if not args.no_router:
            router_port = free_port()
            front = f"http://127.0.0.1:{router_port}"
            rt = ["router", "--worker-urls", worker_url, "--policy", args.router_policy]
            rt += ["--gpu", args.gpu, *slo, "--nats", nats_url, "--port", str(router_port)]
            rt += ["--prometheus-port", str(free_port())]
            procs.voltana("router", rt)
            procs.wait_http("router", front + "/health", 60)
        cfg = out / "node.toml"
        cfg.write_text(
            f'node = "{NODE}"\n[metrics]\nport = -1\n[[instances]]\nname = "{INSTANCE}"\n'
            f'role = "unified"\nurl = "{worker_url}"\ngpus = [{args.gpu_index}]\n'
            f'gpu_backend = "{args.gpu_source}"\n'
        )
        procs.voltana("telemetry", ["telemetry", "--config", str(cfg), "--nats", nats_url])
        act = ["actuator", "--node", NODE, "--backend", "dry-run", "--nats", nats_url]
        act += ["--dry-run-source", args.gpu_source, "--metrics-port", str(free_port())]
        if args.gpu_source == "emulated":
            act += ["--emulator-url", worker_url]
        procs.voltana("actuator", act)
        fq = ["freqctl", "--instances", f"{INSTANCE}@{NODE}:{args.gpu_index}", "--gpu", args.gpu]
        fq += [
            "--policy",
            args.policy,
            *slo,
            "--nats",
            nats_url,
            "--metrics-port",
            str(free_port()),
        ]
        procs.voltana("freqctl", fq)
        time.sleep(5.0)  # services connected, first telemetry published
        procs.check_running()
        energy = Energy(
            "nvml" if args.gpu_source == "nvml" else "emulated", worker_url, args.gpu_index
        )
        t_start = time.time()
        run = asyncio.run(drive(front, worker_url, reqs, energy))
        report["wall_start_utc"] = t_start
        report["live"] = summarise(run, reqs, (args.slo_ttft_s, args.slo_itl_s))
        per_req = [
            {
                "arrival_s": q.arrival_s,
                "input": q.input_tokens,
                "output": q.output_tokens,
                "ok": r["ok"],
                "ttft_s": (r["stamps"][0] - r["sent"]) if r.get("stamps") else None,
                "gaps_s": np.diff(r["stamps"]).round(6).tolist() if r.get("stamps") else [],
            }
            for q, r in zip(reqs, run["results"], strict=True)
        ]
        (out / "requests.json").write_text(json.dumps(per_req))
        print(json.dumps(report["live"], indent=1), flush=True)
        its = run["its"]
        (out / "iterations.json").write_text(json.dumps(its))
        report["iterations_logged"] = len(its)
        report["device"] = device_summary(its)
        time.sleep(2.0)
        procs.stop("router", "freqctl", "telemetry", "actuator", "worker")
        replay = [sys.executable, "-m", "voltana", "replay", "--nats", nats_url]
        replay += ["--gpu", args.gpu, "--policy", args.policy, *slo]
        rp = subprocess.run([*replay, "--json"], capture_output=True, text=True, timeout=300)
        (out / "replay.json").write_text(rp.stdout)
        (out / "replay.err").write_text(rp.stderr[-20000:])
        ex = subprocess.run(
            [*replay, "--export", str(out / "events.jsonl")],
            capture_output=True,
            text=True,
            timeout=300,
        )
        report["replay_rc"], report["export_rc"] = rp.returncode, ex.returncode
        try:
            report["replay"] = json.loads(rp.stdout)
        except ValueError:
            report["replay"] = {"error": rp.stderr[-2000:]}
    finally:
        procs.stop()
        (out / "live_report.json").write_text(json.dumps(report, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
