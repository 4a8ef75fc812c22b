"""One structlog configuration for every service: JSON off a terminal, console on one."""

from __future__ import annotations

import logging
import os
import sys

import structlog


class _CurrentStderr:
    """Writes to whatever ``sys.stderr`` is at write time (test runners swap it)."""

    def write(self, text: str) -> int:
        return sys.stderr.write(text)

    def flush(self) -> None:
        sys.stderr.flush()


def configure_logging(fmt: str | None = None, level: str | None = None) -> None:
    """Configure structlog (and stdlib logging) once, in an entry point.

    Args:
        fmt: ``json``, ``console`` or ``auto``/None (env ``VOLTANA_LOG_FORMAT``, else
            console when stderr is a terminal and JSON otherwise).
        level: a level name (env ``VOLTANA_LOG_LEVEL``, else ``info``).
    """
    fmt = fmt or os.environ.get("VOLTANA_LOG_FORMAT") or "auto"
    if fmt == "auto":
        fmt = "console" if sys.stderr.isatty() else "json"
    level_name = (level or os.environ.get("VOLTANA_LOG_LEVEL") or "info").upper()
    lvl = logging.getLevelNamesMapping().get(level_name, logging.INFO)
    renderer: structlog.typing.Processor
    if fmt == "json":
        renderer = structlog.processors.JSONRenderer()
    else:
        renderer = structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.StackInfoRenderer(),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(lvl),
        logger_factory=structlog.PrintLoggerFactory(file=_CurrentStderr()),  # type: ignore[arg-type]
        cache_logger_on_first_use=False,
    )
    # Libraries' stdlib logging (nats-py's reconnect and JetStream warnings among them)
    # goes through the same renderer: one JSON line each, with the logger's name.
    handler = logging.StreamHandler(_CurrentStderr())
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            processor=renderer,
            foreign_pre_chain=[
                structlog.stdlib.add_logger_name,
                structlog.processors.add_log_level,
                structlog.processors.TimeStamper(fmt="iso", utc=True),
            ],
        )
    )
    handler._voltana = True  # type: ignore[attr-defined]
    root = logging.getLogger()
    root.handlers = [h for h in root.handlers if not getattr(h, "_voltana", False)]
    root.addHandler(handler)
    root.setLevel(max(lvl, logging.WARNING))


def get_logger(name: str, **bound: object) -> structlog.typing.FilteringBoundLogger:
    """A logger with ``service`` (and anything else given) bound."""
    return structlog.get_logger(service=name, **bound)


def debug_enabled() -> bool:
    """Whether debug lines are written now: lets a hot path skip building one that is not.

    (A log call through structlog's lazy proxy costs microseconds even when filtered.)
    """
    is_enabled = getattr(structlog.get_config()["wrapper_class"], "is_enabled_for", None)
    return is_enabled is None or bool(is_enabled(None, logging.DEBUG))
