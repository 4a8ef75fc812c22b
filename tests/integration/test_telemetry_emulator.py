"""Acceptance: ``voltana telemetry`` against real ``voltana emulator`` subprocesses.

Two emulated instances (SGLang 0.5.23 flavour with TP 2 on GPUs 0,1; 0.4.7
flavour on GPU 2) under streaming load, one ``voltana telemetry`` process,
a real nats-server. Checks: energy integrated from the published power
matches the emulator's own energy counter within 2%; queue depth and running
requests match the engine; an instance that dies is published unhealthy while
the other keeps flowing; config and NVML errors are one clear line.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
import pytest
from helpers import free_port, spawn_voltana, wait_for
from voltana.bus.client import Bus, BusOptions
from voltana.schemas import subjects
from voltana.schemas.telemetry import GpuTelemetry, InstanceTelemetry

READY = "The server is fired up and ready to roll!"  # SGLang's line, printed by the emulator


def emulator_args(port: int, version: str, gpu_ids: str, tp: int, max_running: int) -> list[str]:
    return [
        "emulator",
        "--role",
        "unified",
        "--port",
        str(port),
        "--host",
        "127.0.0.1",
        "--sglang-version",
        version,
        "--tp",
        str(tp),
        "--gpu-ids",
        gpu_ids,
        "--max-running-requests",
        str(max_running),
        "--seed",
        "3",
        "--disaggregation-bootstrap-port",
        str(free_port()),
    ]


async def generate(
    http: aiohttp.ClientSession, url: str, prompt: int, new: int, done: list[float]
) -> None:
    body = {
        "input_ids": [7] * prompt,
        "stream": True,
        "sampling_params": {"max_new_tokens": new, "ignore_eos": True},
    }
    async with http.post(f"{url}/generate", json=body) as resp:
        assert resp.status == 200, await resp.text()
        async for line in resp.content:
            if line.strip() == b"data: [DONE]":
                break
    done.append(time.time())


async def admin_gpus(http: aiohttp.ClientSession, url: str) -> tuple[float, dict[int, Any]]:
    t0 = time.time()
    async with http.get(f"{url}/voltana/gpus") as resp:
        doc = await resp.json()
    return (t0 + time.time()) / 2, {g["index"]: g for g in doc["gpus"]}


def energy_check(msgs: list[GpuTelemetry]) -> tuple[float, float, float]:
    """(counter delta, trapezoid integral of power_w, sum of avg_power_w * interval_s), J."""
    t = np.array([m.t_ns for m in msgs], dtype=np.float64) / 1e9
    p = np.array([m.power_w for m in msgs])
    counter = msgs[-1].energy_j - msgs[0].energy_j
    interval = sum(m.avg_power_w * m.interval_s for m in msgs[1:] if m.avg_power_w and m.interval_s)
    return counter, float(np.trapezoid(p, t)), interval


async def test_telemetry_against_emulators(nats_server: Any, tmp_path: Path) -> None:
    p_new, p_old = free_port(), free_port()
    url_new, url_old = f"http://127.0.0.1:{p_new}", f"http://127.0.0.1:{p_old}"
    cfg = tmp_path / "node.toml"
    cfg.write_text(f"""
node = "emu-node"
[nats]
servers = ["{nats_server.url}"]
[rates]
gpu_hz = 20.0
engine_hz = 10.0
latency_window_s = 2.0
http_timeout_s = 0.5
[metrics]
port = 0
[[instances]]
name = "new"
role = "unified"
url = "{url_new}"
gpus = [0, 1]
gpu_backend = "emulated"
[[instances]]
name = "old"
role = "unified"
url = "{url_old}"
gpus = [2]
gpu_backend = "emulated"
""")
    gpu_msgs: dict[int, list[GpuTelemetry]] = defaultdict(list)
    eng_msgs: dict[str, list[InstanceTelemetry]] = defaultdict(list)
    bus = await Bus.connect(BusOptions(servers=[nats_server.url]))
    await bus.subscribe(
        subjects.TELEMETRY_GPU_ALL, GpuTelemetry, lambda m, s: gpu_msgs[m.gpu].append(m)
    )
    await bus.subscribe(
        subjects.TELEMETRY_ENGINE_ALL,
        InstanceTelemetry,
        lambda m, s: eng_msgs[m.instance].append(m),
    )
    with (
        spawn_voltana(
            emulator_args(p_new, "0.5.23", "0,1", 2, 8), tmp_path / "new.log", ready=READY
        ),
        spawn_voltana(
            emulator_args(p_old, "0.4.7", "2", 1, 4), tmp_path / "old.log", ready=READY
        ) as old,
        spawn_voltana(["telemetry", "--config", str(cfg)], tmp_path / "tel.log") as tel,
    ):
        async with aiohttp.ClientSession() as http:
            try:
                await wait_for(
                    lambda: (
                        all(len(gpu_msgs[g]) >= 5 for g in (0, 1, 2))
                        and all(eng_msgs[n] and eng_msgs[n][-1].healthy for n in ("new", "old"))
                    ),
                    20.0,
                )
            except AssertionError:
                raise AssertionError((tmp_path / "tel.log").read_text()[-3000:]) from None
            assert eng_msgs["new"][-1].engine_version == "0.5.23"
            assert eng_msgs["old"][-1].engine_version == "0.4.7"

            # -- a loaded run: 12 requests on "new" (8 run, 4 queue), 6 on "old" (4 + 2)
            done: list[float] = []
            t_load = time.time()
            load = [asyncio.create_task(generate(http, url_new, 256, 500, done)) for _ in range(12)]
            load += [asyncio.create_task(generate(http, url_old, 256, 500, done)) for _ in range(6)]

            def seen(name: str, running: int, queue: int) -> bool:
                return any(
                    m.t_ns > t_load * 1e9
                    and (m.num_running_reqs, m.num_queue_reqs) == (running, queue)
                    for m in eng_msgs[name]
                )

            await wait_for(lambda: seen("new", 8, 4) and seen("old", 4, 2), 10.0)
            # the engine's own view at the same moment agrees
            async with http.get(f"{url_new}/v1/loads") as resp:
                row = (await resp.json())["loads"][0]
            async with http.get(f"{url_old}/metrics") as resp:
                text = await resp.text()
            assert (row["num_running_reqs"], row["num_waiting_reqs"]) == (8, 4)
            assert 'sglang:num_running_reqs{engine_type="unified",model_name' in text
            assert any(
                ln.startswith("sglang:num_queue_reqs") and ln.endswith(" 2.0")
                for ln in text.splitlines()
            )
            await asyncio.wait_for(asyncio.gather(*load), 60.0)
            t_end = time.time()
            await wait_for(
                lambda: all(
                    eng_msgs[n][-1].num_running_reqs == 0 and eng_msgs[n][-1].num_queue_reqs == 0
                    for n in ("new", "old")
                ),
                5.0,
            )
            # the prefix cache: every request after the first prefill (at least the 4 that
            # queued) found the same 256 ids cached, all but the last token (SGLang always
            # computes it); the telemetry carries the engine's counter and hit rate
            last = eng_msgs["new"][-1]
            hits = last.cached_tokens_total / 255
            assert hits == int(hits) and 4 <= hits <= 11
            assert last.cache_hit_rate == pytest.approx(hits * 255 / (12 * 256), abs=1e-6)
            await asyncio.sleep(0.5)
            t_quiet, gpus_now = await admin_gpus(http, url_new)

            # -- energy: the published power integrates to the emulator's counter
            for g in (0, 1, 2):
                msgs = [m for m in gpu_msgs[g] if t_load - 0.2 <= m.t_ns / 1e9 <= t_end + 0.2]
                counter, integral, interval = energy_check(msgs)
                print(
                    f"gpu {g}: counter {counter:.1f} J, integral {integral:.1f} J, "
                    f"rel {(integral - counter) / counter:+.4%}, n={len(msgs)}"
                )
                busy = [m.power_w for m in msgs]
                assert max(busy) > 1.5 * min(busy), "the run was not loaded"
                assert counter > 0 and abs(integral - counter) / counter < 0.02, (
                    g,
                    counter,
                    integral,
                )
                assert interval == pytest.approx(counter, rel=1e-9)
                seqs = [m.seq for m in gpu_msgs[g]]
                assert seqs == list(range(seqs[0], seqs[0] + len(seqs)))
                assert all(m.node == "emu-node" and m.source == "emulated" for m in msgs)
            # and the published counter is the emulator's own: idle now, so linear in time
            for g in (0, 1):
                last = gpu_msgs[g][-1]
                predicted_j = last.energy_j + last.power_w * (t_quiet - last.t_ns / 1e9)
                assert gpus_now[g]["energy_mj"] / 1000 == pytest.approx(predicted_j, abs=2.0)
            new_last = eng_msgs["new"][-1]
            assert new_last.instance == "new" and new_last.gpus == [0, 1]
            assert new_last.generation_tokens_total >= 12 * 500
            itls = [m.itl for m in eng_msgs["new"] if m.itl and m.itl.count]
            assert itls and all(i.p50_s is not None and 0 < i.p50_s <= 0.1 for i in itls)

            # -- the "old" instance dies: published unhealthy, "new" keeps flowing
            old.terminate()
            old.wait(10)
            t_dead = time.time()
            await wait_for(lambda: not eng_msgs["old"][-1].healthy, 5.0)
            n_new, n_gpu0 = len(eng_msgs["new"]), len(gpu_msgs[0])
            await asyncio.sleep(1.0)
            assert len(eng_msgs["new"]) - n_new >= 7 and all(m.healthy for m in eng_msgs["new"])
            assert len(gpu_msgs[0]) - n_gpu0 >= 15
            assert not any(m.t_ns / 1e9 > t_dead + 0.3 for m in gpu_msgs[2])
            assert eng_msgs["old"][-1].error
            assert tel.poll() is None
    await bus.close()
    log = [
        json.loads(x) for x in (tmp_path / "tel.log").read_text().splitlines() if x.startswith("{")
    ]
    assert any(e.get("event") == "telemetry_source_failing" for e in log)
    assert any(e.get("event") == "telemetry_stopped" for e in log)


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        (
            'node = "n"\n[[instances]]\nname = "a"\nrole = "decode"\nurl = "http://127.0.0.1:1"\n'
            'gpus = [0]\ngpu_backend = "nvml"\n',
            "libnvidia-ml.so.1",
        ),
        (
            'node = "n"\n[rates]\ngpu_hz = "fast"\n',
            "Expected `float`, got `str` - at `$.rates.gpu_hz`",
        ),
    ],
)
def test_cli_errors_are_one_line(tmp_path: Path, body: str, fragment: str) -> None:
    pynvml = pytest.importorskip("pynvml")
    if fragment.startswith("libnvidia"):
        with contextlib.suppress(pynvml.NVMLError):
            pynvml.nvmlInit()
            pynvml.nvmlShutdown()
            pytest.skip("NVML is present on this machine: the missing-library error cannot occur")
    cfg = tmp_path / "node.toml"
    cfg.write_text(body)
    out = subprocess.run(
        [sys.executable, "-m", "voltana", "telemetry", "--config", str(cfg)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 1
    assert fragment in out.stderr and "Traceback" not in out.stderr
    assert out.stderr.strip().startswith("voltana telemetry: error:")


def test_emulated_device_errors_and_restart(tmp_path: Path) -> None:
    """Bad index, a dead emulator, and an emulator restart (its counter restarts at 0)."""
    from voltana.common.errors import GpuError
    from voltana.gpu.emulated import EmulatedDevice

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    args = emulator_args(port, "0.5.23", "4,5", 2, 8)
    src = EmulatedDevice.serving(url, [4, 5], timeout_s=0.5)
    bad = EmulatedDevice.serving(url, [4, 9], timeout_s=0.5)
    try:
        with spawn_voltana(args, tmp_path / "a.log", ready=READY):
            time.sleep(0.3)
            first = src.sample()
            assert [s.index for s in first] == [4, 5] and first[0].source == "emulated"
            assert first[0].name and first[0].max_sm_clock_mhz and first[0].power_w > 0
            with pytest.raises(GpuError, match=r"GPU index 9 is not served .* \(it has 4,5\)"):
                bad.sample()
            time.sleep(0.3)
            before = src.sample()[0].energy_j
            cfg = tmp_path / "node.toml"
            cfg.write_text(
                f'node = "n"\n[[instances]]\nname = "e"\nrole = "decode"\n'
                f'url = "{url}"\ngpus = [4, 5]\ngpu_backend = "emulated"\n'
            )
            check = subprocess.run(
                [sys.executable, "-m", "voltana", "telemetry", "--config", str(cfg), "--check"],
                capture_output=True,
                text=True,
                timeout=60,
            )
            assert check.returncode == 0, check.stderr
            assert "emulated GPUs [4, 5]: 2 sample(s) read" in check.stdout
        with pytest.raises(GpuError, match="unreachable") as info:
            src.sample()
        assert info.value.code == "UNREACHABLE"
        with spawn_voltana(args, tmp_path / "b.log", ready=READY):
            after = [src.sample()[0].energy_j for _ in range(3)]
        assert after[0] >= before and after == sorted(after)  # never goes backwards
    finally:
        src.close()
        bad.close()
    with pytest.raises(GpuError, match="closed"):
        src.sample()
