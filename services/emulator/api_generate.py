"""SGLang's native /generate route (single and batch forms, streamed or not)."""

from __future__ import annotations

import asyncio
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
    pick,
    request_spec,
    server_of,
    sse,
)
from voltana.services.emulator.server import RequestError, RequestSpec, TokenUpdate
from voltana.services.emulator.textgen import count_prompt_tokens, filler_text, prompt_token_ids

__all__ = ["handle_generate", "merge_updates"]


async def merge_updates(
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
        "cached_tokens": u.cached_tokens,
    }
    if u.finish_reason is not None:
        meta["e2e_latency"] = time.monotonic() - t0
    return meta


async def handle_generate(request: web.Request) -> web.StreamResponse:
    srv = server_of(request)
    try:
        body = await json_body(request)
        use_ids = body.get("input_ids") is not None
        prompts: Any = body.get("input_ids") if use_ids else body.get("text")
        if prompts is None:
            raise RequestError("either text or input_ids must be given")
        if body.get("return_logprob"):
            raise RequestError(NO_LOGPROBS.format(field="return_logprob"))
        batch = isinstance(prompts, list) and (
            not use_ids or (bool(prompts) and isinstance(prompts[0], list))
        )
        items = prompts if batch else [prompts]
        if not items:
            raise RequestError("empty batch")
        sp_all = body.get("sampling_params") or {}
        specs = []
        for i, p in enumerate(items):
            sp = pick(sp_all, i) if isinstance(sp_all, list) else sp_all
            if not isinstance(sp, dict):
                raise RequestError("sampling_params must be an object")
            max_new = int_field(sp.get("max_new_tokens"), "max_new_tokens", 128, minimum=0)
            ids = prompt_token_ids(p)
            specs.append(request_spec(srv, body, i, count_prompt_tokens(p), max_new, ids))
    except RequestError as exc:
        return error_response(srv, exc, openai=False)
    t0 = time.monotonic()
    gens = [srv.generate(s) for s in specs]

    async def chunks() -> AsyncGenerator[dict[str, Any], None]:
        async for i, u in merge_updates(gens):
            c: dict[str, Any] = {
                "text": filler_text(0, u.completion_tokens),
                "meta_info": _meta(specs[i], u, t0),
            }
            if batch:
                c["index"] = i
            yield c

    if body.get("stream"):
        return await sse(request, chunks())
    last: dict[int, dict[str, Any]] = {}
    try:
        async with aclosing(chunks()) as it:
            async for c in it:
                last[c.get("index", 0)] = c
    except RequestError as exc:
        return error_response(srv, exc, openai=False)
    out = [last[i] for i in range(len(specs))]
    for c in out:
        c.pop("index", None)
    return web.json_response(out if batch else out[0])
