"""The deploy files work when followed: nats-server accepts the shipped config with the
passwords it names, systemd accepts the units, every file a unit reads has an example."""

from __future__ import annotations

import re
import secrets
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from voltana.bus.natsserver import find_nats_server
from voltana.cli import build_parser
from voltana.services.router.cli import build_config

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
UNITS = sorted((DEPLOY / "systemd").glob("*.service"))


def _conf_files(conf: Path) -> list[Path]:
    """The config and every file it includes (recursively), as nats-server reads them."""
    files = [conf]
    for inc in re.findall(r"^\s*include\s+['\"]?([^'\"\s;]+)", conf.read_text(), re.M):
        files += _conf_files((conf.parent / inc).resolve())
    return files


def test_nats_server_accepts_the_config_with_generated_passwords(tmp_path: Path) -> None:
    conf = DEPLOY / "nats" / "nats-server.conf"
    names = sorted(
        {v for f in _conf_files(conf) for v in re.findall(r"\$(VOLTANA_[A-Z0-9_]+)", f.read_text())}
    )
    assert names, "the config names no password variables"
    example = (DEPLOY / "env" / "nats.env.example").read_text()
    assert all(f"{n}=" in example for n in names), "nats.env.example lacks a variable"
    env = {"PATH": "/usr/bin:/bin", **{n: secrets.token_hex(12) for n in names}}
    ok = subprocess.run(
        [find_nats_server(), "-t", "-c", str(conf)], env=env, capture_output=True, text=True
    )
    assert ok.returncode == 0, ok.stdout + ok.stderr
    missing = subprocess.run(
        [find_nats_server(), "-t", "-c", str(conf)],
        env={k: v for k, v in env.items() if k != names[0]},
        capture_output=True,
        text=True,
    )
    assert missing.returncode != 0 and names[0] in missing.stdout + missing.stderr


def test_every_file_a_unit_reads_is_shipped_as_an_example() -> None:
    for unit in UNITS:
        for path in re.findall(r"^EnvironmentFile=-?(\S+)", unit.read_text(), re.M):
            name = Path(path).name
            assert (DEPLOY / "env" / f"{name}.example").is_file(), (unit.name, path)
    router = (DEPLOY / "systemd" / "voltana-router.service").read_text()
    assert "--config /etc/voltana/router.toml" in router
    args = build_parser().parse_args(["router", "--config", str(DEPLOY / "router.example.toml")])
    cfg = build_config(args)
    assert cfg.prefill[0].bootstrap_port == 8998 and cfg.decode_policy == "ecoroute-tile"


def test_role_env_files_name_users_of_the_nats_config() -> None:
    conf = (DEPLOY / "nats" / "nats-server.conf").read_text()
    conf += (DEPLOY / "nats" / "authorization.conf").read_text()  # included by the config
    for role in ("actuator", "telemetry", "freqctl", "router"):
        text = (DEPLOY / "env" / f"{role}.env.example").read_text()
        user = re.search(r"^VOLTANA_NATS_USER=(\S+)", text, re.M)
        assert user and f"user: {user.group(1)}," in conf, role
        # a role that makes requests hears its replies under its own inbox prefix only
        inbox = re.search(r"^VOLTANA_NATS_INBOX_PREFIX=(\S+)", text, re.M)
        if role != "telemetry":
            assert inbox and inbox.group(1) == f"_INBOX_{user.group(1)}", role
            assert f'"{inbox.group(1)}.>"' in conf, role
    assert '"_INBOX.>"' not in conf  # no user may hear every client's replies


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze not installed")
def test_systemd_accepts_the_units(tmp_path: Path) -> None:
    bindir = Path(sys.executable).parent  # the units' /opt/voltana/venv/bin, here
    for exe in ("voltana", "nats-server"):
        if not (bindir / exe).exists():
            pytest.skip(f"{exe} is not installed next to {sys.executable}")
    for unit in UNITS:
        text = unit.read_text().replace("/opt/voltana/venv/bin/", f"{bindir}/")
        (tmp_path / unit.name).write_text(text)
    run = subprocess.run(
        ["systemd-analyze", "verify", *(str(tmp_path / u.name) for u in UNITS)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 0 and run.stderr.strip() == "", run.stderr
