"""OTLP/HTTP log export against a real local HTTP server: batching, retry, drops."""

from __future__ import annotations

import asyncio
import gzip
import json

from aiohttp import web

from llm_slo.otlp_export import OtlpLogExporter, retry_after_s
from llm_slo.slo_event import SloEvent


def _event(i: int) -> SloEvent:
    return SloEvent(event_id=f"e{i}", timestamp="2026-11-25T10:00:00Z", cluster="c",
                    namespace="ns", workload="rag", service="rag", request_id=f"r{i}",
                    sli_name="ttft_ms", sli_value=812.5, unit="ms", status="breach",
                    labels={"model": "m"})


async def _serve(statuses: list[tuple[int, dict[str, str]]], seen: list[dict]):
    async def handler(request: web.Request) -> web.Response:
        assert request.headers.get("Content-Encoding") == "gzip"
        body = await request.read()  # aiohttp may already have inflated it
        if body[:2] == b"\x1f\x8b":
            body = gzip.decompress(body)
        seen.append(json.loads(body))
        status, headers = statuses.pop(0) if statuses else (200, {})
        return web.json_response({}, status=status, headers=headers)

    app = web.Application()
    app.router.add_post("/v1/logs", handler)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    return runner, f"http://127.0.0.1:{port}/v1/logs"


def test_batches_are_valid_otlp_json_logs() -> None:
    """Records arrive as one ExportLogsServiceRequest with flattened contract fields."""
    seen: list[dict] = []

    async def main() -> OtlpLogExporter:
        runner, url = await _serve([], seen)
        exp = OtlpLogExporter(url, node="node-1", flush_interval_s=0.05)
        await exp.start()
        for i in range(3):
            exp.submit("slo_event", _event(i), 1_700_000_000_000_000_000 + i, "breach")
        await asyncio.sleep(0.3)
        await exp.stop()
        await runner.cleanup()
        return exp

    exp = asyncio.run(main())
    assert exp.counters["exported"] == 3
    records = [r for req in seen for rl in req["resourceLogs"] for sl in rl["scopeLogs"]
               for r in sl["logRecords"]]
    assert len(records) == 3
    attrs = {a["key"]: a["value"] for a in records[0]["attributes"]}
    assert attrs["event.kind"] == {"stringValue": "slo_event"}
    assert attrs["sli_value"] == {"doubleValue": 812.5}
    assert attrs["labels.model"] == {"stringValue": "m"}
    assert records[0]["severityText"] == "ERROR"
    assert records[0]["timeUnixNano"] == "1700000000000000000"


def test_retries_retryable_status_honouring_retry_after() -> None:
    """503 then 429 (Retry-After: 0) are retried; the batch is then exported once."""
    seen: list[dict] = []

    async def main() -> OtlpLogExporter:
        runner, url = await _serve([(503, {"Retry-After": "0"}), (429, {"Retry-After": "0"})],
                                   seen)
        exp = OtlpLogExporter(url, flush_interval_s=0.05)
        await exp.start()
        exp.submit("slo_event", _event(1), 1, "ok")
        await asyncio.sleep(0.5)
        await exp.stop()
        await runner.cleanup()
        return exp

    exp = asyncio.run(main())
    assert exp.counters["retries"] == 2 and exp.counters["exported"] == 1
    assert len(seen) == 3


def test_final_4xx_and_full_queue_are_counted_drops() -> None:
    """A 400 is final (no retry); records beyond the queue bound are dropped, counted."""
    seen: list[dict] = []

    async def main() -> OtlpLogExporter:
        runner, url = await _serve([(400, {})], seen)
        exp = OtlpLogExporter(url, max_queue=2, flush_interval_s=0.05)
        for i in range(5):
            exp.submit("slo_event", _event(i), 1, "ok")
        await exp.start()
        await asyncio.sleep(0.3)
        await exp.stop()
        await runner.cleanup()
        return exp

    exp = asyncio.run(main())
    assert exp.counters["dropped_queue_full"] == 3
    assert exp.counters["dropped_rejected"] == 2 and exp.counters["retries"] == 0


def test_unreachable_collector_exhausts_retries() -> None:
    """Nothing listening: bounded retries, then the batch is dropped and counted."""
    async def main() -> OtlpLogExporter:
        exp = OtlpLogExporter("http://127.0.0.1:9/v1/logs", max_retries=1, timeout_s=1)
        await exp.start()
        exp.submit("slo_event", _event(1), 1, "ok")
        await exp.stop()
        return exp

    exp = asyncio.run(main())
    assert exp.counters["dropped_retries_exhausted"] == 1


def test_retry_after_parsing() -> None:
    """Delta-seconds are honoured; anything else falls back."""
    assert retry_after_s("2", 0.5) == 2.0
    assert retry_after_s("Wed, 21 Oct 2015 07:28:00 GMT", 0.5) == 0.5
    assert retry_after_s(None, 0.25) == 0.25
