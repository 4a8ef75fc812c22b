"""Node config decoding and validation; the sample deploy file must stay valid."""

from __future__ import annotations

from pathlib import Path

import pytest
from voltana.common.errors import ConfigError
from voltana.services.telemetry.config import load_config, parse_config

ROOT = Path(__file__).resolve().parents[2]

BASE = """
node = "gpu-node-1"
[[instances]]
name = "prefill-0"
role = "prefill"
url = "http://127.0.0.1:30000"
gpus = [0, 1]
gpu_backend = "emulated"
"""


def test_defaults() -> None:
    cfg = parse_config(BASE)
    assert cfg.rates.gpu_hz == 20.0 and cfg.metrics.port == 9464
    assert cfg.nats.servers == ["nats://127.0.0.1:4222"]
    inst = cfg.instances[0]
    assert inst.gpus == [0, 1] and inst.gpu_admin_url == "http://127.0.0.1:30000"
    assert inst.engine


def test_example_file_is_valid() -> None:
    cfg = load_config(ROOT / "deploy" / "node.example.toml")
    assert cfg.instances and cfg.node


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("node = 'a.b'\n" + BASE.split("\n", 2)[2], "invalid node 'a.b'"),
        (BASE.replace('role = "prefill"', 'role = "both"'), "Invalid enum value 'both'"),
        (BASE.replace("gpus = [0, 1]", "gpus = [0, 1]\ncolour = 1"), "unknown field `colour`"),
        (BASE.replace("gpus = [0, 1]", "gpus = []"), "needs a 'gpus' list"),
        (BASE.replace("gpus = [0, 1]", "gpus = [-1]"), "negative"),
        (BASE + BASE.split("\n", 2)[2], "'prefill-0' appears more than once"),
        (
            BASE + BASE.split("\n", 2)[2].replace("prefill-0", "prefill-1"),
            "GPU 0 is listed for both 'prefill-0' and 'prefill-1'",
        ),
        (BASE.replace("http://127.0.0.1:30000", "127.0.0.1:30000"), "must start with http"),
        (BASE + "[rates]\ngpu_hz = 0\n", "rates.gpu_hz"),
        ('node = "n"\n', "lists no [[instances]]"),
        ("node = \n", "<config>"),
        (BASE.replace('name = "prefill-0"', 'name = "p 0"'), "invalid instance 'p 0'"),
    ],
)
def test_bad_configs(text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("]", r"\]")):
        parse_config(text)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read node config"):
        load_config(tmp_path / "nope.toml")


def test_gpu_backend_none_needs_no_gpus() -> None:
    cfg = parse_config(
        BASE.replace('gpus = [0, 1]\ngpu_backend = "emulated"', 'gpu_backend = "none"')
    )
    assert cfg.instances[0].gpus == []
