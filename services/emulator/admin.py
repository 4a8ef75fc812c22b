"""Admin HTTP of an emulated server: its GPUs (NVML-like) and its recent iterations.

Routes (same host:port as the SGLang API; contract in docs/emulator.md):
GET /voltana/gpus, POST|DELETE /voltana/gpus/{index}/locked_clocks,
GET /voltana/iterations?after=SEQ.
"""

from __future__ import annotations

import json
import time
from typing import Any

from aiohttp import web
from voltana.common.errors import GpuError
from voltana.services.emulator.api import SERVER_KEY
from voltana.services.emulator.gpu_device import EmulatedGpu

__all__ = ["add_admin_routes"]


def _err(msg: str, status: int) -> web.Response:
    return web.json_response({"error": msg}, status=status)


def _gpu(request: web.Request) -> EmulatedGpu | web.Response:
    srv = request.app[SERVER_KEY]
    raw = request.match_info["index"]
    try:
        index = int(raw)
    except ValueError:
        return _err(f"GPU index must be an integer, got {raw!r}", 404)
    for g in srv.gpus:
        if g.index == index:
            return g
    return _err(f"unknown GPU index {index}; this server has {[g.index for g in srv.gpus]}", 404)


async def list_gpus(request: web.Request) -> web.Response:
    srv = request.app[SERVER_KEY]
    now = time.monotonic()
    return web.json_response({"gpus": [g.snapshot(now) for g in srv.gpus]})


async def set_locked(request: web.Request) -> web.Response:
    g = _gpu(request)
    if isinstance(g, web.Response):
        return g
    try:
        body: Any = await request.json()
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        return _err(f"malformed JSON body: {exc}", 400)
    if not isinstance(body, dict):
        return _err('body must be {"min_mhz": int, "max_mhz": int}', 400)
    lo, hi = body.get("min_mhz"), body.get("max_mhz")
    if not all(isinstance(v, int) and not isinstance(v, bool) for v in (lo, hi)):
        return _err(f"min_mhz and max_mhz must be integers, got {lo!r}, {hi!r}", 400)
    assert isinstance(lo, int) and isinstance(hi, int)
    try:
        g.set_locked_clocks(lo, hi, time.monotonic())
    except GpuError as exc:
        return _err(str(exc), 400)
    request.app[SERVER_KEY].clocks_changed()
    return web.json_response(g.snapshot(time.monotonic()))


async def reset_locked(request: web.Request) -> web.Response:
    g = _gpu(request)
    if isinstance(g, web.Response):
        return g
    g.reset_locked_clocks(time.monotonic())
    request.app[SERVER_KEY].clocks_changed()
    return web.json_response(g.snapshot(time.monotonic()))


async def iterations(request: web.Request) -> web.Response:
    srv = request.app[SERVER_KEY]
    try:
        after = int(request.query.get("after", "0"))
    except ValueError:
        return _err("after must be an integer", 400)
    items = [it for it in list(srv.iterations) if it["seq"] > after]
    return web.json_response({"iterations": items})


def add_admin_routes(app: web.Application) -> None:
    r = app.router
    r.add_get("/voltana/gpus", list_gpus)
    r.add_post("/voltana/gpus/{index}/locked_clocks", set_locked)
    r.add_delete("/voltana/gpus/{index}/locked_clocks", reset_locked)
    r.add_get("/voltana/iterations", iterations)
