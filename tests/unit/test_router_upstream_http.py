"""The router's lean upstream client against real loopback servers that answer in odd ways."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable

import aiohttp
import pytest
from voltana.services.router.upstream_http import LeanClient

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


class Server:
    """A raw HTTP server on loopback: ``script`` answers each request; counts connections."""

    def __init__(self, script: Handler) -> None:
        self.script = script
        self.connections = 0
        self.bodies: list[bytes] = []
        self.gone = asyncio.Event()  # a client closed its connection mid-answer

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n"):
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":")[1])
                self.bodies.append(await reader.readexactly(length))
                await self.script(reader, writer)
                if writer.is_closing():
                    return
        except (asyncio.IncompleteReadError, ConnectionError):
            self.gone.set()
        finally:
            writer.close()


Serve = Callable[[Handler], Awaitable[tuple[Server, str]]]


@pytest.fixture
async def serve() -> AsyncIterator[Serve]:
    servers: list[asyncio.Server] = []

    async def start(script: Handler) -> tuple[Server, str]:
        s = Server(script)
        srv = await asyncio.start_server(s.serve, "127.0.0.1", 0)
        servers.append(srv)
        return s, f"http://127.0.0.1:{srv.sockets[0].getsockname()[1]}/generate"

    yield start
    for srv in servers:
        srv.close()


def client(**kw: float) -> LeanClient:
    return LeanClient(
        connect_s=kw.get("connect_s", 2.0),
        total_s=kw.get("total_s", 10.0),
        read_s=kw.get("read_s", 5.0),
    )


async def ok_json(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    writer.write(
        b"HTTP/1.1 200 OK\r\nContent-Type: application/json; charset=utf-8\r\n"
        b'Content-Length: 11\r\n\r\n{"a": true}'
    )
    await writer.drain()


async def test_content_length_answers_reuse_one_connection(serve: Serve) -> None:
    server, url = await serve(ok_json)
    c = client()
    for i in range(3):
        async with c.post(url, data=b'{"i": %d}' % i) as resp:
            assert resp.status == 200 and resp.content_type == "application/json"
            assert await resp.read() == b'{"a": true}'
            assert resp.content.is_eof()
    assert server.connections == 1
    assert server.bodies == [b'{"i": 0}', b'{"i": 1}', b'{"i": 2}']
    await c.close()


EVENTS = b"".join(b'data: {"n": %d}\n\n' % i for i in range(20)) + b"data: [DONE]\n\n"


def chunked(payload: bytes, size: int) -> bytes:
    parts = [payload[i : i + size] for i in range(0, len(payload), size)]
    return b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in parts) + b"0\r\n\r\n"


@pytest.mark.parametrize("split", [1, 3, 7, 64])
async def test_chunked_stream_split_anywhere_arrives_whole(serve: Serve, split: int) -> None:
    wire = chunked(EVENTS, 13)

    async def stream(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n")
        writer.write(b"Content-Type: text/event-stream\r\n\r\n")
        for i in range(0, len(wire), split):
            writer.write(wire[i : i + split])
            await writer.drain()
            await asyncio.sleep(0)

    server, url = await serve(stream)
    c = client()
    for _ in range(2):
        async with c.post(url, data=b"{}") as resp:
            assert resp.content_type == "text/event-stream"
            got = b"".join([chunk async for chunk in resp.content.iter_any()])
            assert got == EVENTS and resp.content.is_eof()
    assert server.connections == 1
    await c.close()


async def test_connection_close_is_not_reused_and_1xx_is_skipped(serve: Serve) -> None:
    async def close_after(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\nok")
        await writer.drain()
        writer.close()

    server, url = await serve(close_after)
    c = client()
    for _ in range(2):
        async with c.post(url, data=b"{}") as resp:
            assert resp.status == 200 and await resp.read() == b"ok"
    assert server.connections == 2
    await c.close()


async def test_idle_connection_closed_by_the_worker_is_not_used_again(serve: Serve) -> None:
    async def then_close(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await ok_json(reader, writer)
        await asyncio.sleep(0.05)
        writer.close()  # as a worker's keep-alive timeout does

    server, url = await serve(then_close)
    c = client()
    async with c.post(url, data=b"{}") as resp:
        await resp.read()
    await asyncio.sleep(0.3)
    async with c.post(url, data=b"{}") as resp:
        assert await resp.read() == b'{"a": true}'
    assert server.connections == 2
    await c.close()


async def test_errors_have_aiohttps_types(serve: Serve) -> None:
    async def hang_up(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.close()

    async def cut_body(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nshort")
        await writer.drain()
        writer.close()

    c = client()
    _, url = await serve(hang_up)
    with pytest.raises(aiohttp.ServerDisconnectedError):
        async with c.post(url, data=b"{}"):
            pass
    _, url = await serve(cut_body)
    async with c.post(url, data=b"{}") as resp:
        with pytest.raises(aiohttp.ClientPayloadError):
            await resp.read()
    srv = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    port = srv.sockets[0].getsockname()[1]
    srv.close()
    await srv.wait_closed()
    with pytest.raises(aiohttp.ClientConnectionError):
        async with c.post(f"http://127.0.0.1:{port}/generate", data=b"{}"):
            pass
    await c.close()


async def test_read_gap_and_total_timeouts(serve: Serve) -> None:
    async def stall(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nfirst\r\n")
        await writer.drain()
        await asyncio.sleep(10)

    async def trickle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
        for _ in range(100):
            writer.write(b"1\r\nx\r\n")
            await writer.drain()
            await asyncio.sleep(0.05)

    _, url = await serve(stall)
    c = client(read_s=0.3)
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    async with c.post(url, data=b"{}") as resp:
        with pytest.raises(TimeoutError):
            await resp.read()
    assert 0.25 < loop.time() - t0 < 3
    _, url = await serve(trickle)  # never a long gap, but longer than the whole-call limit
    c = client(read_s=0.3, total_s=0.6)
    t0 = loop.time()
    async with c.post(url, data=b"{}") as resp:
        with pytest.raises(TimeoutError):
            await resp.read()
    assert 0.5 < loop.time() - t0 < 3
    await c.close()


async def test_closing_mid_stream_drops_the_worker_connection(serve: Serve) -> None:
    async def endless(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
        while True:
            writer.write(b"6\r\ndata: \r\n")
            await writer.drain()
            await asyncio.sleep(0.01)

    server, url = await serve(endless)
    c = client()
    ctx = c.post(url, data=b"{}")
    resp = await ctx.__aenter__()
    chunks = resp.content.iter_any()
    assert (await chunks.__anext__()).startswith(b"data")
    resp.close()
    with pytest.raises(aiohttp.ClientConnectionError):
        await chunks.__anext__()
    await asyncio.wait_for(server.gone.wait(), 5)
    await c.close()


async def test_timeouts_stay_on_time_after_many_calls(serve: Serve) -> None:
    """Finished calls leave the timeout heap (it stays small) and a later stall still times out."""
    calls = 0

    async def ok_then_stall(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal calls
        calls += 1
        if calls <= 600:
            await ok_json(reader, writer)
            return
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nhalf")
        await writer.drain()
        await asyncio.sleep(10)

    _, url = await serve(ok_then_stall)
    c = client(read_s=0.3)
    for _ in range(600):
        async with c.post(url, data=b"{}") as resp:
            await resp.read()
    assert len(c._heap) < 600
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    async with c.post(url, data=b"{}") as resp:
        with pytest.raises(TimeoutError):
            await resp.read()
    assert 0.25 < loop.time() - t0 < 3
    await c.close()


MALFORMED = {
    "status line": b"HTTP/1.1 abc OK\r\nContent-Length: 2\r\n\r\nok",
    "not http": b"SSH-2.0-OpenSSH_9.6\r\n\r\n",
    "content length": b"HTTP/1.1 200 OK\r\nContent-Length: 12x\r\n\r\nok",
}


@pytest.mark.parametrize("what", sorted(MALFORMED))
async def test_malformed_head_fails_the_call_with_a_payload_error(serve: Serve, what: str) -> None:
    """A head that is not HTTP fails the call (aiohttp's type, as retries expect); the
    connection is dropped and the next call, on a new one, gets its answer."""
    calls = 0

    async def bad_then_good(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal calls
        calls += 1
        if calls == 1:
            writer.write(MALFORMED[what])
            await writer.drain()
            await asyncio.sleep(1)  # the client closes, not the worker
            return
        await ok_json(reader, writer)

    server, url = await serve(bad_then_good)
    c = client()
    with pytest.raises(aiohttp.ClientPayloadError):
        async with c.post(url, data=b"{}"):
            pass
    async with c.post(url, data=b"{}") as resp:
        assert await resp.read() == b'{"a": true}'
    assert server.connections == 2
    await c.close()


async def test_bad_chunk_size_ends_the_body_with_a_payload_error(serve: Serve) -> None:
    async def bad_chunk(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nfirst\r\n")
        await writer.drain()
        await asyncio.sleep(0.05)
        writer.write(b"zz\r\nsecond\r\n0\r\n\r\n")
        await writer.drain()
        await asyncio.sleep(1)

    _, url = await serve(bad_chunk)
    c = client()
    async with c.post(url, data=b"{}") as resp:
        assert resp.status == 200
        chunks = resp.content.iter_any()
        assert await chunks.__anext__() == b"first"
        with pytest.raises(aiohttp.ClientPayloadError):
            await chunks.__anext__()
    await c.close()


async def test_body_until_close_and_bytes_after_an_answer(serve: Serve) -> None:
    """An HTTP/1.0 body without a length ends with the connection; bytes a worker sends
    after a whole answer close that connection without touching the answer."""

    async def until_close(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\n\r\npart one, ")
        await writer.drain()
        writer.write(b"part two")
        writer.close()

    async def trailing(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nokHTTP/1.1 200 OK\r\n")
        await writer.drain()

    c = client()
    _, url = await serve(until_close)
    async with c.post(url, data=b"{}") as resp:
        assert resp.content_type == "text/plain"
        assert await resp.read() == b"part one, part two"
    server, url = await serve(trailing)
    for _ in range(2):
        async with c.post(url, data=b"{}") as resp:
            assert await resp.read() == b"ok"
    assert server.connections == 2
    await c.close()
