"""The emulated worker accepts what SGLang 0.5.x accepts: prefill-only requests, several
choices (list prompts, ``n``), its current introspection routes; refuses logprobs clearly;
answers unknown paths with a JSON 404."""

from __future__ import annotations

import aiohttp
import pytest
from emulator_helpers import Factory, sse, url


@pytest.mark.parametrize("stream", [False, True])
async def test_max_new_tokens_zero_is_a_prefill_only_request(
    make_emulator: Factory, http: aiohttp.ClientSession, stream: bool
) -> None:
    app = await make_emulator()
    body = {"input_ids": list(range(512)), "sampling_params": {"max_new_tokens": 0}}
    async with http.post(url(app, "/generate"), json={**body, "stream": stream}) as r:
        assert r.status == 200, await r.text()
        last = [c for _, c in await sse(r)][-2] if stream else await r.json()
    assert last["text"] == ""
    meta = last["meta_info"]
    assert meta["completion_tokens"] == 0 and meta["prompt_tokens"] == 512
    assert meta["finish_reason"] == {"type": "length", "length": 0}
    body = {"model": "m", "prompt": "hello there", "max_tokens": 0}
    async with http.post(url(app, "/v1/completions"), json=body) as r:
        got = await r.json()
    assert r.status == 200 and got["usage"]["completion_tokens"] == 0
    assert got["choices"][0]["text"] == ""
    assert app.server.engine.idle and app.server.engine.stats().kv_used_tokens == 0


async def test_list_prompts_and_n_give_one_choice_each(
    make_emulator: Factory, http: aiohttp.ClientSession
) -> None:
    app = await make_emulator()
    body = {"model": "m", "prompt": ["one", "two two two"], "max_tokens": 3, "n": 2}
    body["ignore_eos"] = True
    async with http.post(url(app, "/v1/completions"), json=body) as r:
        got = await r.json()
    assert r.status == 200, got
    assert [c["index"] for c in got["choices"]] == [0, 1, 2, 3]
    assert all(len(c["text"].split()) == 3 for c in got["choices"])
    assert got["usage"]["completion_tokens"] == 12
    chat = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
    async with http.post(
        url(app, "/v1/chat/completions"), json={**chat, "n": 3, "stream": True, "ignore_eos": True}
    ) as r:
        chunks = [c for _, c in await sse(r)]
    assert chunks[-1] == "[DONE]"
    text: dict[int, str] = {}
    for c in chunks[:-1]:
        ch = c["choices"][0]
        text[ch["index"]] = text.get(ch["index"], "") + ch["delta"]["content"]
    assert sorted(text) == [0, 1, 2] and all(len(t.split()) == 2 for t in text.values())
    assert app.server.engine.idle


@pytest.mark.parametrize(
    ("path", "body", "needle"),
    [
        ("/v1/completions", {"prompt": "x", "logprobs": 2}, "logprobs"),
        (
            "/v1/chat/completions",
            {"messages": [{"role": "user", "content": "x"}], "logprobs": True},
            "logprobs",
        ),
        ("/generate", {"text": "x", "return_logprob": True}, "return_logprob"),
        (
            "/v1/completions",
            {"prompt": ["a", "b"], "bootstrap_host": "10.0.0.1", "bootstrap_room": 7},
            "bootstrap_room",
        ),
        ("/v1/completions", {"prompt": "x", "n": 0}, "n must be at least 1"),
    ],
)
async def test_what_the_emulator_cannot_do_is_a_clear_400(
    make_emulator: Factory, http: aiohttp.ClientSession, path: str, body: dict, needle: str
) -> None:
    app = await make_emulator()
    async with http.post(url(app, path), json=body) as r:
        got = await r.json()
    assert r.status == 400
    msg = got["message"] if path.startswith("/v1") else got["error"]["message"]
    assert needle in msg


@pytest.mark.parametrize("version", ["0.4.7", "0.5.23"])
async def test_unknown_paths_answer_json_404(
    make_emulator: Factory, http: aiohttp.ClientSession, version: str
) -> None:
    app = await make_emulator(sglang_version=version)
    async with http.get(url(app, "/no/such/path")) as r:
        got = await r.json()
    assert r.status == 404 and "/no/such/path" in got["error"]["message"]


async def test_current_introspection_routes(
    make_emulator: Factory, http: aiohttp.ClientSession
) -> None:
    app = await make_emulator(sglang_version="0.5.23", role="decode")
    for path in ("/model_info", "/server_info", "/v1/loads", "/get_model_info"):
        async with http.get(url(app, path)) as r:
            assert r.status == 200, path
            got = await r.json()
    async with http.get(url(app, "/server_info")) as r:
        assert (await r.json())["disaggregation_mode"] == "decode"
    assert got["model_path"]
