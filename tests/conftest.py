"""Fixtures shared by every test: a real nats-server on a free loopback port, SGLang's client."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).parent))  # makes `import helpers` work everywhere

from voltana.bus.natsserver import NatsServer

pytest.register_assert_rewrite("helpers")  # its checks report values as a test's asserts do


@pytest.fixture
def nats_server(tmp_path: Path) -> Iterator[NatsServer]:
    """A fresh nats-server with JetStream in a temporary data dir; stopped after the test."""
    with NatsServer(store_dir=tmp_path / "js") as server:
        yield server


@pytest.fixture(scope="module")
def nats_server_module(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NatsServer]:
    """One nats-server shared by a module's tests (for modules that don't restart it)."""
    with NatsServer(store_dir=tmp_path_factory.mktemp("js")) as server:
        yield server


@pytest.fixture(scope="module")
def bench_serving() -> Any:
    """SGLang 0.4.7's ``bench_serving`` module, set up as its command line would (streaming).

    Build its requests with ``helpers.sglang_request``.
    """
    try:
        import sglang.bench_serving as bs
    except ImportError as exc:
        pytest.skip(f"sglang 0.4.7 (pip install --no-deps sglang==0.4.7) is not importable: {exc}")
    bs.args = argparse.Namespace(
        disable_ignore_eos=False, disable_stream=False, return_logprob=False
    )
    return bs
