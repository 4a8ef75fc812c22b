"""Every shell example in README.md and docs/*.md is marked, and the runnable ones run as
written in a fresh copy of the repository (tests/docs_runner.py; slow ones with --all)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.timeout(900)
def test_docs_examples_run_as_written(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, str(ROOT / "tests/docs_runner.py"), "--keep", str(tmp_path / "docs")],
        capture_output=True,
        text=True,
        timeout=880,
        check=False,
    )
    report = proc.stdout + proc.stderr[-3000:]
    assert proc.returncode == 0, report
    assert "UNMARKED" not in report and "FAIL" not in report
    assert "ok    README.md:" in report  # the README's main job ran
