"""The package's shape: layering contracts, module size, formatter pragmas, the CLI tree.

The layering itself is written as import-linter contracts in pyproject.toml; this
test runs them, so a change that makes a lower layer import an upper one, couples
two services, lets a decision see ground truth or adds an import cycle fails here.
"""

from __future__ import annotations

import argparse
import tomllib
from pathlib import Path

import pytest
from importlinter import cli as importlinter_cli

ROOT = Path(__file__).resolve().parents[2]
PYPROJECT = ROOT / "pyproject.toml"
MAX_MODULE_LINES = 400
NOT_PACKAGE = {"tests", "bench", "build", "dist", "deploy", "docs"}


def package_modules() -> list[Path]:
    """Every Python module of the ``voltana`` package (the repository root)."""
    out = []
    for path in sorted(ROOT.rglob("*.py")):
        rel = path.relative_to(ROOT)
        if rel.parts[0] in NOT_PACKAGE or rel.parts[0].startswith("."):
            continue
        out.append(path)
    return out


def test_import_contracts_hold(capsys: pytest.CaptureFixture[str]) -> None:
    code = importlinter_cli.lint_imports(config_filename=str(PYPROJECT), no_cache=True)
    out = capsys.readouterr().out
    assert code == 0, out


def test_the_contracts_cover_layers_services_ground_truth_and_cycles() -> None:
    contracts = tomllib.loads(PYPROJECT.read_text())["tool"]["importlinter"]["contracts"]
    kinds = {c["type"] for c in contracts}
    assert {"layers", "independence", "forbidden", "acyclic_siblings"} <= kinds
    forbidden = next(c for c in contracts if c["type"] == "forbidden")
    assert "voltana.groundtruth" in forbidden["forbidden_modules"]
    assert {"voltana.services.freqctl", "voltana.services.router"} <= set(
        forbidden["source_modules"]
    )
    independent = next(c for c in contracts if c["type"] == "independence")
    services = {p.name for p in (ROOT / "services").iterdir() if (p / "__init__.py").exists()}
    assert {m.rsplit(".", 1)[1] for m in independent["modules"]} == services


def test_package_modules_are_found() -> None:
    names = {p.relative_to(ROOT).as_posix() for p in package_modules()}
    assert "cli.py" in names and "schemas/subjects.py" in names
    assert not any(n.startswith(("tests/", "bench/")) for n in names)


def test_no_module_over_the_size_limit() -> None:
    """Every module stays small enough to read in one sitting: split along a real seam."""
    sizes = {
        p.relative_to(ROOT).as_posix(): len(p.read_text().splitlines()) for p in package_modules()
    }
    over = {name: n for name, n in sizes.items() if n > MAX_MODULE_LINES}
    assert not over, f"modules over {MAX_MODULE_LINES} lines: {over}"


def test_formatter_pragmas_carry_a_reason() -> None:
    """``# fmt: skip`` only where a table truly reads better, with the reason on the line above."""
    bare = []
    for path in package_modules():
        lines = path.read_text().splitlines()
        for i, line in enumerate(lines):
            if "fmt: skip" in line or "fmt: off" in line:
                above = lines[i - 1].strip() if i else ""
                if not above.startswith("#"):
                    bare.append(f"{path.relative_to(ROOT)}:{i + 1}")
    assert not bare, f"formatter pragmas without a reason: {bare}"


def test_cli_registers_every_command() -> None:
    from voltana.cli import build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    assert set(sub.choices) >= {
        "up",
        "nats",
        "tail",
        "replay",
        "report",
        "emulator",
        "telemetry",
        "freqctl",
        "actuator",
        "profile",
        "router",
        "sim",
        "plan",
    }
