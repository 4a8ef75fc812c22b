"""One client request through SGLang's PD protocol: pair, send both, stream the decode back.

The prefill and decode copies go out concurrently with the same bootstrap
fields. The client gets the decode side's status and body, streamed as it
arrives. A prefill failure before any byte reached the client re-pairs the
request on another prefill worker (up to ``prefill_retries``); after that the
client gets an SSE error chunk and the decode request is closed. A decode
failure mid-stream ends the stream with an error chunk. The client going away
cancels both upstream requests (their connections are closed, which SGLang
treats as an abort).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import aiohttp
from aiohttp import web
from voltana.common.logs import get_logger
from voltana.services.router import protocol as proto
from voltana.services.router.policies.base import RouteRequest

if TYPE_CHECKING:
    from voltana.services.router.server import Router

log = get_logger("router.dispatch")

JSON_HEADERS = {"Content-Type": "application/json"}
SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


class PrefillFailed(Exception):
    """The prefill side failed; ``retryable`` when another worker could do it."""

    def __init__(
        self, message: str, *, status: int = 502, retryable: bool = True, body: bytes | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.retryable = retryable
        self.body = body


@dataclass(slots=True)
class Outcome:
    """What happened to one request, for its record and metrics."""

    status: str = "ok"
    http_status: int = 200
    prefill: str = ""
    decode: str = ""
    ttft_s: float | None = None
    gaps_s: list[float] = field(default_factory=list)
    output_tokens: int = 0
    error: str | None = None
    bytes_sent: bool = False


def _upstream_error(exc: BaseException) -> str:
    if isinstance(exc, asyncio.TimeoutError | TimeoutError):
        return "upstream timed out"
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


async def _cancel(task: asyncio.Task[Any] | None) -> None:
    if task is None or task.done():
        return
    task.cancel()
    with contextlib.suppress(BaseException):
        await task


class Pd:
    """Dispatches requests for one :class:`Router` (which owns state, policies and session)."""

    def __init__(self, router: Router) -> None:
        self.r = router

    async def serve(
        self, request: web.Request, path: str, body: dict[str, Any], info: proto.RequestInfo
    ) -> web.StreamResponse:
        r = self.r
        arrival = time.monotonic()
        arrival_ns = time.time_ns()
        rid = uuid.uuid4().hex
        rreq = RouteRequest(
            request_id=rid,
            input_tokens=info.input_tokens,
            max_new_tokens=info.max_new_tokens,
            arrival_t=arrival,
        )
        excluded: set[str] = set()
        out = Outcome()
        attempt = 0
        last_failure: PrefillFailed | None = None
        try:
            while True:
                pair = r.choose(rreq, excluded)
                if pair is None and last_failure is not None:
                    return self._prefill_error(last_failure, out)  # nothing left to retry on
                if pair is None:
                    out.status, out.http_status = "rejected", 503
                    out.error = "no healthy prefill/decode worker"
                    r.metrics.rejected.labels("no_worker").inc()
                    return web.Response(
                        status=503,
                        body=proto.error_body(out.error, code=503),
                        content_type="application/json",
                    )
                pw, dw = pair.prefill, pair.decode
                out.prefill, out.decode = pw.name, dw.name
                rooms = [proto.new_room(r.pyrng) for _ in range(info.batch_size or 1)]
                payload = proto.encode(
                    proto.add_bootstrap(
                        body,
                        proto.bootstrap_host(pw.spec.url),
                        pw.spec.bootstrap_port,
                        rooms,
                        info.batch_size,
                    )
                )
                r.on_dispatched(pair, rreq, rooms[0], path)
                try:
                    return await self._attempt(
                        request, path, payload, info, rreq, pw.name, dw.name, arrival, out
                    )
                except PrefillFailed as exc:
                    last_failure = exc
                    if exc.retryable and not out.bytes_sent and attempt < r.cfg.prefill_retries:
                        attempt += 1
                        excluded.add(pw.name)
                        r.metrics.retries.inc()
                        log.info("prefill_retry", request_id=rid, prefill=pw.name, error=str(exc))
                        await asyncio.sleep(r.cfg.retry_backoff_s)
                        continue
                    return self._prefill_error(exc, out)
        except asyncio.CancelledError:
            out.status, out.error = "cancelled", "client disconnected"
            r.metrics.cancelled.inc()
            raise
        except Exception as exc:  # a bug must cost one request, not the router
            out.status, out.error = "error", f"router error: {type(exc).__name__}: {exc}"
            log.exception("dispatch_failed", request_id=rid)
            if out.bytes_sent:
                raise
            return web.Response(
                status=500,
                body=proto.error_body(out.error, code=500),
                content_type="application/json",
            )
        finally:
            r.on_finished(rreq, info, path, out, arrival, arrival_ns)

    @staticmethod
    def _prefill_error(exc: PrefillFailed, out: Outcome) -> web.Response:
        """The client's answer when the prefill side failed before any byte was sent."""
        out.status, out.error, out.http_status = "error", f"prefill failed: {exc}", exc.status
        # a 4xx is about the request: pass the worker's explanation through unchanged
        body = (
            exc.body
            if exc.body and exc.status < 500
            else proto.error_body(out.error, code=exc.status)
        )
        return web.Response(status=exc.status, body=body, content_type="application/json")

    async def _attempt(
        self,
        request: web.Request,
        path: str,
        payload: bytes,
        info: proto.RequestInfo,
        rreq: RouteRequest,
        pname: str,
        dname: str,
        arrival: float,
        out: Outcome,
    ) -> web.StreamResponse:
        r = self.r
        st = r.state
        purl = st.workers[pname].spec.url + path
        durl = st.workers[dname].spec.url + path
        p_task = asyncio.create_task(self._prefill(purl, payload, pname, rreq))
        d_ctx = r.session.post(durl, data=payload, headers=JSON_HEADERS)
        d_resp: aiohttp.ClientResponse | None = None
        decode_ok: bool | None = None  # None: not the decode worker's doing
        try:
            d_resp = await self._watch(p_task, d_ctx.__aenter__())
            if d_resp.status != 200:
                data = await self._watch(p_task, d_resp.read())
                if d_resp.status >= 500:
                    await self._raise_if_prefill_failed(p_task)
                decode_ok = d_resp.status < 500
                out.status, out.http_status = "error", d_resp.status
                out.error = f"decode answered {d_resp.status}"
                return web.Response(
                    status=d_resp.status, body=data, content_type=d_resp.content_type
                )
            if not info.stream:
                data = await self._watch(p_task, d_resp.read())
                decode_ok = True
                out.ttft_s = time.monotonic() - arrival
                if info.return_logprob:
                    data = await self._merge_logprobs(p_task, data)
                try:
                    out.output_tokens = proto.completion_tokens(proto.decode(data)) or 0
                except proto.ProtocolError:
                    out.output_tokens = 0  # not JSON: passed through as the worker sent it
                return web.Response(status=200, body=data, content_type=d_resp.content_type)
            return await self._stream(request, d_resp, p_task, info, rreq, dname, arrival, out)
        except (aiohttp.ClientError, TimeoutError) as exc:
            err = _upstream_error(exc)
            decode_ok = False
            r.metrics.errors.labels("decode", type(exc).__name__).inc()
            out.status, out.error = "error", f"decode failed: {err}"
            if out.bytes_sent:
                return web.Response(status=200)  # stream already ended in _stream
            out.http_status = 504 if "timed out" in err else 502
            return web.Response(
                status=out.http_status,
                body=proto.error_body(out.error, code=out.http_status),
                content_type="application/json",
            )
        finally:
            await _cancel(p_task)
            if d_resp is not None:
                if d_resp.content.is_eof():
                    d_resp.release()  # fully read: the connection goes back to the pool
                else:
                    d_resp.close()  # unfinished: closing it aborts the request upstream
            else:
                with contextlib.suppress(BaseException):
                    await d_ctx.__aexit__(None, None, None)
            st.decode_done(
                dname,
                rreq.request_id,
                rreq.input_tokens,
                rreq.max_new_tokens,
                out.gaps_s,
                time.monotonic(),
            )
            if decode_ok is None and out.bytes_sent:
                decode_ok = not out.error or not out.error.startswith("decode")
            if decode_ok is not None:
                r.breaker_result(dname, decode_ok)

    async def _watch(self, p_task: asyncio.Task[bytes], aw: Any) -> Any:
        """Await ``aw`` but raise PrefillFailed as soon as the prefill side fails."""
        fut = asyncio.ensure_future(aw)
        try:
            while True:
                if p_task.done():
                    p_task.result()  # raises PrefillFailed when it failed
                    return await fut
                done, _ = await asyncio.wait({fut, p_task}, return_when=asyncio.FIRST_COMPLETED)
                if fut in done:
                    return fut.result()
        finally:
            if not fut.done():
                fut.cancel()
                with contextlib.suppress(BaseException):
                    await fut

    @staticmethod
    async def _raise_if_prefill_failed(p_task: asyncio.Task[bytes], wait_s: float = 1.0) -> None:
        """Before passing a decode error on, give the prefill a moment to show it failed."""
        await asyncio.wait({p_task}, timeout=wait_s)  # neither raises nor cancels it
        if p_task.done() and not p_task.cancelled():
            exc = p_task.exception()
            if isinstance(exc, PrefillFailed):
                raise exc

    async def _prefill(self, url: str, payload: bytes, pname: str, rreq: RouteRequest) -> bytes:
        r = self.r
        ok: bool | None = None  # None: cancelled by us, not the worker's doing
        try:
            async with r.session.post(url, data=payload, headers=JSON_HEADERS) as resp:
                data = await resp.read()
                if resp.status >= 400:
                    ok = False
                    retryable = resp.status >= 500 or resp.status == 429
                    ok = not retryable  # a 4xx is the request's fault, not the worker's
                    r.metrics.errors.labels("prefill", f"http_{resp.status}").inc()
                    raise PrefillFailed(
                        f"prefill answered {resp.status}",
                        status=resp.status,
                        retryable=retryable,
                        body=data,
                    )
                if data.startswith(b"data:"):
                    sc = proto.SseScanner()
                    sc.feed(data if data.endswith(b"\n\n") else data + b"\n\n")
                    if sc.saw_error:
                        ok = False
                        r.metrics.errors.labels("prefill", "error_chunk").inc()
                        raise PrefillFailed("prefill sent an error chunk", retryable=False)
                ok = True
                return data
        except (aiohttp.ClientError, TimeoutError) as exc:
            ok = False
            r.metrics.errors.labels("prefill", type(exc).__name__).inc()
            raise PrefillFailed(
                _upstream_error(exc), status=504 if isinstance(exc, TimeoutError) else 502
            ) from exc
        finally:
            r.state.prefill_done(pname, rreq.request_id, rreq.input_tokens)
            if ok is not None:
                r.breaker_result(pname, ok)

    async def _merge_logprobs(self, p_task: asyncio.Task[bytes], data: bytes) -> bytes:
        try:
            await asyncio.wait({p_task}, timeout=5.0)
            pdata = p_task.result()  # raises when it failed or is still running
            return proto.encode(proto.merge_logprobs(proto.decode(pdata), proto.decode(data)))
        except Exception:
            return data

    async def _stream(
        self,
        request: web.Request,
        d_resp: aiohttp.ClientResponse,
        p_task: asyncio.Task[bytes],
        info: proto.RequestInfo,
        rreq: RouteRequest,
        dname: str,
        arrival: float,
        out: Outcome,
    ) -> web.StreamResponse:
        r = self.r
        chunks = d_resp.content.iter_any()
        try:
            first = await self._watch(p_task, chunks.__anext__())
        except StopAsyncIteration:
            raise aiohttp.ClientPayloadError("decode stream ended before any data") from None
        t_first = time.monotonic()
        if b'"error"' in first:
            # a decode that fails at once often failed because its prefill partner did
            probe = proto.SseScanner()
            probe.feed(first)
            if probe.saw_error:
                await self._raise_if_prefill_failed(p_task)
        resp = web.StreamResponse(status=200, headers=SSE_HEADERS)
        resp.content_type = d_resp.content_type or "text/event-stream"
        await resp.prepare(request)
        out.bytes_sent = True
        out.ttft_s = t_first - arrival
        r.state.first_token(dname, rreq.request_id, out.ttft_s, t_first)
        scan = proto.SseScanner()
        gaps = out.gaps_s
        # events that arrive in one read reach the client together: gap 0, as it sees them
        gaps.extend([0.0] * max(scan.feed(first) - 1, 0))
        await resp.write(first)

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
                await resp.write(chunk)
        except (aiohttp.ClientError, TimeoutError) as exc:
            perr = p_task.exception() if p_task.done() and not p_task.cancelled() else None
            if perr is not None:
                out.error = f"prefill failed: {perr}"
                log.warning(
                    "prefill_failed_mid_stream", request_id=rreq.request_id, error=str(perr)
                )
            else:
                out.error = f"decode failed mid-stream: {_upstream_error(exc)}"
                r.metrics.errors.labels("decode", type(exc).__name__).inc()
                log.warning(
                    "decode_failed_mid_stream",
                    request_id=rreq.request_id,
                    decode=dname,
                    error=out.error,
                )
            out.status = "error"
            with contextlib.suppress(Exception):
                await resp.write(proto.error_event(out.error))
        except ConnectionResetError:
            raise asyncio.CancelledError from None
        if not scan.saw_done and out.status == "ok":
            perr = p_task.exception() if p_task.done() and not p_task.cancelled() else None
            out.status = "error"
            out.error = (
                f"prefill failed: {perr}"
                if perr is not None
                else "decode stream ended without [DONE]"
            )
            log.warning("stream_cut", request_id=rreq.request_id, decode=dname, error=out.error)
            with contextlib.suppress(Exception):
                await resp.write(proto.error_event(out.error))
        elif scan.saw_error and out.status == "ok":
            out.status, out.error = "error", "decode sent an error chunk"
        out.output_tokens = self._tokens(scan)
        with contextlib.suppress(Exception):
            await resp.write_eof()
        return resp

    @staticmethod
    def _tokens(scan: proto.SseScanner) -> int:
        if scan.last_data is not None:
            try:
                n = proto.completion_tokens(proto.decode(scan.last_data))
            except proto.ProtocolError:
                n = None
            if n is not None:
                return n
        return scan.events
