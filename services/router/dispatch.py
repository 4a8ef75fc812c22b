"""One client request through SGLang's PD protocol: pair, send both, stream the decode back.

The prefill and decode copies go out concurrently with the same bootstrap
fields. The client gets the decode side's status and body, streamed as it
arrives (:mod:`~voltana.services.router.relay`). A prefill failure before any
byte reached the client re-pairs the request on another prefill worker (up to
``prefill_retries``); after that the client gets an SSE error chunk and the
decode request is closed. A decode failure mid-stream ends the stream with an
error chunk. The client going away cancels both upstream requests (their
connections are closed, which SGLang treats as an abort).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import random
import time
from typing import Any

import aiohttp
from aiohttp import web
from voltana.common.logs import get_logger
from voltana.services.router import protocol as proto
from voltana.services.router.energy import ENERGY_HEADER, energy_fields, tenant_of
from voltana.services.router.policies.base import RouteRequest
from voltana.services.router.prefix import prompt_prefix
from voltana.services.router.relay import ClientGone, relay_stream, stream_tokens
from voltana.services.router.routing import Pair, Routing
from voltana.services.router.state import WorkerState
from voltana.services.router.stats import Outcome
from voltana.services.router.upstream import (
    PrefillFailed,
    cancel,
    raise_if_prefill_failed,
    upstream_error,
    watch,
)
from voltana.services.router.upstream_http import LeanClient

log = get_logger("router.dispatch")

JSON_HEADERS = {"Content-Type": "application/json"}


def _wants_energy(request: web.Request) -> bool:
    """The client asked for its energy (``X-Voltana-Energy: 1`` or ``true``)."""
    return request.headers.get(ENERGY_HEADER, "").strip().lower() in ("1", "true", "yes")


class Pd:
    """Dispatches requests: ``routing`` decides and keeps the books, ``session`` talks upstream.

    Args:
        routing: pairs requests with workers and records what happened.
        session: the router's shared upstream HTTP session.
        pyrng: draws the bootstrap rooms.
        prefill_retries: re-pairings of a failed prefill before any byte was sent.
        retry_backoff_s: pause before each re-pairing.
    """

    def __init__(
        self,
        routing: Routing,
        session: aiohttp.ClientSession | LeanClient,
        pyrng: random.Random,
        *,
        prefill_retries: int,
        retry_backoff_s: float,
    ) -> None:
        self.routing = routing
        self.state = routing.state
        self.metrics = routing.metrics
        self.session = session
        self.pyrng = pyrng
        self.prefill_retries = prefill_retries
        self.retry_backoff_s = retry_backoff_s
        # request ids: 16 random hex digits drawn once, then a counter (uuid4 reads the
        # kernel's random source for every request); 32 hex digits, as uuid4().hex
        self._id_prefix = os.urandom(8).hex()
        self._ids = itertools.count()

    async def serve(
        self, request: web.Request, path: str, body: dict[str, Any], info: proto.RequestInfo
    ) -> web.StreamResponse:
        routing = self.routing
        arrival = time.monotonic()
        arrival_ns = time.time_ns()
        rid = f"{self._id_prefix}{next(self._ids):016x}"
        keys, block = prompt_prefix(body) if routing.uses_prefix else ((), 0)
        rreq = RouteRequest(
            request_id=rid,
            input_tokens=info.input_tokens,
            max_new_tokens=info.max_new_tokens,
            arrival_t=arrival,
            prefix_keys=keys,
            prefix_block_tokens=block,
        )
        excluded: set[str] = set()
        out = Outcome(tenant=tenant_of(request.headers))
        model = body.get("model") if isinstance(body, dict) else None
        out.model = model[:64] if isinstance(model, str) else None
        attempt = 0
        last_failure: PrefillFailed | None = None
        try:
            while True:
                pair = self._choose(rreq, excluded)
                if pair is None and last_failure is not None:
                    return self._prefill_error(last_failure, out)  # nothing left to retry on
                if pair is None:
                    out.status, out.http_status = "rejected", 503
                    out.error = "no healthy prefill/decode worker"
                    self.metrics.rejected.labels("no_worker").inc()
                    return web.Response(
                        status=503,
                        body=proto.error_body(out.error, code=503),
                        content_type="application/json",
                    )
                pw, dw = pair.prefill, pair.decode
                out.prefill, out.decode = pw.name, dw.name
                payload, room = self._payload(body, pw, info)
                routing.on_dispatched(pair, rreq, room, path)
                try:
                    return await self._attempt(
                        request, path, payload, info, rreq, pw.name, dw.name, arrival, out
                    )
                except PrefillFailed as exc:
                    last_failure = exc
                    if exc.retryable and not out.bytes_sent and attempt < self.prefill_retries:
                        attempt += 1
                        excluded.add(pw.name)
                        self.metrics.retries.inc()
                        log.info("prefill_retry", request_id=rid, prefill=pw.name, error=str(exc))
                        await asyncio.sleep(self.retry_backoff_s)
                        continue
                    return self._prefill_error(exc, out)
        except (asyncio.CancelledError, ClientGone) as exc:
            out.status, out.error = "cancelled", "client disconnected"
            self.metrics.cancelled.inc()
            if isinstance(exc, ClientGone):  # aiohttp's own path for a client gone away
                raise asyncio.CancelledError from None
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
            routing.on_finished(rreq, info, path, out, arrival, arrival_ns)

    def _choose(self, rreq: RouteRequest, excluded: set[str]) -> Pair | None:
        """The workers for one request (PD: a prefill and a decode worker)."""
        return self.routing.choose(rreq, excluded)

    def _payload(
        self, body: dict[str, Any], pw: WorkerState, info: proto.RequestInfo
    ) -> tuple[bytes, int]:
        """The upstream body and its bootstrap room (PD: both copies carry the bootstrap)."""
        rooms = [proto.new_room(self.pyrng) for _ in range(info.batch_size or 1)]
        payload = proto.encode(
            proto.add_bootstrap(
                body,
                proto.bootstrap_host(pw.spec.url),
                pw.spec.bootstrap_port,
                rooms,
                info.batch_size,
            )
        )
        return payload, rooms[0]

    @staticmethod
    def _prefill_error(exc: PrefillFailed, out: Outcome) -> web.Response:
        """The client's answer when the prefill side failed before any byte was sent."""
        out.status, out.error, out.http_status = "error", f"prefill failed: {exc}", exc.status
        # a 4xx is about the request: pass the worker's explanation on, in the router's shape
        body = (
            proto.as_error_body(exc.body, exc.status)
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
        st = self.state
        purl = st.workers[pname].spec.url + path
        durl = st.workers[dname].spec.url + path
        p_task = asyncio.create_task(self._prefill(purl, payload, pname, rreq))
        d_ctx = self.session.post(durl, data=payload, headers=JSON_HEADERS)
        d_resp: aiohttp.ClientResponse | None = None
        decode_ok: bool | None = None  # None: not the decode worker's doing
        try:
            d_resp = await watch(p_task, d_ctx.__aenter__())
            if d_resp.status != 200:
                data = await watch(p_task, d_resp.read())
                if d_resp.status >= 500:
                    await raise_if_prefill_failed(p_task)
                decode_ok = d_resp.status < 500
                out.status, out.http_status = "error", d_resp.status
                out.error = f"decode answered {d_resp.status}"
                body = proto.as_error_body(data, d_resp.status)
                return web.Response(
                    status=d_resp.status, body=body, content_type="application/json"
                )
            if not info.stream:
                data = await watch(p_task, d_resp.read())
                decode_ok = True
                out.ttft_s = time.monotonic() - arrival
                if info.return_logprob:
                    data = await self._merge_logprobs(p_task, data)
                try:
                    out.output_tokens = proto.completion_tokens(proto.decode(data)) or 0
                except proto.ProtocolError:
                    out.output_tokens = 0  # not JSON: passed through as the worker sent it
                if _wants_energy(request):
                    data = await self._with_energy(data, p_task, rreq, pname, dname, out)
                return web.Response(status=200, body=data, content_type=d_resp.content_type)
            energy_chunk = None
            if _wants_energy(request) and path != "/generate":

                async def energy_chunk(scan: proto.SseScanner) -> bytes:
                    return await self._energy_event(scan, rreq, pname, dname)

            return await relay_stream(
                request, d_resp, p_task, rreq, dname, arrival, out, st, self.metrics, energy_chunk
            )
        except (ClientGone, asyncio.CancelledError):
            out.status = "cancelled"  # the client's doing: the breaker hears nothing
            raise
        except (aiohttp.ClientError, TimeoutError) as exc:
            err = upstream_error(exc)
            decode_ok = False
            self.metrics.errors.labels("decode", type(exc).__name__).inc()
            out.status, out.error = "error", f"decode failed: {err}"
            if out.bytes_sent:
                return web.Response(status=200)  # the relay already ended the stream
            out.http_status = 504 if "timed out" in err else 502
            return web.Response(
                status=out.http_status,
                body=proto.error_body(out.error, code=out.http_status),
                content_type="application/json",
            )
        finally:
            await cancel(p_task)
            if d_resp is not None:
                if d_resp.content.is_eof():
                    d_resp.release()  # fully read: the connection goes back to the pool
                else:
                    d_resp.close()  # unfinished: closing it aborts the request upstream
            else:
                with contextlib.suppress(BaseException):
                    await d_ctx.__aexit__(None, None, None)
            self.routing.energy.decode_done(rreq.request_id, dname, out.output_tokens)
            st.decode_done(
                dname,
                rreq.request_id,
                rreq.input_tokens,
                rreq.max_new_tokens,
                out.gaps_s,
                time.monotonic(),
            )
            if decode_ok is None and out.bytes_sent and out.status != "cancelled":
                decode_ok = not out.error or not out.error.startswith("decode")
            if decode_ok is not None:
                self.routing.breaker_result(dname, decode_ok)

    async def _prefill(self, url: str, payload: bytes, pname: str, rreq: RouteRequest) -> bytes:
        ok: bool | None = None  # None: cancelled by us, not the worker's doing
        try:
            async with self.session.post(url, data=payload, headers=JSON_HEADERS) as resp:
                data = await resp.read()
                if resp.status >= 400:
                    retryable = resp.status >= 500 or resp.status == 429
                    ok = not retryable  # a 4xx is the request's fault, not the worker's
                    self.metrics.errors.labels("prefill", f"http_{resp.status}").inc()
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
                        self.metrics.errors.labels("prefill", "error_chunk").inc()
                        raise PrefillFailed("prefill sent an error chunk", retryable=False)
                ok = True
                return data
        except (aiohttp.ClientError, TimeoutError) as exc:
            ok = False
            self.metrics.errors.labels("prefill", type(exc).__name__).inc()
            raise PrefillFailed(
                upstream_error(exc), status=504 if isinstance(exc, TimeoutError) else 502
            ) from exc
        finally:
            self.routing.energy.prefill_done(rreq.request_id, pname)
            self.state.prefill_done(pname, rreq.request_id, rreq.input_tokens)
            if ok is not None:
                self.routing.breaker_result(pname, ok)

    async def _with_energy(
        self,
        data: bytes,
        p_task: asyncio.Task[bytes],
        rreq: RouteRequest,
        pname: str,
        dname: str,
        out: Outcome,
    ) -> bytes:
        """The answer with this request's attributed energy in ``usage`` (OpenAI) or
        ``meta_info`` (``/generate``); waits for the GPU energy covering its end."""
        try:
            obj = proto.decode(data)
        except proto.ProtocolError:
            return data
        energy = self.routing.energy
        await asyncio.wait({p_task}, timeout=energy.wait_s)  # its prefill span ends with it
        energy.prefill_done(rreq.request_id, pname)
        energy.decode_done(rreq.request_id, dname, out.output_tokens)
        fields = energy_fields(await energy.wait(rreq.request_id))
        if not isinstance(obj, dict):
            return data  # a batch answer: the energy is in the request's record only
        key = "meta_info" if "meta_info" in obj else "usage"
        target = obj.get(key)
        if isinstance(target, dict):
            target.update(fields)
        elif target is None:
            obj[key] = dict(fields)
        return proto.encode(obj)

    async def _energy_event(
        self, scan: proto.SseScanner, rreq: RouteRequest, pname: str, dname: str
    ) -> bytes:
        """The SSE event with a streamed request's energy in ``usage`` (an OpenAI chunk with
        no choices, as for ``stream_options.include_usage``), sent before ``[DONE]``."""
        energy = self.routing.energy
        energy.prefill_done(rreq.request_id, pname)
        energy.decode_done(rreq.request_id, dname, stream_tokens(scan))
        fields = energy_fields(await energy.wait(rreq.request_id))
        event: dict[str, Any] = {"object": "chat.completion.chunk", "choices": []}
        try:
            last = proto.decode(scan.last_data) if scan.last_data else None
        except proto.ProtocolError:
            last = None
        if isinstance(last, dict):
            event.update({k: last[k] for k in ("id", "object", "created", "model") if k in last})
            if isinstance(last.get("usage"), dict):
                event["usage"] = {**last["usage"], **fields}
        event.setdefault("usage", fields)
        return b"data: " + proto.encode(event) + b"\n\n"

    async def _merge_logprobs(self, p_task: asyncio.Task[bytes], data: bytes) -> bytes:
        try:
            await asyncio.wait({p_task}, timeout=5.0)
            pdata = p_task.result()  # raises when it failed or is still running
            return proto.encode(proto.merge_logprobs(proto.decode(pdata), proto.decode(data)))
        except Exception:
            return data
