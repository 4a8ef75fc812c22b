"""One of the router processes that ``voltana router --processes N`` runs (its entry point).

Started by :mod:`~voltana.services.router.multiproc` as
``python -m voltana.services.router.multiproc_child``, with the router configuration
(msgpack) on stdin, so the API key never shows in argv. It is a normal
:class:`~voltana.services.router.server.Router` bound with ``SO_REUSEPORT``, whose load
accounting lives in the shared block (:mod:`~voltana.services.router.shared_load`),
whose ``/metrics`` reads every process's metrics (prometheus-client's multiprocess
mode), and which does the bus work that must happen once per router (InstanceState,
the status service) only in slot 0. It tells the supervisor it is serving by writing
one byte to ``--ready-fd``, and ends when the supervisor (its parent) does.
"""

from __future__ import annotations

import argparse
import ctypes
import os
import signal
import sys
from typing import Any

import msgspec
from aiohttp import web
from voltana.services.router.config import RouterConfig
from voltana.services.router.server import Router
from voltana.services.router.shared_load import LoadBlock, share_load
from voltana.services.router.state import WorkerState

__all__ = ["PROCESS_PATH", "SharedRouter", "main", "process_config"]

PROCESS_PATH = "/voltana/router/process"
"""Which process answered: ``{"slot", "pid", "processes"}`` (one connection, one process)."""

_PR_SET_PDEATHSIG = 1


class SharedRouter(Router):
    """A router that is one of ``processes`` on one port, sharing its load accounting.

    Args:
        cfg: the router's configuration (``reuse_port`` set by the supervisor).
        slot: this process's row in ``block`` (0 publishes router state on the bus).
        block: the shared in-flight accounting.
    """

    def __init__(self, cfg: RouterConfig, slot: int, block: LoadBlock) -> None:
        super().__init__(cfg)
        self.slot, self.block = slot, block
        share_load(self.state, block, slot)
        if slot != 0:
            self.bus.status = None  # one status service per router, not per process
        from prometheus_client import CollectorRegistry
        from prometheus_client.multiprocess import MultiProcessCollector

        # /metrics (and --prometheus-port) expose every process's series, summed
        registry = CollectorRegistry()
        MultiProcessCollector(registry)
        self.metrics.registry = registry

    def app(self) -> web.Application:
        app = super().app()
        app.router.add_get(PROCESS_PATH, self._process)
        return app

    async def _process(self, request: web.Request) -> web.Response:
        return web.json_response(
            {"slot": self.slot, "pid": os.getpid(), "processes": self.block.processes}
        )

    def _publish_worker(self, w: WorkerState, now: float, t_ns: int) -> None:
        """Slot 0 publishes InstanceState (its view sums every process's load); the others
        only keep their own gauges, which /metrics adds up."""
        if self.slot == 0:
            super()._publish_worker(w, now, t_ns)
            return
        self._worker_gauges(w, now)


def process_config(cfg: RouterConfig, slot: int) -> RouterConfig:
    """The configuration of the process in ``slot``: a given ``seed`` is offset by the slot,
    so processes draw different bootstrap rooms and random choices (the same seed in two
    processes would send two requests with one bootstrap room to one PD pair)."""
    if cfg.seed is None:
        return cfg  # seeded from the OS: different in every process
    return msgspec.structs.replace(cfg, seed=cfg.seed + slot)


def _die_with_parent() -> None:
    """SIGTERM this process when the supervisor dies, even by SIGKILL (Linux prctl)."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):
        return  # not Linux: the supervisor's shutdown path is the only one
    if os.getppid() == 1:  # the parent died before prctl took effect
        os.kill(os.getpid(), signal.SIGTERM)


def main(argv: list[str] | None = None) -> int:
    _die_with_parent()
    p = argparse.ArgumentParser(prog="voltana.services.router.multiproc_child")
    p.add_argument("--slot", type=int, required=True)
    p.add_argument("--processes", type=int, required=True)
    p.add_argument("--load-fd", type=int, required=True)
    p.add_argument("--ready-fd", type=int, required=True)
    p.add_argument("--loop", default="auto")
    p.add_argument("--prometheus-host", default="127.0.0.1")
    p.add_argument("--prometheus-port", type=int, default=None)
    p.add_argument("--log-format", default=None)
    p.add_argument("--log-level", default=None)
    args = p.parse_args(argv)

    from voltana.common.errors import VoltanaError
    from voltana.common.logs import configure_logging
    from voltana.services.router.cli import _loop_factory
    from voltana.services.runner import run_service

    configure_logging(fmt=args.log_format, level=args.log_level)
    import structlog

    structlog.contextvars.bind_contextvars(router_process=args.slot)  # on every log line
    cfg = process_config(
        msgspec.msgpack.decode(sys.stdin.buffer.read(), type=RouterConfig), args.slot
    )
    block = LoadBlock(args.load_fd, args.processes, len(cfg.prefill + cfg.decode + cfg.workers))

    def started(router: Router) -> None:
        if args.prometheus_port is not None and args.slot == 0:  # one listener per router
            from voltana.services.router.router_compat import serve_metrics

            serve_metrics(router.metrics.registry, args.prometheus_host, args.prometheus_port)
        if cfg.gc_threshold is not None:
            import gc

            gc.collect()
            gc.freeze()
            gc.set_threshold(*cfg.gc_threshold)
        os.write(args.ready_fd, b"R")
        os.close(args.ready_fd)

    def build() -> Any:
        return SharedRouter(cfg, args.slot, block)

    try:
        return run_service(
            build, name="router", ready=started, loop_factory=_loop_factory(args.loop)
        )
    except VoltanaError as exc:
        print(f"voltana router (process {args.slot}): error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
