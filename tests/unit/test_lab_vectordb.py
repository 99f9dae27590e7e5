"""VectorDbEmulator: deterministic search results, switchable latency and errors over HTTP."""

from __future__ import annotations

import asyncio
import json
import subprocess
import time
from typing import Any

import aiohttp

from llm_slo.lab.processes import stop_process
from llm_slo.lab.vectordb import VectorDbEmulator, search_results, vectordb_argv
from llm_slo.lab.workloads import wait_ready


async def post(s: aiohttp.ClientSession, url: str, body: Any = None, *,
               raw: bytes | None = None) -> tuple[int, Any, float]:
    """POST JSON; return (status, decoded body, seconds taken)."""
    data = raw if raw is not None else json.dumps(body).encode()
    t0 = time.monotonic()
    async with s.post(url, data=data, headers={"Content-Type": "application/json"}) as r:
        got = await r.json(content_type=None)
    return r.status, got, time.monotonic() - t0


def searches(url: str, bodies: list[Any]) -> list[tuple[int, Any, float]]:
    """Run the searches in order over one keep-alive session."""
    async def go() -> list[tuple[int, Any, float]]:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as s:
            return [await post(s, f"{url}/search", b) for b in bodies]
    return asyncio.run(go())


def test_latency_is_switchable() -> None:
    with VectorDbEmulator() as db:
        fast = searches(db.url, [{"query": "q", "top_k": 3}] * 5)
        db.latency_ms = 100
        slow = searches(db.url, [{"query": "q", "top_k": 3}] * 5)
    assert all(status == 200 for status, _, _ in fast + slow)
    assert max(t for _, _, t in fast[1:]) < 0.05  # default 5 ms (first one connects)
    for _, _, took in slow:
        assert 0.07 <= took <= 0.13, took  # within 30 % of 100 ms


def test_jitter_stays_within_its_range() -> None:
    with VectorDbEmulator(latency_ms=20, jitter_ms=60, seed=3) as db:
        took = [t for _, _, t in searches(db.url, [{"query": "j"}] * 20)[1:]]
    assert min(took) >= 0.02 and max(took) <= 0.11
    assert max(took) - min(took) > 0.02  # it really varies


def test_results_are_deterministic_and_well_formed() -> None:
    with VectorDbEmulator(latency_ms=0) as db:
        out = searches(db.url, [{"query": "why is ttft high", "top_k": 50},
                                {"query": "why is ttft high", "top_k": 50},
                                {"query": "why is ttft high", "top_k": 4},
                                {"query": "dns failures", "top_k": 50},
                                {"query": "default k"}])
    full, again, four, other, default = (body["results"] for _, body, _ in out)
    assert full == again and four == full[:4]
    assert len(full) == 50 and len({r["id"] for r in full}) == 50
    assert [r["id"] for r in other] != [r["id"] for r in full]
    scores = [r["score"] for r in full]
    assert scores == sorted(scores, reverse=True) and scores[-1] > 0 and scores[0] < 1
    assert all(r["text"] and r["id"].startswith("doc-") for r in full)
    assert len(default) == 5
    # a pure function of the query: another process or server answers the same
    assert search_results("why is ttft high", 50) == full


def test_top_k_bounds_and_bad_requests() -> None:
    bodies: list[Any] = [{"query": "q", "top_k": k} for k in (0, 51, -1, "3", True, 2.5)]
    bodies += [{"top_k": 3}, {"query": 7}, [1]]
    with VectorDbEmulator(latency_ms=0) as db:
        ok = searches(db.url, [{"query": "q", "top_k": 1}, {"query": "q", "top_k": 50}])
        bad = searches(db.url, bodies)

        async def garbage() -> tuple[int, Any, float]:
            async with aiohttp.ClientSession() as s:
                return await post(s, f"{db.url}/search", raw=b"{")
        bad.append(asyncio.run(garbage()))
        assert db.counters["bad_requests"] == len(bad)
    assert [len(body["results"]) for _, body, _ in ok] == [1, 50]
    for status, body, _ in bad:
        assert status == 400 and body["error"]["type"] == "invalid_request_error"
    assert bad[0][1]["error"]["param"] == "top_k"


def test_error_rate_is_seeded_and_near_the_set_share() -> None:
    with VectorDbEmulator(latency_ms=0, error_rate=0.25, seed=11) as db:
        first = [s for s, _, _ in searches(db.url, [{"query": "e"}] * 200)]
        assert db.counters["errors"] == first.count(503)
        db.seed = 11
        again = [s for s, _, _ in searches(db.url, [{"query": "e"}] * 200)]
    assert abs(first.count(503) / 200 - 0.25) <= 0.08
    assert set(first) == {200, 503} and first == again


def test_control_endpoint() -> None:
    with VectorDbEmulator() as db:
        async def go() -> list[Any]:
            async with aiohttp.ClientSession() as s:
                url = f"{db.url}/control"
                bad = [await post(s, url, b) for b in (
                    {"latency_ms": -1}, {"jitter_ms": "5"}, {"error_rate": 2},
                    {"latency_ms": 50, "mode": "throttle"})]
                good = await post(s, url, {"latency_ms": 40, "jitter_ms": 2, "error_rate": 0.5})
                async with s.get(url) as r:
                    return [bad, good, await r.json()]
        bad, good, got = asyncio.run(go())
        assert db.latency_ms == 40.0 and db.error_rate == 0.5
    assert all(status == 400 for status, _, _ in bad)
    assert good[0] == 200 and good[1] == got
    assert got["settings"] == {"seed": 0, "latency_ms": 40.0, "jitter_ms": 2.0,
                               "error_rate": 0.5}
    assert got["counters"] == {"requests": 0, "completed": 0, "errors": 0, "bad_requests": 0}


def test_subprocess_serves_and_terminates_cleanly() -> None:
    proc = subprocess.Popen(vectordb_argv("127.0.0.1", 0, max_s=60, latency_ms=30),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        port = wait_ready(proc, timeout=15)
        (status, body, took), = searches(f"http://127.0.0.1:{port}",
                                         [{"query": "q", "top_k": 2}])
        assert status == 200 and body["results"] == search_results("q", 2)
        assert took >= 0.03
        proc.terminate()
        assert proc.wait(5) == 0
        assert b"vectordb_stopped" in proc.stderr.read()
    finally:
        stop_process(proc)
