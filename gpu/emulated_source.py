"""GPU source reading emulated GPUs through the emulator's admin HTTP (``GET /voltana/gpus``).

Synchronous on purpose (like NVML): the service calls ``sample()`` in a worker
thread. One persistent HTTP/1.1 connection per source, reopened after errors.
"""

from __future__ import annotations

import http.client
import time
import urllib.parse

import msgspec
from voltana.common.errors import GpuError
from voltana.gpu.sources import EnergyCounter, GpuSample, SourceKind


class AdminGpu(msgspec.Struct, kw_only=True):
    """One GPU object of the emulator's admin API (fields the source uses)."""

    index: int
    sm_clock_mhz: int
    power_w: float
    energy_mj: int
    name: str | None = None
    locked_clock_mhz: int | None = None
    max_sm_clock_mhz: int | None = None
    mem_clock_mhz: int | None = None
    power_limit_w: float | None = None
    throttle_reasons: int = 0
    util_gpu_pct: float | None = None
    mem_used_mib: float | None = None
    temperature_c: float | None = None


class AdminGpus(msgspec.Struct):
    gpus: list[AdminGpu]


_decoder = msgspec.json.Decoder(AdminGpus)


class EmulatedGpuSource:
    """Reads the given node-global GPU indices from one emulator server.

    Raises (from ``sample``):
        GpuError: the emulator does not answer, answers badly, or does not
            serve one of the indices.
    """

    kind: SourceKind = "emulated"

    def __init__(
        self, admin_url: str, indices: list[int] | tuple[int, ...], *, timeout_s: float = 1.0
    ) -> None:
        parsed = urllib.parse.urlsplit(admin_url)
        if parsed.scheme not in ("http", "https") or not parsed.hostname:
            raise GpuError(f"emulated GPU source: bad admin url {admin_url!r}")
        self._url = admin_url.rstrip("/")
        self._scheme = parsed.scheme
        self._host = parsed.hostname
        self._port = parsed.port or (443 if parsed.scheme == "https" else 80)
        self._path = (parsed.path.rstrip("/") or "") + "/voltana/gpus"
        self._timeout_s = timeout_s
        self._indices = tuple(int(i) for i in indices)
        if not self._indices:
            raise GpuError("no GPU indices given to the emulated GPU source")
        self._energy = {i: EnergyCounter() for i in self._indices}
        self._conn: http.client.HTTPConnection | None = None
        self._closed = False

    @property
    def indices(self) -> tuple[int, ...]:
        return self._indices

    def _connection(self) -> http.client.HTTPConnection:
        if self._conn is None:
            cls = (
                http.client.HTTPSConnection
                if self._scheme == "https"
                else http.client.HTTPConnection
            )
            self._conn = cls(self._host, self._port, timeout=self._timeout_s)
        return self._conn

    def _fetch(self) -> bytes:
        last: Exception | None = None
        for _ in range(2):  # one retry: a kept-alive connection may have been closed by the peer
            conn = self._connection()
            try:
                conn.request("GET", self._path)
                resp = conn.getresponse()
                body = resp.read()
            except (OSError, http.client.HTTPException) as exc:
                last = exc
                conn.close()
                self._conn = None
                continue
            if resp.status != 200:
                raise GpuError(
                    f"emulator at {self._url} answered {resp.status} to GET /voltana/gpus",
                    code=f"HTTP_{resp.status}",
                )
            return body
        raise GpuError(
            f"emulator at {self._url} is unreachable: {last or 'no answer'}", code="UNREACHABLE"
        )

    def sample(self) -> list[GpuSample]:
        if self._closed:
            raise GpuError("emulated GPU source is closed", code="CLOSED")
        t0_ns, m0_ns = time.time_ns(), time.monotonic_ns()
        body = self._fetch()
        # the emulator read its counters somewhere inside the request: take the midpoint
        t_ns = (t0_ns + time.time_ns()) // 2
        mono_ns = (m0_ns + time.monotonic_ns()) // 2
        try:
            doc = _decoder.decode(body)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            raise GpuError(
                f"emulator at {self._url} sent a malformed GPU list: {exc}", code="BAD_PAYLOAD"
            ) from exc
        by_index = {g.index: g for g in doc.gpus}
        out: list[GpuSample] = []
        for i in self._indices:
            g = by_index.get(i)
            if g is None:
                served = ",".join(str(k) for k in sorted(by_index)) or "none"
                raise GpuError(
                    f"GPU index {i} is not served by the emulator at {self._url} (it has {served})",
                    gpu=i,
                    code="INDEX_OUT_OF_RANGE",
                )
            out.append(
                GpuSample(
                    index=i,
                    t_ns=t_ns,
                    mono_ns=mono_ns,
                    power_w=g.power_w,
                    energy_j=self._energy[i].update(g.energy_mj),
                    sm_clock_mhz=g.sm_clock_mhz,
                    source="emulated",
                    name=g.name,
                    locked_clock_mhz=g.locked_clock_mhz,
                    mem_clock_mhz=g.mem_clock_mhz,
                    max_sm_clock_mhz=g.max_sm_clock_mhz,
                    power_limit_w=g.power_limit_w,
                    throttle_reasons=g.throttle_reasons,
                    util_gpu_pct=g.util_gpu_pct,
                    mem_used_mib=g.mem_used_mib,
                    temperature_c=g.temperature_c,
                )
            )
        return out

    def close(self) -> None:
        self._closed = True
        if self._conn is not None:
            self._conn.close()
            self._conn = None
