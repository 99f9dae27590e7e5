"""The lab RAG service and load generator against the real provider and vector DB emulators.

Everything runs on 127.0.0.1: the provider (HTTPS, SSE) and vector DB emulators, the RAG
service (reaching them as ``localhost``, i.e. through libc name resolution), and the
project's OTLP receiver as the span sink. The spans it receives must give the SLO
engine's samples (:func:`llm_slo.sli.slis_from_span`) that agree with what the load
generator measured as the client.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import msgspec
import pytest
from aiohttp import web

from llm_slo.engine import SloEngine
from llm_slo.lab.loadgen import (
    PROFILES,
    LoadProfile,
    PromptClass,
    plan,
    read_jsonl,
    run_load,
    write_jsonl,
)
from llm_slo.lab.processes import stop_process
from llm_slo.lab.provider import ProviderEmulator
from llm_slo.lab.rag_service import RagConfig, RagService
from llm_slo.lab.vectordb import VectorDbEmulator
from llm_slo.lab.workloads import wait_ready
from llm_slo.otlp_receiver import OtlpReceiver
from llm_slo.sli import SliSample, slis_from_span
from llm_slo.spans import (
    SPAN_KIND_CLIENT,
    SPAN_KIND_INTERNAL,
    SPAN_KIND_SERVER,
    STATUS_ERROR,
    Span,
)

PROVIDER_TTFT_MS = 80.0
RETRIEVAL_MS = 40.0
TOKENS_PER_S = 400.0
PROFILE = PROFILES["rag_mixed_20rps"]


class ReceiverThread:
    """The project's OtlpReceiver on its own event loop thread, collecting spans."""

    def __init__(self) -> None:
        self.spans: list[Span] = []
        self.rx = OtlpReceiver(self.spans.extend, port=0)
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)

    def __enter__(self) -> ReceiverThread:
        self.thread.start()
        try:
            asyncio.run_coroutine_threadsafe(self.rx.start(), self.loop).result(10)
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        with contextlib.suppress(Exception):
            asyncio.run_coroutine_threadsafe(self.rx.stop(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
        self.loop.close()

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.rx.port}/v1/traces"

    def by_request(self, request_ids: set[str], per_request: int = 3,
                   timeout_s: float = 10.0) -> dict[str, list[Span]]:
        """Spans grouped by ``llm.request.id``, once every id has ``per_request`` of them."""
        deadline = time.monotonic() + timeout_s
        while True:
            groups: dict[str, list[Span]] = {rid: [] for rid in request_ids}
            for span in list(self.spans):
                rid = str(span.attributes.get("llm.request.id", ""))
                if rid in groups:
                    groups[rid].append(span)
            if all(len(g) >= per_request for g in groups.values()) \
                    or time.monotonic() > deadline:
                return groups
            time.sleep(0.05)


class Lab(msgspec.Struct, kw_only=True):
    provider: ProviderEmulator
    vectordb: VectorDbEmulator
    receiver: ReceiverThread
    rag: RagService
    truth: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.rag.port}/chat"


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    truth = tmp_path_factory.mktemp("rag") / "truth.jsonl"
    # ExitStack: whatever started is stopped, in reverse order, also when a start fails.
    with contextlib.ExitStack() as stack:
        provider = stack.enter_context(ProviderEmulator(ttft_ms=PROVIDER_TTFT_MS,
                                                        tokens_per_s=TOKENS_PER_S))
        vectordb = stack.enter_context(VectorDbEmulator(latency_ms=RETRIEVAL_MS))
        receiver = stack.enter_context(ReceiverThread())
        rag = stack.enter_context(RagService(RagConfig(
            provider_url=f"https://localhost:{provider.port}",
            vectordb_url=f"http://localhost:{vectordb.port}", cafile=provider.cafile,
            otlp_endpoint=receiver.endpoint, pod="rag-7f9c", namespace="lab-ns",
            node="node-a", truth_path=str(truth))))
        yield Lab(provider=provider, vectordb=vectordb, receiver=receiver, rag=rag,
                  truth=truth)


def samples(spans: list[Span], name: str) -> list[SliSample]:
    return [s for span in spans for s in slis_from_span(span) if s.sli_name == name]


def one(spans: list[Span], kind: int, prefix: str) -> Span:
    found = [s for s in spans if s.kind == kind and s.name.startswith(prefix)]
    assert len(found) == 1, [(s.name, s.kind) for s in spans]
    return found[0]


def test_load_at_20rps_gives_the_engines_slis(lab: Lab) -> None:
    lookups_before = lab.rag.lookups
    run = asyncio.run(run_load(lab.url, PROFILE, 3.0, seed=7))
    assert len(run.results) == 60 and run.dropped == 0
    assert [r.error for r in run.results if not r.ok] == []
    assert all(r.tokens == r.max_tokens for r in run.results)
    # Resolved by name for every backend call: nothing cached.
    assert lab.rag.lookups - lookups_before == 2 * len(run.results)

    # Client TTFT = retrieval + provider TTFT + overheads (DNS, TCP, TLS, hops), and it
    # excludes the generation: token i leaves the provider i token gaps after the first.
    # (The overheads are the host's: on a slow 2-core VM the median TTFT measured 2x the
    # floor, so no fixed upper bound on them.)
    floor = PROVIDER_TTFT_MS + RETRIEVAL_MS
    # Per request, a late first token shortens what follows (CI saw 26 ms after TTFT for a
    # 37.5 ms generation), so the generation is checked on the median.
    assert all(r.ttft_ms is not None and floor <= r.ttft_ms < r.total_ms
               for r in run.results)
    after_first = sorted((r.total_ms - (r.ttft_ms or 0.0)) / ((r.tokens - 1) * 1000.0
                                                             / TOKENS_PER_S)
                         for r in run.results)
    assert after_first[len(after_first) // 2] >= 0.8, after_first

    assert lab.rag.force_flush()
    groups = lab.receiver.by_request({r.request_id for r in run.results}, 6)
    arrival = {id(s): i for i, s in enumerate(lab.receiver.spans)}
    for r in run.results:
        spans = groups[r.request_id]
        server = one(spans, SPAN_KIND_SERVER, "chat ")
        client = one(spans, SPAN_KIND_CLIENT, "chat ")
        retrieval = one(spans, SPAN_KIND_CLIENT, "retrieval ")
        first = one(spans, SPAN_KIND_INTERNAL, "first token ")
        assert len(spans) == 6  # and two lookups, below
        assert {s.trace_id for s in spans} == {server.trace_id}
        assert client.parent_span_id == retrieval.parent_span_id == first.parent_span_id \
            == server.span_id
        # The first-token span spans request start to first token, and leaves first.
        assert first.start_unix_nano == server.start_unix_nano
        assert first.end_unix_nano == server.events[0].time_unix_nano < server.end_unix_nano
        assert arrival[id(first)] < arrival[id(server)]
        assert server.name == client.name == "chat gpt-4o-mini"
        assert retrieval.name == "retrieval lab-docs"
        assert retrieval.attributes["gen_ai.operation.name"] == "retrieval"
        assert retrieval.attributes["gen_ai.data_source.id"] == "lab-docs"
        assert server.events[0].name == "gen_ai.first_token"
        assert client.attributes["gen_ai.provider.name"] == "openai"
        assert client.attributes["server.address"] == "localhost"
        assert client.attributes["server.port"] == lab.provider.port
        assert client.attributes["http.response.status_code"] == 200
        assert client.attributes["network.peer.address"] == "127.0.0.1"
        assert client.attributes["network.local.address"] == "127.0.0.1"
        assert server.attributes["gen_ai.usage.output_tokens"] == r.tokens
        assert client.attributes["gen_ai.usage.output_tokens"] == r.tokens

        # The same TTFT on the SERVER and first-token spans, close to the client's.
        ttft, again = sorted(samples(spans, "ttft_ms"), key=lambda s: s.span_id != first.span_id)
        assert (ttft.span_id, again.span_id) == (first.span_id, server.span_id)
        assert ttft.value == again.value
        assert abs(ttft.value - r.ttft_ms) <= 0.3 * r.ttft_ms
        (retr,) = samples(spans, "retrieval_latency_ms")
        assert retr.value >= RETRIEVAL_MS
        (perr,) = samples(spans, "provider_error_rate")
        assert perr.value == 0.0 and perr.span_id == client.span_id
        assert [s.value for s in samples(spans, "error_rate")] == [0.0, 0.0]
        assert len(samples(spans, "token_throughput_tps")) == 1
        assert (ttft.service, ttft.workload, ttft.cluster, ttft.namespace, ttft.pod,
                ttft.node, ttft.pid) == ("rag", "rag", "lab", "lab-ns", "rag-7f9c",
                                         "node-a", os.getpid())
        assert ttft.request_id == r.request_id

    # The truth log: per request, its two lookups (on resolver threads) and its two
    # connections, with the ports its client spans report.
    truth = [msgspec.json.decode(line) for line in lab.truth.read_bytes().splitlines()]
    for r in run.results:
        spans = groups[r.request_id]
        mine = [t for t in truth if t["trace_id"] == spans[0].trace_id]
        lookups = [t for t in mine if t["kind"] == "resolve"]
        assert sorted(t["host"] for t in lookups) == ["localhost", "localhost"]
        assert all(t["tid"] != threading.get_native_id() and t["start_ns"] <= t["end_ns"]
                   for t in lookups)
        conns = {t["lport"]: t for t in mine if t["kind"] == "conn"}
        clients = [s for s in spans if s.kind == SPAN_KIND_CLIENT]
        assert sorted(conns) == sorted(s.attributes["network.local.port"] for s in clients)
        for c in clients:
            t = conns[c.attributes["network.local.port"]]
            assert t["pport"] == c.attributes["network.peer.port"]
            assert c.start_unix_nano <= t["start_ns"] <= t["end_ns"] <= c.end_unix_nano
        # Each lookup is a span of the request, timed and threaded as it ran.
        server = one(spans, SPAN_KIND_SERVER, "chat ")
        resolves = [x for x in spans if x.name == "resolve localhost"]
        assert sorted((x.attributes["thread.id"], x.start_unix_nano, x.end_unix_nano)
                      for x in resolves) == sorted((t["tid"], t["start_ns"], t["end_ns"])
                                                   for t in lookups)
        assert {x.parent_span_id for x in resolves} == {server.span_id}
        # The loop's spans name the loop's thread; the SERVER span its own connection.
        (loop_tid,) = {x.attributes["thread.id"] for x in spans if x not in resolves}
        assert loop_tid not in {t["tid"] for t in lookups}
        assert server.attributes["network.local.port"] == lab.rag.port
        first = one(spans, SPAN_KIND_INTERNAL, "first token ")
        assert {k: v for k, v in first.attributes.items() if k.startswith("network.")} == {
            k: v for k, v in server.attributes.items() if k.startswith("network.")}

    # The engine counts one TTFT per request: the first-token span's, as it came first.
    engine = SloEngine()
    events = engine.add_spans(sorted((s for g in groups.values() for s in g),
                                     key=lambda s: arrival[id(s)]))
    ttft_events = [e for e in events if e.sli_name == "ttft_ms"]
    assert sorted(e.request_id for e in ttft_events) == sorted(r.request_id for r in run.results)
    firsts = {s.span_id for g in groups.values() for s in g
              if s.kind == SPAN_KIND_INTERNAL and s.name.startswith("first token ")}
    assert {e.labels["span_id"] for e in ttft_events} == firsts
    assert engine.counters["ttft_repeats"] == len(run.results)


@pytest.mark.parametrize(("mode", "client_status", "detail"),
                         [("throttle", 429, "429"), ("error", 502, "5xx")])
def test_provider_faults_give_error_spans(lab: Lab, mode: str, client_status: int,
                                          detail: str) -> None:
    lab.provider.mode = mode
    try:
        run = asyncio.run(run_load(lab.url, PROFILE, 0.5, seed=3))
    finally:
        lab.provider.mode = "ok"
    assert len(run.results) == 10
    assert {(r.status, r.error, r.ttft_ms) for r in run.results} == {
        (client_status, f"http_{client_status}", None)}

    assert lab.rag.force_flush()
    groups = lab.receiver.by_request({r.request_id for r in run.results}, 5)
    provider_status = 429 if mode == "throttle" else 503
    for spans in groups.values():
        server = one(spans, SPAN_KIND_SERVER, "chat ")
        client = one(spans, SPAN_KIND_CLIENT, "chat ")
        assert server.status_code == client.status_code == STATUS_ERROR
        assert server.attributes["error.type"] == client.attributes["error.type"] \
            == str(provider_status)
        assert client.attributes["http.response.status_code"] == provider_status
        if mode == "throttle":  # recorded, not retried
            assert client.attributes["http.response.header.retry-after"] == '["1"]'
        (perr,) = samples(spans, "provider_error_rate")
        assert (perr.value, perr.detail) == (1.0, detail)
        assert samples(spans, "ttft_ms") == []
        assert [s.value for s in samples(spans, "error_rate")] == [1.0, 1.0]
    # 10 requests, each failed at the provider once: no retries (and two lookups each).
    assert sum(len(g) for g in groups.values()) == 10 * (3 + 2)


def test_retrieval_failure_fails_the_request_before_the_provider(lab: Lab) -> None:
    requests_before = lab.provider.counters["requests"]
    lab.vectordb.error_rate = 1.0
    try:
        run = asyncio.run(run_load(lab.url, PROFILE, 0.2, seed=5))
    finally:
        lab.vectordb.error_rate = 0.0
    assert {(r.status, r.error) for r in run.results} == {(502, "http_502")}
    assert lab.provider.counters["requests"] == requests_before
    assert lab.rag.force_flush()
    for spans in lab.receiver.by_request({r.request_id for r in run.results}, 2).values():
        retrieval = one(spans, SPAN_KIND_CLIENT, "retrieval ")
        assert retrieval.status_code == STATUS_ERROR
        assert retrieval.attributes["error.type"] == "503"
        assert one(spans, SPAN_KIND_SERVER, "chat ").attributes["error.type"] == "503"
        assert samples(spans, "provider_error_rate") == []


def test_plan_is_seeded_fixed_rate_and_mixed() -> None:
    a, b = plan(PROFILE, 3.0, seed=11), plan(PROFILE, 3.0, seed=11)
    assert a == b and len(a) == 60
    assert plan(PROFILE, 3.0, seed=12) != a
    assert [p.offset_s for p in a] == [round(i / 20, 6) for i in range(60)]
    big = plan(PROFILE, 500.0, seed=1)  # 10 000 requests
    share = {c: sum(p.size == c for p in big) / len(big) for c in ("short", "medium", "long")}
    assert share == pytest.approx({"short": 0.6, "medium": 0.3, "long": 0.1}, abs=0.02)
    assert {(p.size, p.max_tokens) for p in big} == {("short", 16), ("medium", 48),
                                                    ("long", 128)}
    poisson = msgspec.structs.replace(PROFILE, arrival="poisson")
    pa = plan(poisson, 50.0, seed=4)
    assert pa == plan(poisson, 50.0, seed=4)
    assert len(pa) == pytest.approx(1000, rel=0.1)
    assert all(x.offset_s < y.offset_s for x, y in itertools.pairwise(pa))


def test_loadgen_bounds_in_flight_and_counts_drops() -> None:
    in_flight = peak = 0

    async def slow(request: web.Request) -> web.StreamResponse:
        nonlocal in_flight, peak
        in_flight += 1
        peak = max(peak, in_flight)
        try:
            await asyncio.sleep(0.3)
            resp = web.StreamResponse()
            resp.content_type = "text/event-stream"
            await resp.prepare(request)
            await resp.write(b'data: {"content": "x"}\n\ndata: [DONE]\n\n')
            await resp.write_eof()
            return resp
        finally:
            in_flight -= 1

    profile = LoadProfile(name="t", rate_rps=20.0, max_in_flight=2, mix=(
        PromptClass(name="short", weight=1.0, words=3, max_tokens=1),))

    async def main() -> list:
        app = web.Application()
        app.router.add_post("/chat", slow)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        try:
            site = web.TCPSite(runner, "127.0.0.1", 0)
            await site.start()
            port = runner.addresses[0][1]
            return (await run_load(f"http://127.0.0.1:{port}/chat", profile, 0.5, 1)).results
        finally:
            await runner.cleanup()

    results = asyncio.run(main())
    assert [r.seq for r in results] == list(range(10))
    dropped = [r for r in results if r.error == "dropped"]
    assert peak <= 2 and len(dropped) >= 5
    assert all(r.ok and r.tokens == 1 for r in results if r.error != "dropped")


def test_loadgen_cli_writes_jsonl(lab: Lab, tmp_path: Path) -> None:
    # A subprocess: main() configures logging globally, which must not leak into pytest.
    out = tmp_path / "results.jsonl"
    proc = subprocess.run([sys.executable, "-m", "llm_slo.lab.loadgen", "--url", lab.url,
                           "--profile", "rag_mixed_20rps", "--duration", "0.25", "--seed",
                           "9", "--out", str(out)], capture_output=True, text=True,
                          timeout=30, check=True)
    results = read_jsonl(out)
    assert [(r.seq, r.size, r.max_tokens) for r in results] == [
        (p.seq, p.size, p.max_tokens) for p in plan(PROFILE, 0.25, 9)]
    assert all(r.ok for r in results)
    summary = msgspec.json.decode(proc.stdout)
    assert summary["ok"] == summary["requests"] == 5
    write_jsonl(results, tmp_path / "copy.jsonl")
    assert read_jsonl(tmp_path / "copy.jsonl") == results
    # --rate keeps the profile's mix and spacing rule at another rate: 0.25 s at 40/s.
    proc = subprocess.run([sys.executable, "-m", "llm_slo.lab.loadgen", "--url", lab.url,
                           "--rate", "40", "--duration", "0.25", "--seed", "9", "--out",
                           str(out)], capture_output=True, text=True, timeout=30, check=True)
    fast = msgspec.structs.replace(PROFILE, rate_rps=40.0)
    assert [(r.seq, r.size) for r in read_jsonl(out)] == [
        (p.seq, p.size) for p in plan(fast, 0.25, 9)]
    assert len(read_jsonl(out)) == 10
    bad = subprocess.run([sys.executable, "-m", "llm_slo.lab.loadgen", "--url", lab.url,
                          "--rate", "0", "--duration", "1", "--out", str(out)],
                         capture_output=True, text=True, timeout=30)
    assert bad.returncode == 2 and "--rate: must be > 0" in bad.stderr


def test_subprocess_serves_and_flushes_spans_on_sigterm(lab: Lab) -> None:
    argv = [sys.executable, "-m", "llm_slo.lab.rag_service", "--host", "127.0.0.1",
            "--port", "0", "--provider-url", f"https://localhost:{lab.provider.port}",
            "--vectordb-url", f"http://localhost:{lab.vectordb.port}",
            "--cafile", lab.provider.cafile, "--otlp-endpoint", lab.receiver.endpoint,
            "--pod", "rag-sub", "--namespace", "lab", "--node", "node-b",
            "--max-seconds", "60"]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    try:
        port = wait_ready(proc, timeout=15.0)
        run = asyncio.run(run_load(f"http://127.0.0.1:{port}/chat", PROFILE, 0.1, seed=2))
        assert [r.ok for r in run.results] == [True, True]
        proc.send_signal(signal.SIGTERM)  # at once: the last spans are still batched
        assert proc.wait(15.0) == 0
    finally:
        stop_process(proc)
    groups = lab.receiver.by_request({r.request_id for r in run.results}, 6, timeout_s=2.0)
    for spans in groups.values():
        assert len(spans) == 6  # two of them lookups
        assert {s.resource["process.pid"] for s in spans} == {proc.pid}
        assert {s.resource["k8s.pod.name"] for s in spans} == {"rag-sub"}


def test_local_index_reads_are_per_request_and_the_file_goes_away(tmp_path) -> None:
    from llm_slo.lab.rag_service import LocalIndex
    path = tmp_path / "index.bin"
    idx = LocalIndex(str(path), 2, 64)
    assert path.stat().st_size == 2 << 20
    assert idx.rerank("req-1") == idx.rerank("req-1")  # the request id picks the pages
    assert idx.rerank("req-1") > 0
    idx.close()
    assert not path.exists()
