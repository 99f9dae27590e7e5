"""The agent shell explains a breach when its span arrives, not at the next poll interval;
a healthy span, or a breach its cooldown holds back, does not wake it. And what it
records of the spans (``outputs.spans``) replays to the same SLO events.

The probes are replaced by a recorder (no BPF here: the kernel tests run the real ones);
spans go to the agent's real OTLP receiver over HTTP.
"""

from __future__ import annotations

import asyncio
import json
import socket
import time
from pathlib import Path
from typing import Any

import aiohttp
import msgspec

from llm_slo.agent import Agent
from llm_slo.config import AgentConfig
from llm_slo.engine import EngineConfig
from llm_slo.replay import replay

INTERVAL_S = 5.0  # far longer than the test waits for an attribution


class RecordingProbes:
    """Stands in for ProbeSet: no records, but every poll is remembered."""

    def __init__(self) -> None:
        self.probes: dict[str, Any] = {"dns_latency_ms": None}
        self.failures: dict[str, str] = {}
        self.polls: list[float] = []

    def open(self) -> None:
        pass

    def poll(self, now_ns: int) -> list[Any]:
        self.polls.append(time.monotonic())
        return []

    def run_stats(self) -> dict[str, Any]:
        return {}

    def counters(self) -> dict[str, Any]:
        return {}

    def close(self) -> None:
        pass


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _request(span_id: str, ttft_ms: float) -> dict[str, Any]:
    end = time.time_ns()
    attrs = [{"key": "gen_ai.operation.name", "value": {"stringValue": "chat"}},
             {"key": "llm.slo.ttft_ms", "value": {"doubleValue": ttft_ms}}]
    return {"resourceSpans": [{
        "resource": {"attributes": [{"key": "service.name", "value": {"stringValue": "rag"}}]},
        "scopeSpans": [{"spans": [{
            "traceId": "ab" * 16, "spanId": span_id, "name": "chat", "kind": 2,
            "startTimeUnixNano": str(end - int(ttft_ms * 1e6) - 1_000_000),
            "endTimeUnixNano": str(end), "attributes": attrs}]}]}]}


def test_a_due_breach_polls_and_attributes_at_once_others_do_not(tmp_path: Path) -> None:
    port = _free_port()
    config = msgspec.convert({
        "interval_s": INTERVAL_S, "intake": {"listen": f"127.0.0.1:{port}"},
        "outputs": {"jsonl_dir": str(tmp_path)}}, AgentConfig)
    agent = Agent(config)
    probes = agent.probes = RecordingProbes()  # type: ignore[assignment]
    attributions = tmp_path / "attributions.jsonl"

    async def post(session: aiohttp.ClientSession, body: dict[str, Any]) -> None:
        async with session.post(f"http://127.0.0.1:{port}/v1/traces", json=body) as r:
            assert r.status == 200, await r.text()

    async def scenario() -> float:
        run = asyncio.create_task(agent.run())
        try:
            async with aiohttp.ClientSession() as session:
                for _ in range(100):  # until the receiver listens
                    try:
                        await post(session, _request("01" * 8, 40.0))  # healthy
                        break
                    except aiohttp.ClientConnectorError:
                        await asyncio.sleep(0.05)
                await asyncio.sleep(0.5)
                assert probes.polls == [], "a healthy span must not wake the agent"
                sent = time.monotonic()
                await post(session, _request("02" * 8, 2500.0))  # breaches 1000 ms
                while not (attributions.exists() and attributions.read_text()):
                    assert time.monotonic() - sent < 2.0, "breach not explained at once"
                    await asyncio.sleep(0.02)
                elapsed = time.monotonic() - sent
                # Another breach while that one's cooldown (30 s) holds: nothing to
                # explain, so no early poll.
                polls = len(probes.polls)
                await post(session, _request("03" * 8, 2600.0))
                await asyncio.sleep(0.5)
                assert len(probes.polls) == polls, "a breach in cooldown woke the agent"
                return elapsed
        finally:
            agent.stop()
            await run

    elapsed = asyncio.run(scenario())
    assert elapsed < 1.0 < INTERVAL_S
    atts = [json.loads(x) for x in attributions.read_text().splitlines()]
    assert {(a["service"], a["slo_impact"]["sli"]) for a in atts} >= {("rag", "ttft_ms")}


def test_recorded_spans_replay_to_the_same_slo_events(tmp_path: Path) -> None:
    """``outputs.spans``: every span the engine got is in spans.jsonl, and ``sloctl
    replay`` over it judges exactly the SLO events the live agent wrote."""
    port = _free_port()
    live = tmp_path / "live"
    config = msgspec.convert({
        "interval_s": INTERVAL_S, "intake": {"listen": f"127.0.0.1:{port}"},
        "outputs": {"jsonl_dir": str(live), "spans": True}}, AgentConfig)
    agent = Agent(config)
    agent.probes = RecordingProbes()  # type: ignore[assignment]

    async def scenario() -> None:
        run = asyncio.create_task(agent.run())
        try:
            async with aiohttp.ClientSession() as session:
                for i, ttft in enumerate((40.0, 2500.0, 60.0)):
                    for _ in range(100):  # until the receiver listens
                        try:
                            async with session.post(f"http://127.0.0.1:{port}/v1/traces",
                                                    json=_request(f"{i + 1:016x}", ttft)) as r:
                                assert r.status == 200, await r.text()
                            break
                        except aiohttp.ClientConnectorError:
                            await asyncio.sleep(0.05)
        finally:
            agent.stop()
            await run

    asyncio.run(scenario())
    assert len((live / "spans.jsonl").read_text().splitlines()) == 3
    signals = tmp_path / "signals.jsonl"
    signals.write_text("")
    replay(str(live / "spans.jsonl"), str(signals), str(tmp_path / "replayed"), EngineConfig())

    def judged(path: Path) -> list[tuple[str, str]]:
        return sorted((e["event_id"], e["status"])
                      for e in map(json.loads, path.read_text().splitlines()))

    live_events = judged(live / "slo-events.jsonl")
    assert "breach" in {status for _, status in live_events}
    assert judged(tmp_path / "replayed" / "slo-events.jsonl") == live_events
