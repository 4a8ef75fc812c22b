"""SGLang's HTTP API on an emulated server: the route table and the introspection routes.

Formats follow sglang-interface.md (checked against sglang 0.4.7's package; the 0.5.23
differences are selected by ``--sglang-version``). /generate is in api_generate.py, the
OpenAI routes in api_openai.py, what they share (errors, parsing, SSE) in api_common.py.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web
from voltana.services.emulator.api_common import SERVER_KEY, handle_not_found, server_of
from voltana.services.emulator.api_generate import handle_generate
from voltana.services.emulator.api_openai import handle_chat, handle_completions
from voltana.services.emulator.server import EmulatorServer

__all__ = ["SERVER_KEY", "add_not_found_route", "add_sglang_routes"]


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
    srv = server_of(request)
    s = srv.engine.stats()
    # SGLang 0.4.7: KV tokens in use plus the prompt tokens still waiting.
    return web.json_response({"load": s.kv_used_tokens + s.waiting_prompt_tokens})


async def handle_v1_loads(request: web.Request) -> web.Response:
    srv = server_of(request)
    load = _load(srv)
    include = request.query.get("include", "core,queues,disagg")
    if "disagg" in include or "all" in include:
        load["disaggregation"] = {
            "mode": srv.config.role if srv.config.role != "unified" else "null",
            **srv.pd_queues(srv.engine.stats()),
        }
    return web.json_response(
        {"timestamp": time.time(), "version": srv.config.sglang_version, "loads": [load]}
    )


async def handle_health(request: web.Request) -> web.Response:
    return web.Response(status=200)


async def handle_model_info(request: web.Request) -> web.Response:
    srv = server_of(request)
    name = srv.config.model_name
    return web.json_response({"model_path": name, "tokenizer_path": name, "is_generation": True})


async def handle_server_info(request: web.Request) -> web.Response:
    srv = server_of(request)
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
    name = server_of(request).config.model_name
    return web.json_response(
        {
            "object": "list",
            "data": [
                {"id": name, "object": "model", "created": 0, "owned_by": "sglang", "root": name}
            ],
        }
    )


async def handle_metrics(request: web.Request) -> web.Response:
    srv = server_of(request)
    srv.refresh_gauges()
    return web.Response(
        body=srv.metrics.render(), headers={"Content-Type": "text/plain; version=0.0.4"}
    )


async def handle_flush_cache(request: web.Request) -> web.Response:
    """SGLang's answers: flushed only when no request holds cached blocks."""
    cache = server_of(request).engine.cache
    if cache is not None and not cache.clear():
        return web.Response(
            status=400,
            text="Cache not flushed. Please check if there are pending requests.\n",
        )
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


def add_not_found_route(app: web.Application) -> None:
    """Last route of the app: every unknown path gets a JSON 404."""
    app.router.add_route("*", "/{tail:.*}", handle_not_found)
