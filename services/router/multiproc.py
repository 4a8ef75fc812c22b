"""``voltana router --processes N``: N router processes on one port, one supervisor.

One Python process serves one core's worth of requests. With ``--processes N`` the
command becomes a supervisor that starts N router processes
(:mod:`~voltana.services.router.multiproc_child`), each bound to the same host:port
with ``SO_REUSEPORT`` (the kernel spreads new connections over them), and:

- shares their in-flight accounting through one memfd block
  (:mod:`~voltana.services.router.shared_load`), so every process's policies see the
  whole router's load per worker;
- gives them one prometheus-client multiprocess directory, so ``/metrics`` on any of
  them (and ``--prometheus-port``, served by process 0) shows the whole router;
- restarts a process that dies (its row of the block zeroed first, its live gauges
  dropped); more than ``MAX_RESTARTS`` deaths within ``RESTART_WINDOW_S``, or a process
  that dies while starting, stops the router with a message saying which and how;
- on SIGTERM/SIGINT, sends SIGTERM to every process (each drains as a single router
  does), kills what is still running ``shutdown_timeout_s + STOP_GRACE_S`` later, and
  removes the block and the metrics directory. The processes get SIGTERM from the
  kernel if the supervisor itself is killed (``PR_SET_PDEATHSIG``): no orphans.

The supervisor holds the port (bound with ``SO_REUSEPORT``, not listening) from before
the first process starts until the last one ended, so port 0 resolves once, a taken
port fails before anything starts, and a restarted process binds the same port.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import socket
import sys
import tempfile
import time
from collections import deque
from dataclasses import dataclass, field

import msgspec
from voltana.common.errors import ConfigError, VoltanaError
from voltana.common.logs import get_logger
from voltana.common.shutdown import shutdown_event
from voltana.services.router.config import RouterConfig
from voltana.services.router.shared_load import LoadBlock

__all__ = ["MAX_RESTARTS", "RESTART_WINDOW_S", "Supervisor", "run_processes"]

log = get_logger("router")

MAX_RESTARTS = 5
RESTART_WINDOW_S = 60.0
STOP_GRACE_S = 10.0  # beyond shutdown_timeout_s: the bus flush and task cancellation
CHILD_MODULE = "voltana.services.router.multiproc_child"


class RouterProcessesFailed(VoltanaError):
    """The router processes could not be kept running."""


@dataclass
class Slot:
    """One router process's place: its row in the load block, its current process."""

    index: int
    proc: asyncio.subprocess.Process | None = None
    ready: asyncio.Task[bool] | None = None
    deaths: deque[float] = field(default_factory=deque)


def reserve_port(host: str, port: int) -> socket.socket:
    """A socket bound to ``host:port`` with SO_REUSEPORT, not listening: holds the port.

    Raises:
        ConfigError: the address cannot be bound (taken without SO_REUSEPORT, or bad host).
    """
    try:
        family, kind, proto, _, addr = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
        sock = socket.socket(family, kind, proto)
    except OSError as exc:
        raise ConfigError(f"router cannot listen on {host}:{port}: {exc}") from exc
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind(addr)
    except OSError as exc:
        sock.close()
        raise ConfigError(f"router cannot listen on {host}:{port}: {exc.strerror or exc}") from exc
    return sock


class Supervisor:
    """Starts, watches, restarts and stops the router processes (see the module docstring).

    Args:
        cfg: the validated router configuration (``cfg.processes`` > 1).
        child_args: extra arguments for every process (loop, logs, prometheus listener).
    """

    def __init__(self, cfg: RouterConfig, child_args: list[str]) -> None:
        self.cfg = cfg
        self.n = cfg.processes
        self.child_args = child_args
        self.workers = len(cfg.prefill) + len(cfg.decode) + len(cfg.workers)
        self.slots = [Slot(i) for i in range(self.n)]
        self.port = cfg.port
        self.fatal: str | None = None

    async def run(self) -> int:
        stop = shutdown_event()
        sock = reserve_port(self.cfg.host, self.cfg.port)
        self.port = int(sock.getsockname()[1])
        child_cfg = msgspec.structs.replace(self.cfg, port=self.port, reuse_port=True)
        self.payload = msgspec.msgpack.encode(child_cfg)
        self.load_fd = os.memfd_create("voltana-router-load")
        self.metrics_dir = tempfile.mkdtemp(prefix="voltana-router-metrics-")
        try:
            os.ftruncate(self.load_fd, LoadBlock.size(self.n, self.workers))
            self.block = LoadBlock(self.load_fd, self.n, self.workers)
            self.block.clear()
            await self._serve(stop)
        finally:
            await self._stop_all()
            with contextlib.suppress(Exception):
                self.block.close()
            os.close(self.load_fd)
            shutil.rmtree(self.metrics_dir, ignore_errors=True)
            sock.close()
            log.info("router_processes_stopped", processes=self.n)
        if self.fatal is not None:
            raise RouterProcessesFailed(self.fatal)
        return 0

    async def _serve(self, stop: asyncio.Event) -> None:
        for s in self.slots:
            await self._spawn(s)
        starting = {s.ready for s in self.slots if s.ready is not None}
        stopping = asyncio.create_task(stop.wait())
        try:
            failed: list[Slot] = []
            while starting and not failed and not stop.is_set():
                done, _ = await asyncio.wait(
                    [*starting, stopping], return_when=asyncio.FIRST_COMPLETED
                )
                starting -= done
                failed = [s for s in self.slots if s.ready in done and not s.ready.result()]
            if stop.is_set():
                return
            if failed:
                s = failed[0]
                rc = await s.proc.wait() if s.proc is not None else None
                self.fatal = (
                    f"router process {s.index} exited with code {rc} while starting "
                    "(its error is above); nothing is serving"
                )
                return
            log.info(
                "router_processes_started",
                processes=self.n,
                host=self.cfg.host,
                port=self.port,
                pids=[s.proc.pid for s in self.slots if s.proc is not None],
            )
            await self._watch(stop, stopping)
        finally:
            stopping.cancel()

    async def _ready(
        self, s: Slot, proc: asyncio.subprocess.Process, fd: int, restart: bool
    ) -> bool:
        """True once the process says it serves; False when it ended first."""
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader()
        transport, _ = await loop.connect_read_pipe(
            lambda: asyncio.StreamReaderProtocol(reader), os.fdopen(fd, "rb", buffering=0)
        )
        try:
            ok = await reader.read(1) == b"R"
        finally:
            transport.close()
        if ok and restart:
            log.info("router_process_restarted", slot=s.index, pid=proc.pid)
        return ok

    async def _spawn(self, s: Slot, restart: bool = False) -> None:
        rfd, wfd = os.pipe()
        argv = [sys.executable, "-m", CHILD_MODULE, "--slot", str(s.index)]
        argv += ["--processes", str(self.n), "--load-fd", str(self.load_fd)]
        argv += ["--ready-fd", str(wfd), *self.child_args]
        env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": self.metrics_dir}
        try:
            proc = await asyncio.create_subprocess_exec(
                *argv,
                stdin=asyncio.subprocess.PIPE,
                pass_fds=(self.load_fd, wfd),
                env=env,
                start_new_session=True,  # a terminal's Ctrl-C reaches the supervisor only
            )
        finally:
            os.close(wfd)
        s.proc = proc
        s.ready = asyncio.create_task(self._ready(s, proc, rfd, restart))
        assert proc.stdin is not None
        proc.stdin.write(self.payload)
        with contextlib.suppress(ConnectionError):
            await proc.stdin.drain()
        proc.stdin.close()

    async def _watch(self, stop: asyncio.Event, stopping: asyncio.Task[bool]) -> None:
        """Restart processes that die until asked to stop (or they die too often)."""
        while not stop.is_set():
            waits = {asyncio.create_task(s.proc.wait()): s for s in self.slots if s.proc}
            try:
                done, _ = await asyncio.wait(
                    [*waits, stopping], return_when=asyncio.FIRST_COMPLETED
                )
            finally:
                for t in waits:
                    t.cancel()
            if stop.is_set():
                log.info("router_signal_received", processes=self.n)
                return
            for t in done:
                if t in waits and not await self._died(waits[t]):
                    return

    async def _died(self, s: Slot) -> bool:
        """Clean up after a dead process and start its successor; False: give up."""
        from prometheus_client import multiprocess

        assert s.proc is not None
        pid, rc = s.proc.pid, s.proc.returncode
        self.block.clear_row(s.index)  # its requests died with it
        multiprocess.mark_process_dead(pid, self.metrics_dir)
        now = time.monotonic()
        s.deaths.append(now)
        while s.deaths and now - s.deaths[0] > RESTART_WINDOW_S:
            s.deaths.popleft()
        log.warning("router_process_died", slot=s.index, pid=pid, exit_code=rc)
        if len(s.deaths) > MAX_RESTARTS:
            self.fatal = (
                f"router process {s.index} died {len(s.deaths)} times within "
                f"{RESTART_WINDOW_S:g} s (last exit code {rc}); stopping the router"
            )
            return False
        await asyncio.sleep(min(0.1 * 2 ** (len(s.deaths) - 1), 5.0))
        await self._spawn(s, restart=True)  # logs router_process_restarted once it serves
        return True

    async def _stop_all(self) -> None:
        procs = [s.proc for s in self.slots if s.proc is not None and s.proc.returncode is None]
        for p in procs:
            with contextlib.suppress(ProcessLookupError):
                p.send_signal(signal.SIGTERM)
        waits = [asyncio.create_task(p.wait()) for p in procs]
        if waits:
            _, pending = await asyncio.wait(
                waits, timeout=self.cfg.shutdown_timeout_s + STOP_GRACE_S
            )
            for p in procs:
                if p.returncode is None:
                    log.warning("router_process_killed", pid=p.pid, reason="did not stop")
                    with contextlib.suppress(ProcessLookupError):
                        p.kill()
            if pending:
                await asyncio.wait(pending)
        for s in self.slots:
            if s.ready is not None:
                s.ready.cancel()
                with contextlib.suppress(BaseException):
                    await s.ready
        from prometheus_client import multiprocess

        for p in procs:
            multiprocess.mark_process_dead(p.pid, self.metrics_dir)


def run_processes(cfg: RouterConfig, child_args: list[str]) -> int:
    """Run ``cfg.processes`` router processes until SIGTERM/SIGINT; 0 when stopped as asked.

    Raises:
        ConfigError: the port cannot be bound.
        RouterProcessesFailed: a process died while starting, or too often.
    """
    if cfg.processes > (os.cpu_count() or 1):
        log.warning("router_processes_exceed_cores", processes=cfg.processes, cores=os.cpu_count())
    if cfg.nats or cfg.bus_options is not None:
        log.warning(
            "router_processes_energy_per_process",
            note="each process splits GPU energy over its own requests only: per-request "
            "energy over-counts with several processes (docs/router-processes.md)",
        )
    return asyncio.run(Supervisor(cfg, child_args).run())
