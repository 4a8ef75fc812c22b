"""The shared in-flight block of ``--processes N``: each process's row, the sums a policy sees.

Two :class:`LoadBlock` mappings of one memfd stand for two router processes.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator

import pytest
from voltana.common.errors import ConfigError
from voltana.services.router.accounting import InstanceLoad
from voltana.services.router.config import RouterConfig, WorkerSpec
from voltana.services.router.multiproc_child import process_config
from voltana.services.router.shared_load import LoadBlock, SharedInstanceLoad, share_load
from voltana.services.router.state import ClusterState


@pytest.fixture
def blocks() -> Iterator[tuple[LoadBlock, LoadBlock]]:
    fd = os.memfd_create("test-load")
    os.ftruncate(fd, LoadBlock.size(2, 3))
    a, b = LoadBlock(fd, 2, 3), LoadBlock(fd, 2, 3)
    a.clear()
    try:
        yield a, b
    finally:
        a.close()
        b.close()
        os.close(fd)


def lifecycle(load: InstanceLoad) -> list[tuple[int, int, int, float]]:
    """Drive one load through PD and colocated requests; its view after every step."""
    steps = [
        lambda: load.prefill_dispatched("p1", 100, 1.0),
        lambda: load.decode_dispatched("d1", 50, 20, 2.0),
        lambda: load.unified_dispatched("u1", 30, 10, 3.0),
        lambda: load.prefill_done("p1", 100),
        lambda: load.prefill_done("p1", 100),  # counted once
        lambda: load.first_token("u1"),
        lambda: load.decode_done("d1", 50, 20),
        lambda: load.decode_done("u1", 30, 10),
    ]
    out = []
    for step in steps:
        step()
        v = load.view("w", "decode", 10.0)
        out.append(
            (v.in_flight_requests, v.in_flight_tokens, v.queued_prefill_tokens, v.oldest_wait_s)
        )
    return out


def test_one_process_sees_what_a_single_router_sees(blocks: tuple[LoadBlock, LoadBlock]) -> None:
    a, _ = blocks
    assert lifecycle(SharedInstanceLoad(a, 0, 1)) == lifecycle(InstanceLoad())


def test_views_sum_every_process_row(blocks: tuple[LoadBlock, LoadBlock]) -> None:
    a, b = blocks
    mine, theirs = SharedInstanceLoad(a, 0, 2), SharedInstanceLoad(b, 1, 2)
    mine.decode_dispatched("r1", 100, 10, 5.0)
    theirs.unified_dispatched("r2", 40, 4, 3.0)
    theirs.decode_dispatched("r3", 1, 1, 4.0)
    v = mine.view("w", "decode", 6.0, url="http://w", healthy=False, clock_mhz=1500)
    assert (v.in_flight_requests, v.in_flight_tokens, v.queued_prefill_tokens) == (3, 156, 40)
    assert v.oldest_wait_s == 3.0  # the other process's request waits longest
    assert (v.url, v.healthy, v.clock_mhz) == ("http://w", False, 1500)  # telemetry passes
    assert theirs.view("w", "decode", 6.0) == mine.view("w", "decode", 6.0)
    # the process's own counters stay its own (its gauges; /metrics adds them up)
    assert (mine.in_flight_requests, theirs.in_flight_requests) == (1, 2)
    assert a.totals(0) == (0.0, 0.0, 0.0, math.inf)  # other workers untouched
    b.clear_row(1)  # process 1 died: the supervisor forgets its requests
    v = mine.view("w", "decode", 6.0)
    assert (v.in_flight_requests, v.in_flight_tokens, v.oldest_wait_s) == (1, 110, 1.0)


def test_share_load_replaces_every_worker(blocks: tuple[LoadBlock, LoadBlock]) -> None:
    a, b = blocks
    specs = [WorkerSpec(url=f"http://w{i}:1", role="unified", name=f"w{i}") for i in range(3)]
    one, two = ClusterState(specs), ClusterState(specs)
    share_load(one, a, 0)
    share_load(two, b, 1)
    one.unified_dispatched("w1", "r", 10, 5, 1.0)
    assert [v.in_flight_requests for v in two.view("unified", 2.0)] == [0, 1, 0]
    two.unified_dispatched("w1", "s", 10, 5, 1.5)
    one.decode_done("w1", "r", 10, 5, [], 2.0)
    assert [v.in_flight_tokens for v in one.view("unified", 2.0)] == [0, 15, 0]
    with pytest.raises(ValueError, match="3 workers, router has 2"):
        share_load(ClusterState(specs[:2]), a, 0)
    busy = ClusterState(specs)
    busy.unified_dispatched("w0", "q", 1, 1, 0.0)
    with pytest.raises(ValueError, match="already has requests"):
        share_load(busy, a, 0)
    with pytest.raises(IndexError):
        a.base(2, 0)


def test_each_process_draws_its_own_random_stream() -> None:
    cfg = RouterConfig(seed=7)
    assert [process_config(cfg, slot).seed for slot in range(3)] == [7, 8, 9]
    assert cfg.seed == 7  # the supervisor's copy is left alone
    assert process_config(RouterConfig(), 1).seed is None  # OS entropy: already distinct


def test_processes_must_be_positive() -> None:
    w = WorkerSpec(url="127.0.0.1:30000", role="unified")
    with pytest.raises(ConfigError, match="processes must be > 0"):
        RouterConfig(mode="unified", workers=[w], processes=0).validate()
    assert RouterConfig(mode="unified", workers=[w]).validate().processes == 1
