"""OTLP/HTTP log export against a real local HTTP server: batching, retry, drops."""

from __future__ import annotations

import asyncio
import gzip
import json
import math
import time
from datetime import UTC, datetime
from email.utils import format_datetime

import pytest
from aiohttp import web
from hypothesis import given, settings
from hypothesis import strategies as st

from llm_slo.otlp_export import (
    RETRY_CAP_S,
    OtlpLogExporter,
    retry_after_s,
    retry_delay_s,
)
from llm_slo.slo_event import SloEvent


def _event(i: int) -> SloEvent:
    return SloEvent(event_id=f"e{i}", timestamp="2026-11-25T10:00:00Z", cluster="c",
                    namespace="ns", workload="rag", service="rag", request_id=f"r{i}",
                    sli_name="ttft_ms", sli_value=812.5, unit="ms", status="breach",
                    labels={"model": "m"})


async def _serve(statuses: list[tuple[int, dict[str, str]]], seen: list[dict],
                 arrivals: list[float] | None = None):
    async def handler(request: web.Request) -> web.Response:
        if arrivals is not None:
            arrivals.append(time.time())
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


def _export_one(statuses: list[tuple[int, dict[str, str]]], seen: list[dict],
                arrivals: list[float] | None = None) -> OtlpLogExporter:
    """One record through a fresh exporter; ``stop`` sends it, so no flush timing is involved."""
    async def main() -> OtlpLogExporter:
        runner, url = await _serve(statuses, seen, arrivals)
        exp = OtlpLogExporter(url)
        await exp.start()
        exp.submit("slo_event", _event(1), 1, "ok")
        await exp.stop()
        await runner.cleanup()
        return exp

    return asyncio.run(main())


@pytest.mark.parametrize("status", [429, 502, 503, 504])
def test_each_retryable_status_is_retried(status: int) -> None:
    """429, 502, 503 and 504 are each retried, and the retry exports the batch."""
    seen: list[dict] = []
    exp = _export_one([(status, {"Retry-After": "0"})], seen)
    assert len(seen) == 2
    assert exp.counters["retries"] == 1 and exp.counters["exported"] == 1
    assert exp.counters["dropped_rejected"] == 0


@pytest.mark.parametrize("status", [400, 404, 413, 500])
def test_non_retryable_status_is_dropped_and_counted(status: int) -> None:
    """Other statuses (500 too: OTLP only retries 429/502/503/504) are final, even with a
    Retry-After: one request, no retry, the batch counted as rejected."""
    seen: list[dict] = []
    exp = _export_one([(status, {"Retry-After": "0"})], seen)
    assert len(seen) == 1
    assert exp.counters["dropped_rejected"] == 1
    assert exp.counters["retries"] == 0 and exp.counters["exported"] == 0


def test_retry_waits_the_retry_after_seconds() -> None:
    """``Retry-After: 1`` holds the retry back at least 1 s, measured at the server."""
    seen: list[dict] = []
    arrivals: list[float] = []
    exp = _export_one([(503, {"Retry-After": "1"})], seen, arrivals)
    assert exp.counters["exported"] == 1 and len(arrivals) == 2
    assert arrivals[1] - arrivals[0] >= 1.0


def test_retry_waits_until_the_retry_after_date() -> None:
    """An HTTP-date Retry-After holds the retry back until that instant."""
    not_before = math.ceil(time.time()) + 1  # HTTP-dates have whole seconds
    header = format_datetime(datetime.fromtimestamp(not_before, UTC), usegmt=True)
    seen: list[dict] = []
    arrivals: list[float] = []
    exp = _export_one([(429, {"Retry-After": header})], seen, arrivals)
    assert exp.counters["exported"] == 1 and len(arrivals) == 2
    assert arrivals[1] >= not_before


def test_retry_after_beyond_cap_drops_the_batch_counted() -> None:
    """A server asking for more than the cap is not retried early: the batch is dropped."""
    seen: list[dict] = []
    exp = _export_one([(503, {"Retry-After": str(int(RETRY_CAP_S) + 1)})], seen)
    assert len(seen) == 1
    assert exp.counters["dropped_retry_after_over_cap"] == 1
    assert exp.counters["retries"] == 0 and exp.counters["exported"] == 0


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


RFC_DATE = "Wed, 21 Oct 2015 07:28:00 GMT"
RFC_DATE_TS = datetime(2015, 10, 21, 7, 28, tzinfo=UTC).timestamp()


def test_retry_after_parses_both_forms() -> None:
    """Delta-seconds and HTTP-date (relative to ``now``; a past date is 0); none is None."""
    assert retry_after_s("2", 0.0) == 2.0
    assert retry_after_s(" 7 ", 0.0) == 7.0
    assert retry_after_s("1.5", 0.0) == 1.5
    assert retry_after_s(RFC_DATE, RFC_DATE_TS - 5) == 5.0
    assert retry_after_s(RFC_DATE, RFC_DATE_TS + 60) == 0.0
    assert retry_after_s("Wed, 21 Oct 2015 07:28:00 -0000", RFC_DATE_TS - 3) == 3.0
    assert retry_after_s("Wednesday, 21-Oct-15 07:28:00 GMT", RFC_DATE_TS - 4) == 4.0
    assert retry_after_s(None, 0.0) is None


def test_retry_after_gives_a_delay_at_least_what_was_asked() -> None:
    """Exact delays: jitter only lengthens a Retry-After, up to 20 % and the cap."""
    for header, now in (("2", 0.0), (RFC_DATE, RFC_DATE_TS - 2)):
        asked = retry_after_s(header, now)
        assert retry_delay_s(0, asked, 0.0) == 2.0
        assert retry_delay_s(4, asked, 0.5) == pytest.approx(2.2)
        assert retry_delay_s(0, asked, 0.999) == pytest.approx(2.3996)
    assert retry_delay_s(0, 29.0, 0.9) == RETRY_CAP_S
    assert retry_delay_s(0, RETRY_CAP_S, 0.9) == RETRY_CAP_S
    assert retry_delay_s(0, RETRY_CAP_S + 1, 0.0) is None
    assert retry_delay_s(0, 0.0, 0.7) == 0.0


@pytest.mark.parametrize("header", ["soon", "-1", "nan", "inf", "1e3", "0x10", "1_0", "",
                                    "Wed, 32 Oct 2015 07:28:00 GMT", "Wed, 21 Oct 2015"])
def test_garbage_retry_after_falls_back_to_backoff(header: str) -> None:
    """An unparseable Retry-After is ignored: the delay is the jittered exponential backoff."""
    assert retry_after_s(header, RFC_DATE_TS) is None
    assert retry_delay_s(0, None, 0.5) == 0.5
    assert retry_delay_s(3, None, 0.0) == pytest.approx(3.2)
    assert retry_delay_s(3, None, 0.999) == pytest.approx(4.7984)
    assert retry_delay_s(10, None, 0.999) == RETRY_CAP_S


retry_after_values = st.none() | st.floats(0, 1e6) | st.integers(0, 10**9).map(float)


@settings(max_examples=500, deadline=None)
@given(attempt=st.integers(0, 10_000), retry_after=retry_after_values,
       jitter=st.floats(0, 1, exclude_max=True), cap=st.floats(0.01, 1e5))
def test_delay_never_below_retry_after_nor_above_cap(attempt: int, retry_after: float | None,
                                                    jitter: float, cap: float) -> None:
    """Retry-After within the cap: retry_after <= delay <= cap. Above it: give up (None).
    No Retry-After: 0 < delay <= cap."""
    delay = retry_delay_s(attempt, retry_after, jitter, cap)
    if retry_after is None:
        assert delay is not None and 0 < delay <= cap
    elif retry_after <= cap:
        assert delay is not None and retry_after <= delay <= cap
    else:
        assert delay is None


@settings(max_examples=300, deadline=None)
@given(when=st.datetimes(datetime(1990, 1, 1), datetime(2100, 1, 1), timezones=st.just(UTC)),
       now=st.floats(6e8, 4.2e9), attempt=st.integers(0, 20),
       jitter=st.floats(0, 1, exclude_max=True))
def test_http_date_delay_is_never_before_the_date(when: datetime, now: float, attempt: int,
                                                  jitter: float) -> None:
    """Any HTTP-date: the retry is not scheduled before it (or it is given up, over the cap)."""
    when = when.replace(microsecond=0)
    asked = retry_after_s(format_datetime(when, usegmt=True), now)
    assert asked == max(0.0, when.timestamp() - now)
    delay = retry_delay_s(attempt, asked, jitter)
    if asked > RETRY_CAP_S:
        assert delay is None
    else:
        assert delay is not None and delay >= asked


@settings(max_examples=300, deadline=None)
@given(st.text())
def test_retry_after_never_raises(header: str) -> None:
    """Whatever a server sends, parsing yields None or a non-negative number of seconds."""
    asked = retry_after_s(header, RFC_DATE_TS)
    assert asked is None or asked >= 0
