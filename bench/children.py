"""The processes a benchmark starts: each logs to a file, all are stopped by PID at the end.

Shared by the benchmarks that run real processes (``emulator_pacing.py``,
``freqctl_loop.py``, ``router_vs_peers.py``); the scripts import it as
``children`` (their own folder is first on ``sys.path``)::

    with Children(logdir) as kids:
        kids.voltana("decode-0", ["emulator", "--role", "decode", "--port", str(port)])
        kids.wait_http("decode-0", f"http://127.0.0.1:{port}/health")
        ...  # measure

Every child gets its own session, so a Ctrl-C reaches only the benchmark, which
then stops the children (SIGTERM in reverse start order, SIGKILL for those still
running after ``stop_timeout_s``) -- as it does on any other exit.
"""

from __future__ import annotations

import http.client
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import IO

__all__ = ["Children", "cpu_s", "tree_cpu_s"]


def cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process and its threads (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def tree_cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process and all its descendants (Linux /proc).

    Processes that ended are missed (the kernel books a child's time on its parent
    only once waited for), so call it while the tree runs."""
    parent: dict[int, int] = {}
    ticks: dict[int, int] = {}
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            f = (d / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:  # ended meanwhile
            continue
        parent[int(d.name)] = int(f[1])
        ticks[int(d.name)] = int(f[11]) + int(f[12])
    tree, frontier = {pid}, [pid]
    while frontier:
        p = frontier.pop()
        kids = [c for c, pp in parent.items() if pp == p and c not in tree]
        tree.update(kids)
        frontier += kids
    return sum(ticks.get(p, 0) for p in tree) / os.sysconf("SC_CLK_TCK")


class Children:
    """Named child processes, each writing stdout and stderr to ``<logdir>/<name>.log``.

    Args:
        logdir: where the logs go (created if missing).
        env: variables added to this process's environment for every child.
        stop_timeout_s: how long ``stop`` waits after SIGTERM before SIGKILL.
    """

    def __init__(
        self, logdir: Path, env: Mapping[str, str] | None = None, stop_timeout_s: float = 10.0
    ) -> None:
        self.logdir = logdir
        self.env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
        self.stop_timeout_s = stop_timeout_s
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self._logs: dict[str, IO[bytes]] = {}
        logdir.mkdir(parents=True, exist_ok=True)

    def spawn(
        self, name: str, argv: Sequence[str], env: Mapping[str, str] | None = None
    ) -> subprocess.Popen[bytes]:
        """Start ``argv`` as the child ``name`` (``env``: added to the children's environment)."""
        log = open(self.logdir / f"{name}.log", "wb")  # noqa: SIM115 - closed in stop()
        self._logs[name] = log
        proc = subprocess.Popen(
            list(argv),
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**self.env, **(env or {})},
            start_new_session=True,
        )
        self.procs[name] = proc
        return proc

    def voltana(
        self, name: str, args: Sequence[str], prefix: Sequence[str] = ()
    ) -> subprocess.Popen[bytes]:
        """Start ``voltana ARGS`` with this interpreter; ``prefix`` runs it through a
        wrapper such as ``taskset -c 1``."""
        return self.spawn(name, [*prefix, sys.executable, "-m", "voltana", *args])

    def log_tail(self, name: str, chars: int = 2000) -> str:
        return (self.logdir / f"{name}.log").read_text(errors="replace")[-chars:]

    def check_running(self) -> None:
        """Raise, with its log's end, if any child has already exited."""
        for name, proc in self.procs.items():
            if proc.poll() is not None:
                raise RuntimeError(
                    f"{name} exited early with {proc.returncode}\n{self.log_tail(name)}"
                )

    def wait_http(self, name: str, url: str, timeout_s: float = 60.0) -> None:
        """Wait until ``url`` answers 200; raise at once if child ``name`` exits meanwhile."""
        proc = self.procs[name]
        deadline = time.monotonic() + timeout_s
        while True:
            if proc.poll() is not None:
                tail = self.log_tail(name)
                raise RuntimeError(f"{name} exited with {proc.returncode} ({url})\n{tail}")
            try:
                with urllib.request.urlopen(url, timeout=2) as r:
                    if r.status == 200:
                        return
            except (OSError, http.client.HTTPException):  # not up yet, or not HTTP yet
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"{url} ({name}) did not answer within {timeout_s} s")
            time.sleep(0.1)

    def wait_text(self, name: str, text: str, timeout_s: float = 60.0) -> None:
        """Wait until child ``name``'s log holds ``text``; raise at once if it exits meanwhile."""
        proc = self.procs[name]
        path = self.logdir / f"{name}.log"
        deadline = time.monotonic() + timeout_s
        while text not in path.read_text(errors="replace"):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{name} did not start:\n{self.log_tail(name, 3000)}")
            time.sleep(0.1)

    def stop(self, *names: str) -> None:
        """SIGTERM to every child still running (or to the ``names`` given), last started
        first; SIGKILL after the wait."""
        chosen = [n for n in reversed(self.procs) if not names or n in names]
        procs = [self.procs[n] for n in chosen]
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + self.stop_timeout_s
        for p in procs:
            try:
                p.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        for n in chosen:
            log = self._logs.pop(n, None)
            if log is not None:
                log.close()

    def __enter__(self) -> Children:
        return self

    def __exit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
