"""The router's HTTP/1.1 client for the worker calls of every request: ``POST`` and the answer.

Every dispatched request makes two upstream calls (prefill and decode). aiohttp's
client spends about 80 us of CPU on each (request object, header merging,
timers, its stream reader); this one keeps per worker a pool of keep-alive
connections, each an ``asyncio.Protocol`` that writes one pre-joined request
(built here by hand: a fixed ``POST`` head with Content-Length) and hands the
answer's body over as it arrives (parsed by httptools, see
:mod:`~voltana.services.router.upstream_conn`), at a fraction of that. It mimics the part of aiohttp's API dispatch uses
(``post()`` as an async context manager; ``status``, ``content_type``, ``read()``,
``content.iter_any()``, ``content.is_eof()``, ``release()``, ``close()``) and
raises aiohttp's exception types and ``TimeoutError``, so the breaker, retry
and error paths stay as they are. Health checks and info routes keep aiohttp.

Timeouts, as the aiohttp session had them: connecting (``connect_s``), the whole
call (``total_s``) and the longest gap between bytes (``read_s``), all open calls
watched by one loop timer set for the earliest expiry (a read only notes its time).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import heapq
import itertools
import math
from types import TracebackType
from typing import Any
from urllib.parse import urlsplit

import aiohttp
from voltana.services.router.config import RouterConfig
from voltana.services.router.upstream_conn import Body, Conn

__all__ = ["LeanClient", "LeanResponse", "worker_client"]


class Pool:
    """Idle keep-alive connections to one worker (``host:port``), newest first."""

    def __init__(self, client: LeanClient, host: str, port: int) -> None:
        self.client = client
        self.host = host
        self.port = port
        self.idle: collections.deque[Conn] = collections.deque()

    def forget(self, conn: Conn) -> None:
        with contextlib.suppress(ValueError):  # not idle: nothing to forget
            self.idle.remove(conn)

    async def acquire(self, timeout_s: float) -> Conn:
        while self.idle:
            conn = self.idle.pop()
            if not conn.closed:
                return conn
        async with asyncio.timeout(timeout_s):
            try:
                _, conn = await self.client.loop.create_connection(
                    lambda: Conn(self, self.client.loop), self.host, self.port
                )
            except OSError as exc:
                raise aiohttp.ClientOSError(
                    exc.errno, f"Cannot connect to {self.host}:{self.port}: {exc.strerror or exc}"
                ) from exc
        return conn

    def give_back(self, conn: Conn) -> None:
        if not conn.closed and conn.resp is None:
            self.idle.append(conn)


class LeanResponse:
    """One call's answer (what dispatch reads of an ``aiohttp.ClientResponse``)."""

    __slots__ = (
        "_conn",
        "_head",
        "_pool",
        "complete",
        "content",
        "content_type",
        "deadline",
        "ended",
        "status",
    )

    def __init__(self, conn: Conn, pool: Pool, deadline: float) -> None:
        self._conn = conn
        self._pool = pool
        self.deadline = deadline  # of the whole call (loop time)
        self.ended = False  # released or closed: its timeouts no longer matter
        self.status = 0
        self.content_type = "application/octet-stream"
        self.content = Body(conn)
        self._head: asyncio.Future[None] = conn.loop.create_future()
        self.complete = False

    def head_ready(self) -> None:
        if not self._head.done():
            self._head.set_result(None)

    def head_failed(self, exc: BaseException) -> None:
        if not self._head.done():
            self._head.set_exception(exc)
        self.content.end(exc)

    async def read(self) -> bytes:
        return await self.content.read()

    def release(self) -> None:
        """Done with it: a fully read connection goes back to the pool, any other closes."""
        self._stop_timer()
        conn = self._conn
        if self.complete and not conn.closed:
            self._pool.give_back(conn)
        else:
            self.close()

    def close(self) -> None:
        """Abort the call: the connection is closed (a worker takes that as the client gone)."""
        self._stop_timer()
        conn = self._conn
        if not self.complete:
            self.content.end(aiohttp.ClientConnectionError("Connection closed"))
            self.head_failed(aiohttp.ClientConnectionError("Connection closed"))
            conn.abort()

    def _stop_timer(self) -> None:
        self.ended = True

    def expires(self, read_s: float) -> float:
        """When this call times out unless more bytes come (loop time)."""
        return min(self.deadline, self._conn.last_read + read_s)

    def time_out(self) -> None:
        exc = TimeoutError()
        self.head_failed(exc)
        self.content.end(exc)
        self._conn.abort()


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
        self._pools: dict[tuple[str, int], Pool] = {}
        self._prefix: dict[str, tuple[Pool, bytes]] = {}
        self._heap: list[tuple[float, int, LeanResponse]] = []  # see _arm
        self._seq = itertools.count()
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = math.inf
        self._compact_at = 256

    def post(self, url: str, data: bytes, headers: Any = None) -> _Call:
        """``POST data`` to ``url`` as ``application/json`` (what dispatch sends; other
        ``headers`` are not sent: the argument is there for aiohttp's signature)."""
        return _Call(self, url, data)

    def _target(self, url: str) -> tuple[Pool, bytes]:
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
            pool = self._pools[key] = Pool(self, parts.hostname, port)
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
        resp = LeanResponse(conn, pool, deadline)
        conn.start(resp, b"%sContent-Length: %d\r\n\r\n%s" % (head, len(data), data))
        self._arm(resp)
        try:
            await resp._head
        except BaseException:
            resp.close()
            raise
        return resp

    def _arm(self, resp: LeanResponse) -> None:
        """Watch ``resp``'s timeouts: one loop timer for all calls, at the earliest expiry.

        Entries are (expiry as last known, seq, call); a read only notes its time, and
        an entry found early when the timer fires goes back with its new expiry, so
        calls still time out in order and on time. Ended calls are dropped lazily.
        """
        at = resp.expires(self.read_s)
        heapq.heappush(self._heap, (at, next(self._seq), resp))
        if len(self._heap) > self._compact_at:  # amortised: at most doubling in between
            self._heap = [e for e in self._heap if not e[2].ended]
            heapq.heapify(self._heap)
            self._compact_at = 2 * len(self._heap) + 256
        if at < self._timer_at:
            self._set_timer(at)

    def _set_timer(self, at: float) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer_at = at
        self._timer = self.loop.call_at(at, self._fire)

    def _fire(self) -> None:
        self._timer, self._timer_at = None, math.inf
        now = self.loop.time()
        heap = self._heap
        while heap and heap[0][0] <= now:
            _, _, resp = heapq.heappop(heap)
            if resp.ended or resp.complete or resp._conn.closed:
                continue
            at = resp.expires(self.read_s)
            if at <= now:
                resp.time_out()
            else:
                heapq.heappush(heap, (at, next(self._seq), resp))
        if heap:
            self._set_timer(heap[0][0])

    async def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        for pool in self._pools.values():
            while pool.idle:
                pool.idle.pop().abort()
        self._pools.clear()
        self._prefix.clear()


def worker_client(
    cfg: RouterConfig, session: aiohttp.ClientSession
) -> aiohttp.ClientSession | LeanClient:
    """What carries the two worker calls of every request: the lean client, unless the
    pool is bounded (``upstream_connections``) or a worker is not plain ``http://``;
    then aiohttp's ``session``, which serves the health checks and info routes anyway."""
    urls = [w.url for w in (*cfg.prefill, *cfg.decode, *cfg.workers)]
    if cfg.upstream_connections or not all(u.startswith("http://") for u in urls):
        return session
    return LeanClient(
        connect_s=cfg.connect_timeout_s, total_s=cfg.request_timeout_s, read_s=cfg.read_timeout_s
    )
