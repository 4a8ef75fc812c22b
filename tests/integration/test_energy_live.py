"""Energy per request, live: emulated PD workers, ``voltana telemetry``, the router, real NATS.

Conservation: the energy in the published RequestRecords plus the router's
unattributed (idle) energy equals the GPU energy the telemetry measured over
the run, within 1%. A client asking for its energy gets the record's figure in
``usage``.
"""

from __future__ import annotations

import asyncio
import json
from collections import defaultdict
from pathlib import Path
from typing import Any

import aiohttp
from helpers import emulated_pd_pair, spawn_voltana, wait_for
from voltana.bus.client import Bus, BusOptions
from voltana.bus.natsserver import NatsServer
from voltana.schemas import subjects
from voltana.schemas.router import RequestRecord
from voltana.schemas.telemetry import GpuTelemetry
from voltana.services.router.config import RouterConfig, WorkerSpec
from voltana.services.router.server import Router


def node_toml(nats_url: str, w: dict[str, Any]) -> str:
    return f"""
node = "emu-node"
[nats]
servers = ["{nats_url}"]
[rates]
gpu_hz = 10.0
engine_hz = 4.0
http_timeout_s = 0.5
[metrics]
port = 0
[[instances]]
name = "pre0"
role = "prefill"
url = "{w["prefill"][0]}"
gpus = [0]
gpu_backend = "emulated"
[[instances]]
name = "dec0"
role = "decode"
url = "{w["decode"]}"
gpus = [1]
gpu_backend = "emulated"
"""


def gauge(r: Router, name: str) -> float:
    return r.metrics.registry.get_sample_value(name) or 0.0


async def one(http: aiohttp.ClientSession, url: str, prompt: int, new: int, stream: bool) -> None:
    body = {
        "input_ids": [7] * prompt,
        "stream": stream,
        "sampling_params": {"max_new_tokens": new, "ignore_eos": True},
    }
    async with http.post(url + "/generate", json=body) as resp:
        assert resp.status == 200, await resp.text()
        await resp.read()


async def test_live_energy_adds_up(nats_server: NatsServer, tmp_path: Path) -> None:
    samples: dict[tuple[str, int], list[GpuTelemetry]] = defaultdict(list)
    records: list[RequestRecord] = []
    bus = await Bus.connect(BusOptions(servers=[nats_server.url]))
    await bus.subscribe(
        subjects.TELEMETRY_GPU_ALL, GpuTelemetry, lambda m, s: samples[(m.node, m.gpu)].append(m)
    )
    await bus.subscribe(subjects.REQUEST_DONE, RequestRecord, lambda m, s: records.append(m))
    with emulated_pd_pair() as w:
        cfg = RouterConfig(
            port=0,
            nats=nats_server.url,
            health_check_interval_s=0,
            energy_wait_s=5.0,
            prefill=[
                WorkerSpec(
                    url=w["prefill"][0], role="prefill", bootstrap_port=w["prefill"][1], name="pre0"
                )
            ],
            decode=[WorkerSpec(url=w["decode"], role="decode", name="dec0")],
        )
        r = await Router(cfg).start()
        try:
            await wait_for(lambda: gauge(r, "voltana_router_nats_connected") == 1, 10)
            toml = tmp_path / "node.toml"
            toml.write_text(node_toml(nats_server.url, w))
            async with aiohttp.ClientSession() as http:
                with spawn_voltana(["telemetry", "--config", str(toml)], tmp_path / "tel.log"):
                    await wait_for(
                        lambda: all(len(samples[k]) >= 3 for k in samples) and len(samples) == 2, 20
                    )
                    # two waves of concurrent requests of different sizes, idle in between
                    for _ in range(2):
                        await asyncio.gather(
                            *(
                                one(http, r.url, 200 * (i + 1), 8 + 4 * i, i % 2 == 0)
                                for i in range(6)
                            )
                        )
                        await asyncio.sleep(0.5)
                    # a client asking for its energy gets it in usage, as in its record
                    body = {
                        "model": "m",
                        "messages": [{"role": "user", "content": "hello " * 200}],
                        "max_tokens": 12,
                    }
                    hdr = {"X-Voltana-Energy": "1", "X-Tenant": "team-a"}
                    async with http.post(
                        r.url + "/v1/chat/completions", json=body, headers=hdr
                    ) as resp:
                        assert resp.status == 200
                        answer = await resp.json()
                    # streamed: an extra chunk with usage before [DONE]
                    body["stream"] = True
                    hdr["X-Tenant"] = "team-s"
                    async with http.post(
                        r.url + "/v1/chat/completions", json=body, headers=hdr
                    ) as resp:
                        assert resp.status == 200
                        events = (await resp.read()).decode().split("\n\n")
                    await wait_for(lambda: len(records) == 14, 15)
                    await asyncio.sleep(0.6)  # more samples after the last request
                # telemetry stopped: the router and this test saw the same samples
                await asyncio.sleep(0.5)
            measured = sum(s[-1].energy_j - s[0].energy_j for s in samples.values())
            assert all(rec.energy_j is not None for rec in records), records
            attributed = sum(rec.energy_j or 0.0 for rec in records)
            unattributed = gauge(r, "voltana_router_energy_unattributed_joules")
            assert gauge(r, "voltana_router_energy_measured_joules") > 0
            assert gauge(r, "voltana_router_energy_dropped_joules") == 0
            assert abs(attributed + unattributed - measured) <= 0.01 * measured, (
                attributed,
                unattributed,
                measured,
            )
            assert attributed > 0.05 * measured  # the requests did take their share
            # the answer's usage carries the same figure as the record on the bus
            usage = answer["usage"]
            rec = next(x for x in records if x.tenant == "team-a")
            assert rec.model == "m" and usage["energy_j"] == rec.energy_j > 0
            assert usage["energy_prefill_j"] > 0 and usage["energy_decode_j"] > 0
            datas = [e.removeprefix("data: ") for e in events if e.startswith("data: ")]
            assert datas[-1] == "[DONE]"
            last = json.loads(datas[-2])
            srec = next(x for x in records if x.tenant == "team-s")
            assert last["choices"] == [] and last["usage"]["energy_j"] == srec.energy_j > 0
            assert srec.stream and srec.output_tokens > 0
            # per-request energy reached Prometheus
            n = gauge(r, "voltana_router_request_energy_joules_count") or sum(
                gauge_labels(r, "voltana_router_request_energy_joules_count")
            )
            assert n == 14
        finally:
            await r.stop()
            await bus.close()


def gauge_labels(r: Router, name: str) -> list[float]:
    out = []
    for metric in r.metrics.registry.collect():
        for s in metric.samples:
            if s.name == name:
                out.append(s.value)
    return out
