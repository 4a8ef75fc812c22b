"""`voltana router` flags: sglang-router shapes, TOML file, precedence, errors."""

from __future__ import annotations

from pathlib import Path

import pytest
from voltana.cli import build_parser
from voltana.common.errors import ConfigError
from voltana.services.router.cli import build_config
from voltana.services.router.config import RouterConfig


def parse(*argv: str) -> RouterConfig:
    return build_config(build_parser().parse_args(["router", *argv]))


def test_sglang_router_shaped_flags() -> None:
    cfg = parse(
        "--prefill",
        "http://10.0.0.1:30000",
        "8998",
        "--prefill",
        "10.0.0.2:30000",
        "none",
        "--prefill",
        "http://10.0.0.3:30000",
        "--decode",
        "http://10.0.0.4:30001",
        "--decode",
        "http://10.0.0.5:30001",
        "--policy",
        "power_of_two",
        "--decode-policy",
        "ecoroute-tile",
        "--host",
        "0.0.0.0",
        "--port",
        "9000",
        "--nats",
        "nats://10.0.0.9:4222",
    )
    assert [(w.url, w.bootstrap_port) for w in cfg.prefill] == [
        ("http://10.0.0.1:30000", 8998),
        ("http://10.0.0.2:30000", None),
        ("http://10.0.0.3:30000", None),
    ]
    assert [w.url for w in cfg.decode] == ["http://10.0.0.4:30001", "http://10.0.0.5:30001"]
    assert (cfg.prefill_policy, cfg.decode_policy) == ("power_of_two", "ecoroute-tile")
    assert (cfg.host, cfg.port) == ("0.0.0.0", 9000)
    assert cfg.bus_options is not None and cfg.bus_options.servers == ["nats://10.0.0.9:4222"]


def test_toml_file_under_flags(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    f = tmp_path / "router.toml"
    f.write_text(
        "port = 7000\nmax_concurrent_requests = 5\nprefill_retries = 0\n"
        '[[prefill]]\nurl = "http://p:1"\nrole = "prefill"\nbootstrap_port = 9\n'
        '[[decode]]\nurl = "http://d:2"\nrole = "decode"\n'
    )
    monkeypatch.setenv("VOLTANA_ROUTER_API_KEY", "k")
    cfg = parse("--config", str(f), "--port", "7001", "--no-nats")
    assert (cfg.port, cfg.max_concurrent_requests, cfg.prefill_retries) == (7001, 5, 0)
    assert cfg.prefill[0].bootstrap_port == 9 and cfg.decode[0].url == "http://d:2"
    assert cfg.api_key == "k" and cfg.bus_options is None


@pytest.mark.parametrize(
    ("argv", "match"),
    [
        (["--decode", "http://d:1"], "prefill"),
        (["--prefill", "http://p:1", "x", "--decode", "http://d:1"], "bootstrap port"),
        (["--prefill", "http://p:1", "1", "2", "--decode", "http://d:1"], "URL"),
        (["--prefill", "ftp://p:1", "--decode", "http://d:1"], "http"),
    ],
)
def test_bad_flags_are_config_errors(argv: list[str], match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        parse(*argv)


def test_bad_toml_is_a_config_error(tmp_path: Path) -> None:
    f = tmp_path / "bad.toml"
    f.write_text("port = 'x'\n")
    with pytest.raises(ConfigError, match=r"bad\.toml"):
        parse("--config", str(f))


def test_api_key_from_a_file_never_from_argv(tmp_path: Path) -> None:
    key = tmp_path / "key"
    key.write_text("s3cret\n")
    workers = ["--prefill", "http://p:1", "--decode", "http://d:2", "--no-nats"]
    assert parse(*workers, "--api-key-file", str(key)).api_key == "s3cret"
    with pytest.raises(ConfigError, match="visible in ps"):
        parse(*workers, "--api-key", "s3cret")
    key.write_text("  \n")
    with pytest.raises(ConfigError, match="empty"):
        parse(*workers, "--api-key-file", str(key))
    with pytest.raises(ConfigError, match="cannot read"):
        parse(*workers, "--api-key-file", str(tmp_path / "missing"))


def test_bounds_are_settings() -> None:
    cfg = parse(
        "--prefill",
        "http://p:1",
        "--decode",
        "http://d:2",
        "--no-nats",
        "--max-batch-items",
        "8",
        "--max-json-depth",
        "10",
        "--body-read-timeout-s",
        "2",
        "--idle-timeout-s",
        "3",
        "--max-body-buffer-bytes",
        str(64 << 20),
    )
    assert (cfg.max_batch_items, cfg.max_json_depth) == (8, 10)
    assert (cfg.body_read_timeout_s, cfg.idle_timeout_s) == (2, 3)
    with pytest.raises(ConfigError, match="max_body_buffer_bytes"):
        parse(
            "--prefill",
            "http://p:1",
            "--decode",
            "http://d:2",
            "--no-nats",
            "--max-body-buffer-bytes",
            "10",
        )


def test_sglang_router_names_are_aliases() -> None:
    cfg = parse(
        "--pd-disaggregation",
        "--prefill",
        "http://p:1",
        "8998",
        "--decode",
        "http://d:2",
        "--max-payload-size",
        "1024",
        "--request-timeout-secs",
        "30",
        "--queue-size",
        "7",
        "--cb-failure-threshold",
        "9",
        "--disable-retries",
        "--health-check-interval-secs",
        "3",
    )
    assert cfg.max_request_bytes == 1024 and cfg.request_timeout_s == 30.0
    assert cfg.max_queued_requests == 7 and cfg.breaker_failures == 9
    assert cfg.prefill_retries == 0 and cfg.health_check_interval_s == 3.0
    args = build_parser().parse_args(["router", "--log-level", "warning"])
    assert args.log_level == "warning"


@pytest.mark.parametrize("flag", ["--dp-aware", "--mini-lb", "--tokenizer-path"])
def test_unsupported_sglang_router_flags_are_refused_by_name(
    flag: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit):
        build_parser().parse_args(["router", "--prefill", "http://p:1", flag, "x"])
    err = capsys.readouterr().err
    assert f"{flag} (an sglang-router flag) is not supported:" in err


def test_worker_gauges_follow_the_instance_name() -> None:
    from prometheus_client import generate_latest
    from voltana.services.router.metrics import RouterMetrics

    m = RouterMetrics()
    m.set_worker("127-0-0-1_30001", "127-0-0-1_30001", "decode", 2, True, False, None)
    m.set_worker("127-0-0-1_30001", "decode-0", "decode", 3, True, False, 0.2)  # telemetry's
    text = generate_latest(m.registry).decode()
    assert 'voltana_router_worker_in_flight{instance="decode-0",role="decode"} 3.0' in text
    assert "127-0-0-1_30001" not in text


def test_worker_urls_route_colocated_workers() -> None:
    """sglang-router's ``--worker-urls`` (no ``--pd-disaggregation``): unified mode."""
    cfg = parse("--worker-urls", "http://u:1", "http://u:2", "--no-nats")
    assert cfg.mode == "unified"
    assert [w.url for w in cfg.workers] == ["http://u:1", "http://u:2"]
    assert {w.role for w in cfg.workers} == {"unified"}
    with pytest.raises(ConfigError, match="unified mode takes workers"):
        parse("--worker-urls", "http://u:1", "--decode", "http://d:2", "--no-nats")
    cfg = parse("--cache-threshold", "0.5", "--prefill", "http://p:1", "--decode", "http://d:2")
    assert cfg.cache_threshold == 0.5  # a real knob now, not refused
