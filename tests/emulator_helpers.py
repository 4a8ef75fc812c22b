"""Helpers for tests of the emulated worker over real HTTP (importable as ``emulator_helpers``)."""

from __future__ import annotations

import json
import time
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
from voltana.services.emulator.app import EmulatorApp

Factory = Callable[..., Awaitable[EmulatorApp]]
JSON = {"Content-Type": "application/json"}


def url(app: EmulatorApp, path: str) -> str:
    return f"http://127.0.0.1:{app.config.port}{path}"


async def generate_unpaired(
    http: aiohttp.ClientSession, app: EmulatorApp, text: str, max_new_tokens: int, room: int
) -> None:
    """A /generate to one worker alone (a fake bootstrap host needs no partner); must be 200."""
    body = {
        "text": text,
        "sampling_params": {"max_new_tokens": max_new_tokens, "ignore_eos": True},
        "bootstrap_host": "2.2.2.2",
        "bootstrap_room": room,
    }
    async with http.post(url(app, "/generate"), json=body) as r:
        assert r.status == 200, await r.text()


async def sse(resp: aiohttp.ClientResponse) -> list[tuple[float, Any]]:
    """(arrival time, parsed chunk) per SSE event; '[DONE]' kept as a string."""
    out = []
    async for line in resp.content:
        line = line.strip()
        if line.startswith(b"data: "):
            data = line[6:].decode()
            out.append((time.monotonic(), data if data == "[DONE]" else json.loads(data)))
    return out
