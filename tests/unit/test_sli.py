"""SLIs from spans: every rule on hand-built spans, thresholds, and the SloEvent contract."""

from __future__ import annotations

import json
from datetime import datetime

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st
from jsonschema import Draft202012Validator

from llm_slo import contracts
from llm_slo.sli import (
    DEFAULT_THRESHOLDS,
    SLI_NAMES,
    SliSample,
    SliThresholds,
    Threshold,
    evaluate,
    rfc3339_utc,
    slis_from_span,
    to_slo_event,
)
from llm_slo.spans import (
    SPAN_KIND_CLIENT,
    SPAN_KIND_INTERNAL,
    SPAN_KIND_SERVER,
    STATUS_ERROR,
    STATUS_OK,
    Span,
    SpanEvent,
)

T0 = 1_767_225_600_000_000_000  # 2026-01-01T00:00:00Z
MS = 1_000_000
TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
SPAN = "00f067aa0ba902b7"
RESOURCE = {
    "service.name": "chat-api", "k8s.namespace.name": "llm", "k8s.deployment.name": "chat-api-v2",
    "k8s.cluster.name": "prod-eu", "k8s.pod.name": "chat-api-v2-abc", "k8s.node.name": "node-7",
    "process.pid": 4242,
}


def span(*, dur_ms: float = 1200, kind: int = SPAN_KIND_INTERNAL, name: str = "work",
         attrs: dict | None = None, events: list[SpanEvent] | None = None,
         status: int = STATUS_OK, resource: dict | None = None) -> Span:
    return Span(trace_id=TRACE, span_id=SPAN, name=name, kind=kind, start_unix_nano=T0,
                end_unix_nano=T0 + round(dur_ms * MS), status_code=status,
                attributes=attrs or {}, events=events or [],
                resource=RESOURCE if resource is None else resource)


def by_name(s: Span) -> dict[str, SliSample]:
    samples = slis_from_span(s)
    names = [x.sli_name for x in samples]
    assert len(names) == len(set(names)), "one sample per SLI per span"
    return {x.sli_name: x for x in samples}


CHAT = {"gen_ai.operation.name": "chat", "gen_ai.provider.name": "openai"}


class TestTtft:
    def test_attribute_wins(self):
        s = span(attrs={"llm.slo.ttft_ms": 420.5},
                 events=[SpanEvent(name="gen_ai.first_token", time_unix_nano=T0 + 90 * MS)])
        assert by_name(s)["ttft_ms"].value == 420.5

    def test_first_token_event_offset_from_start(self):
        """The earliest gen_ai.first_token event counts, not the 1200 ms duration."""
        s = span(events=[SpanEvent(name="gen_ai.content", time_unix_nano=T0 + 10 * MS),
                         SpanEvent(name="gen_ai.first_token", time_unix_nano=T0 + 700 * MS),
                         SpanEvent(name="gen_ai.first_token", time_unix_nano=T0 + 350 * MS)])
        got = by_name(s)["ttft_ms"]
        assert got.value == 350.0 and got.unit == "ms"

    def test_event_before_start_is_ignored(self):
        s = span(events=[SpanEvent(name="gen_ai.first_token", time_unix_nano=T0 - 5 * MS)])
        assert "ttft_ms" not in by_name(s)

    def test_time_to_first_chunk_in_seconds(self):
        s = span(attrs={"gen_ai.response.time_to_first_chunk": 0.25})
        assert by_name(s)["ttft_ms"].value == pytest.approx(250.0)

    def test_never_from_duration(self):
        """A long chat request without a first-token time has no TTFT at all."""
        s = span(dur_ms=30_000, kind=SPAN_KIND_SERVER, attrs=CHAT)
        got = by_name(s)
        assert "ttft_ms" not in got and got["request_latency_ms"].value == 30_000

    @pytest.mark.parametrize("bad", [-1, "nan", True, "soon"])
    def test_unusable_attribute_falls_through(self, bad):
        assert "ttft_ms" not in by_name(span(attrs={"llm.slo.ttft_ms": bad}))

    def test_numeric_string_accepted(self):
        """OTLP/JSON carries int64 as strings."""
        assert by_name(span(attrs={"llm.slo.ttft_ms": "600"}))["ttft_ms"].value == 600.0


class TestThroughput:
    def test_output_tokens_over_generation_time(self):
        """200 tokens, first token at 200 ms, end at 1200 ms: 200 / 1.0 s."""
        s = span(attrs={"gen_ai.usage.output_tokens": 200},
                 events=[SpanEvent(name="gen_ai.first_token", time_unix_nano=T0 + 200 * MS)])
        got = by_name(s)["token_throughput_tps"]
        assert got.value == pytest.approx(200.0) and got.unit == "tokens/s"

    def test_first_token_from_ttft_attribute(self):
        """TTFT 400 ms of a 1200 ms span leaves 0.8 s for 40 tokens: 50 tokens/s."""
        s = span(attrs={"llm.slo.ttft_ms": 400, "gen_ai.usage.output_tokens": "40"})
        assert by_name(s)["token_throughput_tps"].value == pytest.approx(50.0)

    def test_legacy_completion_tokens(self):
        s = span(attrs={"gen_ai.usage.completion_tokens": 10,
                        "gen_ai.response.time_to_first_chunk": 0.7})
        assert by_name(s)["token_throughput_tps"].value == pytest.approx(20.0)

    def test_explicit_tokens_per_sec(self):
        s = span(attrs={"llm.slo.tokens_per_sec": 33.5, "gen_ai.usage.output_tokens": 1})
        assert by_name(s)["token_throughput_tps"].value == 33.5

    @pytest.mark.parametrize("attrs", [
        {"gen_ai.usage.output_tokens": 200},  # no first-token time
        {"gen_ai.usage.output_tokens": 0, "llm.slo.ttft_ms": 100},  # nothing generated
        {"gen_ai.usage.output_tokens": 5, "llm.slo.ttft_ms": 1200},  # zero generation time
        {"gen_ai.usage.output_tokens": 5, "llm.slo.ttft_ms": 1500},  # first token after end
    ])
    def test_unknown_without_both(self, attrs):
        assert "token_throughput_tps" not in by_name(span(attrs=attrs))


class TestRequestAndErrors:
    @pytest.mark.parametrize(("kind", "attrs"), [
        (SPAN_KIND_SERVER, {}),
        (SPAN_KIND_CLIENT, {"gen_ai.operation.name": "chat"}),
        (SPAN_KIND_INTERNAL, {"gen_ai.operation.name": "text_completion"}),
        (SPAN_KIND_INTERNAL, {"gen_ai.operation.name": "generate_content"}),
    ])
    def test_request_spans(self, kind, attrs):
        got = by_name(span(dur_ms=812.5, kind=kind, attrs=attrs))
        assert got["request_latency_ms"].value == 812.5
        assert got["error_rate"].value == 0.0 and got["error_rate"].unit == "ratio"

    @pytest.mark.parametrize("attrs", [{}, {"gen_ai.operation.name": "embeddings"},
                                       {"gen_ai.operation.name": "execute_tool"}])
    def test_not_request_spans(self, attrs):
        got = by_name(span(kind=SPAN_KIND_INTERNAL, attrs=attrs))
        assert "request_latency_ms" not in got and "error_rate" not in got

    def test_status_error(self):
        got = by_name(span(kind=SPAN_KIND_SERVER, status=STATUS_ERROR))["error_rate"]
        assert (got.value, got.detail) == (1.0, "")

    def test_error_type(self):
        got = by_name(span(kind=SPAN_KIND_SERVER, attrs={"error.type": "timeout"}))["error_rate"]
        assert (got.value, got.detail) == (1.0, "timeout")

    def test_end_before_start_has_no_latency(self):
        got = by_name(span(dur_ms=-5, kind=SPAN_KIND_SERVER))
        assert "request_latency_ms" not in got and "error_rate" in got


class TestProviderErrors:
    @pytest.mark.parametrize(("attrs", "value", "detail"), [
        ({"http.response.status_code": 429}, 1.0, "429"),
        ({"http.response.status_code": 500}, 1.0, "5xx"),
        ({"http.response.status_code": 503, "error.type": "503"}, 1.0, "5xx"),
        ({"http.status_code": "502"}, 1.0, "5xx"),
        ({"error.type": "429"}, 1.0, "429"),
        ({"http.response.status_code": 200}, 0.0, ""),
        ({"http.response.status_code": 400, "error.type": "400"}, 0.0, ""),
        ({"http.response.status_code": 499}, 0.0, ""),
        ({}, 0.0, ""),  # clean success without a status code
    ])
    def test_status_codes(self, attrs, value, detail):
        s = span(kind=SPAN_KIND_CLIENT, attrs={"gen_ai.system": "openai", **attrs})
        got = by_name(s)["provider_error_rate"]
        assert (got.value, got.detail, got.unit) == (value, detail, "ratio")

    def test_errored_without_status_code_is_skipped(self):
        s = span(kind=SPAN_KIND_CLIENT, status=STATUS_ERROR,
                 attrs={"gen_ai.provider.name": "anthropic", "error.type": "ConnectTimeout"})
        assert "provider_error_rate" not in by_name(s)

    @pytest.mark.parametrize(("kind", "attrs"), [
        (SPAN_KIND_SERVER, {"gen_ai.provider.name": "openai"}),
        (SPAN_KIND_CLIENT, {}),
        (SPAN_KIND_CLIENT, {"gen_ai.provider.name": ""}),
    ])
    def test_only_provider_client_spans(self, kind, attrs):
        s = span(kind=kind, attrs={"http.response.status_code": 503, **attrs})
        assert "provider_error_rate" not in by_name(s)


class TestRetrieval:
    @pytest.mark.parametrize(("name", "attrs"), [
        ("retrieval docs", {}),
        ("search", {"gen_ai.operation.name": "retrieval"}),
        ("query", {"db.system": "qdrant"}),
        ("query", {"db.system.name": "Pinecone"}),
    ])
    def test_retrieval_spans(self, name, attrs):
        got = by_name(span(dur_ms=95, kind=SPAN_KIND_CLIENT, name=name, attrs=attrs))
        assert got["retrieval_latency_ms"].value == 95.0

    @pytest.mark.parametrize("attrs", [{"db.system": "postgresql"}, {}])
    def test_other_spans(self, attrs):
        assert "retrieval_latency_ms" not in by_name(span(name="query", attrs=attrs))


class TestIdentity:
    def test_full_identity(self):
        s = span(kind=SPAN_KIND_SERVER, attrs={"llm.request.id": "req-1", **CHAT,
                                               "llm.slo.ttft_ms": 300})
        got = slis_from_span(s)
        # a SERVER span is not a provider CLIENT span, whatever its gen_ai.* attributes
        assert [x.sli_name for x in got] == ["ttft_ms", "request_latency_ms", "error_rate"]
        x = got[0]
        assert (x.service, x.namespace, x.workload, x.cluster) == (
            "chat-api", "llm", "chat-api-v2", "prod-eu")
        assert (x.request_id, x.trace_id, x.span_id) == ("req-1", TRACE, SPAN)
        assert (x.pod, x.node, x.pid) == ("chat-api-v2-abc", "node-7", 4242)
        assert x.ts_unix_nano == s.end_unix_nano

    def test_minimal_identity(self):
        """No k8s resource: workload is the service, request id the span id."""
        got = slis_from_span(span(kind=SPAN_KIND_SERVER, resource={"service.name": "svc"}))[0]
        assert (got.workload, got.cluster, got.namespace, got.request_id) == (
            "svc", "", "", SPAN)
        assert (got.pod, got.node, got.pid) == ("", "", 0)

    def test_span_attribute_pod_and_pid(self):
        s = span(kind=SPAN_KIND_SERVER, resource={"service.name": "svc"},
                 attrs={"k8s.pod.name": "p", "process.pid": "77"})
        got = slis_from_span(s)[0]
        assert (got.pod, got.pid) == ("p", 77)

    def test_inference_client_span_yields_all_its_slis(self):
        s = span(kind=SPAN_KIND_CLIENT, attrs={**CHAT, "gen_ai.usage.output_tokens": 100,
                                               "http.response.status_code": 200},
                 events=[SpanEvent(name="gen_ai.first_token", time_unix_nano=T0 + 200 * MS)])
        assert [x.sli_name for x in slis_from_span(s)] == [
            "ttft_ms", "token_throughput_tps", "request_latency_ms", "error_rate",
            "provider_error_rate"]


def sample(name: str, value: float, service: str = "chat-api") -> SliSample:
    return SliSample(service=service, namespace="llm", workload="w", cluster="c",
                     request_id="r", trace_id=TRACE, span_id=SPAN, sli_name=name, value=value,
                     unit="ms", ts_unix_nano=T0, start_unix_nano=T0)


class TestThresholds:
    @pytest.mark.parametrize(("name", "value", "status"), [
        ("ttft_ms", 499.9, "ok"), ("ttft_ms", 500, "warning"), ("ttft_ms", 999, "warning"),
        ("ttft_ms", 1000, "breach"), ("request_latency_ms", 700, "warning"),
        ("request_latency_ms", 1500, "breach"), ("request_latency_ms", 699, "ok"),
        ("token_throughput_tps", 36, "ok"), ("token_throughput_tps", 30, "warning"),
        ("token_throughput_tps", 11, "warning"), ("token_throughput_tps", 10, "breach"),
        ("token_throughput_tps", 0, "breach"), ("error_rate", 0.0, "ok"),
        ("error_rate", 0.03, "warning"), ("error_rate", 1.0, "breach"),
        ("provider_error_rate", 0.05, "breach"), ("provider_error_rate", 0.01, "ok"),
        ("retrieval_latency_ms", 299, "ok"), ("retrieval_latency_ms", 300, "warning"),
        ("retrieval_latency_ms", 800, "breach"),
    ])
    def test_defaults(self, name, value, status):
        assert evaluate(sample(name, value), SliThresholds()) == status

    def test_original_scenarios(self):
        """The original's dns_latency scenario: TTFT 820 warns, 1600 ms latency breaches."""
        th = SliThresholds()
        assert evaluate(sample("ttft_ms", 820), th) == "warning"
        assert evaluate(sample("request_latency_ms", 1600), th) == "breach"
        assert evaluate(sample("token_throughput_tps", 18), th) == "warning"

    def test_per_service_override(self):
        th = msgspec.convert({
            "defaults": {"ttft_ms": {"warning": 800, "breach": 2000}},
            "services": {"batch": {"ttft_ms": {"warning": 5000, "breach": 9000},
                                   "token_throughput_tps": {"warning": 5, "breach": 1,
                                                            "direction": "lower_is_worse"}}},
        }, SliThresholds)
        assert evaluate(sample("ttft_ms", 900), th) == "warning"
        assert evaluate(sample("ttft_ms", 900, "batch"), th) == "ok"
        assert evaluate(sample("token_throughput_tps", 8, "batch"), th) == "ok"
        assert evaluate(sample("token_throughput_tps", 8), th) == "breach"
        eff = th.thresholds_for("batch")
        assert set(eff) == set(SLI_NAMES)
        assert eff["request_latency_ms"] == DEFAULT_THRESHOLDS["request_latency_ms"]

    @pytest.mark.parametrize("doc", [
        {"warning": 10, "breach": 5},
        {"warning": 5, "breach": 10, "direction": "lower_is_worse"},
        {"warning": float("nan"), "breach": 10},
    ])
    def test_inconsistent_threshold_rejected(self, doc):
        with pytest.raises(msgspec.ValidationError):
            msgspec.convert(doc, Threshold)

    def test_unknown_sli_rejected(self):
        with pytest.raises(msgspec.ValidationError):
            msgspec.convert({"defaults": {"ttft": {"warning": 1, "breach": 2}}}, SliThresholds)

    @given(st.floats(0, 1e6), st.floats(0, 1e6), st.floats(-1e7, 1e7))
    def test_directions_mirror(self, a, b, v):
        """Lower-is-worse on v is higher-is-worse on -v."""
        lo, hi = min(a, b), max(a, b)
        up = Threshold(warning=lo, breach=hi)
        down = Threshold(warning=-lo, breach=-hi, direction="lower_is_worse")
        assert up.status(v) == down.status(-v)


VALIDATOR = Draft202012Validator(json.loads(contracts.render("v1/slo-event.schema.json")))


class TestSloEvent:
    def test_contract(self):
        s = span(kind=SPAN_KIND_CLIENT, attrs={**CHAT, "http.response.status_code": 429,
                                               "llm.request.id": "req-9"})
        samples = slis_from_span(s)
        assert samples
        for i, x in enumerate(samples):
            ev = to_slo_event(x, evaluate(x, SliThresholds()), event_id=f"ev-{i}")
            doc = json.loads(msgspec.json.encode(ev))
            VALIDATOR.validate(doc)
            assert doc["trace_id"] == TRACE and doc["request_id"] == "req-9"
            assert doc["labels"]["span_id"] == SPAN and doc["labels"]["pid"] == "4242"
        prov = to_slo_event(samples[-1], "breach", event_id="p")
        assert prov.labels is not None and prov.labels["detail"] == "429"
        assert (prov.sli_name, prov.sli_value, prov.unit) == ("provider_error_rate", 1.0,
                                                               "ratio")

    def test_minimal_labels_and_no_trace(self):
        x = msgspec.structs.replace(sample("ttft_ms", 1.0), trace_id="")
        ev = to_slo_event(x, "ok", event_id="e")
        assert ev.trace_id is None and ev.labels == {"span_id": SPAN}
        VALIDATOR.validate(json.loads(msgspec.json.encode(ev)))

    def test_timestamp_truncates_to_microseconds(self):
        assert rfc3339_utc(T0 + 123_456_789) == "2026-01-01T00:00:00.123456Z"
        assert rfc3339_utc(T0 + 999) == "2026-01-01T00:00:00.000000Z"
        assert rfc3339_utc(0) == "1970-01-01T00:00:00.000000Z"

    @given(st.integers(0, 2**63 - 1))
    def test_timestamp_round_trips_to_microseconds(self, ns):
        dt = datetime.fromisoformat(rfc3339_utc(ns))
        assert dt.utcoffset() is not None and dt.utcoffset().total_seconds() == 0
        epoch = datetime.fromisoformat("1970-01-01T00:00:00+00:00")
        delta = dt - epoch
        us = (delta.days * 86400 + delta.seconds) * 1_000_000 + delta.microseconds
        assert us == ns // 1000
