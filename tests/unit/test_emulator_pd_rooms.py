"""PD rendezvous rooms: settled rooms leave after a grace, stale ones after the TTL."""

from __future__ import annotations

import time

import pytest
from voltana.services.emulator import pd


async def test_settled_rooms_expire_after_the_grace_and_stale_ones_after_the_ttl(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    now = [1000.0]
    monkeypatch.setattr(time, "monotonic", lambda: now[0])
    table = pd.RoomTable(ttl_s=600.0, settled_grace_s=30.0)
    for i in range(1000):
        r = table.get(i)
        if i % 2 == 0:
            table.settle(i, r)
    assert len(table.rooms) == 1000
    assert table.get(0) is table.rooms[0]  # still there for a decode side that polls late
    now[0] += 31.0
    table.get(5000)
    assert 0 not in table.rooms and 1 in table.rooms  # settled ones gone, open ones kept
    assert len(table.rooms) == 501
    now[0] += 601.0
    table.get(6000)
    assert list(table.rooms) == [6000]  # the stale open ones expired too
    # An error reaches the waiter and a second settle changes nothing.
    r = table.get(7)
    table.settle(7, r, "prefill aborted")
    table.settle(7, r, None)
    assert r.settled.is_set() and r.error == "prefill aborted"
