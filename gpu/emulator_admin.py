"""The emulator's GPU admin API: its payloads, and a blocking client.

The emulated worker serves its GPUs at ``/voltana/gpus`` (contract in
docs/emulator.md). The server encodes these Structs and this client decodes
them, so the two cannot drift apart. Blocking on purpose, like NVML: devices
are synchronous and async services call them from worker threads.
"""

from __future__ import annotations

import http.client
import os
import threading
import time
import urllib.parse
from typing import NamedTuple, TypeVar

import msgspec
from voltana.common.errors import GpuError

ADMIN_TOKEN_ENV = "VOLTANA_EMULATOR_ADMIN_TOKEN"
"""Where both the emulator and its clients read the admin token (never from argv)."""

__all__ = [
    "ADMIN_TOKEN_ENV",
    "AdminError",
    "EmulatedGpuState",
    "EmulatedGpus",
    "EmulatorAdmin",
    "LockRequest",
]


class EmulatedGpuState(msgspec.Struct, frozen=True, kw_only=True):
    """One emulated GPU as NVML would show it (``GET /voltana/gpus`` lists these)."""

    index: int
    name: str
    sm_clock_mhz: int
    """Effective: the capped clock while busy, the idle clock otherwise."""
    locked_clock_mhz: int | None
    """Top of the locked range (None: default clocks)."""
    locked_min_clock_mhz: int | None
    max_sm_clock_mhz: int
    supported_sm_clocks_mhz: list[int]
    """Descending, as NVML lists them."""
    mem_clock_mhz: int
    power_w: float
    energy_mj: int
    """Cumulative since the server started; restarts at 0 with the server."""
    power_limit_w: float
    throttle_reasons: int
    util_gpu_pct: float
    mem_used_mib: float
    temperature_c: float


class EmulatedGpus(msgspec.Struct, frozen=True):
    """The body of ``GET /voltana/gpus``."""

    gpus: list[EmulatedGpuState]


class LockRequest(msgspec.Struct, frozen=True, kw_only=True):
    """The body of ``POST /voltana/gpus/{index}/locked_clocks``."""

    min_mhz: int
    max_mhz: int


class AdminError(msgspec.Struct, frozen=True):
    """The body of every 4xx answer."""

    error: str


T = TypeVar("T")

_GPUS = msgspec.json.Decoder(EmulatedGpus)
_GPU = msgspec.json.Decoder(EmulatedGpuState)
_ERROR = msgspec.json.Decoder(AdminError)
_GPU_STATUS_CODES = {400: "INVALID_ARGUMENT", 404: "UNKNOWN_GPU"}


class _Reply(NamedTuple):
    status: int
    body: bytes
    t_ns: int
    """Wall-clock midpoint of the exchange (the server read its counters inside it)."""
    mono_ns: int


class EmulatorAdmin:
    """Client of one emulator server's GPU admin endpoints.

    One kept-alive HTTP/1.1 connection (stdlib ``http.client``), reopened after
    an error; a request on a connection the peer has closed is sent once more
    (locks and resets are idempotent). One request at a time per client.

    Raises:
        GpuError: a bad URL (here); from the calls: ``UNREACHABLE``,
            ``BAD_PAYLOAD``, ``INVALID_ARGUMENT``/``UNKNOWN_GPU`` (400/404 from a
            GPU's endpoint), or ``HTTP_<status>``.
    """

    def __init__(self, url: str, *, timeout_s: float = 2.0, token: str | None = None) -> None:
        parsed = urllib.parse.urlsplit(url)
        if parsed.scheme not in ("http", "https") or not parsed.hostname:
            raise GpuError(f"emulated GPUs: bad admin url {url!r}")
        self.url = url.rstrip("/")
        self._https = parsed.scheme == "https"
        self._host = parsed.hostname
        self._port = parsed.port or (443 if self._https else 80)
        self._prefix = parsed.path.rstrip("/") + "/voltana/gpus"
        self._timeout_s = timeout_s
        # the emulated GPUs' privilege, as CAP_SYS_ADMIN is NVML's (docs/emulator.md)
        self._token = token if token is not None else os.environ.get(ADMIN_TOKEN_ENV)
        self._conn: http.client.HTTPConnection | None = None
        self._mu = threading.Lock()

    def read_gpus(self) -> tuple[list[EmulatedGpuState], int, int]:
        """Every GPU of the server, and the wall/monotonic ns midpoint of the request."""
        reply = self._exchange("GET", "", None)
        return self._decode(reply, "GET", "", None, _GPUS).gpus, reply.t_ns, reply.mono_ns

    def gpus(self) -> list[EmulatedGpuState]:
        """Every GPU of the server."""
        return self.read_gpus()[0]

    def lock(self, gpu: int, min_mhz: int, max_mhz: int) -> EmulatedGpuState:
        """Lock ``gpu``'s SM clock range; returns the GPU as the server now shows it."""
        body = msgspec.json.encode(LockRequest(min_mhz=min_mhz, max_mhz=max_mhz))
        path = f"/{gpu}/locked_clocks"
        return self._decode(self._exchange("POST", path, body), "POST", path, gpu, _GPU)

    def reset(self, gpu: int) -> EmulatedGpuState:
        """Return ``gpu`` to default clocks; returns the GPU as the server now shows it."""
        path = f"/{gpu}/locked_clocks"
        return self._decode(self._exchange("DELETE", path, None), "DELETE", path, gpu, _GPU)

    def close(self) -> None:
        with self._mu:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

    def _connection(self) -> http.client.HTTPConnection:
        if self._conn is None:
            cls = http.client.HTTPSConnection if self._https else http.client.HTTPConnection
            self._conn = cls(self._host, self._port, timeout=self._timeout_s)
        return self._conn

    def _exchange(self, method: str, path: str, body: bytes | None) -> _Reply:
        headers = {"Content-Type": "application/json"} if body is not None else {}
        if self._token:
            headers["Authorization"] = f"Bearer {self._token}"
        last: Exception | None = None
        with self._mu:
            for _ in range(2):  # one retry: a kept-alive connection may have been closed
                conn = self._connection()
                t0_ns, m0_ns = time.time_ns(), time.monotonic_ns()
                try:
                    conn.request(method, self._prefix + path, body=body, headers=headers)
                    resp = conn.getresponse()
                    data = resp.read()
                except (OSError, http.client.HTTPException) as exc:
                    last = exc
                    conn.close()
                    self._conn = None
                    continue
                t_ns = (t0_ns + time.time_ns()) // 2
                mono_ns = (m0_ns + time.monotonic_ns()) // 2
                return _Reply(resp.status, data, t_ns, mono_ns)
        raise GpuError(
            f"emulator at {self.url} is unreachable: {last or 'no answer'}", code="UNREACHABLE"
        )

    def _decode(
        self,
        reply: _Reply,
        method: str,
        path: str,
        gpu: int | None,
        decoder: msgspec.json.Decoder[T],
    ) -> T:
        where = f"{method} /voltana/gpus{path}"
        if reply.status != 200:
            try:
                detail = _ERROR.decode(reply.body).error
            except (msgspec.DecodeError, msgspec.ValidationError):
                detail = ""
            code = (_GPU_STATUS_CODES if gpu is not None else {}).get(
                reply.status, f"HTTP_{reply.status}"
            )
            raise GpuError(
                f"emulator at {self.url} answered {reply.status} to {where} {detail}".rstrip(),
                gpu=gpu,
                code=code,
            )
        try:
            return decoder.decode(reply.body)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            raise GpuError(
                f"emulator at {self.url} sent a malformed answer to {where}: {exc}",
                gpu=gpu,
                code="BAD_PAYLOAD",
            ) from exc
