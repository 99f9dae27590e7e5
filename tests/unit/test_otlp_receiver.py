"""Tests for llm_slo.otlp_decode and llm_slo.otlp_receiver: real SDK exports, hand-built
OTLP/JSON, size limits (declared, streamed, decompressed), bad input, and decoder fuzzing."""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import json
import math
import zlib
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import msgspec
import pytest
from google.rpc import status_pb2
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from opentelemetry.exporter.otlp.proto.http import Compression
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, Status, StatusCode

import llm_slo.otlp_receiver as receiver_mod
from llm_slo.otlp_decode import (
    OtlpDecodeError,
    UnsupportedMediaType,
    decode_traces,
    encode_partial_success,
)
from llm_slo.otlp_receiver import OtlpReceiver
from llm_slo.spans import Span, SpanEvent

PB = "application/x-protobuf"
JS = "application/json"
TRACE = "5b8efff798038103d269b633813fc60c"
SPAN = "eee19b7ec3c1b174"
FIRST_TOKEN_NS = 1_700_000_000_250_000_000


# --- helpers ------------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def running(**kwargs: Any) -> AsyncIterator[tuple[OtlpReceiver, list[Span]]]:
    got: list[Span] = []
    rx = OtlpReceiver(kwargs.pop("sink", got.extend), port=0, **kwargs)
    await rx.start()
    try:
        yield rx, got
    finally:
        await rx.stop()


async def post(port: int, body: bytes, ctype: str = JS, *, method: str = "POST",
               path: str = "/v1/traces", headers: dict[str, str] | None = None,
               ) -> tuple[int, str, bytes]:
    async with aiohttp.ClientSession() as session, session.request(
        method, f"http://127.0.0.1:{port}{path}", data=body,
        headers={"Content-Type": ctype, **(headers or {})},
    ) as resp:
        return resp.status, resp.headers.get("Content-Type", ""), await resp.read()


async def raw_exchange(port: int, data: bytes) -> tuple[int, bytes]:
    """Send raw bytes and read one response; return (status, body).

    Reads by Content-Length rather than to EOF: after a rejection the server may keep the
    connection open for a while to drain the body we never send.
    """
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(data)
        await writer.drain()
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
        length = next(int(line.split(b":", 1)[1]) for line in head.split(b"\r\n")
                      if line.lower().startswith(b"content-length:"))
        body = await asyncio.wait_for(reader.readexactly(length), 10)
    finally:
        writer.close()
    return int(head.split()[1]), body


def json_doc(trace_id: str = TRACE, span_id: str = SPAN, **span: Any) -> dict[str, Any]:
    """A hand-built OTLP/JSON request: int64 as strings, hex ids, enums as ints."""
    return {"resourceSpans": [{
        "resource": {"attributes": [{"key": "service.name", "value": {"stringValue": "chat"}}]},
        "scopeSpans": [{"scope": {"name": "hand"}, "spans": [{
            "traceId": trace_id, "spanId": span_id, "parentSpanId": "", "name": "chat gpt-4o",
            "kind": 3, "startTimeUnixNano": "1700000000000000000",
            "endTimeUnixNano": "1700000001000000000", "status": {"code": 2},
            "attributes": [
                {"key": "gen_ai.usage.output_tokens", "value": {"intValue": "128"}},
                {"key": "gen_ai.request.temperature", "value": {"doubleValue": 0.5}},
                {"key": "llm.slo.stream", "value": {"boolValue": True}},
                {"key": "stops", "value": {"arrayValue": {"values": [
                    {"stringValue": "END"}, {"intValue": "7"}]}}},
                {"key": "meta", "value": {"kvlistValue": {"values": [
                    {"key": "k", "value": {"stringValue": "v"}}]}}},
                {"key": "blob", "value": {"bytesValue": "AQID"}},
            ],
            "events": [{"timeUnixNano": str(FIRST_TOKEN_NS), "name": "gen_ai.first_token",
                        "attributes": [], "droppedAttributesCount": 0}],
            "someFutureField": {"ignored": True},
            **span,
        }]}],
    }]}


def body_of(doc: dict[str, Any]) -> bytes:
    return json.dumps(doc).encode()


async def assert_still_serves(rx: OtlpReceiver, got: list[Span]) -> None:
    before = len(got)
    status, _, _ = await post(rx.port, body_of(json_doc()))
    assert status == 200
    assert len(got) == before + 1


def run(coro: Any) -> Any:
    return asyncio.run(coro)


# --- real OTLP from the OpenTelemetry SDK -------------------------------------------------


def _export_with_sdk(port: int, compression: Compression) -> list[ReadableSpan]:
    """Create spans with the SDK, export them over OTLP/HTTP protobuf, return what was sent."""
    provider = TracerProvider(resource=Resource.create(
        {"service.name": "chat-api", "k8s.pod.name": "chat-0"}))
    memory = InMemorySpanExporter()
    provider.add_span_processor(SimpleSpanProcessor(memory))
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(
        endpoint=f"http://127.0.0.1:{port}/v1/traces", compression=compression, timeout=10)))
    tracer = provider.get_tracer("llm-slo-test")
    with tracer.start_as_current_span("chat gpt-4o", kind=SpanKind.CLIENT, attributes={
        "gen_ai.operation.name": "chat", "gen_ai.usage.output_tokens": 128,
        "gen_ai.request.temperature": 0.7, "llm.slo.stream": True,
        "gen_ai.request.stop_sequences": ["\n", "END"],
    }) as span:
        span.add_event("gen_ai.first_token", {"gen_ai.token.index": 0},
                       timestamp=FIRST_TOKEN_NS)
        with tracer.start_as_current_span("retrieval") as child:
            child.set_status(Status(StatusCode.ERROR, "backend down"))
    assert provider.force_flush(10_000)
    provider.shutdown()
    return list(memory.get_finished_spans())


def _expected(rs: ReadableSpan) -> Span:
    attrs = {k: json.dumps(list(v), separators=(",", ":")) if isinstance(v, tuple) else v
             for k, v in rs.attributes.items()}
    return Span(
        trace_id=f"{rs.context.trace_id:032x}", span_id=f"{rs.context.span_id:016x}",
        parent_span_id=f"{rs.parent.span_id:016x}" if rs.parent else "",
        name=rs.name, kind=rs.kind.value + 1,  # SDK enum is 0-based, OTLP's is 1-based
        start_unix_nano=rs.start_time, end_unix_nano=rs.end_time,
        status_code=rs.status.status_code.value, attributes=attrs,
        events=[SpanEvent(name=e.name, time_unix_nano=e.timestamp,
                          attributes=dict(e.attributes)) for e in rs.events],
        resource=dict(rs.resource.attributes),
    )


@pytest.mark.parametrize("compression", [Compression.NoCompression, Compression.Gzip,
                                         Compression.Deflate])
def test_sdk_export_round_trips(compression: Compression):
    async def main() -> None:
        async with running() as (rx, got):
            sent = await asyncio.to_thread(_export_with_sdk, rx.port, compression)
            assert len(sent) == 2
            assert sorted(got, key=lambda s: s.span_id) == sorted(
                map(_expected, sent), key=lambda s: s.span_id)
            chat = next(s for s in got if s.name == "chat gpt-4o")
            assert chat.service == "chat-api"
            assert chat.events[0].name == "gen_ai.first_token"
            assert chat.events[0].time_unix_nano == FIRST_TOKEN_NS
            assert chat.attributes["gen_ai.request.stop_sequences"] == '["\\n","END"]'
            assert rx.received_spans == 2
            assert rx.rejected_requests == {"too_large": 0, "unsupported_media_type": 0,
                                            "bad_request": 0}
    run(main())


# --- OTLP/JSON ----------------------------------------------------------------------------


@pytest.mark.parametrize("gzipped", [False, True])
def test_hand_built_json(gzipped: bool):
    async def main() -> None:
        async with running() as (rx, got):
            body = body_of(json_doc(trace_id=TRACE.upper()))
            headers = {"Content-Encoding": "gzip"} if gzipped else {}
            if gzipped:
                body = gzip.compress(body)
            status, ctype, reply = await post(rx.port, body, JS + "; charset=utf-8",
                                              headers=headers)
            assert (status, ctype, reply) == (200, JS, b"{}")
            assert got == [Span(
                trace_id=TRACE, span_id=SPAN, name="chat gpt-4o", kind=3,
                start_unix_nano=1_700_000_000_000_000_000,
                end_unix_nano=1_700_000_001_000_000_000, status_code=2,
                attributes={"gen_ai.usage.output_tokens": 128,
                            "gen_ai.request.temperature": 0.5, "llm.slo.stream": True,
                            "stops": '["END",7]', "meta": '{"k":"v"}', "blob": "010203"},
                events=[SpanEvent(name="gen_ai.first_token", time_unix_nano=FIRST_TOKEN_NS)],
                resource={"service.name": "chat"},
            )]
    run(main())


def test_protobuf_success_reply_is_empty_response():
    request = trace_service_pb2.ExportTraceServiceRequest()
    span = request.resource_spans.add().scope_spans.add().spans.add()
    span.trace_id, span.span_id, span.name = bytes.fromhex(TRACE), bytes.fromhex(SPAN), "x"

    async def main() -> None:
        async with running() as (rx, got):
            status, ctype, reply = await post(rx.port, request.SerializeToString(), PB)
            assert (status, ctype) == (200, PB)
            assert trace_service_pb2.ExportTraceServiceResponse.FromString(reply) == \
                trace_service_pb2.ExportTraceServiceResponse()
            assert got[0].kind == 1  # UNSPECIFIED is read as INTERNAL
    run(main())


# --- size limits --------------------------------------------------------------------------


def test_413_by_content_length_before_reading():
    async def main() -> None:
        async with running() as (rx, got):
            # headers only: a 100 MiB body is announced but never sent, so a 413 proves the
            # receiver judged the header, not the bytes
            status, body = await raw_exchange(rx.port, (
                "POST /v1/traces HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                f"Content-Length: {100 * 2**20}\r\n\r\n").encode())
            assert status == 413
            assert b"Content-Length" in body
            assert rx.rejected_requests["too_large"] == 1
            await assert_still_serves(rx, got)
    run(main())


def test_413_for_real_oversized_body_is_readable_by_client():
    async def main() -> None:
        async with running(max_body_bytes=1 << 20) as (rx, got):
            # 2 MiB actually sent: the reply must arrive, not a connection reset
            status, _, reply = await post(rx.port, b" " * (2 << 20))
            assert status == 413
            assert json.loads(reply)["code"] == 3
            await assert_still_serves(rx, got)
    run(main())


def test_413_while_streaming_chunked_body():
    async def main() -> None:
        async with running(max_body_bytes=64 * 1024) as (rx, got):
            chunk = b" " * 40_000
            frame = f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n"
            status, body = await raw_exchange(rx.port, (
                b"POST /v1/traces HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                b"Transfer-Encoding: chunked\r\n\r\n" + frame * 2))  # no terminating chunk
            assert status == 413
            assert b"body exceeds" in body
            await assert_still_serves(rx, got)
    run(main())


def test_413_gzip_bomb_by_decompressed_size():
    packer = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    block = bytes(1 << 20)
    bomb = b"".join(packer.compress(block) for _ in range(100)) + packer.flush()
    assert len(bomb) < 200_000  # 100 MiB of zeros, well under the 8 MiB wire limit

    async def main() -> None:
        async with running() as (rx, got):
            status, _, reply = await post(rx.port, bomb, headers={"Content-Encoding": "gzip"})
            assert status == 413
            assert "decompressed body exceeds" in json.loads(reply)["message"]
            assert rx.rejected_requests["too_large"] == 1
            await assert_still_serves(rx, got)
    run(main())


def test_inflater_never_materialises_more_than_its_limit():
    bomb = gzip.compress(bytes(10 << 20))
    inflater = receiver_mod._BoundedInflater("gzip", 1000)
    with pytest.raises(receiver_mod._TooLarge):
        inflater.feed(bomb)
    assert len(inflater.out) <= 1001


def test_concatenated_gzip_members_and_deflate():
    body = body_of(json_doc())
    multi = gzip.compress(body[:50]) + gzip.compress(body[50:])

    async def main() -> None:
        async with running() as (rx, got):
            assert (await post(rx.port, multi, headers={"Content-Encoding": "gzip"}))[0] == 200
            status, _, _ = await post(rx.port, zlib.compress(body),
                                      headers={"Content-Encoding": "deflate"})
            assert status == 200
            assert len(got) == 2
    run(main())


# --- bad requests ------------------------------------------------------------------------


def test_415_unknown_content_type_and_encoding():
    async def main() -> None:
        async with running() as (rx, got):
            status, ctype, reply = await post(rx.port, b"hello", "text/plain")
            assert (status, ctype) == (415, JS)
            assert "text/plain" in json.loads(reply)["message"]
            status, _, _ = await post(rx.port, b"{}", headers={"Content-Encoding": "br"})
            assert status == 415
            assert rx.rejected_requests["unsupported_media_type"] == 2
            await assert_still_serves(rx, got)
    run(main())


def test_400_garbage_protobuf_has_protobuf_status():
    async def main() -> None:
        async with running() as (rx, got):
            status, ctype, reply = await post(rx.port, b"\xff\xff\xff\xff", PB)
            assert (status, ctype) == (400, PB)
            error = status_pb2.Status.FromString(reply)
            assert error.code == 3
            assert "protobuf" in error.message
            await assert_still_serves(rx, got)
    run(main())


@pytest.mark.parametrize(("body", "reason"), [
    (b"{not json", "invalid JSON"),
    (body_of(json_doc(trace_id="W46Pt5gDgQPSabYzgT/GDA==")),
     "resourceSpans[0].scopeSpans[0].spans[0].traceId: expected 32 hex characters"),
    (body_of(json_doc(span_id="7uGbfsPBsXQ=")), "spans[0].spanId: expected 16 hex"),
    (body_of(json_doc(trace_id="0" * 32)), "spans[0].traceId: all-zero id"),
    (body_of(json_doc(trace_id="")), "spans[0].traceId: empty"),
    (body_of(json_doc(startTimeUnixNano="soon")), "spans[0].startTimeUnixNano: expected an int"),
    (body_of({"resourceSpans": {}}), "Expected `array`, got `object` - at `$.resourceSpans`"),
    (body_of(json_doc(attributes=[{"key": "k", "value": {"boolValue": "yes"}}])),
     "Expected `bool | null`, got `str` - at `$.resourceSpans[0].scopeSpans[0].spans[0]"
     ".attributes[0].value.boolValue`"),
    (body_of(json_doc(attributes=[{"key": "k", "value": {"arrayValue": {"values": [
        {"intValue": "1.5"}]}}}])),
     "spans[0].attributes[0].value.arrayValue.values[0].intValue: expected an integer"),
    (gzip.compress(b"{}")[:-6], "invalid gzip body"),
])
def test_400_with_reason(body: bytes, reason: str):
    async def main() -> None:
        async with running() as (rx, got):
            headers = {"Content-Encoding": "gzip"} if reason.startswith("invalid gzip") else {}
            status, ctype, reply = await post(rx.port, body, headers=headers)
            assert (status, ctype) == (400, JS)
            error = json.loads(reply)
            assert error["code"] == 3
            assert reason in error["message"]
            assert rx.rejected_requests["bad_request"] == 1
            await assert_still_serves(rx, got)
    run(main())


def test_stalled_or_vanished_sender_is_aborted_not_fatal():
    head = (b"POST /v1/traces HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: 100\r\n\r\n{")

    async def main() -> None:
        async with running(read_timeout=0.3) as (rx, got):
            status, body = await raw_exchange(rx.port, head)  # 99 bytes never come
            assert (status, b"not received within" in body) == (408, True)
            _, writer = await asyncio.open_connection("127.0.0.1", rx.port)
            writer.write(head)
            await writer.drain()
            writer.close()  # hang up mid-body
            for _ in range(100):
                if rx.aborted_requests == 2:
                    break
                await asyncio.sleep(0.01)
            assert rx.aborted_requests == 2
            await assert_still_serves(rx, got)
    run(main())


def test_unexpected_decoder_exception_is_a_counted_400(monkeypatch: pytest.MonkeyPatch):
    def broken(body: bytes, content_type: str) -> list[Span]:
        raise RuntimeError("bug")

    async def main() -> None:
        async with running() as (rx, got):
            monkeypatch.setattr(receiver_mod, "decode_traces", broken)
            status, _, reply = await post(rx.port, body_of(json_doc()))
            assert status == 400
            assert "RuntimeError" in json.loads(reply)["message"]
            assert (rx.unexpected_errors, rx.rejected_requests["bad_request"]) == (1, 1)
            monkeypatch.undo()
            await assert_still_serves(rx, got)
    run(main())


def test_failing_sink_gives_503():
    def sink(spans: list[Span]) -> None:
        raise ValueError("queue full")

    async def main() -> None:
        async with running(sink=sink) as (rx, _):
            status, _, _ = await post(rx.port, body_of(json_doc()))
            assert (status, rx.sink_errors, rx.received_spans) == (503, 1, 0)
    run(main())


def test_404_and_405():
    async def main() -> None:
        async with running() as (rx, got):
            assert (await post(rx.port, b"{}", path="/v1/metrics"))[0] == 404
            assert (await post(rx.port, b"", path="/", method="GET"))[0] == 404
            assert (await post(rx.port, b"", method="GET"))[0] == 405
            assert (await post(rx.port, b"{}", method="PUT"))[0] == 405
            await assert_still_serves(rx, got)
    run(main())


def test_port_before_start_and_stop_idempotent():
    rx = OtlpReceiver(lambda spans: None, port=0)
    with pytest.raises(RuntimeError):
        _ = rx.port

    async def main() -> None:
        await rx.start()
        assert rx.port > 0
        await rx.stop()
        await rx.stop()
    run(main())


# --- pure decoder -------------------------------------------------------------------------


def test_partial_success_encoding():
    assert encode_partial_success(0, "", JS) == b"{}"
    assert encode_partial_success(0, "", PB) == b""
    assert json.loads(encode_partial_success(2, "bad ids", JS)) == {
        "partialSuccess": {"rejectedSpans": "2", "errorMessage": "bad ids"}}
    reply = trace_service_pb2.ExportTraceServiceResponse.FromString(
        encode_partial_success(2, "bad ids", PB))
    assert (reply.partial_success.rejected_spans, reply.partial_success.error_message) == (
        2, "bad ids")


def test_deep_nesting_is_a_decode_error_with_a_bounded_reason():
    value: dict[str, Any] = {"stringValue": "x"}
    for _ in range(200):
        value = {"arrayValue": {"values": [value]}}
    doc = json_doc()
    doc["resourceSpans"][0]["scopeSpans"][0]["spans"][0]["attributes"] = [
        {"key": "deep", "value": value}]
    with pytest.raises(OtlpDecodeError, match=r"nested deeper than 64$") as info:
        decode_traces(body_of(doc), JS)
    assert info.value.reason.startswith("resourceSpans[0].scopeSpans[0].spans[0].attributes[0]")
    assert len(info.value.reason) < 500
    with pytest.raises(OtlpDecodeError, match="nested too deeply"):
        decode_traces(b'{"resourceSpans":[{"scopeSpans":[{"spans":[{"attributes":[{"value":'
                      + b'{"arrayValue":{"values":[' * 100_000, JS)


def test_unsupported_media_type_error():
    with pytest.raises(UnsupportedMediaType):
        decode_traces(b"", "text/plain")


def test_json_defaults_and_unknown_fields():
    """Absent fields take proto3 defaults; snake_case keys are unknown fields in OTLP/JSON."""
    doc = {"resourceSpans": [{"scopeSpans": [{"spans": [{
        "traceId": TRACE, "spanId": SPAN, "start_time_unix_nano": 5}]}]}]}
    [span] = decode_traces(body_of(doc), JS)
    assert (span.kind, span.start_unix_nano, span.resource, span.name) == (1, 0, {}, "")
    assert decode_traces(body_of({"resource_spans": [{}]}), JS) == []


_json_leaf = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False),
                       st.text(max_size=40))
_json_any = st.recursive(_json_leaf, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=12), inner, max_size=4)),
    max_leaves=12)


def _maybe(valid: Any) -> st.SearchStrategy[Any]:
    return st.one_of(st.just(valid), _json_any)


@st.composite
def _fuzzed_json(draw: st.DrawFn) -> bytes:
    """OTLP-shaped JSON where any field may be replaced by arbitrary JSON."""
    value = draw(st.sampled_from([
        {"stringValue": "x"}, {"intValue": "9223372036854775808"}, {"doubleValue": "NaN"},
        {"bytesValue": "!!"}, {"arrayValue": {"values": [{"kvlistValue": {"values": [{}]}}]}},
    ]) | _json_any)
    span = {"traceId": draw(_maybe(TRACE)), "spanId": draw(_maybe(SPAN)),
            "kind": draw(_maybe(2)), "startTimeUnixNano": draw(_maybe("1")),
            "attributes": draw(_maybe([{"key": "k", "value": value}])),
            "events": draw(_maybe([{"name": "e", "timeUnixNano": draw(_maybe("3"))}])),
            "status": draw(_maybe({"code": 2}))}
    doc = {"resourceSpans": [{"resource": draw(_maybe({"attributes": []})),
                              "scopeSpans": draw(_maybe([{"spans": draw(_maybe([span]))}]))}]}
    return json.dumps(doc).encode()


def _only_spans_or_decode_error(body: bytes, ctype: str) -> None:
    try:
        spans = decode_traces(body, ctype)
    except OtlpDecodeError as exc:
        assert exc.reason
        return
    assert all(isinstance(s, Span) for s in spans)
    msgspec.json.encode(spans)  # and what came out is a well-formed Struct list


_SAMPLE_PB = trace_service_pb2.ExportTraceServiceRequest()
_s = _SAMPLE_PB.resource_spans.add().scope_spans.add().spans.add()
_s.trace_id, _s.span_id, _s.name = bytes.fromhex(TRACE), bytes.fromhex(SPAN), "chat"
_s.attributes.add(key="k").value.array_value.values.add().kvlist_value.values.add(key="a")
_s.events.add(name="gen_ai.first_token", time_unix_nano=3)
_SAMPLE_PB_BYTES = _SAMPLE_PB.SerializeToString()


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(
    st.tuples(st.binary(max_size=300), st.sampled_from([PB, JS])),
    st.tuples(_fuzzed_json(), st.just(JS)),
    st.tuples(st.builds(lambda i, b, cut: (_SAMPLE_PB_BYTES[:i] + b + _SAMPLE_PB_BYTES[i:])[:cut],
                        st.integers(0, len(_SAMPLE_PB_BYTES)), st.binary(max_size=8),
                        st.integers(0, len(_SAMPLE_PB_BYTES) + 8)), st.just(PB)),
))
def test_decode_traces_only_returns_spans_or_raises_decode_error(case: tuple[bytes, str]):
    _only_spans_or_decode_error(*case)


_ids = st.integers(1, 2**128 - 1).map(lambda i: f"{i:032x}")
_attr_values = st.one_of(st.text(max_size=20), st.integers(-(2**63), 2**63 - 1),
                         st.booleans(), st.floats(allow_nan=False))


@settings(max_examples=100, deadline=None)
@given(trace=_ids, span=st.integers(1, 2**64 - 1).map(lambda i: f"{i:016x}"),
       kind=st.integers(1, 5), status=st.integers(0, 2),
       times=st.tuples(st.integers(0, 2**64 - 1), st.integers(0, 2**64 - 1)),
       attrs=st.dictionaries(st.text(max_size=10), _attr_values, max_size=5))
def test_protobuf_and_json_decode_agree(trace: str, span: str, kind: int, status: int,
                                        times: tuple[int, int], attrs: dict[str, Any]):
    """The same span sent as protobuf and as OTLP/JSON decodes to the same Struct."""
    request = trace_service_pb2.ExportTraceServiceRequest()
    pb = request.resource_spans.add().scope_spans.add().spans.add(
        trace_id=bytes.fromhex(trace), span_id=bytes.fromhex(span), name="s", kind=kind,
        start_time_unix_nano=times[0], end_time_unix_nano=times[1])
    pb.status.code = status
    json_attrs = []
    for key, value in attrs.items():
        kv = pb.attributes.add(key=key)
        field = {bool: "bool_value", int: "int_value", float: "double_value",
                 str: "string_value"}[type(value)]
        setattr(kv.value, field, value)
        camel = {"bool_value": "boolValue", "int_value": "intValue",
                 "double_value": "doubleValue", "string_value": "stringValue"}[field]
        if isinstance(value, float) and math.isinf(value):  # proto3 JSON spells these out
            value = "Infinity" if value > 0 else "-Infinity"
        elif isinstance(value, int) and not isinstance(value, bool):
            value = str(value)  # int64 as a string, as OTLP/JSON exporters send it
        json_attrs.append({"key": key, "value": {camel: value}})
    doc = {"resourceSpans": [{"scopeSpans": [{"spans": [{
        "traceId": trace, "spanId": span, "name": "s", "kind": kind,
        "startTimeUnixNano": str(times[0]), "endTimeUnixNano": times[1],
        "status": {"code": status}, "attributes": json_attrs}]}]}]}
    expected = [Span(trace_id=trace, span_id=span, name="s", kind=kind,
                     start_unix_nano=times[0], end_unix_nano=times[1], status_code=status,
                     attributes=attrs)]
    assert decode_traces(request.SerializeToString(), PB) == expected
    assert decode_traces(json.dumps(doc, allow_nan=False).encode(), JS) == expected


@pytest.mark.parametrize(("trace", "span", "parent", "reason"), [
    ("ab" * 15, SPAN, "", "spans[0].traceId: expected 32 hex characters (16 bytes)"),
    ("00" * 16, SPAN, "", "spans[0].traceId: all-zero id"),
    ("", SPAN, "", "spans[0].traceId: empty"),
    (TRACE, "00" * 8, "", "spans[0].spanId: all-zero id"),
    (TRACE, SPAN, "ab" * 7, "spans[0].parentSpanId: expected 16 hex characters"),
    (TRACE, SPAN, "00" * 8, None),  # an all-zero parent: a root span, leniently
    (TRACE, SPAN, "", None),
])
def test_protobuf_and_json_judge_ids_alike(trace: str, span: str, parent: str,
                                           reason: str | None):
    """Protobuf ids are checked as bytes (their hex is lowercase by construction), JSON
    ids as text: the same id is accepted or refused for the same reason either way."""
    request = trace_service_pb2.ExportTraceServiceRequest()
    request.resource_spans.add().scope_spans.add().spans.add(
        trace_id=bytes.fromhex(trace), span_id=bytes.fromhex(span),
        parent_span_id=bytes.fromhex(parent), name="s")
    doc = {"resourceSpans": [{"scopeSpans": [{"spans": [{
        "traceId": trace, "spanId": span, "parentSpanId": parent, "name": "s"}]}]}]}
    for body, ctype in ((request.SerializeToString(), PB), (json.dumps(doc).encode(), JS)):
        if reason is None:
            assert decode_traces(body, ctype)[0].parent_span_id == ""
        else:
            with pytest.raises(OtlpDecodeError) as err:
                decode_traces(body, ctype)
            assert reason in err.value.reason, (ctype, err.value.reason)
