"""What the SGLang HTTP routes share: the server key, request parsing, error bodies, SSE.

Errors: /generate answers ``{"error": {"message": ...}}``, the OpenAI routes
``{"object": "error", ...}``; an error after a stream started is a
``data: {"error": ...}`` chunk.
"""

from __future__ import annotations

import json
from collections.abc import AsyncGenerator
from contextlib import aclosing
from typing import Any

from aiohttp import web
from voltana.services.emulator.server import EmulatorServer, RequestError, RequestSpec

__all__ = [
    "NO_LOGPROBS",
    "SERVER_KEY",
    "error_body",
    "error_response",
    "handle_not_found",
    "int_field",
    "json_body",
    "pick",
    "request_spec",
    "server_of",
    "sse",
]

SERVER_KEY: web.AppKey[EmulatorServer] = web.AppKey("emulator", EmulatorServer)


def server_of(request: web.Request) -> EmulatorServer:
    """The emulated server behind this app."""
    return request.app[SERVER_KEY]


def error_body(srv: EmulatorServer, msg: str, status: int, openai: bool) -> dict[str, Any]:
    """The error object SGLang answers with (OpenAI or native shape, per version)."""
    kind = "BadRequestError" if status < 500 else "InternalServerError"
    if openai:
        return {"object": "error", "message": msg, "type": kind, "param": None, "code": status}
    err: dict[str, Any] = {"message": msg}
    if srv.config.sglang_version != "0.4.7":
        err.update(type=kind, code=status, retryable=status >= 500)
    return {"error": err}


def error_response(srv: EmulatorServer, exc: RequestError, openai: bool) -> web.Response:
    """A failed request's answer: its status and ``error_body``."""
    return web.json_response(error_body(srv, str(exc), exc.status, openai), status=exc.status)


async def handle_not_found(request: web.Request) -> web.Response:
    """Unknown paths: a JSON 404 in the native error shape, not aiohttp's plain text."""
    msg = f"no route {request.method} {request.path}"
    return web.json_response(error_body(server_of(request), msg, 404, False), status=404)


async def json_body(request: web.Request) -> dict[str, Any]:
    """The request's JSON object; RequestError (400) for anything else."""
    try:
        body = await request.json(loads=json.loads)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise RequestError(f"malformed JSON body: {exc}") from exc
    if not isinstance(body, dict):
        raise RequestError("the JSON body must be an object")
    return body


def int_field(value: Any, name: str, default: int, minimum: int = 1) -> int:
    """An integer field of at least ``minimum``, ``default`` when absent."""
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int):
        raise RequestError(f"{name} must be an integer, got {value!r}")
    if value < minimum:
        raise RequestError(f"{name} must be at least {minimum}, got {value}")
    return value


NO_LOGPROBS = (
    "logprobs are not produced by the emulated worker (it generates filler text, not "
    "sampled tokens); send the request without {field}"
)
"""The 400 for a logprobs request: a clear refusal rather than invented numbers."""


def pick(value: Any, i: int) -> Any:
    """Item ``i`` of a per-request list (batch form), else the value itself."""
    return value[i] if isinstance(value, list) else value


def request_spec(
    srv: EmulatorServer,
    body: dict[str, Any],
    i: int,
    prompt_tokens: int,
    max_new: int,
    token_ids: list[int] | None = None,
) -> RequestSpec:
    """Request ``i`` of a body (batch forms give lists) as the server's ``RequestSpec``."""
    rid = pick(body.get("rid"), i) or srv.new_rid()
    port = pick(body.get("bootstrap_port"), i)
    room = pick(body.get("bootstrap_room"), i)
    if room is not None and (isinstance(room, bool) or not isinstance(room, int)):
        raise RequestError(f"bootstrap_room must be an integer, got {room!r}")
    sp = body.get("sampling_params") or {}
    ignore_eos = (
        bool(pick(sp, i).get("ignore_eos", body.get("ignore_eos", False)))
        if sp
        else bool(body.get("ignore_eos", False))
    )
    return RequestSpec(
        rid=str(rid),
        prompt_tokens=prompt_tokens,
        max_new_tokens=max_new,
        ignore_eos=ignore_eos,
        bootstrap_host=pick(body.get("bootstrap_host"), i),
        bootstrap_port=int(port) if port is not None else None,
        bootstrap_room=room,
        prefix=srv.prefix_of(token_ids) if token_ids else None,
    )


async def sse(
    request: web.Request, chunks: AsyncGenerator[dict[str, Any] | str, None]
) -> web.StreamResponse:
    """Stream ``chunks`` as server-sent events, an error as a last chunk, then [DONE]."""
    resp = web.StreamResponse(
        headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
    )
    await resp.prepare(request)
    srv = server_of(request)
    try:
        async with aclosing(chunks) as it:
            async for c in it:
                data = c if isinstance(c, str) else json.dumps(c)
                await resp.write(f"data: {data}\n\n".encode())
    except RequestError as exc:
        err = error_body(srv, str(exc), exc.status, False)
        await resp.write(f"data: {json.dumps(err)}\n\n".encode())
    await resp.write(b"data: [DONE]\n\n")
    return resp
