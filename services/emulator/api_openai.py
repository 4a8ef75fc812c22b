"""The OpenAI-compatible routes: /v1/completions and /v1/chat/completions.

Several choices per request, as SGLang answers them: a list of prompts in
/v1/completions and ``n`` in both routes give ``len(prompts) * n`` choices,
choice ``i`` for prompt ``i // n``. Logprobs are refused with a clear 400.
"""

from __future__ import annotations

import time
from collections.abc import AsyncGenerator
from contextlib import aclosing
from typing import Any

from aiohttp import web
from voltana.services.emulator.api_common import (
    NO_LOGPROBS,
    error_response,
    int_field,
    json_body,
    request_spec,
    server_of,
    sse,
)
from voltana.services.emulator.api_generate import merge_updates
from voltana.services.emulator.pd import FAKE_BOOTSTRAP_HOST
from voltana.services.emulator.server import EmulatorServer, RequestError, RequestSpec, TokenUpdate
from voltana.services.emulator.textgen import (
    chat_prompt_tokens,
    chat_token_ids,
    count_prompt_tokens,
    filler_text,
    prompt_token_ids,
)

__all__ = ["handle_chat", "handle_completions"]

MAX_CHOICES = 128
"""Most choices (prompts x n) one request may ask for."""


def _prompts(body: dict[str, Any]) -> list[Any]:
    """The prompts of a /v1/completions body: one string or id list, or a list of them."""
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
    if isinstance(prompt, list) and prompt and isinstance(prompt[0], (str, list)):
        return prompt
    if isinstance(prompt, list) and not prompt:
        raise RequestError("prompt must not be empty")
    return [prompt]


def _specs(srv: EmulatorServer, body: dict[str, Any], chat: bool) -> tuple[list[RequestSpec], int]:
    """One RequestSpec per choice (bootstrap fields may be lists, one per choice), and n."""
    if body.get("logprobs") or body.get("top_logprobs") is not None:
        raise RequestError(NO_LOGPROBS.format(field="logprobs"))
    n = int_field(body.get("n"), "n", 1)
    if chat:
        msgs = body.get("messages")
        if not isinstance(msgs, list) or not msgs:
            raise RequestError("messages must be a non-empty list")
        sizes = [chat_prompt_tokens(msgs)]
        ids = [chat_token_ids(msgs)]  # deterministic: equal prefixes hit the prefix cache
        limit = body.get("max_completion_tokens", body.get("max_tokens"))
    else:
        prompts = _prompts(body)
        sizes = [count_prompt_tokens(p) for p in prompts]
        ids = [prompt_token_ids(p) for p in prompts]
        limit = body.get("max_tokens")
    if len(sizes) * n > MAX_CHOICES:
        raise RequestError(f"at most {MAX_CHOICES} choices (prompts x n), got {len(sizes) * n}")
    max_new = int_field(limit, "max_tokens", 128 if chat else 16, minimum=0)
    choices = len(sizes) * n
    room = body.get("bootstrap_room")
    fake = body.get("bootstrap_host") == FAKE_BOOTSTRAP_HOST
    if choices > 1 and room is not None and not isinstance(room, list) and not fake:
        raise RequestError(
            f"{choices} choices in PD mode need a list of {choices} bootstrap_room values"
        )
    if isinstance(room, list) and len(room) != choices:
        raise RequestError(f"bootstrap_room has {len(room)} values for {choices} choices")
    rid = body.get("rid")
    specs = []
    for i in range(choices):
        item = body
        if choices > 1 and rid is not None and not isinstance(rid, list):
            item = {**body, "rid": f"{rid}-{i}"}
        specs.append(request_spec(srv, item, i, sizes[i // n], max_new, ids[i // n]))
    return specs, n


async def _openai(request: web.Request, chat: bool) -> web.StreamResponse:
    srv = server_of(request)
    try:
        body = await json_body(request)
        specs, n_per_prompt = _specs(srv, body, chat)
    except RequestError as exc:
        return error_response(srv, exc, openai=True)
    obj = "chat.completion" if chat else "text_completion"
    base = {"id": specs[0].rid, "created": int(time.time()), "model": srv.config.model_name}
    gens = [srv.generate(s) for s in specs]

    def choice(i: int, text: str, finish: str | None, stream: bool) -> dict[str, Any]:
        if not chat:
            return {"index": i, "text": text, "logprobs": None, "finish_reason": finish}
        key = "delta" if stream else "message"
        return {"index": i, key: {"role": "assistant", "content": text}, "finish_reason": finish}

    def usage(done: dict[int, int]) -> dict[str, int]:
        prompt = sum(s.prompt_tokens for s in specs[::n_per_prompt])  # each prompt once
        out = sum(done.values())
        return {"prompt_tokens": prompt, "completion_tokens": out, "total_tokens": prompt + out}

    def fr(u: TokenUpdate) -> str | None:
        return None if u.finish_reason is None else str(u.finish_reason["type"])

    if body.get("stream"):
        include_usage = bool((body.get("stream_options") or {}).get("include_usage"))

        async def chunks() -> AsyncGenerator[dict[str, Any], None]:
            sent: dict[int, int] = {i: 0 for i in range(len(specs))}
            async for i, u in merge_updates(gens):
                n = u.completion_tokens
                text = filler_text(sent[i], n)
                sent[i] = n
                yield {**base, "object": f"{obj}.chunk", "choices": [choice(i, text, fr(u), True)]}
            if include_usage:
                yield {**base, "object": f"{obj}.chunk", "choices": [], "usage": usage(sent)}

        return await sse(request, chunks())
    last: dict[int, TokenUpdate] = {}
    try:
        async with aclosing(merge_updates(gens)) as it:
            async for i, u in it:
                last[i] = u
    except RequestError as exc:
        return error_response(srv, exc, openai=True)
    done = {i: u.completion_tokens for i, u in last.items()}
    return web.json_response(
        {
            **base,
            "object": obj,
            "choices": [
                choice(i, filler_text(0, done[i]), fr(last[i]), False) for i in range(len(specs))
            ],
            "usage": usage(done),
        }
    )


async def handle_chat(request: web.Request) -> web.StreamResponse:
    return await _openai(request, chat=True)


async def handle_completions(request: web.Request) -> web.StreamResponse:
    return await _openai(request, chat=False)
