"""OTLP/HTTP logs export to the user's OpenTelemetry Collector, built by hand.

Why not the SDK's log exporter: ~50 us per record through ``logger.emit`` plus batch
export (../shared/notes/k8s-otel-slo.md section 5), and its Logs API is unstable.
Records are encoded as OTLP/JSON with msgspec and sent in batches from a bounded queue:
a full queue drops (counted) instead of growing; 429/502/503/504 are retried, never
sooner than ``Retry-After`` asks (seconds or HTTP-date), else after jittered exponential
backoff; every wait is capped, and a batch whose ``Retry-After`` exceeds the cap is dropped
(counted); other statuses are final (counted); a partial success is logged, never retried.
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import random
import re
import time
from collections import deque
from datetime import UTC
from email.utils import parsedate_to_datetime
from typing import Any

import aiohttp
import msgspec
import structlog

log = structlog.get_logger("otlp_export")

RETRYABLE = frozenset({429, 502, 503, 504})
BACKOFF_BASE_S = 0.5
# Longest wait between attempts: the sender is single-flight, so while it waits every other
# record sits in the bounded queue, which overflows (counted drops) if the wait runs long.
RETRY_CAP_S = 30.0
_DELAY_SECONDS = re.compile(r"[0-9]+(?:\.[0-9]+)?")
# OTLP SeverityNumber: INFO, WARN, ERROR.
SEVERITY = {"ok": (9, "INFO"), "warning": (13, "WARN"), "breach": (17, "ERROR"),
            "error": (17, "ERROR")}


def _any_value(v: Any) -> dict[str, Any]:
    if isinstance(v, bool):
        return {"boolValue": v}
    if isinstance(v, int):
        return {"intValue": str(v)}  # int64 travels as a string in OTLP/JSON
    if isinstance(v, float):
        return {"doubleValue": v}
    return {"stringValue": str(v)}


def _flatten(prefix: str, doc: Any, out: list[dict[str, Any]]) -> None:
    if isinstance(doc, dict):
        for k, v in doc.items():
            _flatten(f"{prefix}.{k}" if prefix else k, v, out)
    elif isinstance(doc, list):
        out.append({"key": prefix, "value": {"stringValue": msgspec.json.encode(doc).decode()}})
    elif doc is not None:
        out.append({"key": prefix, "value": _any_value(doc)})


def log_record(kind: str, record: msgspec.Struct, ts_unix_nano: int, status: str) -> dict:
    """One OTLP LogRecord: the contract document flattened into attributes."""
    attrs: list[dict[str, Any]] = [{"key": "event.kind", "value": {"stringValue": kind}}]
    _flatten("", msgspec.to_builtins(record), attrs)
    number, text = SEVERITY.get(status, (9, "INFO"))
    return {
        "timeUnixNano": str(ts_unix_nano),
        "observedTimeUnixNano": str(time.time_ns()),
        "severityNumber": number,
        "severityText": text,
        "body": {"stringValue": kind},
        "attributes": attrs,
    }


def export_request(records: list[dict], service_name: str, node: str) -> bytes:
    """An ExportLogsServiceRequest in OTLP/JSON."""
    resource = [{"key": "service.name", "value": {"stringValue": service_name}},
                {"key": "k8s.node.name", "value": {"stringValue": node}}]
    doc = {"resourceLogs": [{
        "resource": {"attributes": resource},
        "scopeLogs": [{"scope": {"name": "llm-slo"}, "logRecords": records}],
    }]}
    return msgspec.json.encode(doc)


def retry_after_s(value: str | None, now: float) -> float | None:
    """Seconds a Retry-After header asks to wait, or None when absent or unparseable.

    Both RFC 9110 forms are read: delta-seconds and an HTTP-date, where a date already past
    asks for 0. ``now`` is the Unix time of the response, a parameter so this stays pure.
    """
    if value is None:
        return None
    value = value.strip()
    # RFC 9110 allows whole seconds only; a fraction is still honoured because reading it as
    # garbage would fall back to backoff and could retry before the server wanted.
    if _DELAY_SECONDS.fullmatch(value):
        return float(value)
    try:
        when = parsedate_to_datetime(value)
    except ValueError:
        return None
    if when.tzinfo is None:  # "-0000" and asctime dates carry no zone; HTTP-dates are GMT
        when = when.replace(tzinfo=UTC)
    return max(0.0, when.timestamp() - now)


def retry_delay_s(attempt: int, retry_after: float | None, jitter: float,
                  cap: float = RETRY_CAP_S) -> float | None:
    """Seconds to wait after failed attempt ``attempt`` (0-based), or None to give up.

    ``jitter`` is a uniform draw from [0, 1) so agents that failed together spread out.
    Without Retry-After: exponential backoff times 0.8–1.2, at most ``cap``. With it, jitter
    only adds (up to 20 %) and the cap never cuts below the request, so the retry is never
    earlier than the server asked. A request above ``cap`` gives up on the batch rather
    than retrying early (ignoring the server) or waiting that long (stalling the queue
    behind one batch until it overflows); the caller counts that drop on its own counter.
    """
    if retry_after is None:
        # Clamping the exponent keeps 2.0 ** attempt from overflowing; the cap applies anyway.
        backoff = min(cap, BACKOFF_BASE_S * 2.0 ** min(attempt, 64))
        return min(cap, backoff * (0.8 + 0.4 * jitter))
    if retry_after > cap:
        return None
    return min(cap, retry_after * (1.0 + 0.2 * jitter))


class OtlpLogExporter:
    """Batches log records and POSTs them to ``<endpoint>`` (``…/v1/logs``)."""

    def __init__(self, endpoint: str, *, service_name: str = "llm-slo-agent", node: str = "",
                 max_queue: int = 10_000, max_batch: int = 512, flush_interval_s: float = 1.0,
                 max_retries: int = 5, timeout_s: float = 10.0, gzip_body: bool = True) -> None:
        self.endpoint = endpoint
        self.service_name = service_name
        self.node = node
        self.max_batch = max_batch
        self.flush_interval_s = flush_interval_s
        self.max_retries = max_retries
        self.timeout_s = timeout_s
        self.gzip_body = gzip_body
        self._queue: deque[dict] = deque()
        self._max_queue = max_queue
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._session: aiohttp.ClientSession | None = None
        self.counters = {"exported": 0, "dropped_queue_full": 0, "dropped_rejected": 0,
                         "dropped_retries_exhausted": 0, "dropped_retry_after_over_cap": 0,
                         "retries": 0, "partial_rejected": 0}

    def submit(self, kind: str, record: msgspec.Struct, ts_unix_nano: int, status: str) -> None:
        """Queue one record; drops it (counted) when the queue is full."""
        if len(self._queue) >= self._max_queue:
            self.counters["dropped_queue_full"] += 1
            return
        self._queue.append(log_record(kind, record, ts_unix_nano, status))
        if len(self._queue) >= self.max_batch:
            self._wake.set()

    async def start(self) -> None:
        self._session = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=self.timeout_s))
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        """Flush what is queued (bounded by the retry policy), then close."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        while self._queue:
            await self._send_batch()
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def _run(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.flush_interval_s)
            self._wake.clear()
            while self._queue:
                await self._send_batch()

    async def _send_batch(self) -> None:
        batch = [self._queue.popleft() for _ in range(min(self.max_batch, len(self._queue)))]
        body = export_request(batch, self.service_name, self.node)
        headers = {"Content-Type": "application/json"}
        if self.gzip_body:
            body = gzip.compress(body, compresslevel=1)
            headers["Content-Encoding"] = "gzip"
        assert self._session is not None
        for attempt in range(self.max_retries + 1):
            retry_after: float | None = None
            try:
                async with self._session.post(self.endpoint, data=body, headers=headers) as r:
                    text = await r.read()
                    if r.status == 200:
                        self._note_partial(text)
                        self.counters["exported"] += len(batch)
                        return
                    if r.status not in RETRYABLE:
                        self.counters["dropped_rejected"] += len(batch)
                        log.error("collector rejected logs", status=r.status,
                                  body=text[:200].decode(errors="replace"))
                        return
                    retry_after = retry_after_s(r.headers.get("Retry-After"), time.time())
            except (aiohttp.ClientError, TimeoutError) as e:
                log.warning("collector unreachable", error=str(e), attempt=attempt)
            if attempt == self.max_retries:
                break
            delay = retry_delay_s(attempt, retry_after, random.random())
            if delay is None:
                # Its own counter: a collector shedding load for longer than the cap is a
                # different fix (scale it, or raise RETRY_CAP_S) than a collector that is down.
                self.counters["dropped_retry_after_over_cap"] += len(batch)
                log.error("logs dropped: Retry-After beyond cap", records=len(batch),
                          retry_after_s=retry_after, cap_s=RETRY_CAP_S)
                return
            self.counters["retries"] += 1
            await asyncio.sleep(delay)
        self.counters["dropped_retries_exhausted"] += len(batch)
        log.error("logs dropped after retries", records=len(batch))

    def _note_partial(self, body: bytes) -> None:
        with contextlib.suppress(msgspec.DecodeError, AttributeError, TypeError):
            doc = msgspec.json.decode(body) if body else {}
            partial = doc.get("partialSuccess") or {}
            rejected = int(partial.get("rejectedLogRecords", 0))
            if rejected or partial.get("errorMessage"):
                self.counters["partial_rejected"] += rejected
                log.warning("collector partial success", rejected=rejected,
                            message=partial.get("errorMessage", ""))
