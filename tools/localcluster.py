"""A whole voltana deployment on one machine, on emulated GPUs: ``voltana up``.

Starts, as child processes of this one: nats-server (JetStream), P prefill and
D decode emulated SGLang workers, one telemetry service, one actuator (emulated
backend), one freqctl controller for every instance and the router. Each child
writes its log to ``<workdir>/logs/<name>.log``. Everything is stopped (by PID,
SIGTERM then SIGKILL) on :meth:`LocalCluster.stop`, also after a failed start.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import msgspec
from voltana.bus.natsserver import NatsServer
from voltana.common.errors import VoltanaError
from voltana.common.logs import get_logger
from voltana.common.ports import free_port, port_in_use
from voltana.tools.nats import prepare_nats

log = get_logger("up")


def _run_in_thread(coro: Coroutine[Any, Any, None]) -> None:
    """Run a coroutine to completion on a private loop (safe inside a running loop)."""
    errors: list[BaseException] = []

    def run() -> None:
        try:
            asyncio.run(coro)
        except BaseException as exc:
            errors.append(exc)

    t = threading.Thread(target=run)
    t.start()
    t.join()
    if errors:
        raise errors[0]


class LocalClusterSpec(msgspec.Struct, frozen=True, kw_only=True):
    """What to run. Ports 0 mean "any free port"."""

    prefill: int = 1
    decode: int = 1
    unified: int = 0  # > 0: colocated workers (mixed chunks) instead of prefill/decode
    gpu: str = "h100"
    model: str = "llama-3.1-8b"
    node: str = "local"
    policy: str = "voltana"
    prefill_policy: str = "ecoroute"
    decode_policy: str = "ecoroute"
    router_port: int = 8000
    nats_port: int = 0  # `voltana up` asks for 4222, where `voltana tail`/`replay` look
    slo_ttft_s: float = 1.0
    slo_itl_s: float = 0.05
    seed: int = 0
    noise: float = 0.02
    sglang_version: str = "0.4.7"
    workdir: Path = Path(".voltana/up")
    extra_emulator_args: tuple[str, ...] = ()


@dataclass
class Instance:
    name: str
    role: str
    url: str
    port: int
    bootstrap_port: int
    gpu: int


@dataclass
class LocalCluster:
    """Start/stop a local cluster; ``router_url`` and ``nats_url`` once started."""

    spec: LocalClusterSpec
    instances: list[Instance] = field(default_factory=list)
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    nats: NatsServer | None = None
    router_url: str = ""
    _logs: list[IO[bytes]] = field(default_factory=list)

    @property
    def nats_url(self) -> str:
        if self.nats is None:
            raise VoltanaError("the local cluster is not started")
        return self.nats.url

    def _spawn(self, name: str, args: list[str]) -> subprocess.Popen[bytes]:
        logdir = self.spec.workdir / "logs"
        logdir.mkdir(parents=True, exist_ok=True)
        out = open(logdir / f"{name}.log", "wb")  # noqa: SIM115 - closed in stop()
        self._logs.append(out)
        env = dict(os.environ, VOLTANA_LOG_FORMAT="json", PYTHONUNBUFFERED="1")
        proc = subprocess.Popen(
            [sys.executable, "-m", "voltana", *args],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
            # own session: a terminal's Ctrl-C reaches only `voltana up`, which then stops
            # the children in order (router first, actuator resetting clocks, workers last)
            start_new_session=True,
        )
        self.procs[name] = proc
        log.info("started", process=name, pid=proc.pid)
        return proc

    def _wait_http(self, name: str, url: str, timeout_s: float = 30.0) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            proc = self.procs[name]
            if proc.poll() is not None:
                raise VoltanaError(
                    f"{name} exited with code {proc.returncode}; see {self.spec.workdir}/logs/{name}.log"
                )
            try:
                with urllib.request.urlopen(url, timeout=1.0) as resp:
                    if resp.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.1)
        raise VoltanaError(f"{name} did not answer {url} within {timeout_s:.0f} s")

    def start(self) -> LocalCluster:
        try:
            self._start()
        except BaseException:
            self.stop()
            raise
        return self

    def _check_ports(self) -> None:
        """Refuse busy fixed ports before starting anything (or a second cluster talks to the first)."""
        s = self.spec
        for what, port, flag in (
            ("router", s.router_port, "--port"),
            ("NATS", s.nats_port, "--nats-port"),
        ):
            if port and port_in_use(port):
                raise VoltanaError(
                    f"{what} port {port} on 127.0.0.1 is in use (another voltana up or server?); "
                    f"stop it, or pass {flag} N for another port or {flag} 0 for any free one"
                )

    def _start(self) -> None:
        s = self.spec
        self._check_ports()
        s.workdir.mkdir(parents=True, exist_ok=True)
        self.nats = NatsServer(port=s.nats_port or -1, store_dir=s.workdir / "nats")
        self.nats.start()
        _run_in_thread(prepare_nats(self.nats.url, name="voltana-up"))
        gpu = 0
        if s.unified and (s.prefill or s.decode):
            raise VoltanaError("a local cluster is either colocated (unified) or PD, not both")
        for role, count in (("prefill", s.prefill), ("decode", s.decode), ("unified", s.unified)):
            for i in range(count):
                port, boot = free_port(), free_port()
                name = f"{role}-{i}"
                inst = Instance(name, role, f"http://127.0.0.1:{port}", port, boot, gpu)
                self.instances.append(inst)
                self._spawn(
                    name,
                    [
                        "emulator",
                        "--role",
                        role,
                        "--gpu",
                        s.gpu,
                        "--model",
                        s.model,
                        "--host",
                        "127.0.0.1",
                        "--port",
                        str(port),
                        "--disaggregation-bootstrap-port",
                        str(boot),
                        "--gpu-ids",
                        str(gpu),
                        "--seed",
                        str(s.seed + gpu),
                        "--noise",
                        str(s.noise),
                        "--sglang-version",
                        s.sglang_version,
                        *(["--enable-mixed-chunk"] if role == "unified" else []),
                        *s.extra_emulator_args,
                    ],
                )
                gpu += 1
        for inst in self.instances:
            self._wait_http(inst.name, inst.url + "/health")
        config = self.spec.workdir / "node.toml"
        config.write_text(self._node_toml())
        self._spawn("telemetry", ["telemetry", "--config", str(config), "--nats", self.nats.url])
        actuator = ["actuator", "--node", s.node, "--backend", "emulated", "--nats", self.nats.url]
        for inst in self.instances:
            actuator += ["--emulator-url", inst.url]
        self._spawn("actuator", actuator)
        targets = ",".join(f"{i.name}@{s.node}:{i.gpu}" for i in self.instances)
        self._spawn(
            "freqctl",
            [
                "freqctl",
                "--instances",
                targets,
                "--policy",
                s.policy,
                "--gpu",
                s.gpu,
                "--model",
                s.model,
                "--slo-ttft-s",
                str(s.slo_ttft_s),
                "--slo-itl-s",
                str(s.slo_itl_s),
                "--nats",
                self.nats.url,
            ],
        )
        router_port = s.router_port or free_port()
        router = [
            "router",
            "--host",
            "127.0.0.1",
            "--port",
            str(router_port),
            "--prefill-policy",
            s.prefill_policy,
            "--decode-policy",
            s.decode_policy,
            "--slo-ttft-s",
            str(s.slo_ttft_s),
            "--slo-itl-s",
            str(s.slo_itl_s),
            "--nats",
            self.nats.url,
            "--seed",
            str(s.seed),
        ]
        for inst in self.instances:
            if inst.role == "prefill":
                router += ["--prefill", inst.url, str(inst.bootstrap_port)]
        for inst in self.instances:
            if inst.role == "decode":
                router += ["--decode", inst.url]
        if s.unified:  # colocated workers: the router's unified mode, from its config file
            toml = s.workdir / "router.toml"
            toml.write_text(
                'mode = "unified"\n'
                + "".join(
                    f'[[workers]]\nurl = "{i.url}"\nrole = "unified"\n' for i in self.instances
                )
            )
            router += ["--config", str(toml)]
        self._spawn("router", router)
        self.router_url = f"http://127.0.0.1:{router_port}"
        self._wait_http("router", self.router_url + "/health")
        for name in ("telemetry", "actuator", "freqctl"):
            if self.procs[name].poll() is not None:
                raise VoltanaError(f"{name} exited; see {s.workdir}/logs/{name}.log")

    def _node_toml(self) -> str:
        lines = [f'node = "{self.spec.node}"', "", "[metrics]", "port = -1", ""]
        for inst in self.instances:
            lines += [
                "[[instances]]",
                f'name = "{inst.name}"',
                f'role = "{inst.role}"',
                f'url = "{inst.url}"',
                f"gpus = [{inst.gpu}]",
                'gpu_backend = "emulated"',
                "",
            ]
        return "\n".join(lines)

    def _stop_stage(self, names: list[str], timeout_s: float) -> None:
        for name in names:
            proc = self.procs[name]
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout_s
        for name in names:
            proc = self.procs[name]
            try:
                proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.warning("killing", process=name, pid=proc.pid)
                proc.kill()
                proc.wait(5)

    def check_alive(self) -> list[str]:
        """Names of children that have exited."""
        return [n for n, p in self.procs.items() if p.poll() is not None]

    def stop(self, timeout_s: float = 10.0) -> None:
        """Stop the children in dependency order, each stage gone before the next, then NATS.

        Router (no new requests), controllers, the actuator (it resets clocks through the
        workers' admin API, so they must still run), telemetry, then the workers.
        """
        order = ["router", "freqctl", "actuator", "telemetry"]
        stages = [[n] for n in order if n in self.procs]
        stages.append([n for n in self.procs if n not in order])
        for stage in stages:
            self._stop_stage(stage, timeout_s)
        self.procs.clear()
        for f in self._logs:
            f.close()
        self._logs.clear()
        if self.nats is not None:
            self.nats.stop()
            self.nats = None

    def __enter__(self) -> LocalCluster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
