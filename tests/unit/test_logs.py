"""Library logs (nats-py's among them) come out through the same renderer as voltana's."""

from __future__ import annotations

import json
import logging
import uuid

import pytest
from voltana.common.logs import configure_logging, get_logger


def test_stdlib_logs_are_rendered_as_json_lines(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging(fmt="json", level="info")
    configure_logging(fmt="json", level="info")  # twice: still one line per record
    # a library logger of its own name: other tests may have tuned nats-py's loggers
    lib = logging.getLogger(f"lib{uuid.uuid4().hex}.js.kv")
    lib.warning("Server may ignore filters if version is < 2.10.")
    lib.info("below the stdlib threshold: dropped")
    get_logger("router").info("router_started", port=1)
    lines = [json.loads(x) for x in capsys.readouterr().err.splitlines() if x.strip()]
    assert [x["event"] for x in lines] == [
        "Server may ignore filters if version is < 2.10.",
        "router_started",
    ]
    assert lines[0]["logger"] == lib.name and lines[0]["level"] == "warning"
    assert "timestamp" in lines[0] and lines[1]["service"] == "router"
