"""One way to run a long-lived service: connect, start, serve metrics, wait, stop, disconnect.

Every entry point that runs until interrupted (``voltana telemetry``, ``freqctl``,
``actuator``, ``router``, ``emulator``, ``nats``, ``tail``, ``up``) goes through
:func:`run_service`, so the shutdown path is the same everywhere: SIGTERM or
SIGINT (or the service ending by itself) leads to ``stop()``, which also runs
when start-up or the wait failed, and the bus closes after the service stopped.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
from collections.abc import Callable
from typing import Any, Protocol, Self, TypeVar, overload, runtime_checkable

import msgspec
import structlog
from voltana.bus.client import Bus, BusOptions
from voltana.common.guard import died
from voltana.common.logs import get_logger
from voltana.common.shutdown import shutdown_event
from voltana.common.tasks import cancel_and_wait

__all__ = [
    "EndsByItself",
    "MetricsEndpoint",
    "Service",
    "ServiceContext",
    "add_metrics_args",
    "metrics_from_args",
    "run_service",
]


class Service(Protocol):
    """The lifecycle of every long-running service.

    ``start`` returns once the service is up (what it returns is ignored);
    ``stop`` releases everything ``start`` took and must cope with a start that
    failed half-way, since the runner calls it on every exit.
    """

    async def start(self) -> object: ...

    async def stop(self) -> None: ...


class ServiceContext:
    """``async with service:`` starts it and always stops it: the runner's lifecycle for tests and scripts."""

    async def start(self) -> object:
        raise NotImplementedError

    async def stop(self) -> None:
        raise NotImplementedError

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()


@runtime_checkable
class EndsByItself(Protocol):
    """A service that can finish before any signal: ``done`` returns (or raises) then."""

    async def done(self) -> None: ...


S = TypeVar("S", bound=Service)
Logger = structlog.typing.FilteringBoundLogger


class MetricsEndpoint(msgspec.Struct, frozen=True, kw_only=True):
    """Where the Prometheus registry is served (port 0: any free port)."""

    port: int
    host: str = "127.0.0.1"


def add_metrics_args(parser: argparse.ArgumentParser) -> None:
    """``--metrics-port`` (off unless given) and ``--metrics-host`` (loopback by default)."""
    parser.add_argument(
        "--metrics-port", type=int, default=None, help="serve Prometheus metrics on this port"
    )
    parser.add_argument("--metrics-host", default="127.0.0.1", help="metrics bind address")


def metrics_from_args(args: argparse.Namespace) -> MetricsEndpoint | None:
    """The endpoint asked for by :func:`add_metrics_args`' flags, or None."""
    if args.metrics_port is None:
        return None
    return MetricsEndpoint(port=args.metrics_port, host=args.metrics_host)


async def _run(
    service: S,
    stop: asyncio.Event,
    *,
    name: str,
    metrics: MetricsEndpoint | None,
    ready: Callable[[S], None] | None,
    log: Logger,
) -> None:
    failure: BaseException | None = None
    server: Any = None
    try:
        await service.start()
        if metrics is not None:
            server = _serve_metrics(metrics, log)
        if ready is not None:
            ready(service)
        await _wait(service, stop, name=name, log=log)
    except BaseException as exc:
        failure = exc
        raise
    finally:
        try:
            await service.stop()
        except Exception:
            if failure is None:
                raise
            log.exception(f"{name}_stop_failed")  # the first error is the one raised
        finally:
            if server is not None:
                server.shutdown()
                server.server_close()


async def _wait(service: Service, stop: asyncio.Event, *, name: str, log: Logger) -> None:
    waiters: list[asyncio.Task[Any]] = [asyncio.create_task(stop.wait())]
    if isinstance(service, EndsByItself):
        waiters.append(asyncio.create_task(service.done()))
    try:
        done, _ = await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
    finally:
        await cancel_and_wait(waiters)
    if stop.is_set():
        log.info(f"{name}_signal_received")
    for task in done:
        task.result()  # a service that ended by failing raises here


def _serve_metrics(endpoint: MetricsEndpoint, log: Logger) -> Any:
    from prometheus_client import start_http_server

    server, _thread = start_http_server(endpoint.port, addr=endpoint.host)
    log.info("metrics_serving", host=endpoint.host, port=server.server_port)
    return server


@overload
def run_service(
    build: Callable[[Bus], S],
    *,
    name: str,
    bus: BusOptions,
    metrics: MetricsEndpoint | None = None,
    ready: Callable[[S], None] | None = None,
    log: Logger | None = None,
    loop_factory: Callable[[], asyncio.AbstractEventLoop] | None = None,
) -> int: ...


@overload
def run_service(
    build: Callable[[], S],
    *,
    name: str,
    bus: None = None,
    metrics: MetricsEndpoint | None = None,
    ready: Callable[[S], None] | None = None,
    log: Logger | None = None,
    loop_factory: Callable[[], asyncio.AbstractEventLoop] | None = None,
) -> int: ...


def run_service(
    build: Callable[..., S],
    *,
    name: str,
    bus: BusOptions | None = None,
    metrics: MetricsEndpoint | None = None,
    ready: Callable[[S], None] | None = None,
    log: Logger | None = None,
    loop_factory: Callable[[], asyncio.AbstractEventLoop] | None = None,
) -> int:
    """Run one service on a fresh event loop until SIGTERM/SIGINT or until it ends by itself.

    Args:
        build: makes the service; it gets the connected bus when ``bus`` is given.
        name: the service's name: its logger and the ``<name>_signal_received`` event.
        bus: connect to NATS first (and close the connection last).
        metrics: serve the Prometheus registry there while the service runs.
        ready: called with the service once it started (and metrics are served).
        log: the logger to use (default: ``get_logger(name)``).
        loop_factory: the event loop to run on (e.g. uvloop's; default asyncio's).

    Returns:
        0, the exit code of a service that stopped as asked.

    Raises:
        BusError: the bus could not be reached (nothing was built).
        Exception: whatever ``build``, ``start`` or a failing service raised, after ``stop``.
    """
    logger = log or get_logger(name)

    async def serve() -> None:
        stop = shutdown_event()  # first: a signal during connect or start-up still counts
        connection = await Bus.connect(bus) if bus is not None else None
        try:
            service = build(connection) if connection is not None else build()
            await _run(service, stop, name=name, metrics=metrics, ready=ready, log=logger)
            dead = died()
            if dead is not None:  # a loop task died: stopped cleanly, but the exit says so
                raise dead
        finally:
            if connection is not None:
                with contextlib.suppress(Exception):
                    await connection.close()

    with asyncio.Runner(loop_factory=loop_factory) as runner:
        runner.run(serve())
    return 0
