"""OTLP trace payloads (protobuf and OTLP/JSON) to :class:`~llm_slo.spans.Span` Structs.

Pure functions, no I/O, so the HTTP receiver, offline replay and tests share one decoder.

OTLP/JSON differs from plain proto3 JSON in ways a generic parser gets wrong: trace and span
ids are hex (not base64), enums are integers, and int64 values may arrive as strings. Every
rejection names the field and the span it came from
(``resourceSpans[0].scopeSpans[1].spans[7].traceId: ...``).

Attribute values are flattened to the scalar types a :class:`Span` holds: arrays and kvlists
become their JSON encoding (a string), bytes become lowercase hex, and an empty ``AnyValue``
(OTLP's "null") drops the attribute.
"""

from __future__ import annotations

import base64
import binascii
import math
import re
from collections.abc import Iterable
from typing import Any

import msgspec
from google.protobuf.message import DecodeError as _ProtobufDecodeError
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2
from opentelemetry.proto.common.v1 import common_pb2

from llm_slo.errors import LlmSloError
from llm_slo.spans import SPAN_KIND_INTERNAL, Attributes, Span, SpanEvent

PROTOBUF = "application/x-protobuf"
JSON = "application/json"
SUPPORTED_MEDIA_TYPES = frozenset({PROTOBUF, JSON})

#: Deeper AnyValue nesting than this is rejected: no real instrumentation nests that deep, and a
#: bound keeps the recursive flattening far away from Python's recursion limit.
MAX_VALUE_DEPTH = 64

_MAX_REASON = 400  # reasons go into logs and replies; an adversarial path must not bloat them
_U64_MAX = 2**64 - 1
_I64_MIN, _I64_MAX = -(2**63), 2**63 - 1
_INT_RE = re.compile(r"-?[0-9]+")
_HEX_HINT = " (OTLP/JSON ids are hex, not base64)"
_HEX_RE = re.compile(r"[0-9a-f]+")
_SPECIAL_DOUBLES = {"NaN": math.nan, "Infinity": math.inf, "-Infinity": -math.inf}


class OtlpDecodeError(LlmSloError):
    """An OTLP payload could not be decoded; ``reason`` names the field and span at fault."""

    def __init__(self, reason: str) -> None:
        if len(reason) > _MAX_REASON:  # deep paths: keep the start and the field at fault
            reason = f"{reason[:_MAX_REASON // 2]}...{reason[-_MAX_REASON // 2:]}"
        super().__init__(reason)
        self.reason = reason

    def within(self, prefix: str) -> OtlpDecodeError:
        """This error seen from the enclosing object: ``prefix`` is this object's path there.

        Reasons about the object itself start with ":" (``": expected an object"``), reasons
        about one of its fields with the field's name (``"traceId: ..."``).
        """
        if not prefix:
            return self
        sep = "" if self.reason.startswith(":") else "."
        return OtlpDecodeError(f"{prefix}{sep}{self.reason}")


class UnsupportedMediaType(OtlpDecodeError):
    """The content type is neither ``application/x-protobuf`` nor ``application/json``."""


def media_type(content_type: str) -> str:
    """``"Application/JSON; charset=utf-8"`` -> ``"application/json"``."""
    return content_type.split(";", 1)[0].strip().lower()


def decode_traces(body: bytes, content_type: str) -> list[Span]:
    """Decode an ``ExportTraceServiceRequest`` body into Spans, in payload order.

    Raises :class:`OtlpDecodeError` (never anything else, for any input bytes) when the body
    is malformed or a span has an empty/all-zero/wrong-length trace or span id; the whole
    request is rejected so the sender learns about it instead of losing spans silently.
    """
    kind = media_type(content_type)
    if kind == PROTOBUF:
        return _decode_protobuf(body)
    if kind == JSON:
        return _decode_json(body)
    raise UnsupportedMediaType(f"unsupported content type {content_type!r}")


# --- protobuf ---------------------------------------------------------------------------
# Error reasons are built relative to the object being decoded and prefixed with the
# container's path only on the way out (OtlpDecodeError.within): the happy path formats no
# path strings at all.


def _decode_protobuf(body: bytes) -> list[Span]:
    request = trace_service_pb2.ExportTraceServiceRequest()
    try:
        request.ParseFromString(body)
    except (_ProtobufDecodeError, RecursionError, ValueError) as exc:
        raise OtlpDecodeError(f"invalid protobuf ExportTraceServiceRequest: {exc}") from None
    spans: list[Span] = []
    at = [-1, -1, -1]  # resourceSpans, scopeSpans, spans index being decoded, for errors
    try:
        for at[0], rs in enumerate(request.resource_spans):
            at[1] = at[2] = -1
            resource = _pb_attributes(rs.resource.attributes, "resource.")
            for at[1], ss in enumerate(rs.scope_spans):
                at[2] = -1
                for at[2], sp in enumerate(ss.spans):
                    spans.append(Span(
                        trace_id=_pb_id(sp.trace_id, 16, "traceId"),
                        span_id=_pb_id(sp.span_id, 8, "spanId"),
                        parent_span_id=_pb_parent_id(sp.parent_span_id),
                        name=sp.name, kind=sp.kind or SPAN_KIND_INTERNAL,
                        start_unix_nano=sp.start_time_unix_nano,
                        end_unix_nano=sp.end_time_unix_nano, status_code=sp.status.code,
                        attributes=_pb_attributes(sp.attributes),
                        events=[
                            SpanEvent(name=ev.name, time_unix_nano=ev.time_unix_nano,
                                      attributes=_pb_attributes(ev.attributes, f"events[{i}]."))
                            for i, ev in enumerate(sp.events)
                        ],
                        resource=resource,  # shared by its spans: Spans are never mutated
                    ))
    except OtlpDecodeError as exc:
        raise exc.within(_span_path(at)) from None
    return spans


_PB_SCALARS = frozenset({"string_value", "int_value", "double_value", "bool_value"})


def _pb_attributes(kvs: Iterable[common_pb2.KeyValue], prefix: str = "") -> Attributes:
    out: Attributes = {}
    for i, kv in enumerate(kvs):
        v = kv.value
        which = v.WhichOneof("value")
        if which in _PB_SCALARS:  # nearly every attribute: no nesting, nothing to check
            out[kv.key] = getattr(v, which)
            continue
        try:
            value = _flatten(_pb_value(kv.value, 0))
        except OtlpDecodeError as exc:  # only depth errors: protobuf checked the types
            raise exc.within(f"{prefix}attributes[{i}].value") from None
        if value is not None:
            out[kv.key] = value
    return out


def _pb_value(v: common_pb2.AnyValue, depth: int) -> Any:
    if depth > MAX_VALUE_DEPTH:
        raise OtlpDecodeError(f": AnyValue nested deeper than {MAX_VALUE_DEPTH}")
    which = v.WhichOneof("value")
    if which == "bytes_value":
        return v.bytes_value.hex()
    if which == "array_value":
        return [_pb_value(x, depth + 1) for x in v.array_value.values]
    if which == "kvlist_value":
        return {kv.key: _pb_value(kv.value, depth + 1) for kv in v.kvlist_value.values}
    return None if which is None else getattr(v, which)


# --- OTLP/JSON --------------------------------------------------------------------------
# msgspec decodes straight into these typed mirrors of the OTLP messages: fast, unknown fields
# ignored, and a type error names its JSON path (``$.resourceSpans[0]...traceId``). What a
# JSON type cannot express (hex ids, int64-as-string, base64 bytes) is checked afterwards.
# Only lowerCamelCase keys are read, as OTLP/JSON requires (snake_case keys are "unknown").


class _JsonValues(msgspec.Struct):
    values: list[_JsonAnyValue] = []


class _JsonKeyValues(msgspec.Struct):
    values: list[_JsonKeyValue] = []


class _JsonAnyValue(msgspec.Struct, rename="camel"):
    string_value: str | None = None
    bool_value: bool | None = None
    int_value: int | str | None = None
    double_value: float | str | None = None
    array_value: _JsonValues | None = None
    kvlist_value: _JsonKeyValues | None = None
    bytes_value: str | None = None


class _JsonKeyValue(msgspec.Struct):
    key: str = ""
    value: _JsonAnyValue | None = None


class _JsonEvent(msgspec.Struct, rename="camel"):
    time_unix_nano: int | str = 0
    name: str = ""
    attributes: list[_JsonKeyValue] = []


class _JsonStatus(msgspec.Struct):
    code: int = 0


class _JsonSpan(msgspec.Struct, rename="camel"):
    trace_id: str = ""
    span_id: str = ""
    parent_span_id: str = ""
    name: str = ""
    kind: int = 0
    start_time_unix_nano: int | str = 0
    end_time_unix_nano: int | str = 0
    attributes: list[_JsonKeyValue] = []
    events: list[_JsonEvent] = []
    status: _JsonStatus | None = None


class _JsonResource(msgspec.Struct):
    attributes: list[_JsonKeyValue] = []


class _JsonScopeSpans(msgspec.Struct):
    spans: list[_JsonSpan] = []


class _JsonResourceSpans(msgspec.Struct, rename="camel"):
    resource: _JsonResource | None = None
    scope_spans: list[_JsonScopeSpans] = []


class _JsonRequest(msgspec.Struct, rename="camel"):
    resource_spans: list[_JsonResourceSpans] = []


_JSON_DECODER = msgspec.json.Decoder(_JsonRequest)


def _decode_json(body: bytes) -> list[Span]:
    try:
        request = _JSON_DECODER.decode(body)
    except msgspec.ValidationError as exc:
        raise OtlpDecodeError(f"invalid OTLP/JSON: {exc}") from None
    except msgspec.DecodeError as exc:
        raise OtlpDecodeError(f"invalid JSON: {exc}") from None
    except RecursionError:
        raise OtlpDecodeError("invalid JSON: nested too deeply") from None
    spans: list[Span] = []
    at = [-1, -1, -1]  # as in _decode_protobuf
    try:
        for at[0], rs in enumerate(request.resource_spans):
            at[1] = at[2] = -1
            resource = _json_attributes(rs.resource.attributes if rs.resource else [],
                                        "resource.")
            for at[1], ss in enumerate(rs.scope_spans):
                at[2] = -1
                for at[2], sp in enumerate(ss.spans):
                    spans.append(_json_span(sp, resource))
    except OtlpDecodeError as exc:
        raise exc.within(_span_path(at)) from None
    return spans


def _json_span(sp: _JsonSpan, resource: Attributes) -> Span:
    events = []
    for i, ev in enumerate(sp.events):
        try:
            events.append(SpanEvent(
                name=ev.name, time_unix_nano=_int(ev.time_unix_nano, "timeUnixNano", 0, _U64_MAX),
                attributes=_json_attributes(ev.attributes)))
        except OtlpDecodeError as exc:
            raise exc.within(f"events[{i}]") from None
    return Span(
        trace_id=_check_id(sp.trace_id, 32, "traceId", _HEX_HINT),
        span_id=_check_id(sp.span_id, 16, "spanId", _HEX_HINT),
        parent_span_id=_parent_id(sp.parent_span_id, _HEX_HINT),
        name=sp.name,
        kind=sp.kind or SPAN_KIND_INTERNAL,
        start_unix_nano=_int(sp.start_time_unix_nano, "startTimeUnixNano", 0, _U64_MAX),
        end_unix_nano=_int(sp.end_time_unix_nano, "endTimeUnixNano", 0, _U64_MAX),
        status_code=sp.status.code if sp.status else 0,
        attributes=_json_attributes(sp.attributes),
        events=events,
        resource=resource,
    )


def _json_attributes(kvs: list[_JsonKeyValue], prefix: str = "") -> Attributes:
    out: Attributes = {}
    for i, kv in enumerate(kvs):
        try:
            value = _flatten(_json_value(kv.value, 0))
        except OtlpDecodeError as exc:
            raise exc.within(f"{prefix}attributes[{i}].value") from None
        if value is not None:
            out[kv.key] = value
    return out


def _json_value(v: _JsonAnyValue | None, depth: int) -> Any:
    """An OTLP/JSON AnyValue as a native value (None for an empty AnyValue)."""
    if depth > MAX_VALUE_DEPTH:
        raise OtlpDecodeError(f": AnyValue nested deeper than {MAX_VALUE_DEPTH}")
    if v is None:
        return None
    if v.string_value is not None:
        return v.string_value
    if v.bool_value is not None:
        return v.bool_value
    if v.int_value is not None:
        return _int(v.int_value, "intValue", _I64_MIN, _I64_MAX)
    if v.double_value is not None:
        return _double(v.double_value, "doubleValue")
    if v.bytes_value is not None:
        return _base64(v.bytes_value, "bytesValue").hex()
    if v.array_value is not None:
        return [_json_nested(x, depth, f"arrayValue.values[{i}]")
                for i, x in enumerate(v.array_value.values)]
    if v.kvlist_value is not None:
        return {kv.key: _json_nested(kv.value, depth, f"kvlistValue.values[{i}].value")
                for i, kv in enumerate(v.kvlist_value.values)}
    return None


def _json_nested(v: _JsonAnyValue | None, depth: int, path: str) -> Any:
    try:
        return _json_value(v, depth + 1)
    except OtlpDecodeError as exc:
        raise exc.within(path) from None


def _span_path(at: list[int]) -> str:
    """``resourceSpans[0].scopeSpans[1].spans[7]``, down to the level being decoded."""
    names = ("resourceSpans", "scopeSpans", "spans")
    return ".".join(f"{name}[{i}]" for name, i in zip(names, at, strict=True) if i >= 0)


def _int(value: int | str, at: str, lo: int, hi: int) -> int:
    """An int64/uint64: a JSON number or (proto3 JSON) a decimal string."""
    # the length cap keeps int() away from CPython's 4300-digit conversion limit
    if isinstance(value, str) and len(value) <= 21 and _INT_RE.fullmatch(value):
        value = int(value)
    if not isinstance(value, int):
        raise OtlpDecodeError(f"{at}: expected an integer, got {value!r:.40}")
    if not lo <= value <= hi:
        raise OtlpDecodeError(f"{at}: integer {value} out of range [{lo}, {hi}]")
    return value


def _double(value: float | str, at: str) -> float:
    if isinstance(value, float):
        return value
    if isinstance(value, str):  # proto3 JSON: "NaN", "Infinity", "-Infinity" or a number
        if value in _SPECIAL_DOUBLES:
            return _SPECIAL_DOUBLES[value]
        try:
            return float(value)
        except ValueError:
            pass
    raise OtlpDecodeError(f"{at}: expected a number, got {value!r:.40}")


def _base64(text: str, at: str) -> bytes:
    # proto3 JSON accepts standard or URL-safe base64, with or without padding
    text = text.replace("-", "+").replace("_", "/")
    try:
        return base64.b64decode(text + "=" * (-len(text) % 4), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise OtlpDecodeError(f"{at}: invalid base64: {exc}") from None


# --- ids and value flattening -----------------------------------------------------------


def _check_id(hex_id: str, width: int, name: str, hint: str = "") -> str:
    """``hex_id`` lowercased, if it is ``width`` hex characters and not all zero."""
    if not hex_id:
        raise OtlpDecodeError(f"{name}: empty (ids are required)")
    low = hex_id.lower()
    if len(low) != width or not _HEX_RE.fullmatch(low):
        raise OtlpDecodeError(f"{name}: expected {width} hex characters ({width // 2} bytes), "
                              f"got {len(hex_id)} characters {hex_id[:48]!r}{hint}")
    if low.count("0") == width:
        raise OtlpDecodeError(f"{name}: all-zero id is invalid")
    return low


def _pb_id(raw: bytes, size: int, name: str) -> str:
    """A protobuf id: ``size`` bytes, not all zero, as lowercase hex (already so)."""
    if len(raw) != size or not any(raw):
        return _check_id(raw.hex(), 2 * size, name)  # raises, saying which
    return raw.hex()


def _pb_parent_id(raw: bytes) -> str:
    """Empty (and, leniently, all-zero) means a root span, as in :func:`_parent_id`."""
    if not any(raw) and len(raw) in (0, 8):
        return ""
    return _pb_id(raw, 8, "parentSpanId")


def _parent_id(hex_id: str, hint: str = "") -> str:
    """Parent ids are optional: empty (and, leniently, all-zero) both mean a root span."""
    if not hex_id or hex_id.count("0") == len(hex_id) == 16:
        return ""
    return _check_id(hex_id, 16, "parentSpanId", hint)


def _flatten(value: Any) -> str | int | float | bool | None:
    """Collapse a native AnyValue to a Span attribute: containers become a JSON string."""
    if isinstance(value, (list, dict)):
        return msgspec.json.encode(value).decode()
    return value


# --- responses --------------------------------------------------------------------------


def encode_partial_success(rejected: int, message: str, content_type: str) -> bytes:
    """An ``ExportTraceServiceResponse`` in the request's format.

    ``rejected == 0`` with an empty message is the plain success response (``{}`` or an empty
    protobuf); ``rejected == 0`` with a message is OTLP's "accepted, with a warning".
    """
    response = trace_service_pb2.ExportTraceServiceResponse()
    if rejected or message:
        response.partial_success.rejected_spans = rejected
        response.partial_success.error_message = message
    if media_type(content_type) == PROTOBUF:
        return response.SerializeToString()
    if not (rejected or message):
        return b"{}"
    # proto3 JSON writes int64 as a string
    return msgspec.json.encode(
        {"partialSuccess": {"rejectedSpans": str(rejected), "errorMessage": message}})

