"""A service's status on the bus: a NATS micro service answering ``<status subject>`` with JSON.

The freqctl controllers and the actuators each register one (``voltana.freqctl.<name>.status``,
``voltana.actuator.<node>.status``), so ``nats micro ls`` lists them and the status
request returns the same dict their ``stats()`` gives.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from nats.micro import add_service
from nats.micro.request import Request
from nats.micro.service import Service as MicroService
from voltana import __version__
from voltana.bus.client import Bus


async def add_status_service(
    bus: Bus,
    *,
    name: str,
    description: str,
    metadata: dict[str, str],
    status_subject: str,
    status: Callable[[], dict[str, Any]],
    counts: Callable[[], dict[str, Any]],
) -> MicroService:
    """Register the micro service; ``status()`` answers requests, ``counts()`` feeds its stats.

    ``status_subject`` is the full subject (``....status``); stop the returned service on exit.
    """

    async def respond(req: Request) -> None:
        await req.respond(json.dumps(status()).encode())

    service = await add_service(
        bus.nc,
        name=name,
        version=__version__,
        description=description,
        metadata=metadata,
        stats_handler=lambda _ep: {"malformed_dropped": bus.decode_error_total(), **counts()},
    )
    group_name, _, endpoint = status_subject.rpartition(".")
    group = service.add_group(name=group_name)
    await group.add_endpoint(name=endpoint, handler=respond)
    return service
