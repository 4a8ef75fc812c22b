"""Cross-check: one trace slice through the live services and through the simulator.

Live: ``LocalCluster`` (nats-server, emulated SGLang prefill + decode workers,
telemetry, actuator, freqctl, router: real processes, real NATS, real HTTP)
replays the slice in real time through the router, as streaming ``/generate``
requests with ``input_ids`` of the trace's input length (shared between prompts
only where the trace says so: ``prompt_token_ids``) and ``max_new_tokens``
= its output length (``ignore_eos``). TTFT is measured at the client from the
request's send time to its first token, ITL from the token gaps; energy is the
sum over every GPU of its energy-counter delta (emulator admin API) from the
first request's arrival to the last token.

Sim: :func:`voltana.sim.crosscheck.sim_figures` on the same slice, cluster,
SLO, policy and controller cadence. Prints both and the differences, and
writes them as JSON.

    python bench/crosscheck_live_vs_sim.py --window 0 60 --out bench/results/crosscheck_live_vs_sim.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
from voltana.sim.crosscheck import compare, sim_figures
from voltana.sim.workload import SimRequest, load_trace, prompt_token_ids, scale_rate, window
from voltana.tools.localcluster import LocalCluster, LocalClusterSpec

DEFAULT_TRACE = Path(__file__).resolve().parents[1] / "sim" / "data" / "azure_llm_2023_conv.csv.gz"


async def gpu_energy_j(session: aiohttp.ClientSession, urls: list[str]) -> float:
    total = 0.0
    for url in urls:
        async with session.get(url + "/voltana/gpus") as resp:
            for g in (await resp.json())["gpus"]:
                total += g["energy_mj"] / 1000.0
    return total


async def one(
    session: aiohttp.ClientSession, router: str, req: SimRequest, t0: float
) -> dict[str, Any]:
    body = {
        # ids that share only what the trace says they share: the engines' prefix
        # caches would otherwise serve most prefills from cache, the simulator none
        "input_ids": prompt_token_ids(req),
        "sampling_params": {"max_new_tokens": req.output_tokens, "ignore_eos": True},
        "stream": True,
    }
    await asyncio.sleep(max(0.0, t0 + req.arrival_s - time.monotonic()))
    sent = time.monotonic()
    stamps: list[float] = []
    last_count = 0
    async with session.post(router + "/generate", json=body) as resp:
        if resp.status != 200:
            return {"ok": False, "error": f"HTTP {resp.status}"}
        async for line in resp.content:
            if not line.startswith(b"data: {"):
                continue
            chunk = json.loads(line[6:])
            if "error" in chunk:
                return {"ok": False, "error": str(chunk["error"])}
            count = int(chunk["meta_info"].get("completion_tokens", 0))
            now = time.monotonic()
            stamps.extend([now] * max(0, count - last_count))
            last_count = count
    return {"ok": True, "sent": sent, "stamps": stamps}


async def run_live(
    cluster: LocalCluster, reqs: list[SimRequest], slo_ttft: float, slo_itl: float
) -> dict[str, Any]:
    urls = [i.url for i in cluster.instances]
    timeout = aiohttp.ClientTimeout(total=600)
    async with aiohttp.ClientSession(
        timeout=timeout, connector=aiohttp.TCPConnector(limit=0)
    ) as session:
        await asyncio.sleep(1.0)  # controllers settle (idle instances parked)
        e0 = await gpu_energy_j(session, urls)
        t0 = time.monotonic()
        results = await asyncio.gather(*(one(session, cluster.router_url, r, t0) for r in reqs))
        e1 = await gpu_energy_j(session, urls)
    done = [r for r in results if r["ok"] and r["stamps"]]
    ttft = np.array([r["stamps"][0] - r["sent"] for r in done])
    itl_mean = np.array(
        [np.mean(np.diff(r["stamps"])) if len(r["stamps"]) > 1 else 0.0 for r in done]
    )
    gaps = np.concatenate(
        [np.diff(r["stamps"]) for r in done if len(r["stamps"]) > 1] or [np.zeros(0)]
    )
    out_tokens = sum(len(r["stamps"]) for r in done)
    met = (ttft <= slo_ttft) & (itl_mean <= slo_itl)
    return {
        "requests": len(reqs),
        "completed": len(done),
        "energy_j": round(e1 - e0, 3),
        "energy_per_output_token_j": round((e1 - e0) / max(1, out_tokens), 6),
        "slo_attainment": float(met.mean()) if len(done) else 0.0,
        "ttft_attainment": float((ttft <= slo_ttft).mean()) if len(done) else 0.0,
        "itl_attainment": float((itl_mean <= slo_itl).mean()) if len(done) else 0.0,
        "itl_token_attainment": float((gaps <= slo_itl).mean()) if len(gaps) else None,
        "ttft_p50_ms": round(1000 * float(np.median(ttft)), 2) if len(done) else None,
        "ttft_p99_ms": round(1000 * float(np.percentile(ttft, 99)), 2) if len(done) else None,
        "duration_s": round(max((r["stamps"][-1] for r in done), default=t0) - t0, 3),
    }


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--trace", default=str(DEFAULT_TRACE))
    ap.add_argument(
        "--window", type=float, nargs=2, default=(0.0, 60.0), metavar=("START_S", "DURATION_S")
    )
    ap.add_argument("--rate-scale", type=float, default=1.0)
    ap.add_argument("--policy", default="voltana")
    ap.add_argument("--slo-ttft-s", type=float, default=0.5)
    ap.add_argument("--slo-itl-s", type=float, default=0.025)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    if not Path(args.trace).is_file():
        print(
            f"trace not found: {args.trace} (the shared data folder sits beside the checkout)",
            file=sys.stderr,
        )
        return 2
    wl = window(scale_rate(load_trace(args.trace), args.rate_scale), args.window[0], args.window[1])
    reqs = list(wl.requests)
    print(f"slice: {len(reqs)} requests over {wl.duration_s:.1f} s ({wl.rate_rps:.2f} req/s)")

    sim = sim_figures(
        wl,
        policy=args.policy,
        slo_ttft_s=args.slo_ttft_s,
        slo_itl_s=args.slo_itl_s,
        cluster="1p1d",
        noise=0.0,
        control="telemetry",
        telemetry_period_s=0.25,
    )
    with tempfile.TemporaryDirectory() as tmp:
        spec = LocalClusterSpec(
            router_port=0,
            workdir=Path(tmp),
            noise=0.0,
            policy=args.policy,
            slo_ttft_s=args.slo_ttft_s,
            slo_itl_s=args.slo_itl_s,
        )
        with LocalCluster(spec) as cluster:
            live = asyncio.run(run_live(cluster, reqs, args.slo_ttft_s, args.slo_itl_s))
    rows = compare(sim, live)
    print(f"{'figure':28s} {'sim':>12s} {'live':>12s} {'diff':>8s}  within 5%")
    for r in rows:
        print(
            f"{r['figure']:28s} {r['sim']!s:>12.10s} {r['live']!s:>12.10s} {r['diff']!s:>8s}  {r['ok']}"
        )
    if args.out:
        Path(args.out).write_text(json.dumps({"sim": sim, "live": live, "compare": rows}, indent=1))
        print(f"written to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
