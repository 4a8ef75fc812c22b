"""One CLI convention across every command: help on every flag, one spelling per concept,
GPU kinds validated by argparse with the list of choices in the message."""

from __future__ import annotations

import argparse

import pytest
from voltana.cli import _subparsers, build_parser


def _commands() -> list[argparse.ArgumentParser]:
    return _subparsers(build_parser())


def _options() -> list[tuple[str, argparse.Action]]:
    return [
        (p.prog, a)
        for p in _commands()
        for a in p._actions
        if a.option_strings and not isinstance(a, argparse._HelpAction)
    ]


def test_every_flag_has_help() -> None:
    missing = [f"{prog} {a.option_strings[0]}" for prog, a in _options() if a.help is None]
    assert missing == []


def test_one_spelling_per_concept() -> None:
    flags = {s for _, a in _options() for s in a.option_strings}
    slo = {f for f in flags if "ttft" in f or "itl" in f}
    assert slo <= {"--slo-ttft-s", "--slo-itl-s"}, slo
    nats_urls = {f for f in flags if "nats" in f and "url" in f}
    assert nats_urls == set(), nats_urls


def test_gpu_kinds_are_choices_everywhere() -> None:
    free = [
        prog
        for prog, a in _options()
        if "--gpu" in a.option_strings and a.choices is None and not prog.endswith("profile live")
    ]
    assert free == []  # `profile live` names the GPU it measures: any name


@pytest.mark.parametrize("command", ["sim", "router", "freqctl", "up", "emulator", "replay"])
def test_unknown_gpu_names_the_choices(command: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        build_parser().parse_args([command, "--gpu", "h900"])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "invalid choice: 'h900'" in err and "h100" in err


def test_defaults_show_in_help() -> None:
    text = next(p for p in _commands() if p.prog.endswith(" emulator")).format_help()
    assert "(default: 30000)" in text and "(default: h100)" in text


def test_sim_tables_fit_80_columns() -> None:
    from rich.console import Console
    from voltana.sim.report import sweep_table

    row = {
        "rate_scale": 2.0,
        "rate_rps": 11.02,
        "slo_scale": 1.0,
        "policy": "voltana-ref",
        "energy_j": 123456.0,
        "saving_vs_static_max": 0.3381,
        "slo_attainment": 0.9987,
        "ttft_p99_ms": 350.0,
        "itl_p99_ms": 31.7,
    }
    console = Console(width=80, record=True, color_system=None)
    console.print(sweep_table([row], title="sweep", narrow=True))
    text = console.export_text()
    assert "…" not in text and "voltana-ref" in text and "+33.8%" in text
    assert max(len(line) for line in text.splitlines()) <= 80


def test_a_missing_file_is_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    from voltana.cli import main

    assert main(["replay", "--file", "/nonexistent/events.jsonl"]) == 1
    err = capsys.readouterr().err.strip()
    assert err == "voltana replay: error: No such file or directory: /nonexistent/events.jsonl"
