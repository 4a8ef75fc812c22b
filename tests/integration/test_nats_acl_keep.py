"""With the shipped NATS users, every KEEP publisher gets its JetStream acks.

KEEP events (``schemas.delivery``) are published with a reply inbox and wait for
the stream's ack, and each publisher asks now and then whether the stream
exists: a role user needs its own reply inboxes (``_INBOX_<user>.>``) to hear the ack
and the stream's INFO API. Without them the outbox would re-send until full and drop.
"""

from __future__ import annotations

import time

from actuator_helpers import ROOT
from helpers import acl_opts
from voltana.bus.client import Bus
from voltana.bus.natsserver import NatsServer
from voltana.schemas import subjects
from voltana.schemas.clock import ClockState, SetClock
from voltana.schemas.router import RouteDecision

DEPLOY = ROOT / "deploy" / "nats"
NODE = "gpu-node-1"


def route_decision(n: int) -> RouteDecision:
    """A router's KEEP event (request ``r<n>``)."""
    return RouteDecision(
        t_ns=time.time_ns(),
        request_id=f"r{n}",
        prefill="p0",
        decode="d0",
        prefill_policy="ecoroute",
        decode_policy="ecoroute",
        bootstrap_room=n,
    )


async def test_keep_publishers_get_acks(acl_server: NatsServer) -> None:
    admin = await Bus.connect(acl_opts(acl_server.url, "admin"))
    await admin.ensure_event_stream()
    now = time.time_ns()
    sends = {
        f"actuator-{NODE}": (
            subjects.clock_state(NODE, 0),
            ClockState(t_ns=now, node=NODE, gpu=0, seq=1, status="reset", locked_clock_mhz=None),
        ),
        f"freqctl-{NODE}": (
            subjects.clock_set(NODE, 0),
            SetClock(t_ns=now, node=NODE, gpu=0, sm_clock_mhz=1005, lease_s=2.0, seq=1),
        ),
        "router": (subjects.ROUTE_DECISION, route_decision(1)),
    }
    try:
        for user, (subject, msg) in sends.items():
            bus = await Bus.connect(acl_opts(acl_server.url, user))
            try:
                await bus.publish(subject, msg)
                assert await bus.outbox.flush(5.0), f"{user}: no ack from the stream"
                assert bus.outbox.acked == 1 and bus.outbox.dropped == 0
            finally:
                await bus.close()
        info = await admin.js.stream_info(subjects.STREAM_NAME)
        assert info.state.messages == len(sends)
    finally:
        await admin.close()


async def test_a_publisher_without_its_inbox_prefix_gets_no_acks(acl_server: NatsServer) -> None:
    """docs/deploy.md: a role user started without its private prefix cannot hear replies
    on the shared one, so its KEEP events are never acked (re-sent, then dropped)."""
    opts = acl_opts(acl_server.url, "router")
    opts.inbox_prefix = "_INBOX"  # what a service gets without VOLTANA_NATS_INBOX_PREFIX
    admin = await Bus.connect(acl_opts(acl_server.url, "admin"))
    await admin.ensure_event_stream()
    bus = await Bus.connect(opts)
    try:
        await bus.publish(subjects.ROUTE_DECISION, route_decision(2))
        assert not await bus.outbox.flush(1.0)  # however long it waits: no ack can come
        assert bus.outbox.acked == 0
    finally:
        await bus.close()
        await admin.close()
