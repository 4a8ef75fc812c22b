"""The telemetry service over real HTTP and a real nats-server.

Two SGLang-shaped HTTP servers (one answering like 0.5.23, one like 0.4.7,
their text built from the SGLang interface notes), a port nobody listens on,
and a server that hangs: version detection, values, sequence numbers, an
unhealthy instance that does not stall the others, and the service's own
Prometheus endpoint.
"""

from __future__ import annotations

import asyncio
import itertools
from collections import defaultdict
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from helpers import free_port, serve_app, wait_for
from voltana.bus.client import Bus, BusOptions
from voltana.schemas import subjects
from voltana.schemas.telemetry import InstanceTelemetry
from voltana.services.telemetry.config import parse_config
from voltana.services.telemetry.service import TelemetryService

LAB_0523 = 'engine_type="decode",model_name="m",pp_rank="0",tp_rank="0"'
LAB_047 = 'model_name="m"'
ITL_BOUNDS = (0.01, 0.02, 0.04, 0.08)


def metrics_text(
    labels: str, running: int, queue: int, itl_name: str, itl_counts: list[int]
) -> str:
    lines = [
        "# TYPE sglang:num_running_reqs gauge",
        f"sglang:num_running_reqs{{{labels}}} {running}",
        "# TYPE sglang:num_queue_reqs gauge",
        f"sglang:num_queue_reqs{{{labels}}} {queue}",
        "# TYPE sglang:gen_throughput gauge",
        f"sglang:gen_throughput{{{labels}}} 123.0",
        "# TYPE sglang:generation_tokens_total counter",
        f"sglang:generation_tokens_total{{{labels}}} 999.0",
        f"# TYPE sglang:{itl_name} histogram",
    ]
    cum = 0
    for b, n in zip(ITL_BOUNDS, itl_counts, strict=False):
        cum += n
        lines.append(f'sglang:{itl_name}_bucket{{{labels},le="{b}"}} {cum}')
    lines.append(f'sglang:{itl_name}_bucket{{{labels},le="+Inf"}} {cum}')
    lines.append(f"sglang:{itl_name}_sum{{{labels}}} {cum * 0.015}")
    lines.append(f"sglang:{itl_name}_count{{{labels}}} {cum}")
    return "\n".join(lines) + "\n"


class FakeSglang:
    """State of one SGLang-shaped server; ``itl`` grows on every scrape (10 obs in 0.01-0.02 s)."""

    def __init__(self, version: str) -> None:
        self.version = version
        self.running, self.queue = 3, 2
        self.itl_obs = 0
        self.hang = False
        self.release = asyncio.Event()

    def app(self) -> web.Application:
        app = web.Application()

        async def metrics(_: web.Request) -> web.Response:
            if self.hang:
                await self.release.wait()
            self.itl_obs += 10
            labels, itl_name = (
                (LAB_0523, "inter_token_latency_seconds")
                if self.version == "0.5.23"
                else (LAB_047, "time_per_output_token_seconds")
            )
            text = metrics_text(labels, self.running, self.queue, itl_name, [0, self.itl_obs])
            return web.Response(text=text)

        async def v1_loads(_: web.Request) -> web.Response:
            return web.json_response(
                {
                    "loads": [
                        {
                            "dp_rank": 0,
                            "num_running_reqs": self.running,
                            "num_waiting_reqs": self.queue,
                            "num_used_tokens": 4096,
                            "max_total_num_tokens": 65536,
                            "token_usage": 0.0625,
                            "disaggregation": {"mode": "decode", "decode_transfer_queue_reqs": 1},
                        }
                    ]
                }
            )

        async def get_load(_: web.Request) -> web.Response:
            return web.json_response({"load": self.running + self.queue})

        app.router.add_get("/metrics", metrics)
        if self.version == "0.5.23":
            app.router.add_get("/v1/loads", v1_loads)
        else:
            app.router.add_get("/get_load", get_load)
        return app


@pytest.fixture
async def servers() -> AsyncIterator[dict[str, Any]]:
    new, old, hung = FakeSglang("0.5.23"), FakeSglang("0.4.7"), FakeSglang("0.5.23")
    hung.hang = True
    runners = []
    urls = {}
    try:
        for name, fake in (("new", new), ("old", old), ("hung", hung)):
            runner, url = await serve_app(fake.app())
            runners.append(runner)
            urls[name] = url
        yield {"fakes": {"new": new, "old": old, "hung": hung}, "urls": urls}
    finally:
        hung.release.set()
        for r in runners:
            await r.cleanup()


def config_text(nats_url: str, urls: dict[str, str], dead_url: str, metrics_port: int) -> str:
    return f"""
node = "node-1"
[nats]
servers = ["{nats_url}"]
[rates]
engine_hz = 20.0
latency_window_s = 0.5
http_timeout_s = 0.3
[metrics]
port = {metrics_port}
[[instances]]
name = "d-new"
role = "decode"
url = "{urls["new"]}"
gpu_backend = "none"
[[instances]]
name = "p-old"
role = "prefill"
url = "{urls["old"]}"
gpu_backend = "none"
[[instances]]
name = "d-dead"
role = "decode"
url = "{dead_url}"
gpu_backend = "none"
[[instances]]
name = "d-hung"
role = "decode"
url = "{urls["hung"]}"
gpu_backend = "none"
"""


async def test_engine_telemetry_end_to_end(nats_server: Any, servers: dict[str, Any]) -> None:
    cfg = parse_config(
        config_text(nats_server.url, servers["urls"], f"http://127.0.0.1:{free_port()}", 0)
    )
    got: dict[str, list[InstanceTelemetry]] = defaultdict(list)
    sub_bus = await Bus.connect(BusOptions(servers=[nats_server.url]))
    pub_bus = await Bus.connect(cfg.nats)
    await sub_bus.subscribe(
        subjects.TELEMETRY_ENGINE_ALL, InstanceTelemetry, lambda m, s: got[m.instance].append(m)
    )
    service = TelemetryService(cfg, pub_bus)
    await service.start()
    try:
        await wait_for(
            lambda: all(len(got[n]) >= 3 for n in ("d-new", "p-old", "d-dead", "d-hung")), 10.0
        )
        servers["fakes"]["new"].running, servers["fakes"]["new"].queue = 7, 5
        await wait_for(lambda: got["d-new"][-1].num_running_reqs == 7, 5.0)
        n_new, n_hung = len(got["d-new"]), len(got["d-hung"])
        await asyncio.sleep(1.0)
        # the hung instance costs a 0.3 s timeout per scrape; the others keep their 20 Hz
        assert len(got["d-new"]) - n_new >= 10
        assert len(got["d-hung"]) - n_hung <= 5

        url = f"http://127.0.0.1:{service.metrics_port}/metrics"
        async with aiohttp.ClientSession() as http, http.get(url) as resp:
            prom = await resp.text()
    finally:
        await asyncio.wait_for(service.stop(), 5.0)
        await pub_bus.close()
        await sub_bus.close()

    new = got["d-new"][-1]
    assert new.healthy and new.engine_version == "0.5.23" and new.role == "decode"
    assert (new.num_running_reqs, new.num_queue_reqs) == (7, 5)
    assert new.kv_used_tokens == 4096 and new.kv_capacity_tokens == 65536
    assert new.num_transfer_queue_reqs == 1 and new.gen_throughput_tps == 123.0
    assert new.itl is not None and new.itl.count > 0 and new.itl.p50_s is not None
    assert 0.01 <= new.itl.p50_s <= 0.02 and new.node == "node-1"

    old = got["p-old"][-1]
    assert old.healthy and old.engine_version == "0.4.7"
    assert (old.num_running_reqs, old.num_queue_reqs) == (3, 2)  # from the gauges
    assert old.itl is not None and old.itl.count > 0  # found under the older ITL name

    for name in ("d-dead", "d-hung"):
        msgs = got[name]
        assert all(not m.healthy and m.error for m in msgs), name
    assert "no answer in time" in (got["d-hung"][-1].error or "")

    for name, msgs in got.items():
        seqs = [m.seq for m in msgs]
        assert seqs == list(range(seqs[0], seqs[0] + len(seqs))), name  # no gaps, in order
        assert all(b.t_ns >= a.t_ns for a, b in itertools.pairwise(msgs)), name

    assert 'voltana_telemetry_messages_published_total{kind="engine"}' in prom
    assert 'voltana_telemetry_errors_total{kind="engine",source="d-dead"}' in prom
    assert "voltana_telemetry_sampling_lag_seconds_bucket" in prom
    assert 'voltana_telemetry_instance_healthy{instance="d-new"} 1.0' in prom
    assert 'voltana_telemetry_instance_healthy{instance="d-dead"} 0.0' in prom
