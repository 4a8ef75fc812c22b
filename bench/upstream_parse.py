"""Benchmark: CPU per answer of the lean client's answer parsing, no sockets.

Feeds the bytes a worker sends (as ``bench/minimal_worker.py`` does: a JSON answer
with Content-Length, and an SSE stream of chunked events, one read per event) to
the connection protocol of :mod:`voltana.services.router.upstream_conn` and reads
the body as dispatch does, many times over, and prints microseconds per answer.
``--baseline DIR`` (a directory holding another checkout as ``voltana/``) runs
that checkout's ``upstream_conn.py`` alongside, for before/after in one run.

Usage:
    python bench/upstream_parse.py [--answers 20000] [--events 32] [--baseline DIR]
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import time
from pathlib import Path
from types import ModuleType
from typing import Any

ROOT = Path(__file__).resolve().parents[1]


def load(path: Path, name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


class Pool:
    def forget(self, conn: Any) -> None:
        pass


class Transport:
    def write(self, data: bytes) -> None:
        pass

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def abort(self) -> None:
        raise AssertionError("the connection was dropped")


class Answer:
    def __init__(self, mod: ModuleType, conn: Any) -> None:
        self.status = 0
        self.content_type = ""
        self.content = mod.Body(conn)
        self.complete = False

    def head_ready(self) -> None:
        pass

    def head_failed(self, exc: BaseException) -> None:
        raise AssertionError(f"the answer failed: {exc!r}")


def wires(events: int) -> dict[str, list[bytes]]:
    head = b"HTTP/1.1 200 OK\r\nContent-Type: %s\r\n"
    data = b'{"text": "' + b"x" * 160 + b'", "meta_info": {"e2e_latency": 0.001}}'
    plain = head % b"application/json" + b"Content-Length: %d\r\n\r\n%s" % (len(data), data)
    sse = [head % b"text/event-stream" + b"Transfer-Encoding: chunked\r\n\r\n"]
    for i in range(events):
        ev = b'data: {"text": "tok%d", "meta_info": {"completion_tokens": %d}}\n\n' % (i, i)
        sse.append(b"%x\r\n%s\r\n" % (len(ev), ev))
    sse[-1] += b"%x\r\n%s\r\n0\r\n\r\n" % (14, b"data: [DONE]\n\n")
    return {"non-stream": [plain], "stream": sse}


def per_answer_us(mod: ModuleType, packets: list[bytes], answers: int) -> float:
    loop = asyncio.new_event_loop()
    conn = mod.Conn(Pool(), loop)
    conn.connection_made(Transport())
    t0 = time.process_time()
    for _ in range(answers):
        resp = Answer(mod, conn)
        conn.start(resp, b"")
        for p in packets:
            conn.data_received(p)
            resp.content._parts.clear()  # read, as dispatch does
            resp.content._size = 0
        assert resp.complete and resp.status == 200
    took = time.process_time() - t0
    loop.close()
    return took / answers * 1e6


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    ap.add_argument("--answers", type=int, default=20000, help="answers parsed per figure")
    ap.add_argument("--events", type=int, default=32, help="SSE events per streamed answer")
    ap.add_argument("--rounds", type=int, default=3, help="interleaved rounds; best shown")
    ap.add_argument("--baseline", default=None, help="a directory holding another checkout")
    args = ap.parse_args()
    mods = {"this": load(ROOT / "services/router/upstream_conn.py", "conn_this")}
    if args.baseline:
        path = Path(args.baseline) / "voltana/services/router/upstream_conn.py"
        mods["baseline"] = load(path, "conn_base")
    best: dict[tuple[str, str], float] = {}
    for _ in range(args.rounds):
        for mode, packets in wires(args.events).items():
            for name, mod in mods.items():
                us = per_answer_us(mod, packets, args.answers)
                best[name, mode] = min(best.get((name, mode), us), us)
    print(f"CPU per answer parsed (us), best of {args.rounds} rounds of {args.answers} answers")
    for (name, mode), us in sorted(best.items()):
        print(f"  {name:9s} {mode:10s} {us:7.2f}")


if __name__ == "__main__":
    main()
