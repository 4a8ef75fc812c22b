"""The OpenAI-compatible routes: /v1/completions and /v1/chat/completions."""

from __future__ import annotations

import time
from collections.abc import AsyncGenerator
from contextlib import aclosing
from typing import Any

from aiohttp import web
from voltana.services.emulator.api_common import (
    error_response,
    int_field,
    json_body,
    request_spec,
    server_of,
    sse,
)
from voltana.services.emulator.server import RequestError, TokenUpdate
from voltana.services.emulator.textgen import (
    chat_prompt_tokens,
    chat_token_ids,
    count_prompt_tokens,
    filler_text,
    prompt_token_ids,
)

__all__ = ["handle_chat", "handle_completions"]


async def _openai(request: web.Request, chat: bool) -> web.StreamResponse:
    srv = server_of(request)
    try:
        body = await json_body(request)
        if chat:
            msgs = body.get("messages")
            if not isinstance(msgs, list) or not msgs:
                raise RequestError("messages must be a non-empty list")
            prompt_tokens = chat_prompt_tokens(msgs)
            ids = chat_token_ids(msgs)
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
            ids = prompt_token_ids(prompt)
            limit = body.get("max_tokens")
        max_new = int_field(limit, "max_tokens", 128 if chat else 16)
        spec = request_spec(srv, body, 0, prompt_tokens, max_new, ids)
    except RequestError as exc:
        return error_response(srv, exc, openai=True)
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

        return await sse(request, chunks())
    last: TokenUpdate | None = None
    try:
        async with aclosing(gen) as it:
            async for u in it:
                last = u
    except RequestError as exc:
        return error_response(srv, exc, openai=True)
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
