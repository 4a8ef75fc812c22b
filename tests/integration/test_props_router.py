"""Property tests: the router's request parsing, pure and against a live router process.

Any body on any generate path gets a clean answer: 200 from the workers, or a
4xx with the router's JSON error; never a 500, never a hang. After every
hostile example the router still serves a plain request.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Iterator

import msgspec
import pytest
from helpers import emulated_pd_pair, free_port, spawn_voltana, wait_http
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from voltana.services.router.protocol import ProtocolError
from voltana.services.router.validate import parse_request

PATHS = ["/generate", "/v1/completions", "/v1/chat/completions"]
_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**70), 2**70),
    st.floats(allow_nan=False),
    st.text(max_size=10),
)
_json = st.recursive(
    _scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=16,
)
_fields = st.sampled_from(
    [
        "text",
        "input_ids",
        "prompt",
        "messages",
        "n",
        "stream",
        "sampling_params",
        "max_tokens",
        "return_logprob",
        "logprobs",
    ]
)
_bodies = st.one_of(
    st.dictionaries(_fields, _json, max_size=6),
    _json,
    st.builds(lambda n: {"messages": [], "n": n}, st.integers(-5, 10**9)),
)
_raw = st.one_of(
    _bodies.map(lambda b: msgspec.json.encode(b)),
    st.binary(max_size=64),
    st.integers(1, 3000).map(lambda d: b"[" * d + b"]" * d),
)


@settings(max_examples=200, deadline=None)
@given(path=st.sampled_from(PATHS), raw=_raw)
def test_parse_request_gives_info_or_protocol_error(path: str, raw: bytes) -> None:
    try:
        body, info = parse_request(path, raw, max_depth=32, max_batch=64)
    except ProtocolError:
        return
    assert isinstance(body, dict) and isinstance(info.stream, bool)
    assert info.batch_size is None or 1 <= info.batch_size <= 64
    assert info.input_tokens >= 1 and info.max_new_tokens >= 0


@pytest.fixture(scope="module")
def router_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """``voltana router`` as a process in front of real emulated workers."""
    log = tmp_path_factory.mktemp("router") / "router.log"
    port = free_port()
    with emulated_pd_pair() as w:
        p_url, p_boot = w["prefill"]
        args = ["router", "--no-nats", "--host", "127.0.0.1", "--port", str(port)]
        args += ["--prefill", p_url, str(p_boot), "--decode", w["decode"]]
        args += ["--max-batch-items", "16", "--health-check-interval-s", "0"]
        with spawn_voltana(args, log) as proc:
            wait_http(f"http://127.0.0.1:{port}/health", proc, log=log)
            yield f"http://127.0.0.1:{port}"
            assert proc.poll() is None, "the router died"


def post(url: str, data: bytes) -> tuple[int, bytes]:
    req = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def _cap(body: object) -> object:
    """Keep generation short where the body would reach the workers."""
    if isinstance(body, dict):
        return {**body, "max_tokens": 2, "sampling_params": {"max_new_tokens": 2}}
    return body


@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(path=st.sampled_from(PATHS), body=_bodies)
def test_live_router_answers_every_body_cleanly(router_url: str, path: str, body: object) -> None:
    status, data = post(router_url + path, msgspec.json.encode(_cap(body)))
    assert status < 500, (status, data[:300])
    if status >= 400:  # the router's error, or a worker's 4xx passed through as it sent it
        err = json.loads(data)
        assert "message" in err.get("error", err), err
    ok, _ = post(
        router_url + "/generate", b'{"text": "hi", "sampling_params": {"max_new_tokens": 1}}'
    )
    assert ok == 200


def test_live_router_hostile_raw_bodies(router_url: str) -> None:
    for raw in (b"[" * 200_000, b'{"n": 10000000, "messages": []}', b"\xff\xfe", b"{" * 50):
        status, _ = post(router_url + "/v1/chat/completions", raw)
        assert status == 400, raw[:20]
    assert post(router_url + "/generate", b'{"text": "hi"}')[0] == 200
