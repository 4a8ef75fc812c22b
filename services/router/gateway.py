"""What the router answers besides dispatch, for clients of the current SGLang gateway.

smg 1.13 and SGLang 0.5.x name the introspection routes ``/model_info`` and
``/server_info`` (the ``get_`` names are deprecated); unknown paths get a JSON 404
in the router's one error shape; the bus status reply lives here too.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
from aiohttp import web
from voltana.services.router import protocol as proto
from voltana.services.router.state import ClusterState, WorkerState

__all__ = ["add_gateway_routes", "flush_all", "status", "workers_info"]

Handler = Callable[[web.Request], Awaitable[web.Response]]


def status(active: int, waiting: int, state: ClusterState) -> dict[str, Any]:
    """The bus status reply (``voltana-svc.router.<node>.status``): load and workers by name."""
    workers = sorted(w.published_name for w in state.workers.values())
    return {"active": active, "waiting": waiting, "workers": workers}


def _json_error(status_code: int, message: str) -> web.Response:
    body = proto.error_body(message, code=status_code)
    return web.Response(status=status_code, body=body, content_type="application/json")


def add_gateway_routes(
    app: web.Application,
    *,
    first_available: Callable[[], WorkerState | None],
    session: Callable[[], aiohttp.ClientSession],
    server_info: Handler,
) -> None:
    """Current route names, then the JSON 404 for every other path (add it last)."""

    async def model_info(request: web.Request) -> web.Response:
        w = first_available()
        if w is None:
            return _json_error(503, "no healthy worker")
        try:  # a 0.5.x worker answers /model_info, a 0.4.x one only /get_model_info
            for path in ("/model_info", "/get_model_info"):
                async with session().get(w.spec.url + path) as resp:
                    if resp.status != 404:
                        data = await resp.read()
                        return web.Response(
                            status=resp.status, body=data, content_type=resp.content_type
                        )
        except (aiohttp.ClientError, TimeoutError) as exc:
            return _json_error(502, f"{w.published_name}: {exc}")
        return _json_error(502, f"{w.published_name} answers neither model info route")

    async def forward_get(request: web.Request) -> web.Response:
        """The same GET on the first healthy worker (``/v1/models``, ``/get_model_info``)."""
        w = first_available()
        if w is None:
            return _json_error(503, "no healthy worker")
        try:
            async with session().get(w.spec.url + request.path_qs) as resp:
                data = await resp.read()
                return web.Response(status=resp.status, body=data, content_type=resp.content_type)
        except (aiohttp.ClientError, TimeoutError) as exc:
            return _json_error(502, f"{w.name}: {exc}")

    async def not_found(request: web.Request) -> web.Response:
        return _json_error(404, f"no route {request.method} {request.path}")

    app.router.add_get("/v1/models", forward_get)
    app.router.add_get("/get_model_info", forward_get)
    app.router.add_get("/model_info", model_info)
    app.router.add_get("/server_info", server_info)
    app.router.add_route("*", "/{tail:.*}", not_found)


async def _info(session: aiohttp.ClientSession, w: WorkerState) -> Any:
    try:
        async with session.get(w.spec.url + "/get_server_info") as resp:
            return proto.decode(await resp.read()) if resp.status == 200 else None
    except (aiohttp.ClientError, TimeoutError, proto.ProtocolError):
        return None


async def workers_info(
    session: aiohttp.ClientSession, state: ClusterState, roles: tuple[str, ...]
) -> dict[str, Any]:
    """Each worker's ``/get_server_info`` by role (workers that do not answer are left out)."""
    out: dict[str, Any] = {}
    for role in roles:
        ws = state.role(role)
        out[role] = [i for i in await asyncio.gather(*(_info(session, w) for w in ws)) if i]
    return out


async def flush_all(session: aiohttp.ClientSession, workers: list[WorkerState]) -> bool:
    """``/flush_cache`` on every worker; True when all of them flushed."""

    async def one(w: WorkerState) -> bool:
        try:
            async with session.post(w.spec.url + "/flush_cache") as resp:
                return resp.status == 200
        except (aiohttp.ClientError, TimeoutError):
            return False

    return all(await asyncio.gather(*(one(w) for w in workers)))
