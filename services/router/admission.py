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

__all__ = ["Admission", "Refused", "auth_middleware", "error_response"]

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
    async def admit(self, request: web.Request) -> AsyncIterator[bytes]:
        """Hold a slot and a body reservation for the request's lifetime; yields its body.

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
            try:
                raw = await self._read(request)
                self.body_bytes -= reserved - len(raw)
                reserved = len(raw)
                yield raw
            finally:
                self.active -= 1
                self.body_bytes -= reserved
        finally:
            self._sem.release()

    async def _read(self, request: web.Request) -> bytes:
        try:
            async with asyncio.timeout(self.cfg.body_read_timeout_s):
                return await request.read()
        except web.HTTPRequestEntityTooLarge:
            raise self._refuse(
                413, f"request body over {self.cfg.max_request_bytes} bytes", "too_large"
            ) from None
        except TimeoutError:
            raise self._refuse(
                408,
                f"request body not received within {self.cfg.body_read_timeout_s} s",
                "slow_body",
            ) from None
