"""The lab's RAG application: retrieve, call the LLM provider, stream tokens back.

``POST /chat`` with ``{"prompt": str, "max_tokens": int}`` answers ``text/event-stream``:
one ``data: {"content": "<token>"}`` event per token as the provider produces it, then
``data: [DONE]``. A failure before the first token is a plain JSON error with an HTTP
status (429 when the provider throttled, 504 on a timeout, else 502); one after it is an
``event: error`` and the stream ends without ``[DONE]``.

Per request the service does, in order, everything a fault in the lab can touch:

1. resolves each backend **by name through libc** (``socket.getaddrinfo`` in a thread
   pool), every time: no cache, so DNS delay, SERVFAIL and drops are felt per request,
   and short names go through the resolv.conf search path as they would on Kubernetes;
2. opens a fresh connection to each backend (no keep-alive), so SYN drops, loss and a
   slow TLS handshake are felt per request too;
3. retrieves from the vector DB (CLIENT span ``retrieval <source>``);
4. calls the provider over verified TLS with a streaming request (CLIENT span
   ``chat <model>``); a 429 is recorded and not retried, as is a 5xx;
5. streams tokens to its client as they arrive.

The SERVER span ``chat <model>`` carries TTFT the way :mod:`llm_slo.sli` reads it: event
``gen_ai.first_token`` when the first token has been written to the client, and attribute
``llm.slo.ttft_ms`` from request start (DNS and retrieval included). So that a slow first
token is known before the answer has streamed (seconds later), an INTERNAL span ``first
token <model>`` from request start to that moment carries the same ``llm.slo.ttft_ms``;
the engine counts the first TTFT of a request id and drops the repeat. A provider-side
TTFT on the CLIENT span would be a different, smaller value for the same request, so
that span carries none. Each libc lookup is an INTERNAL span ``resolve <host>``, timed
as it ran on its pool thread. Every span names the thread it ran on (``thread.id``: the
lookups their pool thread, the rest the event loop's) and the others their connection
(``network.local.*``, ``network.peer.*``; the first-token span the SERVER span's), so
the agent's pod+pid join keeps each span to its own work. All spans of one request
share ``llm.request.id``.

With ``truth_path`` the service also writes what each request really did, for the lab's
scorer only (the agent never reads it): a ``resolve`` line per libc lookup (the thread
that ran it, the name, its wall-clock interval) and a ``conn`` line per backend call (the
connection's two addresses as its socket reports them, and the call's interval), each
with the request's trace id. Kernel events are joined to requests by these facts, so the
agent's span joins can be judged without trusting anything the agent computed.

Spans leave over OTLP/HTTP protobuf through a BatchSpanProcessor and are flushed on
shutdown. Run in-process (``with RagService(cfg) as rag: rag.port``, its own event loop in
a background thread) or as a subprocess that prints its port once listening::

    python -m llm_slo.lab.rag_service --port 0 --provider-url https://provider.lab:8443 \\
        --vectordb-url http://vectordb.lab:8080 --cafile ca.pem \\
        --otlp-endpoint http://10.0.0.1:4318/v1/traces --pod rag-0 --namespace lab --node n1
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import contextlib
import contextvars
import mmap
import os
import random
import signal
import socket
import ssl
import sys
import threading
import time
import uuid
from collections.abc import AsyncIterator
from types import TracebackType
from typing import Any, Self

import aiohttp
import msgspec
import structlog
from aiohttp import web
from aiohttp.abc import AbstractResolver, ResolveResult
from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.trace import Span, SpanKind, Status, StatusCode
from yarl import URL

log = structlog.get_logger("lab.rag")

#: Spans reach the agent within ~this long; short so a fault shows up in under a second.
SCHEDULE_DELAY_MS = 200
_MAX_ERROR_BODY = 4096  # bytes of a provider error body we keep for the log
_SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


class RagConfig(msgspec.Struct, frozen=True, kw_only=True):
    """Everything the service needs; the CLI flags map one to one.

    ``provider_url``/``vectordb_url`` keep their hostnames: those are resolved per
    request. ``cafile`` verifies the provider (empty: the system store).
    ``otlp_endpoint`` is the full traces URL (empty: spans are made but not exported).
    """

    provider_url: str
    vectordb_url: str
    cafile: str = ""
    otlp_endpoint: str = ""
    host: str = "127.0.0.1"
    port: int = 0
    pod: str = "rag-0"
    namespace: str = "lab"
    node: str = "lab-node"
    cluster: str = "lab"
    model: str = "gpt-4o-mini"
    data_source: str = "lab-docs"
    top_k: int = 4
    connect_timeout_s: float = 5.0  # DNS + TCP + TLS of one backend call
    read_timeout_s: float = 30.0  # between two reads (tokens) from a backend
    dns_workers: int = 32
    max_in_flight: int = 256  # connections per backend pool; beyond it requests queue
    # A local re-ranking index, mmapped: built at start, read per request (0 MiB: none).
    index_path: str = ""
    index_mb: int = 0
    index_pages: int = 256  # pages read per request
    truth_path: str = ""  # JSONL of each request's lookups and connections (see above)


class ChatRequest(msgspec.Struct, frozen=True):
    """The body of ``POST /chat``."""

    prompt: str
    max_tokens: int = 64


# --- provider stream chunks (only the fields we read) --------------------------------


class _Delta(msgspec.Struct):
    content: str | None = None


class _Choice(msgspec.Struct):
    delta: _Delta = msgspec.field(default_factory=_Delta)
    finish_reason: str | None = None


class _Usage(msgspec.Struct):
    prompt_tokens: int | None = None
    completion_tokens: int | None = None


class _Chunk(msgspec.Struct):
    id: str = ""
    model: str = ""
    choices: list[_Choice] = msgspec.field(default_factory=list)
    usage: _Usage | None = None
    error: Any = None


_chunk_decoder = msgspec.json.Decoder(_Chunk)


class UpstreamError(Exception):
    """A backend call failed; ``error_type`` is its ``error.type``, ``status`` ours."""

    def __init__(self, stage: str, error_type: str, status: int = 502,
                 retry_after: str | None = None) -> None:
        super().__init__(f"{stage}: {error_type}")
        self.stage, self.error_type, self.status = stage, error_type, status
        self.retry_after = retry_after


def error_type(exc: BaseException) -> str:
    """A low-cardinality ``error.type`` for a failed backend call.

    The kinds a lab fault produces get their own names (the attributor reads them);
    anything else falls back to the exception class, as the semantic conventions say.
    """
    if isinstance(exc, aiohttp.ClientConnectorDNSError | socket.gaierror):
        return "dns_error"
    if isinstance(exc, aiohttp.ClientSSLError | ssl.SSLError):
        return "tls_error"
    if isinstance(exc, aiohttp.ConnectionTimeoutError):
        return "connect_timeout"
    if isinstance(exc, aiohttp.SocketTimeoutError):
        return "read_timeout"
    if isinstance(exc, TimeoutError):
        return "timeout"
    if isinstance(exc, aiohttp.ClientConnectorError):
        return "connect_error"
    if isinstance(exc, aiohttp.ServerDisconnectedError | aiohttp.ClientPayloadError
                  | ConnectionResetError):
        return "connection_reset"
    return type(exc).__qualname__


#: The SERVER span and request id of the request a task works for. aiohttp resolves in
#: the task of the caller (or a child task, which copies the context), so the resolver
#: can tell whose lookup it runs; the request's spans are never made current.
_REQUEST: contextvars.ContextVar[tuple[Span, str] | None] = contextvars.ContextVar(
    "rag_request", default=None)


def _request_trace() -> str:
    request = _REQUEST.get()
    return format(request[0].get_span_context().trace_id, "032x") if request else ""


Ends = tuple[tuple[str, int], tuple[str, int]]  # (local, peer) of one connection


class TruthLog:
    """The ``truth_path`` file: one JSON line per lookup or backend connection.

    Lines come from the event loop and from the resolver's threads, hence the lock.
    """

    def __init__(self, path: str) -> None:
        self._file = open(path, "ab", buffering=0)  # noqa: SIM115 (closed in close())
        self._lock = threading.Lock()

    def _write(self, record: dict[str, Any]) -> None:
        line = msgspec.json.encode(record) + b"\n"
        with self._lock:
            if not self._file.closed:
                self._file.write(line)

    def resolve(self, trace_id: str, host: str, tid: int, start_ns: int, end_ns: int) -> None:
        self._write({"kind": "resolve", "trace_id": trace_id, "host": host, "tid": tid,
                     "start_ns": start_ns, "end_ns": end_ns})

    def conn(self, trace_id: str, ends: Ends, start_ns: int, end_ns: int) -> None:
        (local, lport), (peer, pport) = ends
        self._write({"kind": "conn", "trace_id": trace_id, "local": local, "lport": lport,
                     "peer": peer, "pport": pport, "start_ns": start_ns, "end_ns": end_ns})

    def close(self) -> None:
        with self._lock:
            self._file.close()


class LibcResolver(AbstractResolver):
    """aiohttp resolver that asks libc every time, in its own thread pool.

    Its own pool, not the loop's default executor: under a DNS fault every lookup can
    hang for the resolver timeout, and that must not starve unrelated ``to_thread`` work.
    ``lookups`` counts calls, so a test can see that nothing is cached.
    """

    def __init__(self, executor: concurrent.futures.Executor, tracer: trace.Tracer,
                 truth: TruthLog | None = None) -> None:
        self._executor = executor
        self._tracer = tracer
        self._truth = truth
        self.lookups = 0

    @staticmethod
    def _getaddrinfo(host: str, port: int, family: socket.AddressFamily,
                     ran: list[int]) -> list[Any]:
        """getaddrinfo on a pool thread; ``ran`` gets [thread id, start, end]."""
        start_ns = time.time_ns()
        try:
            return socket.getaddrinfo(host, port, family, socket.SOCK_STREAM)
        finally:
            ran += [threading.get_native_id(), start_ns, time.time_ns()]

    async def resolve(self, host: str, port: int = 0,
                      family: socket.AddressFamily = socket.AF_INET) -> list[ResolveResult]:
        """All stream addresses of ``host`` in getaddrinfo's (RFC 6724) order.

        Each lookup is a ``resolve <host>`` span of the request, timed as it ran on
        its pool thread and naming that thread (``thread.id``): the agent joins the
        kernel's DNS events to the span by pod, pid and thread.
        """
        self.lookups += 1
        ran: list[int] = []
        error: BaseException | None = None
        try:
            infos = await asyncio.get_running_loop().run_in_executor(
                self._executor, self._getaddrinfo, host, port, family, ran)
        except BaseException as exc:
            error = exc
            raise
        finally:
            if ran:
                self._record(host, ran, error)
        numeric = socket.AI_NUMERICHOST | socket.AI_NUMERICSERV
        return [ResolveResult(hostname=host, host=str(addr[0]), port=int(addr[1]),
                              family=fam, proto=proto, flags=numeric)
                for fam, _, proto, _, addr in infos
                if fam in (socket.AF_INET, socket.AF_INET6)]

    def _record(self, host: str, ran: list[int], error: BaseException | None) -> None:
        tid, start_ns, end_ns = ran
        request = _REQUEST.get()
        span = self._tracer.start_span(
            f"resolve {host}",
            context=trace.set_span_in_context(request[0]) if request else None,
            start_time=start_ns, attributes={"dns.question.name": host, "thread.id": tid,
                                             **({"llm.request.id": request[1]} if request
                                                else {})})
        if error is not None:
            _fail(span, error_type(error), repr(error))
        span.end(end_time=end_ns)
        if self._truth is not None:
            self._truth.resolve(_request_trace(), host, tid, start_ns, end_ns)

    async def close(self) -> None:
        """Nothing to release: the pool belongs to the service."""


def make_resource(cfg: RagConfig) -> Resource:
    """The rag pod's identity as the agent's identity layer would report it on k8s."""
    return Resource.create({
        "service.name": "rag",
        "process.pid": os.getpid(),
        "k8s.pod.name": cfg.pod,
        "k8s.namespace.name": cfg.namespace,
        "k8s.node.name": cfg.node,
        "k8s.cluster.name": cfg.cluster,
        "k8s.deployment.name": "rag",
    })


class _EndsResponse(aiohttp.ClientResponse):
    """A response that keeps its connection's (local, peer) addresses: aiohttp releases
    the connection, and with it the transport, as soon as a short body has arrived, which
    can be before the caller looks. The peer says which A/AAAA record was used."""

    ends: Ends | None = None

    async def start(self, connection: aiohttp.connector.Connection) -> aiohttp.ClientResponse:
        self.ends = _ends(connection.transport)
        return await super().start(connection)


def _ends(transport: asyncio.BaseTransport | None) -> Ends | None:
    """(local, peer) addresses of a socket transport, as the socket reports them."""
    if transport is None:
        return None
    local, peer = transport.get_extra_info("sockname"), transport.get_extra_info("peername")
    if not local or not peer:
        return None
    return (str(local[0]), int(local[1])), (str(peer[0]), int(peer[1]))


def _network_attrs(ends: Ends | None) -> dict[str, Any]:
    """A connection as OpenTelemetry's (opt-in) ``network.local.*`` and ``network.peer.*``,
    which the agent's connection joins read; none when it is unknown."""
    if ends is None:
        return {}
    (local, lport), (peer, pport) = ends
    return {"network.local.address": local, "network.local.port": lport,
            "network.peer.address": peer, "network.peer.port": pport}


def _served_on(request: web.Request) -> dict[str, Any]:
    """The SERVER span's thread (the event loop's) and connection: the agent's pod+pid
    join keeps a span to its own thread and connection, so the loop's spans do not take
    the lookups of the resolver threads or the connects of other requests."""
    return {"thread.id": threading.get_native_id(), **_network_attrs(_ends(request.transport))}


async def _open_stream(request: web.Request, request_id: str) -> web.StreamResponse:
    """Send the 200 and SSE headers: from here on, errors can only go in-band."""
    response = web.StreamResponse(headers={**_SSE_HEADERS, "X-Request-Id": request_id})
    response.content_type = "text/event-stream"
    await response.prepare(request)
    return response


class LocalIndex:
    """A re-ranking index file the service builds at start and mmaps; each request reads
    ``pages`` pages of it at offsets drawn from the request id.

    What makes a memory limit on the pod matter, as for a real RAG service with a local
    index or model file: the service writes the file itself, so its page cache is
    charged to the service's cgroup; squeezed under the limit, the kernel evicts those
    pages and each request faults them back from disk, in a worker thread; a page fault
    holds the GIL, so the whole process waits with it. Unsqueezed, a request's reads hit
    the page cache (~0.1 ms).
    """

    def __init__(self, path: str, size_mb: int, pages: int) -> None:
        chunk = (b"lab index " * 410)[: mmap.PAGESIZE] * 256  # 1 MiB
        with open(path, "wb") as f:
            for _ in range(size_mb):
                f.write(chunk)
        with open(path, "rb") as f:
            self._map = mmap.mmap(f.fileno(), 0, prot=mmap.PROT_READ)
        self._path = path
        self._npages, self._pages = len(self._map) // mmap.PAGESIZE, pages

    def rerank(self, request_id: str) -> int:
        """Read the request's pages; returns a checksum of the bytes read."""
        rng = random.Random(request_id)
        m, size, total = self._map, mmap.PAGESIZE, 0
        for _ in range(self._pages):
            off = rng.randrange(self._npages) * size
            total += m[off]
        return total

    def close(self) -> None:
        """Unmap and delete the file (64 MiB is worth giving back)."""
        self._map.close()
        with contextlib.suppress(OSError):
            os.unlink(self._path)


def _fail(span: Span, err: str, description: str = "") -> None:
    span.set_attribute("error.type", err)
    span.set_status(Status(StatusCode.ERROR, description or err))


class RagService:
    """The RAG HTTP service; see the module docstring.

    Use ``with RagService(cfg) as rag:`` (own loop in a background thread; ``.port`` is
    the bound port) or ``await astart()`` / ``await astop()`` on a running loop, then
    :meth:`shutdown_tracing`. ``lookups`` counts DNS lookups made.
    """

    def __init__(self, config: RagConfig) -> None:
        self.config = config
        self.port = config.port
        self._provider_url = URL(config.provider_url)
        self._vectordb_url = URL(config.vectordb_url)
        self._tracer_provider = TracerProvider(resource=make_resource(config))
        if config.otlp_endpoint:
            self._tracer_provider.add_span_processor(BatchSpanProcessor(
                OTLPSpanExporter(endpoint=config.otlp_endpoint, timeout=5),
                schedule_delay_millis=SCHEDULE_DELAY_MS))
        self._tracer = self._tracer_provider.get_tracer("llm_slo.lab.rag_service")
        self._tracing_down = False
        self._dns_pool: concurrent.futures.ThreadPoolExecutor | None = None
        self._resolver: LibcResolver | None = None
        self._session: aiohttp.ClientSession | None = None
        self._runner: web.AppRunner | None = None
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._index: LocalIndex | None = None
        self._index_pool: concurrent.futures.ThreadPoolExecutor | None = None
        self._truth: TruthLog | None = None

    @property
    def lookups(self) -> int:
        """DNS lookups made so far (one per backend call: nothing is cached)."""
        return self._resolver.lookups if self._resolver is not None else 0

    # --- lifecycle on a running loop ----------------------------------------------------

    async def astart(self) -> None:
        """Bind and serve on the running loop; ``.port`` is set on return."""
        cfg = self.config
        self._dns_pool = concurrent.futures.ThreadPoolExecutor(
            cfg.dns_workers, thread_name_prefix="rag-dns")
        if cfg.index_mb and cfg.index_path:
            self._index = LocalIndex(cfg.index_path, cfg.index_mb, cfg.index_pages)
            self._index_pool = concurrent.futures.ThreadPoolExecutor(
                16, thread_name_prefix="rag-index")
        if cfg.truth_path:
            self._truth = TruthLog(cfg.truth_path)
        self._resolver = LibcResolver(self._dns_pool, self._tracer, self._truth)
        ssl_ctx = ssl.create_default_context(cafile=cfg.cafile or None)
        # force_close: a new connection (lookup, connect, handshake) per call, see above.
        connector = aiohttp.TCPConnector(resolver=self._resolver, use_dns_cache=False,
                                         force_close=True, limit=cfg.max_in_flight,
                                         ssl=ssl_ctx)
        self._session = aiohttp.ClientSession(
            connector=connector, response_class=_EndsResponse, timeout=aiohttp.ClientTimeout(
                total=None, connect=cfg.connect_timeout_s, sock_read=cfg.read_timeout_s))
        app = web.Application()
        app.router.add_post("/chat", self._handle_chat)
        app.router.add_get("/healthz", self._handle_health)
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False,
                                     shutdown_timeout=5.0)
        try:
            await self._runner.setup()
            site = web.TCPSite(self._runner, cfg.host, cfg.port)
            await site.start()
        except BaseException:
            await self.astop()
            raise
        self.port = self._runner.addresses[0][1]
        log.info("rag_started", host=cfg.host, port=self.port, provider=cfg.provider_url,
                 vectordb=cfg.vectordb_url, otlp=cfg.otlp_endpoint or None)

    async def astop(self) -> None:
        """Stop serving (in-flight requests get a few seconds) and close the clients."""
        if self._runner is not None:
            runner, self._runner = self._runner, None
            await runner.cleanup()
        if self._session is not None:
            session, self._session = self._session, None
            await session.close()
        if self._index_pool is not None:
            self._index_pool.shutdown(wait=False, cancel_futures=True)
            self._index_pool = None
        if self._index is not None:
            self._index.close()
            self._index = None
        if self._dns_pool is not None:
            # A lookup hung in libc cannot be interrupted; do not wait for it.
            self._dns_pool.shutdown(wait=False, cancel_futures=True)
            self._dns_pool = None
        if self._truth is not None:
            self._truth.close()
            self._truth = None

    def force_flush(self, timeout_s: float = 10.0) -> bool:
        """Export every finished span now; True if it all went out in time."""
        return self._tracer_provider.force_flush(int(timeout_s * 1000))

    def shutdown_tracing(self) -> None:
        """Flush and stop the span exporter (after :meth:`astop`, so every span ended).

        Idempotent.
        """
        if not self._tracing_down:
            self._tracing_down = True
            self._tracer_provider.shutdown()

    # --- lifecycle in a background thread -------------------------------------------------

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def start(self, timeout_s: float = 10.0) -> None:
        """Serve from a new event loop in a daemon thread; return once listening."""
        ready = threading.Event()
        failure: list[BaseException] = []

        async def main() -> None:
            self._loop, self._stop = asyncio.get_running_loop(), asyncio.Event()
            try:
                await self.astart()
            except BaseException as exc:
                failure.append(exc)
                ready.set()
                return
            ready.set()
            try:
                await self._stop.wait()
            finally:
                await self.astop()

        self._thread = threading.Thread(target=asyncio.run, args=(main(),), daemon=True,
                                        name="rag-service")
        self._thread.start()
        if not ready.wait(timeout_s):
            self.close()
            raise TimeoutError(f"rag service not listening after {timeout_s} s")
        if failure:
            self.close()
            raise failure[0]

    def close(self) -> None:
        """Stop the thread's server, then flush spans. Idempotent."""
        if self._thread is not None:
            if self._loop is not None and self._stop is not None:
                with contextlib.suppress(RuntimeError):  # loop already gone
                    self._loop.call_soon_threadsafe(self._stop.set)
            self._thread.join(15.0)
            self._thread = None
        self.shutdown_tracing()

    # --- request handling ---------------------------------------------------------------

    async def _handle_health(self, request: web.Request) -> web.Response:
        return web.Response(text="ok")

    async def _handle_chat(self, request: web.Request) -> web.StreamResponse:
        # Request start for TTFT: wall clock for the span, monotonic for durations, so
        # a clock step cannot make a negative TTFT.
        t0 = time.monotonic_ns()
        start_ns = time.time_ns()
        request_id = request.headers.get("X-Request-Id") or uuid.uuid4().hex
        model = self.config.model
        served = _served_on(request)
        span = self._tracer.start_span(
            f"chat {model}", kind=SpanKind.SERVER, start_time=start_ns, attributes={
                "gen_ai.operation.name": "chat", "gen_ai.request.model": model,
                "llm.request.id": request_id, "http.request.method": "POST",
                "url.path": "/chat", **served})
        _REQUEST.set((span, request_id))
        try:
            return await self._serve_chat(request, span, request_id, t0, start_ns, served)
        finally:
            span.end()

    async def _serve_chat(self, request: web.Request, span: Span, request_id: str,
                          t0: int, start_ns: int, served: dict[str, Any]
                          ) -> web.StreamResponse:
        try:
            chat = msgspec.json.decode(await request.read(), type=ChatRequest)
            if chat.max_tokens < 1:
                raise msgspec.ValidationError("max_tokens must be >= 1")
        except msgspec.DecodeError as exc:
            # A client mistake is not a service error: no ERROR status on the span.
            span.set_attribute("http.response.status_code", 400)
            return web.json_response({"error": "bad_request", "detail": str(exc)}, status=400)
        span.set_attribute("gen_ai.request.max_tokens", chat.max_tokens)
        ctx = trace.set_span_in_context(span)
        response: web.StreamResponse | None = None
        tokens = 0
        try:
            documents = await self._retrieve(chat.prompt, ctx, request_id)
            if self._index is not None:  # blocking page reads: off the event loop
                await asyncio.get_running_loop().run_in_executor(
                    self._index_pool, self._index.rerank, request_id)
            # aclosing: a client that leaves mid-stream must still end the CLIENT span.
            async with contextlib.aclosing(
                    self._generate(chat, documents, ctx, request_id)) as stream:
                async for token in stream:
                    if response is None:
                        response = await _open_stream(request, request_id)
                    await response.write(b"data: " + msgspec.json.encode({"content": token})
                                         + b"\n\n")
                    tokens += 1
                    if tokens == 1:  # the first token is now on its way to the client
                        self._first_token(span, ctx, request_id, start_ns,
                                          time.monotonic_ns() - t0, served)
        except UpstreamError as exc:
            _fail(span, exc.error_type, str(exc))
            span.set_attribute("gen_ai.usage.output_tokens", tokens)
            log.debug("rag_upstream_failed", request_id=request_id, stage=exc.stage,
                      error_type=exc.error_type)
            if response is None:
                span.set_attribute("http.response.status_code", exc.status)
                headers = {"X-Request-Id": request_id}
                if exc.retry_after is not None:
                    headers["Retry-After"] = exc.retry_after
                return web.json_response({"error": exc.error_type, "stage": exc.stage},
                                         status=exc.status, headers=headers)
            with contextlib.suppress(ConnectionError):
                await response.write(b"event: error\ndata: " + msgspec.json.encode(
                    {"error": exc.error_type, "stage": exc.stage}) + b"\n\n")
                await response.write_eof()
            return response
        except ConnectionError:  # our client went away mid-stream
            _fail(span, "client_disconnected")
            span.set_attribute("gen_ai.usage.output_tokens", tokens)
            return response if response is not None else web.Response(status=499)
        span.set_attribute("gen_ai.usage.output_tokens", tokens)
        span.set_attribute("http.response.status_code", 200)
        if response is None:  # a stream without tokens is still a complete answer
            response = await _open_stream(request, request_id)
        with contextlib.suppress(ConnectionError):
            await response.write(b"data: [DONE]\n\n")
            await response.write_eof()
        return response

    def _first_token(self, span: Span, ctx: Context, request_id: str, start_ns: int,
                     ttft_ns: int, served: dict[str, Any]) -> None:
        """Record TTFT on the SERVER span, and end a ``first token`` span right now.

        The SERVER span is exported only when the whole answer has streamed, seconds
        later; the short span reaches the agent at once, so a slow first token is judged
        when it happens. The engine counts one TTFT per ``llm.request.id``. It names the
        SERVER span's thread and connection (``served``): it is the same work, so
        another request's connects and retransmits are not its own.
        """
        ttft_ms, first_ns = ttft_ns / 1e6, start_ns + ttft_ns
        span.add_event("gen_ai.first_token", timestamp=first_ns)
        span.set_attribute("llm.slo.ttft_ms", ttft_ms)
        self._tracer.start_span(
            f"first token {self.config.model}", context=ctx, start_time=start_ns,
            attributes={"llm.request.id": request_id, "llm.slo.ttft_ms": ttft_ms, **served},
        ).end(end_time=first_ns)

    def _connected(self, span: Span, resp: aiohttp.ClientResponse) -> Ends | None:
        """Put the connection's ends on the span (OpenTelemetry's opt-in
        ``network.local.*``, which the agent's pod+connection tier joins by); return
        them for the truth log."""
        ends = resp.ends if isinstance(resp, _EndsResponse) else None
        span.set_attributes(_network_attrs(ends))
        return ends

    def _log_conn(self, ends: Ends | None, start_ns: int) -> None:
        if self._truth is not None and ends is not None:
            self._truth.conn(_request_trace(), ends, start_ns, time.time_ns())

    async def _retrieve(self, prompt: str, ctx: Context, request_id: str) -> list[str]:
        """Top-k documents from the vector DB, inside a ``retrieval <source>`` span."""
        assert self._session is not None
        cfg, url = self.config, self._vectordb_url
        span = self._tracer.start_span(
            f"retrieval {cfg.data_source}", context=ctx, kind=SpanKind.CLIENT, attributes={
                "gen_ai.operation.name": "retrieval", "gen_ai.data_source.id": cfg.data_source,
                "gen_ai.request.top_k": cfg.top_k, "server.address": url.host or "",
                "server.port": url.port or 80, "llm.request.id": request_id,
                "thread.id": threading.get_native_id()})
        start_ns, ends = time.time_ns(), None
        try:
            async with self._session.post(url / "search", json={
                    "query": prompt, "top_k": cfg.top_k}) as resp:
                span.set_attribute("http.response.status_code", resp.status)
                ends = self._connected(span, resp)
                if resp.status != 200:
                    raise UpstreamError("retrieval", str(resp.status))
                body = await resp.json(content_type=None)
            results = body.get("results", []) if isinstance(body, dict) else []
            span.set_attribute("llm.slo.retrieval.results", len(results))
            # {"id", "score", "text"} per result; only the text goes into the prompt
            return [str(r.get("text", "")) if isinstance(r, dict) else str(r)
                    for r in results]
        except UpstreamError as exc:
            _fail(span, exc.error_type)
            raise
        except (aiohttp.ClientError, OSError, TimeoutError, ValueError) as exc:
            err = error_type(exc)
            _fail(span, err, repr(exc))
            raise UpstreamError("retrieval", err, 504 if isinstance(exc, TimeoutError)
                                else 502) from exc
        finally:
            self._log_conn(ends, start_ns)
            span.end()

    async def _generate(self, chat: ChatRequest, documents: list[str], ctx: Context,
                        request_id: str) -> AsyncIterator[str]:
        """Yield the provider's tokens as they arrive, inside a CLIENT ``chat`` span.

        An async generator: the caller writes each token to its client before the next
        one is read, so tokens flow through instead of being buffered. The span is not
        made current (a generator suspends across the caller's context).
        """
        assert self._session is not None
        cfg, url = self.config, self._provider_url
        span = self._tracer.start_span(
            f"chat {cfg.model}", context=ctx, kind=SpanKind.CLIENT, attributes={
                "gen_ai.operation.name": "chat", "gen_ai.provider.name": "openai",
                "gen_ai.request.model": cfg.model, "gen_ai.request.max_tokens": chat.max_tokens,
                "gen_ai.request.stream": True, "server.address": url.host or "",
                "server.port": url.port or 443, "llm.request.id": request_id,
                "thread.id": threading.get_native_id()})
        payload = {
            "model": cfg.model, "stream": True, "max_tokens": chat.max_tokens,
            "stream_options": {"include_usage": True},
            "messages": [
                {"role": "system", "content": "Answer from this context:\n"
                 + "\n".join(documents)},
                {"role": "user", "content": chat.prompt}],
        }
        tokens = 0
        usage: _Usage | None = None
        finish: list[str] = []
        start_ns, ends = time.time_ns(), None
        try:
            async with self._session.post(url / "v1/chat/completions", json=payload,
                                          headers={"Authorization": "Bearer lab",
                                                   "X-Request-Id": request_id}) as resp:
                span.set_attribute("http.response.status_code", resp.status)
                ends = self._connected(span, resp)
                if resp.status != 200:
                    # Throttled or broken: record and give up; retrying would hide
                    # the provider's state from the SLO and add load while it is hurting.
                    await resp.content.read(_MAX_ERROR_BODY)
                    retry_after = resp.headers.get("Retry-After")
                    if retry_after is not None:
                        span.set_attribute("http.response.header.retry-after", [retry_after])
                    raise UpstreamError("provider", str(resp.status),
                                        429 if resp.status == 429 else 502, retry_after)
                async for line in resp.content:
                    data = line.strip()
                    if not data.startswith(b"data:"):
                        continue  # blank separators, comments, event names
                    data = data[5:].strip()
                    if data == b"[DONE]":
                        break
                    chunk = _chunk_decoder.decode(data)
                    if chunk.error is not None:
                        raise UpstreamError("provider", "stream_error")
                    if chunk.usage is not None:
                        usage = chunk.usage
                    if tokens == 0 and chunk.id:
                        span.set_attribute("gen_ai.response.id", chunk.id)
                        span.set_attribute("gen_ai.response.model", chunk.model or cfg.model)
                    for choice in chunk.choices:
                        if choice.finish_reason:
                            finish.append(choice.finish_reason)
                        if choice.delta.content:
                            tokens += 1
                            yield choice.delta.content
                else:  # the stream closed without [DONE]: the answer is cut short
                    raise UpstreamError("provider", "stream_truncated")
        except UpstreamError as exc:
            _fail(span, exc.error_type, str(exc))
            raise
        except (aiohttp.ClientError, OSError, TimeoutError, msgspec.DecodeError) as exc:
            err = error_type(exc)
            _fail(span, err, repr(exc))
            raise UpstreamError("provider", err, 504 if isinstance(exc, TimeoutError)
                                else 502) from exc
        finally:
            self._log_conn(ends, start_ns)
            out = usage.completion_tokens if usage and usage.completion_tokens else tokens
            span.set_attribute("gen_ai.usage.output_tokens", out)
            if usage is not None and usage.prompt_tokens is not None:
                span.set_attribute("gen_ai.usage.input_tokens", usage.prompt_tokens)
            if finish:
                span.set_attribute("gen_ai.response.finish_reasons", finish)
            span.end()


# --- subprocess entry point -------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    """The command line of the subprocess (see the module docstring)."""
    p = argparse.ArgumentParser(prog="python -m llm_slo.lab.rag_service",
                                description="Lab RAG service (prints its port when ready).")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--provider-url", required=True)
    p.add_argument("--vectordb-url", required=True)
    p.add_argument("--cafile", default="")
    p.add_argument("--otlp-endpoint", default="")
    p.add_argument("--pod", default="rag-0")
    p.add_argument("--namespace", default="lab")
    p.add_argument("--node", default="lab-node")
    p.add_argument("--model", default="gpt-4o-mini")
    p.add_argument("--data-source", default="lab-docs")
    p.add_argument("--top-k", type=int, default=4)
    p.add_argument("--index-path", default="", help="local re-ranking index file to build")
    p.add_argument("--index-mb", type=int, default=0, help="its size, MiB (0: no index)")
    p.add_argument("--index-pages", type=int, default=256, help="pages read per request")
    p.add_argument("--connect-timeout", type=float, default=5.0)
    p.add_argument("--read-timeout", type=float, default=30.0)
    p.add_argument("--truth-path", default="",
                   help="write each request's lookups and connections here (JSONL), "
                        "the ground truth the lab judges span joins by")
    p.add_argument("--max-seconds", type=float, default=3600.0,
                   help="exit after this long, so a crashed runner leaves nothing running")
    p.add_argument("--verbose", action="store_true")
    return p


def config_from_args(a: argparse.Namespace) -> RagConfig:
    """The :class:`RagConfig` of parsed :func:`build_parser` arguments."""
    return RagConfig(host=a.host, port=a.port, provider_url=a.provider_url,
                     vectordb_url=a.vectordb_url, cafile=a.cafile,
                     otlp_endpoint=a.otlp_endpoint, pod=a.pod, namespace=a.namespace,
                     node=a.node, model=a.model, data_source=a.data_source, top_k=a.top_k,
                     connect_timeout_s=a.connect_timeout, read_timeout_s=a.read_timeout,
                     index_path=a.index_path, index_mb=a.index_mb, index_pages=a.index_pages,
                     truth_path=a.truth_path)


async def _serve(cfg: RagConfig, max_seconds: float) -> None:
    service = RagService(cfg)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await service.astart()
    print(service.port, flush=True)  # readiness line for the starter
    try:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), max_seconds)
    finally:
        await service.astop()
        # Blocking flush off the loop thread; the loop has nothing left to serve.
        await asyncio.to_thread(service.shutdown_tracing)
        log.info("rag_stopped")


def main(argv: list[str] | None = None) -> int:
    """Run the service until SIGTERM/SIGINT or ``--max-seconds``; flush spans on exit."""
    from llm_slo.cli import configure_logging  # deferred: the CLI module is heavier

    args = build_parser().parse_args(argv)
    configure_logging(args.verbose)  # to stderr: stdout carries only the port line
    asyncio.run(_serve(config_from_args(args), args.max_seconds))
    return 0


if __name__ == "__main__":
    sys.exit(main())
