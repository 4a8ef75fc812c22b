"""Fixtures of the integration tests: emulated workers started in-process, an HTTP client."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from emulator_helpers import Factory
from helpers import free_port
from voltana.services.emulator.app import EmulatorApp
from voltana.services.emulator.config import EmulatorConfig


@pytest.fixture
async def make_emulator() -> AsyncIterator[Factory]:
    apps: list[EmulatorApp] = []

    async def make(**kw: Any) -> EmulatorApp:
        kw.setdefault("port", free_port())
        kw.setdefault("bootstrap_port", free_port())
        app = EmulatorApp(EmulatorConfig(**kw))
        await app.start()
        apps.append(app)
        return app

    try:
        yield make
    finally:
        for a in apps:
            await a.stop()


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as s:
        yield s
