"""Who gets in, and with how much: the API key, request slots and the body-bytes budget.

Admission comes before the body is read. A request first needs the key (when
one is set), a declared size under ``max_request_bytes``, a slot (or a place in
the bounded queue) and a share of ``max_body_buffer_bytes``; only then is its
body read, within ``body_read_timeout_s``. So neither many large bodies nor
many slow ones can hold more memory or connections than the settings allow.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
from collections.abc import AsyncIterator, Awaitable, Callable

from aiohttp import web
from voltana.services.router import protocol as proto
from voltana.services.router.config import RouterConfig
from voltana.services.router.metrics import RouterMetrics

__all__ = ["Admission", "Refused", "Reservation", "auth_middleware", "error_response"]

OPEN_PATHS = frozenset({"/health", "/health_generate"})
"""Paths served without the API key: load balancers and orchestrators probe them."""


def error_response(status: int, message: str) -> web.Response:
    """The router's one JSON error answer."""
    return web.Response(
        status=status, body=proto.error_body(message, code=status), content_type="application/json"
    )


class Refused(Exception):
    """A request turned away before dispatch: ``status`` and a message for the client."""

    def __init__(self, status: int, message: str, reason: str) -> None:
        super().__init__(message)
        self.status = status
        self.reason = reason

    def response(self) -> web.Response:
        resp = error_response(self.status, str(self))
        if self.status in (408, 413):
            resp.force_close()  # the rest of the body is still on the wire: drop the connection
        return resp


def auth_middleware(
    api_key: str | None, metrics: RouterMetrics
) -> Callable[..., Awaitable[web.StreamResponse]]:
    """Every path but the health probes needs ``Authorization: Bearer KEY`` when a key is set."""

    @web.middleware
    async def middleware(
        request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        if api_key is None or request.path in OPEN_PATHS:
            return await handler(request)
        got = request.headers.get("Authorization", "")
        if got.startswith("Bearer ") and hmac.compare_digest(
            got[7:].strip().encode(), api_key.encode()
        ):
            return await handler(request)
        metrics.rejected.labels("auth").inc()
        return error_response(401, "invalid or missing API key")

    return middleware


class Admission:
    """Request slots, the wait queue and the body-bytes budget of one router."""

    def __init__(self, cfg: RouterConfig, metrics: RouterMetrics) -> None:
        self.cfg = cfg
        self.metrics = metrics
        self._sem = asyncio.Semaphore(cfg.max_concurrent_requests)
        self.waiting = 0
        self.active = 0
        self.body_bytes = 0  # bytes of request bodies reserved right now

    def _refuse(self, status: int, message: str, reason: str) -> Refused:
        self.metrics.rejected.labels(reason).inc()
        return Refused(status, message, reason)

    async def _slot(self) -> None:
        if not self._sem.locked():
            await self._sem.acquire()
            return
        if self.waiting >= self.cfg.max_queued_requests:
            raise self._refuse(429, "router queue is full; retry later", "queue_full")
        self.waiting += 1
        try:
            async with asyncio.timeout(self.cfg.queue_timeout_s):
                await self._sem.acquire()
        except TimeoutError:
            raise self._refuse(503, "timed out waiting for a free slot", "queue_timeout") from None
        finally:
            self.waiting -= 1

    @contextlib.asynccontextmanager
    async def admit(self, request: web.Request) -> AsyncIterator[Reservation]:
        """Hold a slot and a body reservation for the request's lifetime.

        Yields the :class:`Reservation`, whose ``read()`` gives the body: the caller
        holds the only reference to it, so it can drop it once decoded.

        Raises:
            Refused: too large (413), queue full (429), no slot in time or no room in
                the body budget (503), body not received in time (408).
        """
        cfg = self.cfg
        declared = request.content_length
        if declared is not None and declared > cfg.max_request_bytes:
            raise self._refuse(413, f"request body over {cfg.max_request_bytes} bytes", "too_large")
        await self._slot()
        # a body of unknown length (chunked) reserves the largest allowed until it is read
        reserved = cfg.max_request_bytes if declared is None else declared
        try:
            if self.body_bytes + reserved > cfg.max_body_buffer_bytes:
                raise self._refuse(503, "router is holding too many request bodies", "body_budget")
            self.body_bytes += reserved
            self.active += 1
            grant = Reservation(self, request, reserved)
            try:
                yield grant
            finally:
                self.active -= 1
                self.body_bytes -= grant.bytes
        finally:
            self._sem.release()

    async def read_body(self, request: web.Request) -> bytes:
        """The body, read within ``body_read_timeout_s`` and at most ``max_request_bytes``.

        Read from the stream, not with ``request.read()``, which would keep a copy
        on the request for as long as it is served.
        """
        limit = self.cfg.max_request_bytes
        body = request.content
        if body.is_eof():  # all of it arrived with the head (most requests): no wait, no timer
            raw = body.read_nowait()
            if len(raw) > limit:
                raise self._refuse(413, f"request body over {limit} bytes", "too_large")
            return raw
        chunks: list[bytes] = []
        size = 0
        try:
            async with asyncio.timeout(self.cfg.body_read_timeout_s):
                async for chunk in request.content.iter_any():
                    size += len(chunk)
                    if size > limit:
                        raise self._refuse(413, f"request body over {limit} bytes", "too_large")
                    chunks.append(chunk)
        except TimeoutError:
            raise self._refuse(
                408,
                f"request body not received within {self.cfg.body_read_timeout_s} s",
                "slow_body",
            ) from None
        return b"".join(chunks)


class Reservation:
    """One admitted request's share of the body budget; ``read()`` trims it to the real size."""

    __slots__ = ("_admission", "_request", "bytes")

    def __init__(self, admission: Admission, request: web.Request, reserved: int) -> None:
        self._admission = admission
        self._request = request
        self.bytes = reserved

    async def read(self) -> bytes:
        """The request's body (the caller keeps the only reference to it)."""
        raw = await self._admission.read_body(self._request)
        self._admission.body_bytes -= self.bytes - len(raw)
        self.bytes = len(raw)
        return raw
