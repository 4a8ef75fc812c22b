"""One keep-alive connection of the lean upstream client: HTTP/1.1 answers parsed as they arrive.

:class:`Conn` is the ``asyncio.Protocol`` (as uvicorn's server side is): httptools,
the binding of llhttp (Node.js's parser), parses the answer -- status line,
headers, 1xx heads, Content-Length, chunked or until-close bodies -- and calls
back; the body goes into a :class:`Body` that dispatch reads with ``iter_any()``
or ``read()``. A worker that sends faster than the client reads is paused past
``HIGH_WATER`` bytes. Bytes that are not HTTP fail the call with aiohttp's
``ClientPayloadError`` and close the connection. The request side is written by
hand in :mod:`~voltana.services.router.upstream_http` (one fixed ``POST`` head with
Content-Length: nothing there to parse), as are pools and timeouts.
"""

from __future__ import annotations

import asyncio
import collections
from collections.abc import AsyncIterator
from typing import Protocol

import aiohttp
import httptools

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


class _Unasked(Exception):
    """An answer began while no call was waiting for one."""


class Conn(asyncio.Protocol):
    """One keep-alive connection to one worker; one call at a time.

    httptools (llhttp) parses the answer and calls back: ``on_header`` notes the
    content type and whether the body is framed (Content-Length or chunked);
    ``on_headers_complete`` hands the head over (a 1xx head is skipped: the real
    one follows); ``on_body`` collects the pieces of one read, fed to the body
    together; ``on_message_complete`` ends the call. A body neither sized nor
    chunked ends with the connection (llhttp leaves that to its caller).
    """

    def __init__(self, pool: Owner, loop: asyncio.AbstractEventLoop) -> None:
        self.pool = pool
        self.loop = loop
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.resp: Answer | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.head_done = False
        self.head_bytes = 0  # read while the head is incomplete (bounded)
        self.framed = False  # Content-Length or Transfer-Encoding: the end is in the stream
        self.ctype = b""
        self.parts: list[bytes] = []  # body pieces of the current read
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
        elif not self.framed:
            resp.content.end()  # a body delimited by the connection's end
        else:
            resp.content.end(aiohttp.ClientPayloadError("Response payload is not completed"))

    def data_received(self, data: bytes) -> None:
        self.last_read = self.loop.time()
        resp = self.resp
        if resp is None:
            self.abort()  # bytes nobody asked for: this connection cannot be trusted
            return
        try:
            self.parser.feed_data(data)
        except (httptools.HttpParserError, httptools.HttpParserUpgrade) as exc:
            self._bad(resp, exc)
            return
        if self.resp is not resp:
            return
        if self.parts:
            self._flush(resp)
        elif not self.head_done:
            self.head_bytes += len(data)
            if self.head_bytes > 65536:
                resp.head_failed(aiohttp.ClientPayloadError("response head too long"))
                self.abort()

    # -- httptools' callbacks ----------------------------------------------------------

    def on_message_begin(self) -> None:
        if self.resp is None:
            raise _Unasked  # bytes after the answer: parsing stops, the connection closes

    def on_header(self, name: bytes, value: bytes) -> None:
        name = name.lower()
        if name == b"content-type":
            self.ctype = value
        elif name == b"content-length" or name == b"transfer-encoding":
            self.framed = True

    def on_headers_complete(self) -> None:
        resp = self.resp
        assert resp is not None
        status = self.parser.get_status_code()
        if status < 200:  # 1xx: the real head follows
            self.ctype = b""
            self.framed = False
            return
        resp.status = status
        if self.ctype:
            ctype = self.ctype.split(b";", 1)[0].strip()
            resp.content_type = ctype.decode("latin-1").lower()
        self.keep = self.parser.should_keep_alive()
        self.head_done = True
        resp.head_ready()

    def on_body(self, body: bytes) -> None:
        if body:
            self.parts.append(body)

    def on_message_complete(self) -> None:
        resp = self.resp
        if resp is None or not self.head_done:  # the end of a 1xx answer
            return
        if self.parts:
            self._flush(resp)
        self._done(resp)

    def _flush(self, resp: Answer) -> None:
        parts = self.parts
        data = parts[0] if len(parts) == 1 else b"".join(parts)
        parts.clear()
        resp.content.feed(data)

    def _bad(self, resp: Answer, exc: Exception) -> None:
        """The worker's bytes are not HTTP (or not this answer's): the call fails, the
        connection closes."""
        self.abort()
        if self.resp is not resp:
            return  # the answer was whole; what followed it is dropped with the connection
        cause = exc.__context__ if isinstance(exc, httptools.HttpParserCallbackError) else exc
        err = aiohttp.ClientPayloadError(f"bad response from the worker: {cause}")
        if not self.head_done:
            resp.head_failed(err)
        else:
            if self.parts:
                self._flush(resp)
            resp.content.end(err)

    # -- the pool's side ---------------------------------------------------------------

    def _done(self, resp: Answer) -> None:
        """The whole answer arrived: the connection can serve the next call."""
        resp.content.end()
        resp.complete = True
        self.resp = None
        self.head_done = False
        self.head_bytes = 0
        self.framed = False
        self.ctype = b""
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
