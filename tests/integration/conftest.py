"""Fixtures of the integration tests: emulated workers started in-process, an HTTP client,
a nats-server running the shipped deploy config."""

from __future__ import annotations

import shutil
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from emulator_helpers import Factory
from helpers import free_port
from voltana.bus.natsserver import NatsServer
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


NATS_ROLES = ("ACTUATOR", "TELEMETRY", "FREQCTL", "ROUTER", "VIEWER", "ADMIN")


@pytest.fixture
def acl_server(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[NatsServer]:
    """A nats-server running the shipped deploy/nats config (its store moved to tmp_path).

    Each role's password is ``pw-<role>`` (see ``helpers.acl_opts``).
    """
    for role in NATS_ROLES:
        monkeypatch.setenv(f"VOLTANA_NATS_{role}_PASSWORD", f"pw-{role.lower()}")
    shipped = Path(__file__).resolve().parents[2] / "deploy" / "nats"
    text = (shipped / "nats-server.conf").read_text()
    assert "store_dir: /var/lib/voltana-nats" in text and "include ./authorization.conf" in text
    conf = tmp_path / "nats-server.conf"
    conf.write_text(text.replace("/var/lib/voltana-nats", str(tmp_path / "js")))
    shutil.copy(shipped / "authorization.conf", tmp_path / "authorization.conf")
    server = NatsServer(jetstream=False, extra_args=["-c", str(conf)])
    server.start()
    try:
        yield server
    finally:
        server.close()
