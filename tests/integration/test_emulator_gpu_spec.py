"""``voltana emulator --gpu-spec``: the worker emulates the file's GPU; a bad file is a clear error."""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.request
from pathlib import Path
from typing import Any

from helpers import free_port, spawn_voltana


def _get(url: str) -> dict[str, Any]:
    with urllib.request.urlopen(url, timeout=10) as resp:
        doc: dict[str, Any] = json.loads(resp.read())
    return doc


def _serve(tmp_path: Path, extra: list[str]) -> tuple[dict[str, Any], dict[str, Any]]:
    port = free_port()
    argv = ["emulator", "--role", "decode", "--gpu", "h200", "--port", str(port), *extra]
    argv += ["--disaggregation-bootstrap-port", str(free_port())]
    log = tmp_path / f"emulator-{port}.log"
    with spawn_voltana(argv, log, ready="fired up and ready", timeout_s=60):
        base = f"http://127.0.0.1:{port}"
        return _get(base + "/get_server_info"), _get(base + "/voltana/gpus")


def test_the_worker_emulates_the_spec_files_gpu(tmp_path: Path) -> None:
    spec = tmp_path / "small.json"
    spec.write_text(json.dumps({"base": "h200", "name": "H200 half", "mem_total_gib": 70.0}))
    info, gpus = _serve(tmp_path, ["--gpu-spec", str(spec)])
    ref_info, ref_gpus = _serve(tmp_path, [])
    assert gpus["gpus"][0]["name"] == "H200 half"
    assert ref_gpus["gpus"][0]["name"] == "NVIDIA H200"
    # half the memory, the same weights: a KV pool well under half the built-in one
    assert 0 < int(info["max_total_num_tokens"]) < int(ref_info["max_total_num_tokens"]) / 2


def test_a_bad_spec_file_stops_the_worker_with_one_line(tmp_path: Path) -> None:
    spec = tmp_path / "bad.json"
    spec.write_text(json.dumps({"base": "h200", "mem_total_gb": 70.0}))
    argv = [sys.executable, "-m", "voltana", "emulator", "--gpu-spec", str(spec), "--port", "1"]
    out = subprocess.run(argv, capture_output=True, text=True, timeout=120)
    assert out.returncode != 0
    assert "unknown fields mem_total_gb" in out.stderr and "Traceback" not in out.stderr
