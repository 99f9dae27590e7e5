"""ProviderEmulator: real HTTPS clients see paced SSE streams, 429s, 5xxs and seeded rates."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import socket
import ssl
import statistics
import subprocess
import tempfile
import time
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from llm_slo.lab.naming import owner_alive
from llm_slo.lab.processes import stop_process
from llm_slo.lab.provider import (
    MAX_TOKENS_CAP,
    ProviderEmulator,
    count_prompt_tokens,
    parse_chat_request,
    provider_argv,
)
from llm_slo.lab.workloads import wait_ready

MESSAGES = [{"role": "system", "content": "Answer from the context."},
            {"role": "user", "content": "Why is my time to first token high?"}]


def chat_body(**overrides: Any) -> dict[str, Any]:
    return {"model": "lab-model", "messages": MESSAGES, **overrides}


@contextlib.asynccontextmanager
async def session_for(cafile: str) -> AsyncIterator[aiohttp.ClientSession]:
    ctx = ssl.create_default_context(cafile=cafile)
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=ctx),
                                     timeout=aiohttp.ClientTimeout(total=20)) as s:
        yield s


async def post(s: aiohttp.ClientSession, url: str, body: Any = None, *,
               raw: bytes | None = None) -> tuple[int, Mapping[str, str], Any]:
    data = raw if raw is not None else json.dumps(body).encode()
    async with s.post(url, data=data, headers={"Content-Type": "application/json"}) as r:
        return r.status, r.headers.copy(), await r.json(content_type=None)


async def stream(s: aiohttp.ClientSession, url: str, body: dict[str, Any]
                 ) -> tuple[float, list[tuple[float, str]]]:
    """POST a streaming request; return (t0, [(arrival time, SSE data payload)])."""
    t0 = time.monotonic()
    events: list[tuple[float, str]] = []
    async with s.post(url, json=body) as r:
        assert r.status == 200
        assert r.headers["Content-Type"].startswith("text/event-stream")
        async for line in r.content:  # aiohttp yields one line at a time, as it arrives
            text = line.decode().rstrip("\n")
            if text:
                assert text.startswith("data: "), text
                events.append((time.monotonic(), text[len("data: "):]))
    return t0, events


def run(coro: Any) -> Any:
    return asyncio.run(coro)


def test_stream_is_sse_paced_and_well_formed() -> None:
    with ProviderEmulator(ttft_ms=200, tokens_per_s=50) as p:
        async def go() -> tuple[float, list[tuple[float, str]]]:
            async with session_for(p.cafile) as s:
                return await stream(s, f"{p.url}/v1/chat/completions",
                                    chat_body(stream=True, max_tokens=20))
        t0, events = run(go())
    # after stop(), which lets the handler finish: it counts after its last write
    assert p.counters["streamed_tokens"] == 20 and p.counters["completed"] == 1
    assert events[-1][1] == "[DONE]"
    chunks = [json.loads(data) for _, data in events[:-1]]
    assert len(chunks) == 20
    ttft = events[0][0] - t0
    assert 0.14 <= ttft <= 0.26, ttft  # within 30 % of 200 ms
    total = events[-1][0] - t0
    expected = 0.2 + 19 / 50  # token i at ttft + i / tokens_per_s
    assert 0.7 * expected <= total <= 1.3 * expected, total
    gaps = [b[0] - a[0] for a, b in itertools.pairwise(events[:-1])]
    assert 0.014 <= statistics.median(gaps) <= 0.026  # 50 tokens/s: one every 20 ms
    assert len({c["id"] for c in chunks}) == 1 and chunks[0]["id"].startswith("chatcmpl-")
    for i, c in enumerate(chunks):
        assert c["object"] == "chat.completion.chunk" and c["model"] == "lab-model"
        assert isinstance(c["created"], int)
        choice = c["choices"][0]
        assert choice["index"] == 0 and choice["delta"]["content"]
        assert choice["finish_reason"] == ("stop" if i == 19 else None)
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"


def test_non_stream_completion_usage_and_timing() -> None:
    with ProviderEmulator(ttft_ms=50, tokens_per_s=100) as p:
        async def go() -> list[Any]:
            async with session_for(p.cafile) as s:
                url = f"{p.url}/v1/chat/completions"
                t0 = time.monotonic()
                first = await post(s, url, chat_body(max_tokens=11))
                elapsed = time.monotonic() - t0
                p.configure(ttft_ms=0, tokens_per_s=1_000_000)
                default = await post(s, url, chat_body(stream=False))
                capped = await post(s, url, chat_body(max_tokens=100_000))
                newer = await post(s, url, chat_body(max_completion_tokens=3))
                streamed = await stream(s, url, chat_body(stream=True, max_tokens=11,
                                                          stream_options={"include_usage": True}))
                return [first, elapsed, default, capped, newer, streamed]
        first, elapsed, default, capped, newer, (_, events) = run(go())
    status, headers, body = first
    assert status == 200 and headers["x-request-id"] == body["id"]
    assert 0.05 + 10 / 100 <= elapsed < 0.5
    assert body["object"] == "chat.completion" and body["model"] == "lab-model"
    msg = body["choices"][0]
    assert msg["message"]["role"] == "assistant" and msg["finish_reason"] == "stop"
    usage = body["usage"]
    assert usage["completion_tokens"] == 11
    assert usage["prompt_tokens"] == count_prompt_tokens(MESSAGES) > 0
    assert usage["total_tokens"] == usage["prompt_tokens"] + 11
    assert default[2]["usage"]["completion_tokens"] == 16
    assert capped[2]["usage"]["completion_tokens"] == MAX_TOKENS_CAP
    assert newer[2]["usage"]["completion_tokens"] == 3
    # the same prompt gets the same answer, streamed or not
    payloads = [json.loads(d) for _, d in events[:-1]]
    text = "".join(c["choices"][0]["delta"]["content"] for c in payloads if c["choices"])
    assert text == msg["message"]["content"]
    assert payloads[-1]["choices"] == [] and payloads[-1]["usage"] == usage


def test_throttle_mode_answers_429_with_retry_after() -> None:
    with ProviderEmulator(mode="throttle", retry_after_s=7) as p:
        async def go() -> tuple[Any, float, Any]:
            async with session_for(p.cafile) as s:
                t0 = time.monotonic()
                r = await post(s, f"{p.url}/v1/chat/completions", chat_body(stream=True))
                took = time.monotonic() - t0
                p.mode = "ok"  # direct attribute setter, takes effect on the next request
                return r, took, await post(s, f"{p.url}/v1/chat/completions", chat_body())
        (status, headers, body), took, after = run(go())
        assert p.counters["throttled"] == 1 and p.counters["requests"] == 2
    assert status == 429 and headers["Retry-After"] == "7"
    assert body["error"]["code"] == "rate_limit_exceeded" and body["error"]["message"]
    assert took < 0.1  # a throttle answers at once, not after ttft
    assert after[0] == 200


def test_error_mode_statuses() -> None:
    with ProviderEmulator(mode="error") as p:
        async def go() -> list[Any]:
            async with session_for(p.cafile) as s:
                url = f"{p.url}/v1/chat/completions"
                out = [await post(s, url, chat_body())]
                ctl = await post(s, f"{p.url}/control", {"error_status": 500})
                out.append(await post(s, url, chat_body(stream=True)))
                return [*out, ctl]
        first, second, ctl = run(go())
        assert p.counters["errors"] == 2
    assert first[0] == 503 and first[2]["error"]["type"] == "server_error"
    assert ctl[0] == 200 and ctl[2]["settings"]["error_status"] == 500
    assert second[0] == 500 and second[2]["error"]["type"] == "server_error"


def _statuses(p: ProviderEmulator, n: int) -> list[int]:
    async def go() -> list[int]:
        async with session_for(p.cafile) as s:
            return [(await post(s, f"{p.url}/v1/chat/completions",
                                chat_body(max_tokens=1)))[0] for _ in range(n)]
    return run(go())


def test_seeded_rates_hit_the_set_share_reproducibly() -> None:
    knobs = {"ttft_ms": 0, "throttle_rate": 0.2, "error_rate": 0.1, "seed": 42}
    with ProviderEmulator(**knobs) as p:
        first = _statuses(p, 200)
        assert p.counters["throttled"] == first.count(429)
        assert p.counters["errors"] == first.count(503)
        p.configure(seed=42)  # restarts the fault sequence
        again = _statuses(p, 200)
    with ProviderEmulator(**knobs) as q:
        other = _statuses(q, 200)
    assert abs(first.count(429) / 200 - 0.2) <= 0.07
    assert abs(first.count(503) / 200 - 0.1) <= 0.06
    assert set(first) == {200, 429, 503}
    assert first == again == other


def test_bad_requests_get_openai_style_400_in_every_mode() -> None:
    with ProviderEmulator(mode="throttle") as p:
        async def go() -> list[Any]:
            async with session_for(p.cafile) as s:
                url = f"{p.url}/v1/chat/completions"
                return [await post(s, url, raw=b"{not json"),
                        await post(s, url, {"model": "m"}),
                        await post(s, url, chat_body(messages=[])),
                        await post(s, url, chat_body(messages=[{"content": "no role"}])),
                        await post(s, url, {"messages": MESSAGES}),
                        await post(s, url, chat_body(max_tokens=0)),
                        await post(s, url, chat_body(max_tokens="8")),
                        await post(s, url, chat_body(stream="yes")),
                        await post(s, url, [1, 2])]
        results = run(go())
        assert p.counters["bad_requests"] == len(results) and p.counters["throttled"] == 0
    for status, _, body in results:
        assert status == 400
        assert body["error"]["type"] == "invalid_request_error" and body["error"]["message"]
    assert results[1][2]["error"]["param"] == "messages"
    assert results[4][2]["error"]["param"] == "model"


def test_control_validates_and_applies_atomically() -> None:
    with ProviderEmulator() as p:
        async def go() -> list[Any]:
            async with session_for(p.cafile) as s:
                url = f"{p.url}/control"
                bad = [await post(s, url, body) for body in (
                    {"mode": "throttle", "bogus": 1}, {"mode": "sleepy"},
                    {"error_rate": 1.5}, {"throttle_rate": -0.1}, {"error_status": 404},
                    {"tokens_per_s": 0}, {"ttft_ms": True}, {"retry_after_s": 1.5},
                    {"tls_delay_ms": -1}, {"tls_delay_ms": 600_001}, [1], None)]
                bad.append(await post(s, url, raw=b"nope"))
                good = await post(s, url, {"mode": "throttle", "ttft_ms": 250,
                                           "throttle_rate": 0.5, "retry_after_s": 3})
                async with s.get(url) as r:
                    got = await r.json()
                return [bad, good, got]
        bad, good, got = run(go())
        for status, _, body in bad:
            assert status == 400 and body["error"]["type"] == "invalid_request_error"
        assert "bogus" in bad[0][2]["error"]["message"]
        assert good[0] == 200 and good[2] == got
        assert got["settings"] == {"seed": 0, "mode": "throttle", "ttft_ms": 250.0,
                                   "tokens_per_s": 50.0, "throttle_rate": 0.5,
                                   "error_rate": 0.0, "error_status": 503, "retry_after_s": 3,
                                   "tls_delay_ms": 0.0}
        assert {"requests", "streamed_tokens", "throttled", "errors"} <= got["counters"].keys()
        # the same rules for the in-process setters
        for name, value in (("error_rate", 2), ("mode", "slow"), ("tokens_per_s", -1)):
            with pytest.raises(ValueError, match=name):
                setattr(p, name, value)
        with pytest.raises(ValueError, match="unknown setting"):
            p.configure(ttft_ms=1, nope=2)
        assert p.ttft_ms == 250.0 and p.mode == "throttle"


def test_concurrent_streams_overlap() -> None:
    with ProviderEmulator(ttft_ms=200, tokens_per_s=50) as p:
        async def go() -> float:
            async with session_for(p.cafile) as s:
                t0 = time.monotonic()
                results = await asyncio.gather(*(
                    stream(s, f"{p.url}/v1/chat/completions",
                           chat_body(stream=True, max_tokens=10)) for _ in range(10)))
                assert all(len(events) == 11 for _, events in results)
                return time.monotonic() - t0
        elapsed = run(go())
    assert elapsed < 0.9  # one stream takes 0.38 s; ten in series would take 3.8 s


def test_client_disconnect_mid_stream_is_counted() -> None:
    with ProviderEmulator(ttft_ms=0, tokens_per_s=100) as p:
        async def go() -> int:
            async with session_for(p.cafile) as s:
                async with s.post(f"{p.url}/v1/chat/completions",
                                  json=chat_body(stream=True, max_tokens=200)) as r:
                    await r.content.readline()
                for _ in range(100):  # the server notices on its next write
                    if p.counters["disconnects"]:
                        break
                    await asyncio.sleep(0.02)
                return (await post(s, f"{p.url}/v1/chat/completions", chat_body()))[0]
        assert run(go()) == 200
        assert p.counters["disconnects"] == 1 and p.counters["completed"] == 1


def test_certificate_names_and_trust() -> None:
    with ProviderEmulator() as p:
        cert_dir = Path(p.cafile).parent
        assert cert_dir.name.startswith("llm-slo-provider-") and owner_alive(cert_dir.name)
        ctx = ssl.create_default_context(cafile=p.cafile)
        for name in ("provider.lab", "localhost", "127.0.0.1"):
            with socket.create_connection(("127.0.0.1", p.port), 5) as raw, \
                    ctx.wrap_socket(raw, server_hostname=name) as tls:
                subject = dict(x[0] for x in tls.getpeercert()["subject"])
                assert subject["commonName"] == "provider.lab"
        with socket.create_connection(("127.0.0.1", p.port), 5) as raw, \
                pytest.raises(ssl.SSLCertVerificationError):
            ssl.create_default_context().wrap_socket(raw, server_hostname="provider.lab")
    assert not cert_dir.exists()


def test_async_lifecycle_on_the_callers_loop() -> None:
    async def go() -> tuple[int, int]:
        async with ProviderEmulator(ttft_ms=0) as p, session_for(p.cafile) as s:
            status = (await post(s, f"{p.url}/v1/chat/completions", chat_body()))[0]
            async with s.get(f"{p.url}/healthz") as r:
                return status, r.status
    assert run(go()) == (200, 200)
    assert parse_chat_request(chat_body(max_tokens=None)).max_tokens == 16


def test_subprocess_serves_and_terminates_cleanly() -> None:
    with tempfile.TemporaryDirectory(prefix="llm-slo-test-provider-") as cert_dir:
        argv = provider_argv("127.0.0.1", 0, cert_dir=cert_dir, max_s=60, ttft_ms=50,
                             mode="ok", seed=7)
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        try:
            port = wait_ready(proc, timeout=15)
            url = f"https://127.0.0.1:{port}"

            async def go() -> tuple[tuple[float, list[tuple[float, str]]], Any, Any]:
                async with session_for(str(Path(cert_dir) / "cert.pem")) as s:
                    streamed = await stream(s, f"{url}/v1/chat/completions",
                                            chat_body(stream=True, max_tokens=3))
                    throttled = await post(s, f"{url}/control", {"mode": "throttle"})
                    return streamed, throttled, await post(s, f"{url}/v1/chat/completions",
                                                           chat_body())
            (_, events), ctl, after = run(go())
            assert len(events) == 4 and events[-1][1] == "[DONE]"
            assert ctl[2]["settings"]["seed"] == 7 and ctl[2]["settings"]["ttft_ms"] == 50
            assert after[0] == 429
            proc.terminate()
            assert proc.wait(5) == 0
            assert b"provider_stopped" in proc.stderr.read()
        finally:
            stop_process(proc)
