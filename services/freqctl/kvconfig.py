"""Live controller configs from the NATS KV bucket: read once, watched, re-read after a reconnect.

Keys ``controller.<instance>`` and ``controller.default`` hold ``ControllerConfig``
JSON. Every change lands in the :class:`~voltana.services.freqctl.core.ConfigStore`
and is announced to the service (which rebuilds the controllers it affects); a
value that does not decode is logged, counted and ignored, so the previous
config stays in force.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Any

import msgspec
import nats.errors
import nats.js.errors
import structlog
from prometheus_client import Counter as PromCounter
from voltana.bus.client import Bus
from voltana.common.errors import BusError
from voltana.common.guard import supervise
from voltana.common.tasks import cancel_and_wait
from voltana.schemas import codec
from voltana.schemas.config import ControllerConfig
from voltana.services.freqctl.core import ConfigStore

CONFIG_ERRORS = PromCounter(
    "voltana_freqctl_config_errors", "KV config values that could not be used", ["key"]
)
KEYS = "controller.>"

_KV_UNAVAILABLE = (
    TimeoutError,
    nats.errors.Error,
    nats.js.errors.Error,
    BusError,
)
"""What a bucket without a leader (or a lost connection) raises: retried, never fatal."""


class KvConfigWatcher:
    """Keeps ``store`` equal to the bucket's controller keys and calls ``on_change(key)``.

    Args:
        bus: a connected bus.
        store: the configs the service resolves per instance.
        on_change: called after every stored change (with the KV key).
        counts: the service's counters (``config_errors`` is added to).
        log: the service's logger.
    """

    def __init__(
        self,
        bus: Bus,
        store: ConfigStore,
        on_change: Callable[[str], None],
        *,
        counts: Counter[str],
        log: structlog.typing.FilteringBoundLogger,
    ) -> None:
        self.bus = bus
        self.store = store
        self.on_change = on_change
        self.counts = counts
        self._log = log
        self._watcher: Any = None
        self._task: asyncio.Task[None] | None = None
        self._retry: asyncio.Task[None] | None = None
        # ordering between the watch and a concurrent reload: the newest value wins
        self._rev: dict[str, int] = {}  # key -> revision of the value applied
        self._events = 0  # watch updates seen
        self._touched: dict[str, int] = {}  # key -> ``_events`` at its last watch update
        self.retry_initial_s = 0.25
        self.retry_max_s = 5.0

    async def start(self) -> None:
        """Watch the bucket and read it; when it cannot answer yet, keep trying in the background.

        Until the bucket answers (a cluster electing its leader, a bucket that does not
        exist yet) the configs from the command line stay in force.
        """
        self.bus.on_reconnect(self._on_reconnect)
        try:
            await self._open()
        except _KV_UNAVAILABLE as exc:
            self._log.warning("kv_config_unavailable", error=str(exc) or type(exc).__name__)
            self._retry = asyncio.create_task(self._retry_until(self._open), name="freqctl-kv-open")

    async def _open(self) -> None:
        """Watch first, then read every key: a change in between is seen twice, never missed."""
        kv = await self.bus.kv()
        self._watcher = await kv.watch(KEYS)
        self._task = supervise(asyncio.create_task(self._watch(), name="freqctl-kv"), self._log)
        await self.reload()

    def _on_reconnect(self) -> None:
        """After a reconnect, re-read every key, retrying until the bucket answers."""
        if self._watcher is None:
            return  # still opening: that retry reads everything
        if self._retry is None or self._retry.done():
            self._retry = asyncio.create_task(
                self._retry_until(self.reload), name="freqctl-kv-reload"
            )

    async def _retry_until(self, step: Callable[[], Awaitable[None]]) -> None:
        delay = self.retry_initial_s
        while True:
            try:
                await step()
            except _KV_UNAVAILABLE as exc:
                self.counts["kv_retries"] += 1
                self._log.info("kv_config_retry", in_s=delay, error=str(exc) or type(exc).__name__)
                await asyncio.sleep(delay)
                delay = min(self.retry_max_s, delay * 2)
                continue
            self._log.info("kv_config_loaded", keys=len(self.store.values))
            return

    async def stop(self) -> None:
        await cancel_and_wait([self._task, self._retry])
        if self._watcher is not None:
            with contextlib.suppress(Exception):
                await self._watcher.stop()

    def config_error(self, key: str, event: str, error: str) -> None:
        """Count and log a config value that cannot be used (it is ignored)."""
        self.counts["config_errors"] += 1
        CONFIG_ERRORS.labels(key).inc()
        self._log.error(event, key=key, error=error)

    def apply(self, key: str, raw: bytes | None) -> None:
        """Store one key's value (None or empty: deleted) and announce the change."""
        value: ControllerConfig | None = None
        if raw:
            try:
                value = codec.from_json(raw, ControllerConfig)
            except (msgspec.DecodeError, msgspec.ValidationError) as exc:
                self.config_error(key, "kv_config_invalid", str(exc))
                return
        self.store.put(key, value)
        self.on_change(key)

    async def reload(self) -> None:
        """Re-read every controller key (after a reconnect, watches may have missed changes)."""
        kv = await self.bus.kv()
        started = self._events
        try:
            keys = await kv.keys(filters=[KEYS])
        except nats.js.errors.NoKeysError:
            keys = []
        seen = set()
        for key in keys:
            with contextlib.suppress(nats.js.errors.KeyNotFoundError):
                entry = await kv.get(key)
                seen.add(key)
                rev = entry.revision or 0
                if rev >= self._rev.get(key, 0):  # the watch may have applied a newer one
                    self._rev[key] = rev
                    self.apply(key, entry.value)
        for key in list(self.store.values):
            # absent from a read that began before the watch saw the key: the read is stale
            if key not in seen and self._touched.get(key, -1) < started:
                self.apply(key, None)

    async def _watch(self) -> None:
        async for entry in self._watcher:
            if entry is None:  # initial replay done
                continue
            deleted = entry.operation in ("DEL", "PURGE")
            self._events += 1
            self._touched[entry.key] = self._events
            rev = entry.revision or 0
            if rev and rev < self._rev.get(entry.key, 0):
                continue  # a reload already applied a newer value of this key
            self._rev[entry.key] = rev
            self.apply(entry.key, None if deleted else entry.value)
