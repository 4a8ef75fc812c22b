"""PD protocol helpers: bootstrap fields, request inspection, SSE scanning, records."""

from __future__ import annotations

import random

import msgspec
import pytest
from voltana.schemas.config import SloConfig
from voltana.services.router import protocol as proto
from voltana.services.router.policies import RouteRequest
from voltana.services.router.stats import Outcome, request_record


@pytest.mark.parametrize(
    ("path", "body", "batch"),
    [
        ("/generate", {"text": "hi"}, None),
        ("/generate", {"text": ["a", "b", "c"]}, 3),
        ("/generate", {"input_ids": [1, 2, 3]}, None),
        ("/generate", {"input_ids": [[1, 2], [3]]}, 2),
        ("/v1/completions", {"prompt": "x"}, None),
        ("/v1/completions", {"prompt": [1, 2, 3]}, None),
        ("/v1/completions", {"prompt": ["x", "y"]}, 2),
        ("/v1/chat/completions", {"messages": [{"role": "user", "content": "x"}]}, None),
        ("/v1/chat/completions", {"messages": [], "n": 3}, 3),
        ("/v1/completions", {"prompt": "x", "n": 2}, 2),
        ("/v1/completions", {"prompt": ["x", "y"], "n": 3}, 6),
        ("/v1/completions", {"prompt": [[1, 2], [3]], "n": 1}, 2),
    ],
)
def test_batch_detection(path: str, body: dict[str, object], batch: int | None) -> None:
    assert proto.inspect_request(path, body).batch_size == batch


def test_add_bootstrap_scalar_and_batch_forms() -> None:
    body = {"text": "hi", "stream": True}
    one = proto.add_bootstrap(body, "10.0.0.1", 8998, [42], None)
    assert one == {
        **body,
        "bootstrap_host": "10.0.0.1",
        "bootstrap_port": 8998,
        "bootstrap_room": 42,
    }
    assert "bootstrap_room" not in body  # input not mutated
    many = proto.add_bootstrap({"text": ["a", "b"]}, "h", None, [1, 2], 2)
    assert many["bootstrap_host"] == ["h", "h"]
    assert many["bootstrap_port"] == [None, None]
    assert many["bootstrap_room"] == [1, 2]


def test_rooms_are_63_bit() -> None:
    rng = random.Random(0)
    rooms = [proto.new_room(rng) for _ in range(1000)]
    assert all(0 <= r <= (1 << 63) - 1 for r in rooms) and len(set(rooms)) == 1000


@pytest.mark.parametrize(
    ("url", "host"),
    [
        ("http://127.0.0.1:30000", "127.0.0.1"),
        ("https://pf-0.svc:443/", "pf-0.svc"),
        ("http://[::1]:8000", "::1"),
    ],
)
def test_bootstrap_host_strips_scheme_and_port(url: str, host: str) -> None:
    assert proto.bootstrap_host(url) == host


def test_inspect_reads_sizes_and_budget() -> None:
    info = proto.inspect_request(
        "/generate",
        {
            "input_ids": [1] * 300,
            "sampling_params": {"max_new_tokens": 7},
            "stream": True,
            "return_logprob": True,
        },
    )
    assert (info.stream, info.input_tokens, info.max_new_tokens, info.return_logprob) == (
        True,
        300,
        7,
        True,
    )
    chat = proto.inspect_request(
        "/v1/chat/completions",
        {"messages": [{"role": "user", "content": "x" * 400}], "max_tokens": 9},
    )
    assert chat.input_tokens == 100 and chat.max_new_tokens == 9 and not chat.stream
    batch = proto.inspect_request(
        "/generate", {"text": ["a", "b"], "sampling_params": {"max_new_tokens": 5}}
    )
    assert batch.max_new_tokens == 10


@pytest.mark.parametrize("body", [[1, 2], "x", None, {"text": []}])
def test_inspect_rejects_bad_bodies(body: object) -> None:
    with pytest.raises(proto.ProtocolError):
        proto.inspect_request("/generate", body)


def test_decode_rejects_bad_json_with_position() -> None:
    with pytest.raises(proto.ProtocolError, match="invalid JSON"):
        proto.decode(b'{"text": ')


def test_sse_scanner_counts_events_across_arbitrary_splits() -> None:
    events = [b'data: {"text":"a","meta_info":{"completion_tokens":%d}}\n\n' % i for i in (1, 2, 3)]
    stream = b"".join(events) + proto.DONE_EVENT
    for cut in range(1, len(stream)):
        sc = proto.SseScanner()
        n = sc.feed(stream[:cut]) + sc.feed(stream[cut:])
        assert n == 3 and sc.saw_done and not sc.saw_error
        assert proto.completion_tokens(proto.decode(sc.last_data or b"")) == 3


def test_sse_scanner_sees_error_chunks() -> None:
    sc = proto.SseScanner()
    sc.feed(proto.error_event("boom"))
    assert sc.saw_error and sc.saw_done
    obj = msgspec.json.decode(sc.last_data or b"")
    assert obj["error"]["message"] == "boom" and obj["error"]["code"] == 502


def test_merge_logprobs_prepends_prefill_input_logprobs() -> None:
    p = {"meta_info": {"input_token_logprobs": [[-1.0, 5, None]]}}
    d = {"text": "x", "meta_info": {"input_token_logprobs": [[-2.0, 6, None]], "id": "1"}}
    out = proto.merge_logprobs(p, d)
    assert out["meta_info"]["input_token_logprobs"] == [[-1.0, 5, None], [-2.0, 6, None]]
    assert proto.merge_logprobs([p], [d])[0] == out
    assert proto.merge_logprobs({"x": 1}, d) == d


def test_completion_tokens_from_every_format() -> None:
    assert proto.completion_tokens({"meta_info": {"completion_tokens": 4}}) == 4
    assert proto.completion_tokens({"usage": {"completion_tokens": 5}}) == 5
    assert proto.completion_tokens([{"meta_info": {"completion_tokens": 2}}] * 3) == 6
    assert proto.completion_tokens({"choices": []}) is None


def test_request_record_slo_accounting() -> None:
    slo = SloConfig(ttft_s=0.5, itl_s=0.05)
    rreq = RouteRequest(request_id="r", input_tokens=10, max_new_tokens=4, arrival_t=0.0)
    info = proto.RequestInfo(
        stream=True, batch_size=None, input_tokens=10, max_new_tokens=4, return_logprob=False
    )
    ok = Outcome(prefill="p", decode="d", ttft_s=0.2, gaps_s=[0.01, 0.02, 0.2], output_tokens=4)
    rec = request_record(rreq, info, ok, 0.5, 1, slo, 2)
    assert rec.ttft_met and rec.itl_met is False and rec.slo_met is False
    assert rec.itl_within_slo_frac == pytest.approx(2 / 3)
    assert rec.itl_max_s == pytest.approx(0.2)
    good = Outcome(prefill="p", decode="d", ttft_s=0.2, gaps_s=[0.01, 0.02], output_tokens=3)
    assert request_record(rreq, info, good, 0.3, 1, slo, 2).slo_met is True
    bad = Outcome(status="error", error="x")
    assert request_record(rreq, info, bad, 0.3, 1, slo, 2).slo_met is False


def test_sse_scanner_is_not_fooled_by_text_that_looks_like_events() -> None:
    ev = b'data: {"text": "data: [DONE]\\n\\ndata: x {\\"error\\"", "meta_info": {}}\n\n'
    sc = proto.SseScanner()
    assert sc.feed(ev * 2) == 2
    assert not sc.saw_done and not sc.saw_error
    assert sc.feed(proto.DONE_EVENT) == 0 and sc.saw_done and sc.last_data == ev[5:].strip()
