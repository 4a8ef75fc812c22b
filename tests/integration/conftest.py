"""Fixtures of the integration tests: emulated workers started in-process, an HTTP client,
a nats-server running the shipped deploy config."""

from __future__ import annotations

import errno
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
        # A port free when picked can be taken before the bind (a client's ephemeral
        # port, say): with the ports picked here, pick again; the app cleans up itself.
        picked = [k for k in ("port", "bootstrap_port") if k not in kw]
        for attempt in range(5):
            app = EmulatorApp(EmulatorConfig(**{**{k: free_port() for k in picked}, **kw}))
            try:
                await app.start()
            except OSError as exc:
                if exc.errno != errno.EADDRINUSE or not picked or attempt == 4:
                    raise
                continue
            apps.append(app)
            return app
        raise AssertionError("unreachable")

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
