"""Streaming the decode side's SSE answer to the client, timing it as the client sees it.

The first chunk is held back until it is known not to be the echo of a failed
prefill (then the request can still be re-paired); after that every chunk is
written through as it arrives. A failure mid-stream ends the stream with an
SSE error chunk; a stream that ends without ``[DONE]`` gets one too.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable

import aiohttp
from aiohttp import web
from voltana.common.logs import get_logger
from voltana.services.router import protocol as proto
from voltana.services.router.metrics import RouterMetrics
from voltana.services.router.policies.base import RouteRequest
from voltana.services.router.state import ClusterState
from voltana.services.router.stats import Outcome
from voltana.services.router.upstream import (
    prefill_error,
    raise_if_prefill_failed,
    upstream_error,
    watch,
)

__all__ = ["SSE_HEADERS", "ClientGone", "relay_stream", "stream_tokens", "to_client"]

log = get_logger("router.dispatch")

SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


class ClientGone(Exception):
    """The client closed its connection: not the worker's fault (never an upstream error).

    aiohttp raises ``ClientConnectionResetError`` for a write to a closed client;
    it is also an ``aiohttp.ClientError``, so it must be told apart from upstream
    failures where the write happens, not where errors are caught.
    """


async def to_client(resp: web.StreamResponse, data: bytes) -> None:
    """Write to the client; its going away raises :class:`ClientGone`."""
    try:
        await resp.write(data)
    except (ConnectionResetError, aiohttp.ClientConnectionError) as exc:
        raise ClientGone(str(exc) or type(exc).__name__) from exc


async def relay_stream(
    request: web.Request,
    d_resp: aiohttp.ClientResponse,
    p_task: asyncio.Task[bytes],
    rreq: RouteRequest,
    dname: str,
    arrival: float,
    out: Outcome,
    state: ClusterState,
    metrics: RouterMetrics,
    energy_chunk: Callable[[proto.SseScanner], Awaitable[bytes]] | None = None,
) -> web.StreamResponse:
    """Relay ``d_resp`` to the client; fills ``out`` (TTFT, gaps, tokens, status, error).

    ``energy_chunk``: the client asked for its energy; the SSE event it returns is
    written just before ``[DONE]`` of a stream that ended well.

    Raises:
        PrefillFailed: the first chunk is an error and the prefill side failed (no byte sent).
        aiohttp.ClientPayloadError: the decode stream ended before any data.
    """
    chunks = d_resp.content.iter_any()
    try:
        first = await watch(p_task, chunks.__anext__())
    except StopAsyncIteration:
        raise aiohttp.ClientPayloadError("decode stream ended before any data") from None
    t_first = time.monotonic()
    if b'"error"' in first:
        # a decode that fails at once often failed because its prefill partner did
        probe = proto.SseScanner()
        probe.feed(first)
        if probe.saw_error:
            await raise_if_prefill_failed(p_task)
    resp = web.StreamResponse(status=200, headers=SSE_HEADERS)
    resp.content_type = d_resp.content_type or "text/event-stream"
    try:
        await resp.prepare(request)
    except (ConnectionResetError, aiohttp.ClientConnectionError) as exc:
        raise ClientGone(str(exc)) from exc
    out.bytes_sent = True
    out.ttft_s = t_first - arrival
    state.first_token(dname, rreq.request_id, out.ttft_s, t_first)
    scan = proto.SseScanner()
    gaps = out.gaps_s
    # events that arrive in one read reach the client together: gap 0, as it sees them
    gaps.extend([0.0] * max(scan.feed(first) - 1, 0))
    held: list[bytes] = []  # [DONE] and what follows, held for the energy event

    def hold_done(chunk: bytes) -> bytes:
        if energy_chunk is not None and not held:
            cut = chunk.find(b"data: [DONE]")
            if cut >= 0:
                held.append(chunk[cut:])
                return chunk[:cut]
        elif held:
            held.append(chunk)
            return b""
        return chunk

    if head := hold_done(first):
        await to_client(resp, head)

    def _on_prefill_done(t: asyncio.Task[bytes]) -> None:
        if not t.cancelled() and t.exception() is not None:
            d_resp.close()  # wakes the read loop below

    p_task.add_done_callback(_on_prefill_done)
    last = t_first
    try:
        async for chunk in chunks:
            now = time.monotonic()
            n = scan.feed(chunk)
            if n:
                gaps.append(now - last)
                if n > 1:
                    gaps.extend([0.0] * (n - 1))
                last = now
            if chunk := hold_done(chunk):
                await to_client(resp, chunk)
    except (aiohttp.ClientError, TimeoutError) as exc:
        perr = prefill_error(p_task)
        if perr is not None:
            out.error = f"prefill failed: {perr}"
            log.warning("prefill_failed_mid_stream", request_id=rreq.request_id, error=str(perr))
        else:
            out.error = f"decode failed mid-stream: {upstream_error(exc)}"
            metrics.errors.labels("decode", type(exc).__name__).inc()
            log.warning(
                "decode_failed_mid_stream",
                request_id=rreq.request_id,
                decode=dname,
                error=out.error,
            )
        out.status = "error"
        with contextlib.suppress(Exception):
            await resp.write(proto.error_event(out.error))
    if not scan.saw_done and out.status == "ok":
        perr = prefill_error(p_task)
        out.status = "error"
        out.error = (
            f"prefill failed: {perr}" if perr is not None else "decode stream ended without [DONE]"
        )
        log.warning("stream_cut", request_id=rreq.request_id, decode=dname, error=out.error)
        with contextlib.suppress(Exception):
            await resp.write(proto.error_event(out.error))
    elif scan.saw_error and out.status == "ok":
        out.status, out.error = "error", "decode sent an error chunk"
    out.output_tokens = stream_tokens(scan)
    with contextlib.suppress(Exception):
        if held and energy_chunk is not None and out.status == "ok":
            await resp.write(await energy_chunk(scan))
        for part in held:
            await resp.write(part)
        await resp.write_eof()
    return resp


def stream_tokens(scan: proto.SseScanner) -> int:
    """Output tokens of a finished stream: the last chunk's usage, else its event count."""
    if scan.last_data is not None:
        try:
            n = proto.completion_tokens(proto.decode(scan.last_data))
        except proto.ProtocolError:
            n = None
        if n is not None:
            return n
    return scan.events
