"""Admin HTTP of an emulated server: its GPUs (NVML-like) and its recent iterations.

Routes (same host:port as the SGLang API; contract in docs/emulator.md):
GET /voltana/gpus, POST|DELETE /voltana/gpus/{index}/locked_clocks,
GET /voltana/iterations?after=SEQ. The GPU routes encode the Structs of
:mod:`voltana.gpu.emulator_admin`, which the GPU devices' client decodes.
"""

from __future__ import annotations

import hmac
import time

import msgspec
from aiohttp import web
from voltana.common.errors import GpuError
from voltana.gpu.emulator_admin import AdminError, EmulatedGpus, EmulatedGpuState, LockRequest
from voltana.services.emulator.api import SERVER_KEY
from voltana.services.emulator.gpu_device import EmulatedGpu

__all__ = ["add_admin_routes"]

_lock_request = msgspec.json.Decoder(LockRequest)
ADMIN_TOKEN_KEY = web.AppKey("admin_token", str)  # "" when clock changes are open


def _json(payload: msgspec.Struct, status: int = 200) -> web.Response:
    return web.Response(
        body=msgspec.json.encode(payload), status=status, content_type="application/json"
    )


def _err(msg: str, status: int) -> web.Response:
    return _json(AdminError(msg), status)


def _state(g: EmulatedGpu) -> EmulatedGpuState:
    return msgspec.convert(g.snapshot(time.monotonic()), EmulatedGpuState)


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
    states = [msgspec.convert(g.snapshot(now), EmulatedGpuState) for g in srv.gpus]
    return _json(EmulatedGpus(states))


def _denied(request: web.Request) -> web.Response | None:
    """Clock changes need the admin token when one is set (the GPUs' privilege)."""
    token = request.app[ADMIN_TOKEN_KEY]
    if not token:
        return None
    got = request.headers.get("Authorization", "")
    if got.startswith("Bearer ") and hmac.compare_digest(got[7:].encode(), token.encode()):
        return None
    return _err("clock changes need Authorization: Bearer <admin token>", 401)


async def set_locked(request: web.Request) -> web.Response:
    if (denied := _denied(request)) is not None:
        return denied
    g = _gpu(request)
    if isinstance(g, web.Response):
        return g
    try:
        body = _lock_request.decode(await request.read())
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        return _err(f'body must be {{"min_mhz": int, "max_mhz": int}}: {exc}', 400)
    try:
        g.set_locked_clocks(body.min_mhz, body.max_mhz, time.monotonic())
    except GpuError as exc:
        return _err(str(exc), 400)
    request.app[SERVER_KEY].clocks_changed()
    return _json(_state(g))


async def reset_locked(request: web.Request) -> web.Response:
    if (denied := _denied(request)) is not None:
        return denied
    g = _gpu(request)
    if isinstance(g, web.Response):
        return g
    g.reset_locked_clocks(time.monotonic())
    request.app[SERVER_KEY].clocks_changed()
    return _json(_state(g))


async def iterations(request: web.Request) -> web.Response:
    srv = request.app[SERVER_KEY]
    try:
        after = int(request.query.get("after", "0"))
    except ValueError:
        return _err("after must be an integer", 400)
    items = [it for it in list(srv.iterations) if it["seq"] > after]
    return web.json_response({"iterations": items})


def add_admin_routes(app: web.Application, token: str | None = None) -> None:
    """Add the admin routes; with ``token``, locking and resetting clocks need it."""
    app[ADMIN_TOKEN_KEY] = token or ""
    r = app.router
    r.add_get("/voltana/gpus", list_gpus)
    r.add_post("/voltana/gpus/{index}/locked_clocks", set_locked)
    r.add_delete("/voltana/gpus/{index}/locked_clocks", reset_locked)
    r.add_get("/voltana/iterations", iterations)
