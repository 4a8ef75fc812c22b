"""Fixtures shared by every test: a real nats-server on a free loopback port."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))  # makes `import helpers` work everywhere

from voltana.bus.natsserver import NatsServer


@pytest.fixture
def nats_server(tmp_path: Path) -> Iterator[NatsServer]:
    """A fresh nats-server with JetStream in a temporary data dir; stopped after the test."""
    server = NatsServer(store_dir=tmp_path / "js")
    server.start()
    try:
        yield server
    finally:
        server.close()


@pytest.fixture(scope="module")
def nats_server_module(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NatsServer]:
    """One nats-server shared by a module's tests (for modules that don't restart it)."""
    server = NatsServer(store_dir=tmp_path_factory.mktemp("js"))
    server.start()
    try:
        yield server
    finally:
        server.close()
