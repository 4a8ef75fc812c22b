"""One keep-alive connection of the lean upstream client: HTTP/1.1 answers parsed as they arrive.

:class:`Conn` is the ``asyncio.Protocol``: it reads the answer's head, then its
body (Content-Length, chunked -- decoded here -- or until the connection ends)
into a :class:`Body` that dispatch reads with ``iter_any()`` or ``read()``. A
worker that sends faster than the client reads is paused past ``HIGH_WATER``
bytes. Pools, timeouts and the public API are in
:mod:`~voltana.services.router.upstream_http`.
"""

from __future__ import annotations

import asyncio
import collections
from collections.abc import AsyncIterator
from typing import Protocol

import aiohttp

__all__ = ["HIGH_WATER", "Answer", "Body", "Conn", "Owner"]

HIGH_WATER = 1 << 18  # bytes buffered from a worker before its socket stops being read


class Owner(Protocol):
    """The pool a connection belongs to (it leaves the pool when it closes)."""

    def forget(self, conn: Conn) -> None: ...


class Answer(Protocol):
    """The call a connection is answering (``Answer``): filled in as bytes arrive."""

    status: int
    content_type: str
    content: Body
    complete: bool

    def head_ready(self) -> None: ...
    def head_failed(self, exc: BaseException) -> None: ...


class Body:
    """The answer's body as it arrives: ``iter_any()`` / ``read()`` / ``is_eof()``."""

    __slots__ = ("_conn", "_eof", "_error", "_parts", "_size", "_waiter")

    def __init__(self, conn: Conn) -> None:
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


class Conn(asyncio.Protocol):
    """One keep-alive connection to one worker; one call at a time."""

    def __init__(self, pool: Owner, loop: asyncio.AbstractEventLoop) -> None:
        self.pool = pool
        self.loop = loop
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.resp: Answer | None = None
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
            resp.head_failed(aiohttp.ServerDisconnectedError())
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
                    resp.head_failed(aiohttp.ClientPayloadError("response head too long"))
                    self.abort()
                return
            head, data = self.buf[:end], self.buf[end + 4 :]
            self.buf = b""
            if not self._head(head, resp):
                return
        if data and self.resp is resp:
            self._body(data, resp)

    def _head(self, head: bytes, resp: Answer) -> bool:
        lines = head.split(b"\r\n")
        try:
            version, status = lines[0].split(b" ", 2)[:2]
            resp.status = int(status)
        except ValueError:
            resp.head_failed(aiohttp.ClientPayloadError(f"bad status line {lines[0][:80]!r}"))
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
                    resp.head_failed(aiohttp.ClientPayloadError(f"bad Content-Length {v!r}"))
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
        resp.head_ready()
        if self.remaining == 0:
            self._done(resp)
        return True

    def _body(self, data: bytes, resp: Answer) -> None:
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

    def _done(self, resp: Answer) -> None:
        """The whole answer arrived: the connection can serve the next call."""
        resp.content.end()
        resp.complete = True
        self.resp = None
        self.head_done = False
        self.remaining = -1
        self.chunked = False
        self.chunk_left = 0
        if self.paused:
            self.resume()
        if not self.keep:
            self.abort()

    def start(self, resp: Answer, request: bytes) -> None:
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
