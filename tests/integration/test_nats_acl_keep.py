"""With the shipped NATS users, every KEEP publisher gets its JetStream acks.

KEEP events (``schemas.delivery``) are published with a reply inbox and wait for
the stream's ack, and each publisher asks now and then whether the stream
exists: a role user needs ``_INBOX.>`` to hear the ack and the stream's INFO
API. Without them the outbox would re-send until full and drop.
"""

from __future__ import annotations

import time

from actuator_helpers import ROOT
from voltana.bus.client import Bus, BusOptions
from voltana.bus.natsserver import NatsServer
from voltana.schemas import subjects
from voltana.schemas.clock import ClockState, SetClock
from voltana.schemas.router import RouteDecision

DEPLOY = ROOT / "deploy" / "nats"
NODE = "gpu-node-1"


def role(url: str, user: str) -> BusOptions:
    return BusOptions(servers=[url], user=user, password=f"pw-{user.split('-')[0]}", name=user)


async def test_keep_publishers_get_acks(acl_server: NatsServer) -> None:
    admin = await Bus.connect(role(acl_server.url, "admin"))
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
        "router": (
            subjects.ROUTE_DECISION,
            RouteDecision(
                t_ns=now,
                request_id="r1",
                prefill="p0",
                decode="d0",
                prefill_policy="ecoroute",
                decode_policy="ecoroute",
                bootstrap_room=1,
            ),
        ),
    }
    try:
        for user, (subject, msg) in sends.items():
            bus = await Bus.connect(role(acl_server.url, user))
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
