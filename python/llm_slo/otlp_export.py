"""OTLP/HTTP logs export to the user's OpenTelemetry Collector, built by hand.

Why not the SDK's log exporter: ~50 us per record through ``logger.emit`` plus batch
export (../shared/notes/k8s-otel-slo.md section 5), and its Logs API is unstable.
Records are encoded as OTLP/JSON with msgspec and sent in batches from a bounded queue:
a full queue drops (counted) instead of growing; 429/502/503/504 are retried with
exponential backoff that honours ``Retry-After``; other 4xx are final (counted);
a partial success is logged, never retried.
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import random
import time
from collections import deque
from typing import Any

import aiohttp
import msgspec
import structlog

log = structlog.get_logger("otlp_export")

RETRYABLE = frozenset({429, 502, 503, 504})
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


def retry_after_s(value: str | None, fallback: float) -> float:
    """Seconds from a Retry-After header (delta-seconds form), else ``fallback``."""
    if value:
        with contextlib.suppress(ValueError):
            return max(0.0, float(value))
    return fallback


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
                         "dropped_retries_exhausted": 0, "retries": 0, "partial_rejected": 0}

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
        backoff = 0.5
        assert self._session is not None
        for attempt in range(self.max_retries + 1):
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
                    delay = retry_after_s(r.headers.get("Retry-After"), backoff)
            except (aiohttp.ClientError, TimeoutError) as e:
                delay = backoff
                log.warning("collector unreachable", error=str(e), attempt=attempt)
            if attempt == self.max_retries:
                break
            self.counters["retries"] += 1
            await asyncio.sleep(min(delay, 30.0) * (0.8 + 0.4 * random.random()))
            backoff = min(backoff * 2, 30.0)
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
