"""The router's HTTP/1.1 client for the worker calls of every request: ``POST`` and the answer.

Every dispatched request makes two upstream calls (prefill and decode). aiohttp's
client spends about 80 us of CPU on each (request object, header merging,
timers, its stream reader); this one keeps per worker a pool of keep-alive
connections, each an ``asyncio.Protocol`` that writes one pre-joined request
and hands the answer's body over as it arrives (chunked transfer decoded here),
at a fraction of that. It mimics the part of aiohttp's API dispatch uses
(``post()`` as an async context manager; ``status``, ``content_type``, ``read()``,
``content.iter_any()``, ``content.is_eof()``, ``release()``, ``close()``) and
raises aiohttp's exception types and ``TimeoutError``, so the breaker, retry
and error paths stay as they are. Health checks and info routes keep aiohttp.

Timeouts, as the aiohttp session had them: connecting (``connect_s``), the whole
call (``total_s``) and the longest gap between bytes (``read_s``); one timer per
call, re-armed lazily (a gap is checked when the timer fires, not per read).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
from collections.abc import AsyncIterator
from types import TracebackType
from typing import Any
from urllib.parse import urlsplit

import aiohttp

__all__ = ["LeanClient", "LeanResponse"]

HIGH_WATER = 1 << 18  # bytes buffered from a worker before its socket stops being read


class _Body:
    """The answer's body as it arrives: ``iter_any()`` / ``read()`` / ``is_eof()``."""

    __slots__ = ("_conn", "_eof", "_error", "_parts", "_size", "_waiter")

    def __init__(self, conn: _Conn) -> None:
        self._conn = conn
        self._parts: collections.deque[bytes] = collections.deque()
        self._size = 0
        self._eof = False
        self._error: BaseException | None = None
        self._waiter: asyncio.Future[None] | None = None

    def is_eof(self) -> bool:
        return self._eof and not self._parts

    def _wake(self) -> None:
        w = self._waiter
        if w is not None and not w.done():
            w.set_result(None)

    def feed(self, data: bytes) -> None:
        self._parts.append(data)
        self._size += len(data)
        if self._size > HIGH_WATER:
            self._conn.pause()
        self._wake()

    def end(self, error: BaseException | None = None) -> None:
        if self._eof:
            return
        self._eof = True
        self._error = error
        self._wake()

    async def _next(self) -> bytes | None:
        while not self._parts:
            if self._eof:
                if self._error is not None:
                    raise self._error
                return None
            self._waiter = self._conn.loop.create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        if len(self._parts) == 1:
            data = self._parts.popleft()
        else:
            data = b"".join(self._parts)
            self._parts.clear()
        self._size = 0
        self._conn.resume()
        return data

    async def iter_any(self) -> AsyncIterator[bytes]:
        while (data := await self._next()) is not None:
            yield data

    async def read(self) -> bytes:
        parts = []
        while (data := await self._next()) is not None:
            parts.append(data)
        return b"".join(parts)


class _Conn(asyncio.Protocol):
    """One keep-alive connection to one worker; one call at a time."""

    def __init__(self, pool: _Pool) -> None:
        self.pool = pool
        self.loop = pool.client.loop
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.resp: LeanResponse | None = None
        self.buf = b""
        self.head_done = False
        self.remaining = -1  # Content-Length left; -1: chunked or until close
        self.chunked = False
        self.chunk_left = 0
        self.paused = False
        self.keep = True
        self.last_read = 0.0

    # -- asyncio.Protocol ------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.pool.forget(self)
        resp = self.resp
        if resp is None:
            return
        if not self.head_done:
            resp._head_failed(aiohttp.ServerDisconnectedError())
        elif self.remaining == -1 and not self.chunked:
            resp.content.end()  # a body delimited by the connection's end
        else:
            resp.content.end(aiohttp.ClientPayloadError("Response payload is not completed"))

    def data_received(self, data: bytes) -> None:
        self.last_read = self.loop.time()
        resp = self.resp
        if resp is None:
            self.abort()  # bytes nobody asked for: this connection cannot be trusted
            return
        while not self.head_done:  # a 1xx head is skipped: the real one follows
            self.buf += data
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                if len(self.buf) > 65536:
                    resp._head_failed(aiohttp.ClientPayloadError("response head too long"))
                    self.abort()
                return
            head, data = self.buf[:end], self.buf[end + 4 :]
            self.buf = b""
            if not self._head(head, resp):
                return
        if data and self.resp is resp:
            self._body(data, resp)

    def _head(self, head: bytes, resp: LeanResponse) -> bool:
        lines = head.split(b"\r\n")
        try:
            version, status = lines[0].split(b" ", 2)[:2]
            resp.status = int(status)
        except ValueError:
            resp._head_failed(aiohttp.ClientPayloadError(f"bad status line {lines[0][:80]!r}"))
            self.abort()
            return False
        if resp.status < 200:  # 1xx: the real head follows
            return True
        self.keep = version == b"HTTP/1.1"
        for line in lines[1:]:
            k, _, v = line.partition(b":")
            k = k.strip().lower()
            if k == b"content-length":
                if not v.strip().isdigit():
                    resp._head_failed(aiohttp.ClientPayloadError(f"bad Content-Length {v!r}"))
                    self.abort()
                    return False
                self.remaining = int(v)
            elif k == b"transfer-encoding":
                self.chunked = b"chunked" in v.lower()
            elif k == b"content-type":
                resp.content_type = v.split(b";", 1)[0].strip().decode("latin-1").lower()
            elif k == b"connection":
                v = v.strip().lower()
                self.keep = v != b"close" if self.keep else v == b"keep-alive"
        if self.chunked:
            self.remaining = -1
        self.head_done = True
        resp._head_ready()
        if self.remaining == 0:
            self._done(resp)
        return True

    def _body(self, data: bytes, resp: LeanResponse) -> None:
        if not self.chunked:
            if self.remaining >= 0:
                if len(data) >= self.remaining:
                    data, self.remaining = data[: self.remaining], 0
                    if data:
                        resp.content.feed(data)
                    self._done(resp)
                    return
                self.remaining -= len(data)
            resp.content.feed(data)
            return
        buf = self.buf + data if self.buf else data
        out = []
        pos = 0
        n = len(buf)
        while pos < n:
            if self.chunk_left > 0:
                take = min(self.chunk_left, n - pos)
                out.append(buf[pos : pos + take])
                pos += take
                self.chunk_left -= take
                if self.chunk_left == 0:
                    self.chunk_left = -2  # the CRLF after the data
                continue
            if self.chunk_left == -2:
                if n - pos < 2:
                    break
                pos += 2
                self.chunk_left = 0
                continue
            eol = buf.find(b"\r\n", pos)
            if eol < 0:
                break
            try:
                size = int(buf[pos:eol].split(b";", 1)[0], 16)
            except ValueError:
                resp.content.end(aiohttp.ClientPayloadError("bad chunk size"))
                self.abort()
                return
            if size == 0:  # the last chunk; trailers end with an empty line
                end = buf.find(b"\r\n\r\n", eol)
                if end < 0 and buf[eol : eol + 4] != b"\r\n\r\n":
                    break
                if out:
                    resp.content.feed(b"".join(out))
                self.buf = b""
                self._done(resp)
                return
            pos = eol + 2
            self.chunk_left = size
        self.buf = buf[pos:]
        if out:
            resp.content.feed(out[0] if len(out) == 1 else b"".join(out))

    # -- the pool's side ---------------------------------------------------------------

    def _done(self, resp: LeanResponse) -> None:
        """The whole answer arrived: the connection can serve the next call."""
        resp.content.end()
        resp._complete = True
        self.resp = None
        self.head_done = False
        self.remaining = -1
        self.chunked = False
        self.chunk_left = 0
        if self.paused:
            self.resume()
        if not self.keep:
            self.abort()

    def start(self, resp: LeanResponse, request: bytes) -> None:
        self.resp = resp
        self.last_read = self.loop.time()
        assert self.transport is not None
        self.transport.write(request)

    def pause(self) -> None:
        if not self.paused and self.transport is not None and not self.closed:
            self.paused = True
            self.transport.pause_reading()

    def resume(self) -> None:
        if self.paused and self.transport is not None and not self.closed:
            self.paused = False
            self.transport.resume_reading()

    def abort(self) -> None:
        if not self.closed:
            self.closed = True
            if self.transport is not None:
                self.transport.abort()
        self.pool.forget(self)


class _Pool:
    """Idle keep-alive connections to one worker (``host:port``), newest first."""

    def __init__(self, client: LeanClient, host: str, port: int) -> None:
        self.client = client
        self.host = host
        self.port = port
        self.idle: collections.deque[_Conn] = collections.deque()

    def forget(self, conn: _Conn) -> None:
        with contextlib.suppress(ValueError):  # not idle: nothing to forget
            self.idle.remove(conn)

    async def acquire(self, timeout_s: float) -> _Conn:
        while self.idle:
            conn = self.idle.pop()
            if not conn.closed:
                return conn
        async with asyncio.timeout(timeout_s):
            try:
                _, conn = await self.client.loop.create_connection(
                    lambda: _Conn(self), self.host, self.port
                )
            except OSError as exc:
                raise aiohttp.ClientOSError(
                    exc.errno, f"Cannot connect to {self.host}:{self.port}: {exc.strerror or exc}"
                ) from exc
        return conn

    def give_back(self, conn: _Conn) -> None:
        if not conn.closed and conn.resp is None:
            self.idle.append(conn)


class LeanResponse:
    """One call's answer (what dispatch reads of an ``aiohttp.ClientResponse``)."""

    __slots__ = (
        "_complete",
        "_conn",
        "_head",
        "_timer",
        "content",
        "content_type",
        "status",
    )

    def __init__(self, conn: _Conn) -> None:
        self._conn = conn
        self.status = 0
        self.content_type = "application/octet-stream"
        self.content = _Body(conn)
        self._head: asyncio.Future[None] = conn.loop.create_future()
        self._complete = False
        self._timer: asyncio.TimerHandle | None = None

    def _head_ready(self) -> None:
        if not self._head.done():
            self._head.set_result(None)

    def _head_failed(self, exc: BaseException) -> None:
        if not self._head.done():
            self._head.set_exception(exc)
        self.content.end(exc)

    async def read(self) -> bytes:
        return await self.content.read()

    def release(self) -> None:
        """Done with it: a fully read connection goes back to the pool, any other closes."""
        self._stop_timer()
        conn = self._conn
        if self._complete and not conn.closed:
            conn.pool.give_back(conn)
        else:
            self.close()

    def close(self) -> None:
        """Abort the call: the connection is closed (a worker takes that as the client gone)."""
        self._stop_timer()
        conn = self._conn
        if not self._complete:
            self.content.end(aiohttp.ClientConnectionError("Connection closed"))
            self._head_failed(aiohttp.ClientConnectionError("Connection closed"))
            conn.abort()

    def _stop_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None


class _Call:
    """``async with client.post(url, data=...) as resp``: the head is awaited on entry."""

    __slots__ = ("_client", "_data", "_resp", "_url")

    def __init__(self, client: LeanClient, url: str, data: bytes) -> None:
        self._client = client
        self._url = url
        self._data = data
        self._resp: LeanResponse | None = None

    async def __aenter__(self) -> LeanResponse:
        self._resp = await self._client._send(self._url, self._data)
        return self._resp

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._resp is not None:
            self._resp.release()


class LeanClient:
    """Keep-alive pools per worker; ``post(url, data=...)`` as aiohttp's session has it.

    Args:
        connect_s: connecting to a worker.
        total_s: the whole call, head and body.
        read_s: the longest gap between bytes from the worker.
    """

    def __init__(self, *, connect_s: float, total_s: float, read_s: float) -> None:
        self.loop = asyncio.get_running_loop()
        self.connect_s = connect_s
        self.total_s = total_s
        self.read_s = read_s
        self._pools: dict[tuple[str, int], _Pool] = {}
        self._prefix: dict[str, tuple[_Pool, bytes]] = {}

    def post(self, url: str, data: bytes, headers: Any = None) -> _Call:
        return _Call(self, url, data)

    def _target(self, url: str) -> tuple[_Pool, bytes]:
        """The pool and the request's first lines for ``url`` (cached: URLs repeat)."""
        hit = self._prefix.get(url)
        if hit is not None:
            return hit
        parts = urlsplit(url)
        if parts.scheme != "http" or not parts.hostname:
            raise aiohttp.InvalidURL(url)
        port = parts.port or 80
        key = (parts.hostname, port)
        pool = self._pools.get(key)
        if pool is None:
            pool = self._pools[key] = _Pool(self, parts.hostname, port)
        target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        host = parts.netloc.rsplit("@", 1)[-1]
        head = (
            f"POST {target} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
        ).encode("latin-1")
        if len(self._prefix) < 4096:
            self._prefix[url] = (pool, head)
        return pool, head

    async def _send(self, url: str, data: bytes) -> LeanResponse:
        pool, head = self._target(url)
        deadline = self.loop.time() + self.total_s
        conn = await pool.acquire(min(self.connect_s, self.total_s))
        resp = LeanResponse(conn)
        conn.start(resp, b"%sContent-Length: %d\r\n\r\n%s" % (head, len(data), data))
        self._arm(resp, deadline)
        try:
            await resp._head
        except BaseException:
            resp.close()
            raise
        return resp

    def _arm(self, resp: LeanResponse, deadline: float) -> None:
        """One timer per call: fires at the deadline or when the read gap ran out."""
        conn = resp._conn

        def check() -> None:
            resp._timer = None
            if resp._complete or conn.closed:
                return
            now = self.loop.time()
            gap_end = conn.last_read + self.read_s
            if now >= deadline or now >= gap_end:
                exc = TimeoutError()
                resp._head_failed(exc)
                resp.content.end(exc)
                conn.abort()
                return
            resp._timer = self.loop.call_at(min(deadline, gap_end), check)

        resp._timer = self.loop.call_at(min(deadline, conn.last_read + self.read_s), check)

    async def close(self) -> None:
        for pool in self._pools.values():
            while pool.idle:
                pool.idle.pop().abort()
        self._pools.clear()
        self._prefix.clear()
