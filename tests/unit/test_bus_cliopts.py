"""The NATS flags every service shares: flags win over the environment, which wins over defaults."""

from __future__ import annotations

import argparse

import pytest
from voltana.bus.cliopts import add_nats_args, bus_options_from_args
from voltana.bus.options import BusOptions
from voltana.common.errors import ConfigError


def _opts(argv: list[str]) -> BusOptions:
    p = argparse.ArgumentParser()
    add_nats_args(p)
    return bus_options_from_args(p.parse_args(argv), name="t")


def test_inbox_prefix_from_flag_environment_or_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("VOLTANA_NATS_INBOX_PREFIX", raising=False)
    assert _opts([]).inbox_prefix == "_INBOX"
    monkeypatch.setenv("VOLTANA_NATS_INBOX_PREFIX", "_INBOX_router")
    assert _opts([]).inbox_prefix == "_INBOX_router"
    flag = _opts(["--nats-inbox-prefix", "_INBOX_viewer"])
    assert flag.inbox_prefix == "_INBOX_viewer"


@pytest.mark.parametrize("bad", ["", "_INBOX.>", "a.*", "two words", "_INBOX.", ".x"])
def test_a_prefix_that_is_not_a_subject_is_refused(bad: str) -> None:
    with pytest.raises(ConfigError, match="not a subject prefix"):
        _opts(["--nats-inbox-prefix", bad])
