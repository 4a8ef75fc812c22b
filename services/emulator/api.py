"""SGLang's HTTP API on an emulated server: /generate, OpenAI routes, introspection.

Formats follow sglang-interface.md (checked against sglang 0.4.7's package; the 0.5.23
differences are selected by ``--sglang-version``). Errors: /generate answers
``{"error": {"message": ...}}``, the OpenAI routes ``{"object": "error", ...}``; an
error after a stream started is an ``data: {"error": ...}`` chunk.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncGenerator, Awaitable, Callable
from contextlib import aclosing
from typing import Any

from aiohttp import web
from voltana.services.emulator.server import (
    EmulatorServer,
    RequestError,
    RequestSpec,
    TokenUpdate,
)
from voltana.services.emulator.textgen import chat_prompt_tokens, count_prompt_tokens, filler_text

__all__ = ["add_sglang_routes"]

SERVER_KEY: web.AppKey[EmulatorServer] = web.AppKey("emulator", EmulatorServer)


def _srv(request: web.Request) -> EmulatorServer:
    return request.app[SERVER_KEY]


def _error_body(srv: EmulatorServer, msg: str, status: int, openai: bool) -> dict[str, Any]:
    kind = "BadRequestError" if status < 500 else "InternalServerError"
    if openai:
        return {"object": "error", "message": msg, "type": kind, "param": None, "code": status}
    err: dict[str, Any] = {"message": msg}
    if srv.config.sglang_version != "0.4.7":
        err.update(type=kind, code=status, retryable=status >= 500)
    return {"error": err}


async def _json_body(request: web.Request) -> dict[str, Any]:
    try:
        body = await request.json(loads=json.loads)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise RequestError(f"malformed JSON body: {exc}") from exc
    if not isinstance(body, dict):
        raise RequestError("the JSON body must be an object")
    return body


def _int_field(value: Any, name: str, default: int) -> int:
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int):
        raise RequestError(f"{name} must be an integer, got {value!r}")
    if value < 1:
        raise RequestError(f"{name} must be positive, got {value}")
    return value


def _pick(value: Any, i: int) -> Any:
    return value[i] if isinstance(value, list) else value


def _spec(
    srv: EmulatorServer, body: dict[str, Any], i: int, prompt_tokens: int, max_new: int
) -> RequestSpec:
    rid = _pick(body.get("rid"), i) or srv.new_rid()
    port = _pick(body.get("bootstrap_port"), i)
    room = _pick(body.get("bootstrap_room"), i)
    if room is not None and (isinstance(room, bool) or not isinstance(room, int)):
        raise RequestError(f"bootstrap_room must be an integer, got {room!r}")
    sp = body.get("sampling_params") or {}
    ignore_eos = (
        bool(_pick(sp, i).get("ignore_eos", body.get("ignore_eos", False)))
        if sp
        else bool(body.get("ignore_eos", False))
    )
    return RequestSpec(
        rid=str(rid),
        prompt_tokens=prompt_tokens,
        max_new_tokens=max_new,
        ignore_eos=ignore_eos,
        bootstrap_host=_pick(body.get("bootstrap_host"), i),
        bootstrap_port=int(port) if port is not None else None,
        bootstrap_room=room,
    )


async def _sse(
    request: web.Request, chunks: AsyncGenerator[dict[str, Any] | str, None]
) -> web.StreamResponse:
    resp = web.StreamResponse(
        headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
    )
    await resp.prepare(request)
    srv = _srv(request)
    try:
        async with aclosing(chunks) as it:
            async for c in it:
                data = c if isinstance(c, str) else json.dumps(c)
                await resp.write(f"data: {data}\n\n".encode())
    except RequestError as exc:
        err = _error_body(srv, str(exc), exc.status, False)
        await resp.write(f"data: {json.dumps(err)}\n\n".encode())
    await resp.write(b"data: [DONE]\n\n")
    return resp


async def _merge(
    gens: list[AsyncGenerator[TokenUpdate, None]],
) -> AsyncGenerator[tuple[int, TokenUpdate], None]:
    """Interleave the updates of several requests (batch form), tagged with their index."""
    if len(gens) == 1:
        async with aclosing(gens[0]) as g:
            async for u in g:
                yield 0, u
        return
    q: asyncio.Queue[tuple[int, TokenUpdate | BaseException | None]] = asyncio.Queue()

    async def pump(i: int, g: AsyncGenerator[TokenUpdate, None]) -> None:
        try:
            async with aclosing(g) as gg:
                async for u in gg:
                    q.put_nowait((i, u))
            q.put_nowait((i, None))
        except BaseException as exc:  # delivered to the consumer
            q.put_nowait((i, exc))

    tasks = [asyncio.create_task(pump(i, g)) for i, g in enumerate(gens)]
    try:
        left = len(gens)
        while left:
            i, item = await q.get()
            if item is None:
                left -= 1
            elif isinstance(item, BaseException):
                raise item
            else:
                yield i, item
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


def _meta(spec: RequestSpec, u: TokenUpdate, t0: float) -> dict[str, Any]:
    meta: dict[str, Any] = {
        "id": spec.rid,
        "finish_reason": u.finish_reason,
        "prompt_tokens": spec.prompt_tokens,
        "completion_tokens": u.completion_tokens,
        "cached_tokens": 0,
    }
    if u.finish_reason is not None:
        meta["e2e_latency"] = time.monotonic() - t0
    return meta


async def handle_generate(request: web.Request) -> web.StreamResponse:
    srv = _srv(request)
    try:
        body = await _json_body(request)
        use_ids = body.get("input_ids") is not None
        prompts: Any = body.get("input_ids") if use_ids else body.get("text")
        if prompts is None:
            raise RequestError("either text or input_ids must be given")
        batch = isinstance(prompts, list) and (
            not use_ids or (bool(prompts) and isinstance(prompts[0], list))
        )
        items = prompts if batch else [prompts]
        if not items:
            raise RequestError("empty batch")
        sp_all = body.get("sampling_params") or {}
        specs = []
        for i, p in enumerate(items):
            sp = _pick(sp_all, i) if isinstance(sp_all, list) else sp_all
            if not isinstance(sp, dict):
                raise RequestError("sampling_params must be an object")
            max_new = _int_field(sp.get("max_new_tokens"), "max_new_tokens", 128)
            specs.append(_spec(srv, body, i, count_prompt_tokens(p), max_new))
    except RequestError as exc:
        return web.json_response(_error_body(srv, str(exc), exc.status, False), status=exc.status)
    t0 = time.monotonic()
    gens = [srv.generate(s) for s in specs]

    async def chunks() -> AsyncGenerator[dict[str, Any], None]:
        async for i, u in _merge(gens):
            c = {"text": filler_text(0, u.completion_tokens), "meta_info": _meta(specs[i], u, t0)}
            if batch:
                c["index"] = i
            yield c

    if body.get("stream"):
        return await _sse(request, chunks())
    last: dict[int, dict[str, Any]] = {}
    try:
        async with aclosing(chunks()) as it:
            async for c in it:
                last[c.get("index", 0)] = c
    except RequestError as exc:
        return web.json_response(_error_body(srv, str(exc), exc.status, False), status=exc.status)
    out = [last[i] for i in range(len(specs))]
    for c in out:
        c.pop("index", None)
    return web.json_response(out if batch else out[0])


async def _openai(request: web.Request, chat: bool) -> web.StreamResponse:
    srv = _srv(request)
    try:
        body = await _json_body(request)
        if chat:
            msgs = body.get("messages")
            if not isinstance(msgs, list) or not msgs:
                raise RequestError("messages must be a non-empty list")
            prompt_tokens = chat_prompt_tokens(msgs)
            limit = body.get("max_completion_tokens", body.get("max_tokens"))
        else:
            prompt = body.get("prompt")
            if prompt is None:
                # sglang-router 0.1.5 (PD mode) forwards /v1/completions rewritten in its
                # generate shape: text/input_ids and parameters.max_new_tokens.
                prompt = body.get("text") if body.get("text") is not None else body.get("input_ids")
                limit_alt = (body.get("parameters") or {}).get("max_new_tokens")
                if body.get("max_tokens") is None and limit_alt is not None:
                    body["max_tokens"] = limit_alt
            if prompt is None:
                raise RequestError("prompt is required")
            if isinstance(prompt, list) and prompt and isinstance(prompt[0], str):
                prompt = prompt[0]  # one choice per request here
            prompt_tokens = count_prompt_tokens(prompt)
            limit = body.get("max_tokens")
        max_new = _int_field(limit, "max_tokens", 128 if chat else 16)
        spec = _spec(srv, body, 0, prompt_tokens, max_new)
    except RequestError as exc:
        return web.json_response(_error_body(srv, str(exc), exc.status, True), status=exc.status)
    obj = "chat.completion" if chat else "text_completion"
    created = int(time.time())
    base = {"id": spec.rid, "created": created, "model": srv.config.model_name}
    gen = srv.generate(spec)

    def choice(text: str, finish: str | None, stream: bool) -> dict[str, Any]:
        if not chat:
            return {"index": 0, "text": text, "logprobs": None, "finish_reason": finish}
        key = "delta" if stream else "message"
        return {"index": 0, key: {"role": "assistant", "content": text}, "finish_reason": finish}

    def usage(n: int) -> dict[str, int]:
        return {
            "prompt_tokens": spec.prompt_tokens,
            "completion_tokens": n,
            "total_tokens": spec.prompt_tokens + n,
        }

    def fr(u: TokenUpdate) -> str | None:
        return None if u.finish_reason is None else str(u.finish_reason["type"])

    if body.get("stream"):
        include_usage = bool((body.get("stream_options") or {}).get("include_usage"))

        async def chunks() -> AsyncGenerator[dict[str, Any], None]:
            sent, n = 0, 0
            async with aclosing(gen) as it:
                async for u in it:
                    n = u.completion_tokens
                    yield {
                        **base,
                        "object": f"{obj}.chunk",
                        "choices": [choice(filler_text(sent, n), fr(u), True)],
                    }
                    sent = n
            if include_usage:
                yield {**base, "object": f"{obj}.chunk", "choices": [], "usage": usage(n)}

        return await _sse(request, chunks())
    last: TokenUpdate | None = None
    try:
        async with aclosing(gen) as it:
            async for u in it:
                last = u
    except RequestError as exc:
        return web.json_response(_error_body(srv, str(exc), exc.status, True), status=exc.status)
    assert last is not None
    n = last.completion_tokens
    return web.json_response(
        {
            **base,
            "object": obj,
            "choices": [choice(filler_text(0, n), fr(last), False)],
            "usage": usage(n),
        }
    )


async def handle_chat(request: web.Request) -> web.StreamResponse:
    return await _openai(request, chat=True)


async def handle_completions(request: web.Request) -> web.StreamResponse:
    return await _openai(request, chat=False)


# ----- introspection ---------------------------------------------------------------------
def _load(srv: EmulatorServer) -> dict[str, Any]:
    s = srv.engine.stats()
    return {
        "dp_rank": 0,
        "num_running_reqs": s.running_reqs,
        "num_waiting_reqs": s.waiting_reqs,
        "num_used_tokens": s.kv_used_tokens,
        "max_total_num_tokens": s.kv_capacity_tokens,
        "token_usage": round(s.token_usage, 4),
        "gen_throughput": srv.gen_throughput(),
    }


async def handle_get_load(request: web.Request) -> web.Response:
    srv = _srv(request)
    s = srv.engine.stats()
    # SGLang 0.4.7: KV tokens in use plus the prompt tokens still waiting.
    return web.json_response({"load": s.kv_used_tokens + s.waiting_prompt_tokens})


async def handle_v1_loads(request: web.Request) -> web.Response:
    srv = _srv(request)
    s = srv.engine.stats()
    load = _load(srv)
    include = request.query.get("include", "core,queues,disagg")
    if "disagg" in include or "all" in include:
        load["disaggregation"] = {
            "mode": srv.config.role if srv.config.role != "unified" else "null",
            "prefill_bootstrap_queue_reqs": srv._bootstrap_waiting,
            "prefill_inflight_queue_reqs": s.transfer_reqs if srv.config.role == "prefill" else 0,
            "decode_prealloc_queue_reqs": s.waiting_reqs if srv.config.role == "decode" else 0,
            "decode_transfer_queue_reqs": s.transfer_reqs if srv.config.role == "decode" else 0,
        }
    return web.json_response(
        {"timestamp": time.time(), "version": srv.config.sglang_version, "loads": [load]}
    )


async def handle_health(request: web.Request) -> web.Response:
    return web.Response(status=200)


async def handle_model_info(request: web.Request) -> web.Response:
    srv = _srv(request)
    name = srv.config.model_name
    return web.json_response({"model_path": name, "tokenizer_path": name, "is_generation": True})


async def handle_server_info(request: web.Request) -> web.Response:
    srv = _srv(request)
    c = srv.config
    s = srv.engine.stats()
    return web.json_response(
        {
            "model_path": c.model_name,
            "served_model_name": c.model_name,
            "host": c.host,
            "port": c.port,
            "tp_size": c.tp,
            "dp_size": 1,
            "disaggregation_mode": "null" if c.role == "unified" else c.role,
            "disaggregation_bootstrap_port": c.bootstrap_port,
            "disaggregation_transfer_backend": "emulated",
            "max_running_requests": c.max_running_requests,
            "chunked_prefill_size": c.chunked_prefill_size,
            "max_total_num_tokens": s.kv_capacity_tokens,
            "enable_metrics": True,
            "version": c.sglang_version,
            "internal_states": [
                {"last_gen_throughput": srv.gen_throughput(), "load": s.running_reqs}
            ],
        }
    )


async def handle_models(request: web.Request) -> web.Response:
    name = _srv(request).config.model_name
    return web.json_response(
        {
            "object": "list",
            "data": [
                {"id": name, "object": "model", "created": 0, "owned_by": "sglang", "root": name}
            ],
        }
    )


async def handle_metrics(request: web.Request) -> web.Response:
    srv = _srv(request)
    srv.refresh_gauges()
    return web.Response(
        body=srv.metrics.render(), headers={"Content-Type": "text/plain; version=0.0.4"}
    )


async def handle_flush_cache(request: web.Request) -> web.Response:
    return web.Response(text="Cache flushed.\n")


def add_sglang_routes(app: web.Application, srv: EmulatorServer) -> None:
    app[SERVER_KEY] = srv
    r = app.router
    handlers: list[tuple[str, str, Callable[[web.Request], Awaitable[web.StreamResponse]]]] = [
        ("POST", "/generate", handle_generate),
        ("POST", "/v1/completions", handle_completions),
        ("POST", "/v1/chat/completions", handle_chat),
        ("GET", "/health", handle_health),
        ("GET", "/health_generate", handle_health),
        ("GET", "/get_model_info", handle_model_info),
        ("GET", "/get_server_info", handle_server_info),
        ("GET", "/v1/models", handle_models),
        ("GET", "/metrics", handle_metrics),
        ("POST", "/flush_cache", handle_flush_cache),
    ]
    if srv.config.sglang_version == "0.4.7":
        handlers.append(("GET", "/get_load", handle_get_load))
    else:
        handlers += [
            ("GET", "/v1/loads", handle_v1_loads),
            ("GET", "/ready", handle_health),
            ("GET", "/model_info", handle_model_info),
            ("GET", "/server_info", handle_server_info),
        ]
    for method, path, h in handlers:
        r.add_route(method, path, h)
