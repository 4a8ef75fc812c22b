"""until_ready: a JetStream call retried while a cluster elects its leaders, then a clear error."""

from __future__ import annotations

import nats.errors
import nats.js.errors
import pytest
from voltana.bus.jsstate import JetStreamNotReady, until_ready


async def test_retries_while_jetstream_cannot_answer() -> None:
    fails = [nats.errors.TimeoutError(), nats.errors.NoRespondersError(), JetStreamNotReady("x")]
    calls = 0

    async def call() -> str:
        nonlocal calls
        calls += 1
        if fails:
            raise fails.pop(0)
        return "answer"

    assert await until_ready(call, "VOLTANA", wait_s=60, pause_s=0) == "answer"
    assert calls == 4


async def test_gives_up_with_a_clear_error_after_the_wait() -> None:
    async def call() -> None:
        raise nats.errors.TimeoutError()

    with pytest.raises(JetStreamNotReady, match="JetStream did not answer about VOLTANA"):
        await until_ready(call, "VOLTANA", wait_s=0, pause_s=0)


async def test_other_errors_are_not_retried() -> None:
    calls = 0

    async def call() -> None:
        nonlocal calls
        calls += 1
        raise nats.js.errors.NotFoundError()

    with pytest.raises(nats.js.errors.NotFoundError):
        await until_ready(call, "VOLTANA", wait_s=60, pause_s=0)
    assert calls == 1
