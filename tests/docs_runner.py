"""Run the shell examples of README.md and docs/*.md, as written, in a fresh copy.

The rule for docs writers: put a marker on the line before every shell example.

    <!-- docs: run -->            run it; options: timeout=S (default 120),
                                  interrupt=S (Ctrl-C after S seconds; exit 0 or 130 is
                                  success), slow (only with --all), install (see below)
    <!-- docs: skip REASON -->    never run it; say why (needs a GPU, root, systemd, ...)

A block with no marker whose first line starts like a command (voltana, python,
.venv/bin/..., pip, nats, curl, sudo, ...) is an error, so no example is skipped
by luck. Blocks run one at a time with ``bash -e`` in a copy of the repository's
tracked and new files (named ``voltana``, with nothing beside it), in their own
process group: whatever they leave running (``&`` jobs) is stopped after them.

Without ``--install`` the test interpreter stands in for the fresh virtualenv:
``.venv/bin/python``, ``.venv/bin/voltana`` and ``voltana`` on PATH run this
interpreter on the copy, and a block marked ``install`` has its
``python3 -m venv ...`` and ``.venv/bin/pip install ...`` steps dropped. With
``--install`` nothing is dropped: the README's commands create the venv and
install from PyPI (minutes).

Usage: python tests/docs_runner.py [--all] [--install] [--only FILE] [--keep DIR]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MARKER = re.compile(r"^<!--\s*docs:\s*(run|skip)\b(.*?)-->\s*$")
COMMANDISH = re.compile(
    r"^\s*(voltana|\.venv/|python3?\b|pip\b|nats\b|nats-server|curl\b|sudo\b|systemctl\b|"
    r"install\b|umask\b|PYTHONPATH=|cd\b|for\b)"
)
INSTALL_STEP = re.compile(r"^\s*(python3? -m venv|\.venv/bin/pip install)\b")


@dataclass
class Block:
    file: str
    line: int
    text: str
    action: str | None  # run | skip | None (no marker)
    lang: str = ""  # the fence's language tag; text, toml, json, ... are never commands
    options: dict[str, str] = field(default_factory=dict)
    reason: str = ""

    @property
    def where(self) -> str:
        return f"{self.file}:{self.line}"


def parse(path: Path) -> list[Block]:
    """The fenced code blocks of one markdown file, with the marker above each."""
    lines = path.read_text().split("\n")
    rel = str(path.relative_to(ROOT))
    out: list[Block] = []
    i = 0
    while i < len(lines):
        if not lines[i].startswith("```"):
            i += 1
            continue
        end = next(j for j in range(i + 1, len(lines)) if lines[j].startswith("```"))
        action, options, reason = None, {}, ""
        k = i - 1
        while k >= 0 and lines[k].strip().startswith("<!--"):
            m = MARKER.match(lines[k].strip())
            if m:
                action, rest = m.group(1), m.group(2).strip()
                if action == "skip":
                    reason = rest
                else:
                    for word in rest.split():
                        key, _, value = word.partition("=")
                        options[key] = value or "yes"
                break
            k -= 1
        body = "\n".join(lines[i + 1 : end])
        out.append(Block(rel, i + 2, body, action, lines[i][3:].strip(), options, reason))
        i = end + 1
    return out


def collect(only: str | None) -> list[Block]:
    files = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    if only:
        files = [f for f in files if str(f.relative_to(ROOT)) == only]
    return [b for f in files for b in parse(f)]


def unmarked_commands(blocks: list[Block]) -> list[Block]:
    """Blocks that look like shell commands but carry no marker (the rule's check)."""
    out = []
    for b in blocks:
        first = next((ln for ln in b.text.split("\n") if ln.strip()), "")
        shell = b.lang in ("", "sh", "bash", "shell", "console")
        if b.action is None and shell and COMMANDISH.match(first):
            out.append(b)
    return out


def fresh_copy(dest: Path) -> Path:
    """The repository's tracked and new (not ignored) files under ``dest/voltana``."""
    files = subprocess.run(
        ["git", "ls-files", "-co", "--exclude-standard", "-z"],
        cwd=ROOT,
        capture_output=True,
        check=True,
    ).stdout.split(b"\0")
    copy = dest / "voltana"
    for f in files:
        if not f:
            continue
        src = ROOT / f.decode()
        if src.is_file():
            target = copy / f.decode()
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, target)
    return copy


def stand_in_venv(copy: Path) -> dict[str, str]:
    """``.venv/bin`` shims running this interpreter on the copy; the environment to use."""
    bindir = copy / ".venv" / "bin"
    bindir.mkdir(parents=True, exist_ok=True)
    py = shlex.quote(sys.executable)
    shims = {
        "python": f'exec {py} "$@"',
        "python3": f'exec {py} "$@"',
        "voltana": f'exec {py} -m voltana "$@"',
        "pytest": f'exec {py} -m pytest "$@"',
        "pip": f'exec {py} -m pip "$@"',
    }
    for name, body in shims.items():
        shim = bindir / name
        shim.write_text(f"#!/bin/sh\n{body}\n")
        shim.chmod(0o755)
    return {"PYTHONPATH": str(copy.parent), "PATH": f"{bindir}:{os.environ['PATH']}"}


def split_install_steps(text: str) -> tuple[str, str]:
    """(the venv-creation and pip-install steps, the rest), ``&&``-joined steps or lines."""
    steps, rest = [], []
    for line in text.split("\n"):
        parts = line.split(" && ")
        steps += [s for s in parts if INSTALL_STEP.match(s)]
        kept = [s for s in parts if not INSTALL_STEP.match(s)]
        if kept:
            rest.append(" && ".join(kept))
    return " && ".join(steps), "\n".join(rest)


def run_block(b: Block, cwd: Path, env: dict[str, str], install: bool) -> tuple[bool, str]:
    text = b.text
    if "install" in b.options:
        steps, text = split_install_steps(b.text)
        if install:  # as written, before any interrupt timer starts
            ok, detail = _run(steps, cwd, env, f"{b.file}-{b.line}-install", 1800, None)
            if not ok:
                return ok, detail
    timeout = float(b.options.get("timeout", 120))
    interrupt = float(b.options["interrupt"]) if "interrupt" in b.options else None
    return _run(text, cwd, env, f"{b.file}-{b.line}", timeout, interrupt)


def _run(
    text: str, cwd: Path, env: dict[str, str], name: str, timeout: float, interrupt: float | None
) -> tuple[bool, str]:
    log = cwd.parent / f"block-{name.replace('/', '_')}.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            ["bash", "-e", "-c", text],
            cwd=cwd,
            env={**os.environ, **env},
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            try:
                rc = proc.wait(interrupt if interrupt is not None else timeout)
            except subprocess.TimeoutExpired:
                if interrupt is None:
                    raise
                os.killpg(proc.pid, signal.SIGINT)  # Ctrl-C, as in a terminal
                rc = proc.wait(timeout)
        except subprocess.TimeoutExpired:
            rc = None
        finally:
            _end_group(proc.pid)
    ok = rc == 0 or (interrupt is not None and rc in (0, 130))
    tail = log.read_text(errors="replace")[-3000:]
    return ok, f"exit {rc}" + ("" if ok else f"\n{tail}")


def _end_group(pgid: int) -> None:
    """Stop what a block left running: SIGTERM to its process group, SIGKILL 10 s later."""
    try:
        os.killpg(pgid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.1)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, signal.SIGKILL)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="run the marked shell examples of the docs")
    ap.add_argument("--all", action="store_true", help="also the blocks marked slow")
    ap.add_argument("--install", action="store_true", help="run install steps as written")
    ap.add_argument("--only", default=None, help="one file, e.g. docs/deploy.md")
    ap.add_argument("--keep", default=None, help="work in this folder and keep it")
    args = ap.parse_args(argv)
    blocks = collect(args.only)
    bad = unmarked_commands(blocks)
    for b in bad:
        print(f"UNMARKED {b.where}: add <!-- docs: run --> or <!-- docs: skip REASON -->")
    work = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="voltana-docs-"))
    work.mkdir(parents=True, exist_ok=True)
    copy = fresh_copy(work)
    env = {} if args.install else stand_in_venv(copy)
    if args.install:
        env = {"PATH": f"{copy / '.venv' / 'bin'}:{os.environ['PATH']}", "PYTHONPATH": ""}
    failed = 0
    for b in blocks:
        if b.action == "skip":
            print(f"skip  {b.where}: {b.reason}")
        elif b.action == "run" and ("slow" not in b.options or args.all):
            t0 = time.monotonic()
            ok, detail = run_block(b, copy, env, args.install)
            failed += not ok
            status = "ok   " if ok else "FAIL "
            print(f"{status} {b.where} ({time.monotonic() - t0:.0f} s, {detail})", flush=True)
        elif b.action == "run":
            print(f"slow  {b.where}: runs with --all")
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)
    return 1 if failed or bad else 0


if __name__ == "__main__":
    sys.exit(main())
