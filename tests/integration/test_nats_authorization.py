"""Each security claim of docs/deploy.md, checked against the shipped NATS config.

The server runs deploy/nats/nats-server.conf with deploy/nats/authorization.conf
(the ``acl_server`` fixture); every role connects as its own user. A publish
the server refuses never reaches a listener; a refused JetStream API request
never changes the stream.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
from helpers import acl_opts
from voltana.bus.client import Bus
from voltana.bus.natsserver import NatsServer
from voltana.schemas import subjects
from voltana.schemas.clock import ClockState, SetClock

NODE, OTHER = "gpu-node-1", "gpu-node-2"
ROLES = (f"telemetry-{NODE}", f"freqctl-{NODE}", "router", "viewer", f"actuator-{NODE}")


@pytest.fixture
async def buses(acl_server: NatsServer) -> Any:
    """admin (with the event log and KV bucket created and three events in the log) + each role."""
    admin = await Bus.connect(acl_opts(acl_server.url, "admin"))
    await admin.ensure_event_stream()
    await admin.kv()
    for i in range(3):
        await admin.publish_persistent(subjects.clock_set(OTHER, 0), cmd(OTHER, 1000 + 15 * i))
    out = {"admin": admin}
    for user in ROLES:
        out[user] = await Bus.connect(acl_opts(acl_server.url, user))
    BUSES.clear()
    BUSES.update(out)
    try:
        yield out
    finally:
        for b in out.values():
            await b.close()


def cmd(node: str, mhz: int = 1200) -> SetClock:
    return SetClock(t_ns=time.time_ns(), node=node, gpu=0, sm_clock_mhz=mhz, issued_by="t")


CANARY = {  # a subject each role may publish on: its arrival ends the wait
    f"telemetry-{NODE}": f"voltana.telemetry.gpu.{NODE}.99",
    f"freqctl-{NODE}": "voltana.freqctl.decision.canary",
    "router": "voltana.router.state.decode.canary",
    "viewer": "voltana-svc.canary.x.status",
    f"actuator-{NODE}": f"voltana.clock.state.{NODE}.99",
    "admin": "voltana.canary",
}


async def reaches(sender: Bus, listener: Bus, subject: str, payload: Any) -> bool:
    """Whether a message ``sender`` publishes on ``subject`` is delivered to ``listener``.

    Canaries on a subject the sender may use bracket the test: the first one to
    arrive proves the listener's subscriptions are live on the server (they were
    made in order on one connection); NATS keeps one connection's order, so once
    the last canary arrived, the message arrived before it or never will.
    """
    got: list[tuple[str, bytes]] = []
    canary = CANARY[next(k for k, v in BUSES.items() if v is sender)]

    async def on(m: Any) -> None:
        got.append((m.subject, m.data))

    async def canary_arrives(tag: bytes, resend: bool) -> None:
        deadline = time.monotonic() + 15
        await sender.nc.publish(canary, tag)
        while (canary, tag) not in got:
            assert time.monotonic() < deadline, "the canary never arrived"
            await asyncio.sleep(0.05)
            if resend:
                await sender.nc.publish(canary, tag)

    subs = [await listener.subscribe_raw(subject, on), await listener.subscribe_raw(canary, on)]
    await canary_arrives(b"first", resend=True)
    await sender.publish(subject, payload)
    await canary_arrives(b"last", resend=False)
    for sub in subs:
        await sub.unsubscribe()
    return any(s == subject for s, _ in got)


BUSES: dict[str, Bus] = {}


async def stream_msgs(admin: Bus, name: str = subjects.STREAM_NAME) -> int:
    return (await admin.js.stream_info(name)).state.messages


async def refused(*coros: Any) -> bool:
    """Whether every JetStream API request is refused (the server drops it: no answer).

    A permitted request is answered in milliseconds; whether one slipped through is
    checked on the stream itself by the callers.
    """

    async def one(coro: Any) -> bool:
        try:
            await asyncio.wait_for(coro, 0.5)
        except Exception:
            return True
        return False

    return all(await asyncio.gather(*(one(c) for c in coros)))


async def test_actuator_credential_cannot_steer_or_speak_for_another_node(buses: Any) -> None:
    """deploy.md: even a leaked actuator credential cannot steer another node's GPUs."""
    act, admin = buses[f"actuator-{NODE}"], buses["admin"]
    for node in (NODE, OTHER):
        assert not await reaches(act, admin, subjects.clock_set(node, 0), cmd(node))
    state = ClockState(
        t_ns=time.time_ns(), node=OTHER, gpu=0, seq=1, status="reset", locked_clock_mhz=None
    )
    assert not await reaches(act, admin, subjects.clock_state(OTHER, 0), state)
    mine = ClockState(
        t_ns=time.time_ns(), node=NODE, gpu=0, seq=1, status="reset", locked_clock_mhz=None
    )
    assert await reaches(act, admin, subjects.clock_state(NODE, 0), mine)


async def test_freqctl_commands_only_its_own_node(buses: Any) -> None:
    """deploy.md: a node's freqctl credential commands that node's GPUs and no other."""
    fc, admin = buses[f"freqctl-{NODE}"], buses["admin"]
    assert await reaches(fc, admin, subjects.clock_set(NODE, 0), cmd(NODE))
    assert not await reaches(fc, admin, subjects.clock_set(OTHER, 0), cmd(OTHER))


@pytest.mark.parametrize("user", [f"telemetry-{NODE}", "router", "viewer"])
async def test_other_roles_cannot_command_any_gpu(buses: Any, user: str) -> None:
    assert not await reaches(buses[user], buses["admin"], subjects.clock_set(NODE, 0), cmd(NODE))


async def test_telemetry_speaks_only_for_its_node_and_instances(buses: Any) -> None:
    """deploy.md: a node's telemetry credential cannot speak for another node's GPUs or
    instances (its instances are deploy/node.example.toml's prefill-0 and decode-0)."""
    tel, admin = buses[f"telemetry-{NODE}"], buses["admin"]
    for subject, ok in (
        (subjects.telemetry_gpu(NODE, 0), True),
        (subjects.telemetry_gpu(OTHER, 0), False),
        (subjects.telemetry_engine("decode", "decode-0"), True),
        (subjects.telemetry_engine("prefill", "prefill-0"), True),
        (subjects.telemetry_engine("decode", "decode-1"), False),
    ):
        assert await reaches(tel, admin, subject, cmd(NODE)) is ok, subject


async def test_telemetry_hears_no_events(buses: Any) -> None:
    tel, admin = buses[f"telemetry-{NODE}"], buses["admin"]
    got: list[str] = []

    async def on(m: Any) -> None:
        got.append(m.subject)

    await tel.subscribe_raw(">", on)
    await admin.publish(subjects.clock_set(NODE, 0), cmd(NODE))
    await admin.nc.flush(timeout=2)
    await asyncio.sleep(0.5)
    assert got == []


async def test_freqctl_reads_the_kv_bucket_but_not_the_event_log(buses: Any) -> None:
    """deploy.md: freqctl's JetStream access is the KV bucket's, not the whole log's."""
    fc = buses[f"freqctl-{NODE}"]
    kv = await fc.kv()
    assert await refused(fc.js.subscribe(subjects.ALL, stream=subjects.STREAM_NAME))
    assert kv is not None


@pytest.mark.parametrize("user", ROLES)
async def test_only_admin_can_purge_or_delete_the_log_and_bucket(buses: Any, user: str) -> None:
    """deploy.md: no role but admin can purge, delete or change the event log or the KV bucket."""
    bus, admin = buses[user], buses["admin"]
    before = await stream_msgs(admin)
    assert before == 3
    assert await refused(
        bus.js.purge_stream(subjects.STREAM_NAME),
        bus.js.delete_stream(subjects.STREAM_NAME),
        bus.js.delete_key_value(subjects.KV_BUCKET),
        bus.js.purge_stream(f"KV_{subjects.KV_BUCKET}"),
    )
    assert await stream_msgs(admin) == before
    assert await stream_msgs(admin, f"KV_{subjects.KV_BUCKET}") >= 0


async def test_admin_purges(buses: Any) -> None:
    admin = buses["admin"]
    assert await admin.js.purge_stream(subjects.STREAM_NAME)
    assert await stream_msgs(admin) == 0


async def test_viewer_reads_the_log_and_writes_nothing(buses: Any) -> None:
    """deploy.md: the viewer role (voltana tail, replay) reads the log and cannot add to it."""
    viewer, admin = buses["viewer"], buses["admin"]
    sub = await viewer.js.subscribe(
        subjects.ALL, stream=subjects.STREAM_NAME, ordered_consumer=True
    )
    got = [await sub.next_msg(timeout=2) for _ in range(3)]
    assert [m.subject for m in got] == [subjects.clock_set(OTHER, 0)] * 3
    await sub.unsubscribe()
    assert not await reaches(viewer, admin, subjects.clock_set(NODE, 0), cmd(NODE))


SPY_CANARY = {  # a subject each role may hear, for ordering (admin publishes it)
    f"actuator-{NODE}": subjects.clock_set(NODE, 7),
    f"freqctl-{NODE}": "voltana.telemetry.engine.decode.spy",
    "router": "voltana.telemetry.engine.decode.spy",
    "viewer": "voltana.spy",
}


@pytest.mark.parametrize("user", sorted(SPY_CANARY))
async def test_no_role_hears_the_replies_another_client_gets(buses: Any, user: str) -> None:
    """deploy.md: replies (JetStream acks, stream and KV reads) arrive under the requester's
    own inbox prefix, and no role credential may subscribe to another's."""
    spy, admin = buses[user], buses["admin"]
    victim = "router" if user != "router" else f"freqctl-{NODE}"
    got: list[str] = []
    seen_by_admin: list[str] = []

    async def on(m: Any) -> None:
        got.append(m.subject)

    async def admin_on(m: Any) -> None:
        seen_by_admin.append(m.subject)

    inbox = buses[victim].opts.inbox_prefix  # where the victim's replies arrive
    for pattern in (f"{inbox}.>", "_INBOX.>", "*.>", ">"):
        await spy.subscribe_raw(pattern, on)
    await admin.subscribe_raw(f"{inbox}.>", admin_on)  # the control: they can be heard
    await spy.subscribe_raw(SPY_CANARY[user], on)
    info = await buses[victim].js.stream_info(subjects.STREAM_NAME)  # answered to its inbox
    assert info.config.name == subjects.STREAM_NAME
    deadline = time.monotonic() + 15
    await admin.nc.publish(SPY_CANARY[user], b"after the reply")
    # the server queued any copy of the reply to the spy before the canary
    while SPY_CANARY[user] not in got or not seen_by_admin:
        assert time.monotonic() < deadline, "the canary or the control never arrived"
        await asyncio.sleep(0.05)
    assert all(s.startswith(f"{inbox}.") for s in seen_by_admin)
    assert not [s for s in got if s.startswith("_INBOX")], got
