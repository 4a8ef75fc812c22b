"""A minimal SGLang-shaped worker for router benchmarks: answers at once, costs little CPU.

A router's own cost only shows when the workers behind it are cheaper than it is.
This worker speaks just enough of SGLang's HTTP API for voltana's router,
sglang-router and smg to accept it as a PD prefill or decode worker (``/health``,
the info routes, ``/v1/loads``) and answers ``/generate`` (and the two OpenAI
routes, with the same body) immediately: a prefill worker with one JSON answer,
a decode worker with ``--output-len`` SSE events, each its own HTTP chunk, then
``[DONE]``; non-streamed, one JSON answer. ``meta_info.e2e_latency`` is the
worker's own time for the request, so a client can subtract it. It ignores the
bootstrap fields (no KV transfer to wait for) and is HTTP/1.1 with keep-alive,
Content-Length or chunked request bodies; built on a raw asyncio protocol
(uvloop when installed).

Usage:
    python bench/minimal_worker.py --role decode --port 31001 [--output-len 32] [--itl-ms 0]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from typing import Any

import msgspec

MODEL = "meta-llama/Llama-3.1-8B-Instruct"
_decode = msgspec.json.Decoder().decode


class Worker:
    """What the worker answers: built once, so a request costs a few byte joins."""

    def __init__(self, role: str, port: int, bootstrap_port: int, output_len: int, itl_s: float):
        self.role = role
        self.output_len = 1 if role == "prefill" else output_len
        self.itl_s = itl_s
        info = {"model_path": MODEL, "tokenizer_path": MODEL, "is_generation": True}
        server_info = {
            "model_path": MODEL,
            "served_model_name": MODEL,
            "host": "127.0.0.1",
            "port": port,
            "tp_size": 1,
            "dp_size": 1,
            "disaggregation_mode": role,
            "disaggregation_bootstrap_port": bootstrap_port,
            "max_running_requests": 4096,
            "max_total_num_tokens": 1 << 22,
            "version": "0.5.23",
            "internal_states": [{"last_gen_throughput": 0.0, "load": 0}],
        }
        models = {
            "object": "list",
            "data": [{"id": MODEL, "object": "model", "created": 0, "owned_by": "sglang"}],
        }
        loads = {
            "version": "0.5.23",
            "loads": [
                {
                    "dp_rank": 0,
                    "num_running_reqs": 0,
                    "num_waiting_reqs": 0,
                    "num_used_tokens": 0,
                    "max_total_num_tokens": 1 << 22,
                    "token_usage": 0.0,
                    "gen_throughput": 0.0,
                }
            ],
        }
        self.gets: dict[bytes, bytes] = {
            b"/health": b"",
            b"/health_generate": b"",
            b"/ready": b"",
            b"/get_model_info": json.dumps(info).encode(),
            b"/model_info": json.dumps(info).encode(),
            b"/get_server_info": json.dumps(server_info).encode(),
            b"/server_info": json.dumps(server_info).encode(),
            b"/v1/models": json.dumps(models).encode(),
            b"/v1/loads": json.dumps(loads).encode(),
            b"/metrics": b"",
        }
        self.tok = " tok"

    def meta(self, n: int, prompt_tokens: int, e2e: float | None) -> str:
        finish = f'{{"type":"length","length":{n}}}' if n == self.output_len else "null"
        tail = f',"e2e_latency":{e2e:.6f}' if e2e is not None else ""
        return (
            f'{{"id":"x","finish_reason":{finish},"prompt_tokens":{prompt_tokens},'
            f'"completion_tokens":{n},"cached_tokens":0{tail}}}'
        )

    def answer(self, n: int, prompt_tokens: int, e2e: float | None) -> bytes:
        text = self.tok * n
        return f'{{"text":"{text}","meta_info":{self.meta(n, prompt_tokens, e2e)}}}'.encode()


def _head(status: int, ctype: bytes, length: int | None) -> bytes:
    reason = {200: b"OK", 404: b"Not Found", 400: b"Bad Request"}.get(status, b"X")
    h = b"HTTP/1.1 %d %s\r\nContent-Type: %s\r\n" % (status, reason, ctype)
    h += b"Transfer-Encoding: chunked\r\n" if length is None else b"Content-Length: %d\r\n" % length
    return h + b"\r\n"


class Conn(asyncio.Protocol):
    """One keep-alive connection; requests are answered in order (no pipelining needed)."""

    def __init__(self, w: Worker) -> None:
        self.w = w
        self.buf = b""
        self.t: asyncio.Transport | None = None
        self.busy = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.t = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.buf += data
        if not self.busy:
            self.parse()

    def parse(self) -> None:
        while self.buf:
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                return
            head = self.buf[:end].split(b"\r\n")
            method, path = head[0].split(b" ")[:2]
            length, chunked = 0, False
            for line in head[1:]:
                k, _, v = line.partition(b":")
                k = k.strip().lower()
                if k == b"content-length":
                    length = int(v)
                elif k == b"transfer-encoding" and b"chunked" in v.lower():
                    chunked = True
            rest = self.buf[end + 4 :]
            if chunked:
                body, used = _dechunk(rest)
                if body is None:
                    return
            else:
                if len(rest) < length:
                    return
                body, used = rest[:length], length
            self.buf = rest[used:]
            self.handle(method, path.split(b"?")[0], body)
            if self.busy:
                return

    def handle(self, method: bytes, path: bytes, body: bytes) -> None:
        assert self.t is not None
        w = self.w
        if method == b"GET" and path in w.gets:
            data = w.gets[path]
            self.t.write(_head(200, b"application/json", len(data)) + data)
            return
        if method != b"POST" or path not in (
            b"/generate",
            b"/v1/completions",
            b"/v1/chat/completions",
        ):
            data = b'{"error":"not found"}'
            self.t.write(_head(404, b"application/json", len(data)) + data)
            return
        t0 = time.perf_counter()
        try:
            req: Any = _decode(body)
        except msgspec.DecodeError:
            self.t.write(_head(400, b"application/json", 2) + b"{}")
            return
        ids = req.get("input_ids") if isinstance(req, dict) else None
        prompt = len(ids) if isinstance(ids, list) else 1
        if not req.get("stream") or w.role == "prefill":
            data = w.answer(w.output_len, prompt, time.perf_counter() - t0)
            self.t.write(_head(200, b"application/json", len(data)) + data)
            return
        self.busy = True
        asyncio.get_running_loop().create_task(self.stream(prompt, t0))

    async def stream(self, prompt: int, t0: float) -> None:
        assert self.t is not None
        w, t = self.w, self.t
        t.write(_head(200, b"text/event-stream", None))
        for i in range(1, w.output_len + 1):
            if w.itl_s > 0:
                await asyncio.sleep(w.itl_s)
            else:
                await asyncio.sleep(0)
            if t.is_closing():
                return
            e2e = time.perf_counter() - t0 if i == w.output_len else None
            ev = b"data: " + w.answer(i, prompt, e2e) + b"\n\n"
            t.write(b"%x\r\n%s\r\n" % (len(ev), ev))
        done = b"data: [DONE]\n\n"
        t.write(b"%x\r\n%s\r\n0\r\n\r\n" % (len(done), done))
        self.busy = False
        self.parse()


def _dechunk(data: bytes) -> tuple[bytes | None, int]:
    """A chunked body from ``data``: (body, bytes used), or (None, 0) while incomplete."""
    out, pos = [], 0
    while True:
        eol = data.find(b"\r\n", pos)
        if eol < 0:
            return None, 0
        size = int(data[pos:eol].split(b";")[0], 16)
        if size == 0:
            end = data.find(b"\r\n\r\n", eol)
            return (b"".join(out), end + 4) if end >= 0 else (None, 0)
        if len(data) < eol + 2 + size + 2:
            return None, 0
        out.append(data[eol + 2 : eol + 2 + size])
        pos = eol + 2 + size + 2


async def serve(args: argparse.Namespace) -> None:
    w = Worker(args.role, args.port, args.bootstrap_port, args.output_len, args.itl_ms / 1e3)
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: Conn(w), args.host, args.port, backlog=4096)
    async with server:
        await server.serve_forever()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--role", choices=["prefill", "decode"], required=True, help="PD role")
    ap.add_argument("--host", default="127.0.0.1", help="bind address")
    ap.add_argument("--port", type=int, required=True, help="HTTP port")
    ap.add_argument("--bootstrap-port", type=int, default=0, help="advertised bootstrap port")
    ap.add_argument("--output-len", type=int, default=32, help="SSE events per decode answer")
    ap.add_argument("--itl-ms", type=float, default=0.0, help="pause before each event (0: yield)")
    args = ap.parse_args()
    try:
        import uvloop

        uvloop.run(serve(args))
    except ImportError:
        asyncio.run(serve(args))


if __name__ == "__main__":
    main()
