"""The routers' load generator: a closed loop of raw asyncio HTTP/1.1 clients.

Each client sends ``/generate`` over one keep-alive connection, one request at a time,
and records the latency the router in front adds (its end-to-end time minus the
decode worker's own ``meta_info.e2e_latency``) and the time to the first body bytes.
Raw sockets keep the generator's own cost per request well below any router's
(``router_vs_peers.py`` prints it beside each router's).
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = ["RunResult", "closed_loop", "generate_body", "pct", "run_loop"]

_E2E = re.compile(rb'"e2e_latency"\s*:\s*([0-9.eE+-]+)')


@dataclass
class RunResult:
    router: str
    stream: bool
    clients: int
    seconds: float = 0.0
    ok: int = 0
    errors: int = 0
    added_s: list[float] = field(default_factory=list)
    ttft_s: list[float] = field(default_factory=list)
    router_cpu_s: float = 0.0
    client_cpu_s: float = 0.0

    @property
    def rps(self) -> float:
        return self.ok / self.seconds if self.seconds else 0.0

    @property
    def cpu_ms_per_req(self) -> float:
        return self.router_cpu_s * 1e3 / self.ok if self.ok else float("nan")


def generate_body(input_len: int, output_len: int, stream: bool) -> bytes:
    """The ``/generate`` request every client sends: token ids in, a fixed output length."""
    sampling = {"max_new_tokens": output_len, "ignore_eos": True, "temperature": 0}
    return json.dumps(
        {"input_ids": list(range(1, input_len + 1)), "stream": stream, "sampling_params": sampling}
    ).encode()


def pct(xs: list[float], q: float) -> float:
    return float(np.percentile(xs, q)) * 1e3 if xs else float("nan")


# -- the load generator: one keep-alive HTTP/1.1 connection per client --------------


def _dechunk(raw: bytes) -> bytes:
    out, pos = [], 0
    while True:
        eol = raw.find(b"\r\n", pos)
        if eol < 0:
            return b"".join(out)
        size = int(raw[pos:eol].split(b";")[0], 16)
        if size == 0:
            return b"".join(out)
        out.append(raw[eol + 2 : eol + 2 + size])
        pos = eol + 2 + size + 2


class Conn(asyncio.Protocol):
    """Sends one request at a time and resolves ``done`` with (status, body, t_first)."""

    def __init__(self) -> None:
        self.t: asyncio.Transport | None = None
        self.done: asyncio.Future[tuple[int, bytes, float | None]] | None = None
        self.lost = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.t = transport  # type: ignore[assignment]

    def connection_lost(self, exc: Exception | None) -> None:
        if self.done is not None and not self.done.done():
            if self.length is None and not self.chunked and self.status:
                self.done.set_result((self.status, bytes(self.body), self.t_first))
            else:
                self.done.set_exception(ConnectionError("connection lost"))
        if not self.lost.done():
            self.lost.set_result(None)

    def send(self, req: bytes) -> asyncio.Future[tuple[int, bytes, float | None]]:
        assert self.t is not None
        self.head = b""
        self.body = bytearray()
        self.status = 0
        self.length: int | None = None
        self.chunked = False
        self.close_after = False
        self.t_first: float | None = None
        self.done = asyncio.get_running_loop().create_future()
        self.t.write(req)
        return self.done

    def data_received(self, data: bytes) -> None:
        if self.done is None or self.done.done():
            return
        if not self.status:
            self.head += data
            end = self.head.find(b"\r\n\r\n")
            if end < 0:
                return
            lines = self.head[:end].split(b"\r\n")
            self.status = int(lines[0].split(b" ")[1])
            for line in lines[1:]:
                k, _, v = line.partition(b":")
                k = k.strip().lower()
                if k == b"content-length":
                    self.length = int(v)
                elif k == b"transfer-encoding" and b"chunked" in v.lower():
                    self.chunked = True
                elif k == b"connection" and b"close" in v.lower():
                    self.close_after = True
            data = self.head[end + 4 :]
        if data and self.t_first is None:
            self.t_first = time.perf_counter()
        self.body += data
        if self.chunked:
            b = self.body
            if not (b.endswith(b"\r\n0\r\n\r\n") or b == b"0\r\n\r\n"):
                return
            body = _dechunk(bytes(b))
        elif self.length is not None:
            if len(self.body) < self.length:
                return
            body = bytes(self.body)
        else:
            return  # ends with the connection
        self.done.set_result((self.status, body, self.t_first))


async def closed_loop(
    port: int, name: str, stream: bool, clients: int, seconds: float, body: bytes
) -> RunResult:
    """``clients`` clients, each one request at a time, for ``seconds`` (after a warm-up)."""
    loop = asyncio.get_running_loop()
    req = (
        b"POST /generate HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nContent-Type: application/json\r\n"
        b"Content-Length: %d\r\n\r\n%s" % (port, len(body), body)
    )
    res = RunResult(name, stream, clients)

    async def connect() -> Conn:
        _, c = await loop.create_connection(Conn, "127.0.0.1", port)
        return c

    async def one(c: Conn, record: bool) -> Conn:
        t0 = time.perf_counter()
        try:
            status, data, t_first = await c.send(req)
        except (ConnectionError, OSError):
            if record:
                res.errors += 1
            return await connect()
        e2e = time.perf_counter() - t0
        m = None
        for m in _E2E.finditer(data[-2048:]):  # noqa: B007 - the last match is the one
            pass
        good = status == 200 and m is not None and b'"error"' not in data
        if stream:
            good = good and b"[DONE]" in data[-64:]
        if record:
            if not good:
                res.errors += 1
            else:
                res.ok += 1
                res.added_s.append(max(e2e - float(m.group(1)), 0.0))  # type: ignore[union-attr]
                if t_first is not None:
                    res.ttft_s.append(t_first - t0)
        if c.close_after or c.lost.done():
            c.t.close()  # type: ignore[union-attr]
            return await connect()
        return c

    conns = [await connect() for _ in range(clients)]
    conns = list(await asyncio.gather(*(one(c, False) for c in conns)))  # warm-up, unrecorded
    stop_at = time.perf_counter() + seconds

    async def client(c: Conn) -> None:
        while time.perf_counter() < stop_at:
            c = await one(c, True)
        c.t.close()  # type: ignore[union-attr]

    cpu0 = time.process_time()
    t0 = time.perf_counter()
    await asyncio.gather(*(client(c) for c in conns))
    res.seconds = time.perf_counter() - t0
    res.client_cpu_s = time.process_time() - cpu0
    return res


def run_loop(coro: Any) -> Any:
    try:
        import uvloop

        return uvloop.run(coro)
    except ImportError:
        return asyncio.run(coro)
