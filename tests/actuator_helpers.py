"""Real emulator and actuator subprocesses for the freqctl/actuator integration tests."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from helpers import free_port

ROOT = Path(__file__).resolve().parents[1]


def voltana_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "voltana", *args]


def gpus_of(url: str) -> dict[int, dict[str, Any]]:
    with urllib.request.urlopen(url + "/voltana/gpus", timeout=2) as resp:
        return {int(g["index"]): g for g in json.loads(resp.read())["gpus"]}


def _stop(proc: subprocess.Popen[bytes], sig: int = signal.SIGTERM, timeout_s: float = 10) -> int:
    if proc.poll() is None:
        proc.send_signal(sig)
        try:
            proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)
    return int(proc.returncode)


@contextmanager
def emulator(
    *, role: str = "decode", gpu_ids: Sequence[int] = (0,), log_dir: Path, extra: Sequence[str] = ()
) -> Iterator[str]:
    """A real ``voltana emulator`` on a free loopback port; yields its base URL."""
    port, bport = free_port(), free_port()
    log = open(log_dir / f"emulator-{port}.log", "wb")  # noqa: SIM115 - closed below
    proc = subprocess.Popen(
        voltana_cmd(
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
        ),
        stdout=log,
        stderr=subprocess.STDOUT,
        env={**os.environ, "VOLTANA_LOG_FORMAT": "json"},
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 20
        while True:
            if proc.poll() is not None:
                raise RuntimeError(
                    f"emulator exited: {(log_dir / f'emulator-{port}.log').read_text()[-2000:]}"
                )
            try:
                gpus_of(url)
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError("emulator did not come up within 20 s") from None
                time.sleep(0.1)
        yield url
    finally:
        _stop(proc)
        log.close()


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


@contextmanager
def spawn_voltana(args: Sequence[str], log_path: Path) -> Iterator[subprocess.Popen[bytes]]:
    """Any ``voltana`` subcommand as a subprocess, stopped with SIGTERM (killed if it hangs)."""
    log = open(log_path, "wb")  # noqa: SIM115 - closed below
    proc = subprocess.Popen(
        voltana_cmd(*args),
        stdout=log,
        stderr=subprocess.STDOUT,
        env={**os.environ, "VOLTANA_LOG_FORMAT": "json"},
    )
    try:
        yield proc
    finally:
        _stop(proc)
        log.close()
