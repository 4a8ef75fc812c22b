"""The service runner against a real nats-server: start, signals, failures, metrics, the bus."""

from __future__ import annotations

import asyncio
import os
import signal
import urllib.request

import pytest
import structlog
from helpers import free_port
from voltana.bus.client import Bus, BusOptions
from voltana.bus.natsserver import NatsServer
from voltana.common.errors import BusError
from voltana.services.runner import MetricsEndpoint, run_service


class Probe:
    """A service that records its lifecycle and can fail where told."""

    def __init__(self, bus: Bus | None = None, *, fail_start: bool = False) -> None:
        self.bus = bus
        self.fail_start = fail_start
        self.calls: list[str] = []

    async def start(self) -> None:
        self.calls.append("start")
        if self.fail_start:
            raise RuntimeError("cannot start")

    async def stop(self) -> None:
        self.calls.append("stop")


class Finite(Probe):
    """Ends by itself once ``outcome`` resolves (or raises)."""

    def __init__(self, outcome: BaseException | None) -> None:
        super().__init__()
        self.outcome = outcome

    async def done(self) -> None:
        await asyncio.sleep(0.05)
        if self.outcome is not None:
            raise self.outcome


def _opts(server: NatsServer) -> BusOptions:
    return BusOptions(servers=[server.url], name="runner-test")


def _signal_self(sig: int) -> None:
    asyncio.get_running_loop().call_later(0.05, os.kill, os.getpid(), sig)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_signal_stops_the_service_and_closes_the_bus(nats_server: NatsServer, sig: int) -> None:
    made: list[Probe] = []

    def build(bus: Bus) -> Probe:
        made.append(Probe(bus))
        return made[-1]

    with structlog.testing.capture_logs() as logs:
        rc = run_service(
            build, name="probe", bus=_opts(nats_server), ready=lambda _: _signal_self(sig)
        )
    assert rc == 0
    (probe,) = made
    assert probe.calls == ["start", "stop"]
    assert probe.bus is not None and probe.bus.nc.is_closed
    assert any(e["event"] == "probe_signal_received" for e in logs)


def test_a_failing_start_is_stopped_and_raised(nats_server: NatsServer) -> None:
    made: list[Probe] = []

    def build(bus: Bus) -> Probe:
        made.append(Probe(bus, fail_start=True))
        return made[-1]

    with pytest.raises(RuntimeError, match="cannot start"):
        run_service(build, name="probe", bus=_opts(nats_server))
    (probe,) = made
    assert probe.calls == ["start", "stop"]
    assert probe.bus is not None and probe.bus.nc.is_closed


def test_a_failing_build_still_closes_the_bus(nats_server: NatsServer) -> None:
    seen: list[Bus] = []

    def build(bus: Bus) -> Probe:
        seen.append(bus)
        raise ValueError("bad config")

    with pytest.raises(ValueError, match="bad config"):
        run_service(build, name="probe", bus=_opts(nats_server))
    assert seen and seen[0].nc.is_closed


def test_an_unreachable_bus_builds_nothing() -> None:
    opts = BusOptions(servers=[f"nats://127.0.0.1:{free_port()}"], connect_attempts=1)
    built: list[Bus] = []
    with pytest.raises(BusError):
        run_service(lambda bus: built.append(bus) or Probe(bus), name="probe", bus=opts)
    assert built == []


def test_a_service_that_ends_by_itself_is_stopped() -> None:
    probe = Finite(None)
    assert run_service(lambda: probe, name="finite") == 0
    assert probe.calls == ["start", "stop"]


def test_a_service_that_fails_while_running_is_stopped_and_raised() -> None:
    probe = Finite(OSError("child exited"))
    with pytest.raises(OSError, match="child exited"):
        run_service(lambda: probe, name="finite")
    assert probe.calls == ["start", "stop"]


def test_metrics_are_served_while_running_and_released_after() -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}/metrics"
    scraped: list[str] = []

    class Scraped(Probe):
        async def done(self) -> None:
            def get() -> str:
                with urllib.request.urlopen(url, timeout=2) as resp:
                    return str(resp.read().decode())

            scraped.append(await asyncio.to_thread(get))

    probe = Scraped()
    run_service(lambda: probe, name="scraped", metrics=MetricsEndpoint(port=port))
    assert scraped and "# HELP" in scraped[0]
    with pytest.raises(OSError):
        urllib.request.urlopen(url, timeout=1)
