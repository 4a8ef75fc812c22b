"""Real emulator and actuator subprocesses for the freqctl/actuator integration tests."""

from __future__ import annotations

import json
import subprocess
import urllib.request
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from helpers import free_port, spawn_voltana, wait_http

ROOT = Path(__file__).resolve().parents[1]


def gpus_of(url: str) -> dict[int, dict[str, Any]]:
    with urllib.request.urlopen(url + "/voltana/gpus", timeout=2) as resp:
        return {int(g["index"]): g for g in json.loads(resp.read())["gpus"]}


@contextmanager
def emulator(
    *, role: str = "decode", gpu_ids: Sequence[int] = (0,), log_dir: Path, extra: Sequence[str] = ()
) -> Iterator[str]:
    """A real ``voltana emulator`` on a free loopback port; yields its base URL."""
    port, bport = free_port(), free_port()
    args = [
        "emulator",
        "--role",
        role,
        "--gpu",
        "h100",
        "--model",
        "llama-3.1-8b",
        "--tp",
        str(len(gpu_ids)),
        "--gpu-ids",
        ",".join(map(str, gpu_ids)),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--disaggregation-bootstrap-port",
        str(bport),
        "--seed",
        "1",
        *extra,
    ]
    log = log_dir / f"emulator-{port}.log"
    url = f"http://127.0.0.1:{port}"
    with spawn_voltana(args, log) as proc:
        wait_http(url + "/voltana/gpus", proc, timeout_s=20, log=log)
        yield url


@contextmanager
def actuator_proc(
    nats_url: str,
    node: str,
    emulator_urls: Sequence[str],
    *,
    log_path: Path,
    extra: Sequence[str] = (),
) -> Iterator[subprocess.Popen[bytes]]:
    """``voltana actuator --backend emulated`` as a subprocess (stopped with SIGTERM)."""
    args = ["actuator", "--node", node, "--backend", "emulated", "--nats", nats_url]
    for u in emulator_urls:
        args += ["--emulator-url", u]
    with spawn_voltana([*args, *extra], log_path) as proc:
        yield proc
