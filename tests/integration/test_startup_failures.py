"""Start-up failures end with one clear line and a non-zero exit, never a hang.

Real ``voltana`` processes: a router whose port is taken (NATS configured, as in
production), and the bus services pointed at a NATS server that is not there.
"""

from __future__ import annotations

import socket
import subprocess

import pytest
from helpers import free_port, voltana_argv


def run(args: list[str], timeout_s: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        voltana_argv(*args), capture_output=True, text=True, timeout=timeout_s, check=False
    )


def test_router_on_a_taken_port_exits_with_a_message() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        nats = f"nats://127.0.0.1:{free_port()}"  # nobody there: the bus must not be waited on
        out = run(
            [
                "router",
                "--port",
                str(port),
                "--nats",
                nats,
                "--prefill",
                "http://127.0.0.1:1",
                "--decode",
                "http://127.0.0.1:2",
            ]
        )
    assert out.returncode == 1, out.stderr[-2000:]
    assert f"cannot listen on 127.0.0.1:{port}" in out.stderr + out.stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["freqctl", "--instances", "d0"], "cannot connect to NATS"),
        (["tail", "voltana.>"], "cannot connect to NATS"),
        (
            [
                "actuator",
                "--node",
                "n1",
                "--backend",
                "emulated",
                "--emulator-url",
                "http://127.0.0.1:1",
            ],
            "emulator at http://127.0.0.1:1 is unreachable",
        ),
    ],
)
def test_services_that_cannot_start_exit_with_a_message(args: list[str], message: str) -> None:
    out = run([*args, "--nats", f"nats://127.0.0.1:{free_port()}"])
    text = out.stderr + out.stdout
    assert out.returncode == 1, text[-2000:]
    assert message in text and "Traceback" not in text, text[-1000:]
