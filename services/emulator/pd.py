"""PD rendezvous of emulated servers on ``bootstrap_room``.

The prefill server runs a small bootstrap HTTP server on its
``--disaggregation-bootstrap-port`` (as SGLang's prefill does). The decode server,
once it has preallocated KV for a request, tells the prefill server so
(``POST /voltana/pd/{room}/ready``) and long-polls ``GET /voltana/pd/{room}/kv``
until the prefill finished and its KV transfer time elapsed (``done``) or failed.
The prefill side waits for the decode's ``ready`` before it prefills, so a prefill
whose decode partner never comes times out holding nothing but its queue slot.
``bootstrap_host == "2.2.2.2"`` skips all of this (SGLang's fake transfer).
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict, deque
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from aiohttp import web

__all__ = ["FAKE_BOOTSTRAP_HOST", "PdError", "Room", "RoomTable", "bootstrap_app", "decode_wait_kv"]

FAKE_BOOTSTRAP_HOST = "2.2.2.2"


class PdError(Exception):
    """The PD partner failed or never came."""


@dataclass
class Room:
    created_s: float
    decode_ready: asyncio.Event = field(default_factory=asyncio.Event)
    settled: asyncio.Event = field(default_factory=asyncio.Event)
    error: str | None = None

    def finish(self, error: str | None = None) -> None:
        if not self.settled.is_set():
            self.error = error
            self.settled.set()


class RoomTable:
    """Rooms of one prefill server, created by whichever side arrives first.

    A settled room is kept ``settled_grace_s`` for a decode side still polling,
    an unsettled one up to ``ttl_s``; both expire oldest first, so a lookup
    costs O(1) however many requests went through (rooms never pile up into a
    scan on every request).
    """

    def __init__(self, ttl_s: float, settled_grace_s: float = 30.0) -> None:
        self.ttl_s = ttl_s
        self.settled_grace_s = settled_grace_s
        self.rooms: OrderedDict[int, Room] = OrderedDict()  # creation order
        self._settled: deque[tuple[float, int]] = deque()  # settle order

    def get(self, room: int) -> Room:
        now = time.monotonic()
        self._expire(now)
        r = self.rooms.get(room)
        if r is None:
            r = self.rooms[room] = Room(created_s=now)
        return r

    def settle(self, room: int, r: Room, error: str | None = None) -> None:
        """The prefill side is done with ``room`` (``r``, from ``get``; ``error``: it failed)."""
        if not r.settled.is_set():
            r.finish(error)
            self._settled.append((time.monotonic(), room))

    def _expire(self, now: float) -> None:
        while self._settled and now - self._settled[0][0] > self.settled_grace_s:
            self.rooms.pop(self._settled.popleft()[1], None)
        while self.rooms:
            k, r = next(iter(self.rooms.items()))
            if now - r.created_s <= self.ttl_s:
                break
            del self.rooms[k]


def bootstrap_app(table: RoomTable) -> web.Application:
    """The prefill side's bootstrap server."""

    async def ready(request: web.Request) -> web.Response:
        try:
            room = int(request.match_info["room"])
        except ValueError:
            return web.json_response({"error": "room must be an integer"}, status=400)
        table.get(room).decode_ready.set()
        return web.json_response({"ok": True})

    async def kv(request: web.Request) -> web.Response:
        try:
            room = int(request.match_info["room"])
            timeout_s = min(float(request.query.get("timeout_s", "5")), 30.0)
        except ValueError:
            return web.json_response({"error": "bad room or timeout_s"}, status=400)
        r = table.get(room)
        try:
            await asyncio.wait_for(r.settled.wait(), timeout_s)
        except TimeoutError:
            return web.json_response({"status": "pending"})
        if r.error is not None:
            return web.json_response({"status": "failed", "error": r.error})
        return web.json_response({"status": "done"})

    async def health(_: web.Request) -> web.Response:
        return web.json_response({"ok": True})

    app = web.Application()
    app.router.add_post("/voltana/pd/{room}/ready", ready)
    app.router.add_get("/voltana/pd/{room}/kv", kv)
    app.router.add_get("/health", health)
    return app


async def decode_wait_kv(
    session: aiohttp.ClientSession, host: str, port: int, room: int, timeout_s: float
) -> None:
    """Decode side: announce the preallocated KV, then wait for the prefill's KV.

    Raises PdError when the prefill server is unreachable, failed, or too slow.
    """
    base = f"http://{host}:{port}/voltana/pd/{room}"
    deadline = time.monotonic() + timeout_s
    try:
        async with session.post(f"{base}/ready") as resp:
            if resp.status != 200:
                raise PdError(f"bootstrap server {host}:{port} answered {resp.status}")
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise PdError(f"KV for bootstrap_room {room} did not arrive in {timeout_s:g} s")
            async with session.get(
                f"{base}/kv", params={"timeout_s": f"{min(left, 5.0):.3f}"}
            ) as r:
                body: dict[str, Any] = await r.json()
            if body.get("status") == "done":
                return
            if body.get("status") == "failed":
                raise PdError(f"prefill of bootstrap_room {room} failed: {body.get('error')}")
    except aiohttp.ClientError as exc:
        raise PdError(f"bootstrap server {host}:{port} unreachable: {exc}") from exc
