"""``voltana report``: energy per request from the JetStream event log and from results.json."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

from helpers import voltana_argv
from voltana.bus.client import Bus
from voltana.bus.natsserver import NatsServer
from voltana.schemas import codec, subjects
from voltana.schemas.config import SloConfig
from voltana.schemas.router import RequestRecord
from voltana.sim.config import ClusterSpec, SimConfig
from voltana.sim.policies import POLICIES
from voltana.sim.report import write_results
from voltana.sim.runner import evaluate
from voltana.sim.workload import synthetic


def rec(
    i: int, tenant: str | None, model: str, inp: int, out: int, e: float | None
) -> RequestRecord:
    return RequestRecord(
        t_ns=time.time_ns(),
        request_id=f"r{i}",
        prefill="p",
        decode="d",
        status="ok",
        arrival_t_ns=time.time_ns(),
        input_tokens=inp,
        output_tokens=out,
        energy_j=e,
        energy_prefill_j=None if e is None else e / 4,
        energy_decode_j=None if e is None else 3 * e / 4,
        energy_idle_j=None if e is None else 0.0,
        model=model,
        tenant=tenant,
    )


def run_report(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        voltana_argv("report", *args), capture_output=True, text=True, timeout=60, check=False
    )


async def test_report_over_the_event_log(nats_server: NatsServer, tmp_path: Path) -> None:
    # no stream yet: one clear line, no traceback
    res = run_report("--nats", nats_server.url, "--wait-s", "1")
    assert res.returncode != 0
    assert "no VOLTANA event stream on the server" in res.stderr, res.stderr
    assert "Traceback" not in res.stderr
    bus = await Bus.connect(servers=[nats_server.url])
    try:
        await bus.ensure_event_stream()
        recs = [
            rec(0, "team-a", "llama", 500, 100, 10.0),
            rec(1, "team-a", "llama", 2000, 400, 50.0),
            rec(2, None, "qwen", 300, 50, 4.0),
            rec(3, "team-b", "qwen", 300, 50, None),  # went out without energy
        ]
        for r in recs:
            await bus.js.publish(subjects.REQUEST_DONE, codec.encode(r))
    finally:
        await bus.close()
    res = run_report("--nats", nats_server.url, "--since-s", "600", "--json")
    assert res.returncode == 0, res.stderr
    doc = json.loads(res.stdout)
    assert doc["requests"] == 3 and doc["without_energy"] == 1
    by = doc["by"]
    assert by["tenant"]["team-a"]["energy_j"] == 60.0
    assert by["tenant"]["team-a"]["j_per_request"] == 30.0
    assert by["tenant"]["team-a"]["j_per_output_token"] == 0.12
    assert by["tenant"]["-"]["requests"] == 1
    assert by["model"]["qwen"]["energy_j"] == 4.0
    assert by["class"]["long-in/long-out"]["energy_j"] == 50.0
    assert by["class"]["all"]["prefill_j"] == 16.0
    # the same from a time range that ends before them: nothing
    res = run_report("--nats", nats_server.url, "--since-s", "900", "--until-s", "600", "--json")
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout)["requests"] == 0


def test_report_over_results_json(tmp_path: Path) -> None:
    cfg = SimConfig(
        cluster=ClusterSpec(n_prefill=1, n_decode=1),
        slo=SloConfig(ttft_s=1.0, itl_s=0.05),
        noise=0.0,
    )
    wl = synthetic(rate_rps=2.0, duration_s=10, seed=4)
    ev = evaluate(
        wl, [POLICIES["static-max"], POLICIES["voltana"]], cfg, oracle=False, quick_profile=True
    )
    path = write_results(ev, tmp_path)
    png = tmp_path / "classes.png"
    res = run_report("--results", str(path), "--markdown", "--plot", str(png))
    assert res.returncode == 0, res.stderr
    assert "static-max (attributed" in res.stdout and "voltana (attributed" in res.stdout
    assert "| all |" in res.stdout and png.stat().st_size > 5000
    row = ev.policies["voltana"]
    assert row["attributed_energy_j"] + row["unattributed_energy_j"] == (
        __import__("pytest").approx(row["energy_j"], rel=1e-3)
    )
    # bad input: one clear line, no traceback
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    res = run_report("--results", str(bad))
    assert res.returncode == 1 and "voltana report: error: cannot read" in res.stderr
    assert "Traceback" not in res.stderr
