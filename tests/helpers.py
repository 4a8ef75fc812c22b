"""Small helpers shared by the tests (importable as ``helpers`` from any test)."""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import json
import os
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

import aiohttp
from aiohttp import web
from voltana.common.ports import free_port

__all__ = [
    "check_generate",
    "emulated_pd_pair",
    "free_port",
    "load_script",
    "post_json",
    "serve_app",
    "sglang_request",
    "spawn_voltana",
    "start_emulator",
    "stop_processes",
    "voltana_argv",
    "wait_for",
    "wait_http",
]


async def wait_for(
    cond: Callable[[], bool], timeout_s: float = 5.0, interval_s: float = 0.02
) -> None:
    """Poll ``cond`` until true; fail the test with a clear message on timeout."""
    deadline = time.monotonic() + timeout_s
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout_s} s")
        await asyncio.sleep(interval_s)


def log_tail(log: Path | None, chars: int = 2000) -> str:
    return log.read_text(errors="replace")[-chars:] if log is not None else ""


def wait_http(
    url: str, proc: subprocess.Popen[bytes], timeout_s: float = 30.0, log: Path | None = None
) -> None:
    """Wait until ``url`` answers 200; fail at once if ``proc`` (the server) exited, showing
    the end of its ``log`` when given."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args!r} exited with {proc.returncode}\n{log_tail(log)}")
        try:
            with urllib.request.urlopen(url, timeout=1) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"{url} not ready in {timeout_s} s")


def wait_routable(
    url: str, proc: subprocess.Popen[bytes], timeout_s: float = 60.0, log: Path | None = None
) -> None:
    """Wait until the router at ``url`` serves a one-token ``/generate`` (200).

    A gateway answers ``/health`` before its health checks have admitted any worker
    (smg: "No prefill workers available" until then), so readiness is a served request.
    """
    wait_http(url + "/health", proc, timeout_s, log)
    body = json.dumps({"input_ids": [1, 2, 3], "sampling_params": {"max_new_tokens": 1}})
    deadline = time.monotonic() + timeout_s
    last = ""
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args!r} exited with {proc.returncode}\n{log_tail(log)}")
        req = urllib.request.Request(
            url + "/generate", data=body.encode(), headers={"Content-Type": "application/json"}
        )
        try:
            with urllib.request.urlopen(req, timeout=10) as r:
                if r.status == 200:
                    return
        except OSError as exc:  # HTTPError (e.g. 503 before workers are admitted) included
            last = str(exc)
        time.sleep(0.2)
    raise RuntimeError(f"{url} routed no request in {timeout_s} s (last: {last})")


ROOT = Path(__file__).resolve().parents[1]


def load_script(rel: str) -> ModuleType:
    """A repository script (``bench/gpu/compare_model.py``) as a module, for its tests.

    Registered as ``voltana_bench_<name>``, so dataclasses and pickling inside work.
    """
    path = ROOT / rel
    spec = importlib.util.spec_from_file_location(f"voltana_bench_{path.stem}", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def voltana_argv(*args: str) -> list[str]:
    """The command line of ``voltana ARGS`` run by this interpreter, logging warnings only."""
    return [sys.executable, "-m", "voltana", "--log-level", "warning", *args]


def start_emulator(
    role: str,
    port: int,
    *,
    gpu: int = 0,
    version: str | None = None,
    boot: int | None = None,
    bootstrap_timeout_s: float = 10,
) -> subprocess.Popen[bytes]:
    """An emulated SGLang worker (``voltana emulator``) as a process; its output is discarded.

    ``boot``: the prefill side's bootstrap port; ``version``: the SGLang line to emulate.
    """
    argv = voltana_argv("emulator", "--role", role, "--host", "127.0.0.1", "--port", str(port))
    argv += ["--gpu-ids", str(gpu), "--bootstrap-timeout-s", f"{bootstrap_timeout_s:g}"]
    if version is not None:
        argv += ["--sglang-version", version]
    if boot is not None:
        argv += ["--disaggregation-bootstrap-port", str(boot)]
    return subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def stop_processes(procs: Iterable[subprocess.Popen[bytes]], timeout_s: float = 5.0) -> None:
    """Terminate (SIGTERM) every process, then kill those still running after ``timeout_s``."""
    procs = list(procs)
    for p in procs:
        if p.poll() is None:
            p.terminate()
    for p in procs:
        try:
            p.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


@contextlib.contextmanager
def spawn_voltana(
    args: Sequence[str], log_path: Path, *, ready: str | None = None, timeout_s: float = 30.0
) -> Iterator[subprocess.Popen[bytes]]:
    """``voltana ARGS`` as a process writing JSON logs (stdout and stderr) to ``log_path``.

    With ``ready``: first waits until that text is in the log, failing the test with the
    log's end if the process exits or ``timeout_s`` passes. On exit, also on failure, the
    process is stopped with SIGTERM (and killed if still running 10 s later).
    """
    env = {**os.environ, "VOLTANA_LOG_FORMAT": "json", "PYTHONUNBUFFERED": "1"}
    with log_path.open("wb") as log:
        cmd = [sys.executable, "-m", "voltana", *args]
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
        try:
            deadline = time.monotonic() + timeout_s
            while ready is not None and ready not in log_path.read_text(errors="replace"):
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise AssertionError(f"{args[0]} did not start:\n{log_tail(log_path, 3000)}")
                time.sleep(0.05)
            yield proc
        finally:
            stop_processes([proc], timeout_s=10)


@contextlib.contextmanager
def emulated_pd_pair(
    bootstrap_timeout_s: float = 10, version: str | None = None
) -> Iterator[dict[str, Any]]:
    """A running emulated prefill (GPU 0) and decode (GPU 1) worker, stopped on exit.

    Yields ``{"prefill": (url, bootstrap port), "decode": url}``.
    """
    pp, bp, dp = free_port(), free_port(), free_port()
    t = bootstrap_timeout_s
    procs = [
        start_emulator("prefill", pp, boot=bp, bootstrap_timeout_s=t, version=version),
        start_emulator("decode", dp, gpu=1, bootstrap_timeout_s=t, version=version),
    ]
    try:
        wait_http(f"http://127.0.0.1:{pp}/health", procs[0])
        wait_http(f"http://127.0.0.1:{dp}/health", procs[1])
        yield {"prefill": (f"http://127.0.0.1:{pp}", bp), "decode": f"http://127.0.0.1:{dp}"}
    finally:
        stop_processes(procs)


async def serve_app(app: web.Application) -> tuple[web.AppRunner, str]:
    """Serve ``app`` on a free local port; (runner to clean up, base URL)."""
    runner = web.AppRunner(app, shutdown_timeout=0.1)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()  # the kernel's pick: no race
    port = int(runner.addresses[0][1])
    return runner, f"http://127.0.0.1:{port}"


async def post_json(url: str, body: Any, headers: dict[str, str] | None = None) -> tuple[int, Any]:
    """POST JSON; returns (status, parsed JSON) or (status, [SSE data items]) for streams.

    The SSE items are parsed JSON objects, and the string ``"[DONE]"`` where the stream
    says so; a body that is not JSON comes back as text.
    """
    async with aiohttp.ClientSession() as s, s.post(url, json=body, headers=headers) as r:
        raw = await r.read()
        ctype = r.content_type
    if ctype == "text/event-stream":
        items: list[Any] = []
        for ev in raw.split(b"\n\n"):
            ev = ev.strip()
            if ev.startswith(b"data:"):
                data = ev[5:].strip().decode()
                items.append(data if data == "[DONE]" else json.loads(data))
        return r.status, items
    try:
        return r.status, json.loads(raw)
    except ValueError:
        return r.status, raw.decode(errors="replace")


def sglang_request(
    bench_serving: Any,
    prompt: str | list[int],
    api_url: str,
    output_len: int,
    *,
    prompt_len: int = 0,
    extra_request_body: dict[str, Any] | None = None,
) -> Any:
    """A ``RequestFuncInput`` for SGLang's client functions: model "m", no LoRA, no images."""
    return bench_serving.RequestFuncInput(
        prompt=prompt,
        api_url=api_url,
        prompt_len=prompt_len,
        output_len=output_len,
        model="m",
        lora_name=None,
        image_data=None,
        extra_request_body=extra_request_body or {},
    )


async def check_generate(base_url: str, stream: bool) -> None:
    """``/generate`` of 6 tokens through a PD router answers as SGLang does, streamed or not."""
    body = {
        "text": "tell me about clocks",
        "stream": stream,
        "sampling_params": {"max_new_tokens": 6, "ignore_eos": True},
    }
    status, got = await post_json(base_url + "/generate", body)
    assert status == 200, got
    if stream:
        assert got[-1] == "[DONE]"
        assert [c["meta_info"]["completion_tokens"] for c in got[:-1]] == [1, 2, 3, 4, 5, 6]
        final = got[-2]
    else:
        final = got
    assert final["meta_info"]["finish_reason"] == {"type": "length", "length": 6}
    assert len(final["text"].split()) == 6


def acl_opts(url: str, user: str) -> Any:
    """Bus options for a user of the shipped NATS config run by the ``acl_server`` fixture.

    Every role's password there is ``pw-<role>`` (user ``actuator-x`` -> role actuator);
    every role but admin hears replies under its own inbox prefix, ``_INBOX_<user>``.
    """
    from voltana.bus.client import BusOptions

    prefix = "_INBOX" if user == "admin" else f"_INBOX_{user}"
    pw = f"pw-{user.split('-')[0]}"
    return BusOptions(servers=[url], user=user, password=pw, name=user, inbox_prefix=prefix)
