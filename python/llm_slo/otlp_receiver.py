"""OTLP/HTTP trace receiver: ``POST /v1/traces`` in, :class:`~llm_slo.spans.Span` lists out.

Runs on the agent's asyncio loop (aiohttp). Spans are handed to a synchronous ``sink``; the
receiver itself holds nothing. It is built to face untrusted senders:

* size is bounded three ways: the declared ``Content-Length``, the bytes actually read (a
  chunked body declares nothing), and the decompressed size (a few KiB of gzip can inflate to
  gigabytes, so we inflate incrementally with an output cap instead of ``gzip.decompress``);
* every decoder failure, expected or not, becomes a 400 with a reason; nothing a client
  sends can take the server down;
* when a body is rejected unread, aiohttp's lingering close reads and discards the rest for a
  bounded time (no buffering), so a client that writes its whole body before reading, like the
  OTel SDK, sees the final 413 rather than a connection reset that it would retry.

Replies follow OTLP/HTTP: 200 with an empty ``ExportTraceServiceResponse`` in the request's
format; errors carry a ``google.rpc.Status`` (protobuf for protobuf requests, since
googleapis-common-protos is installed with the OTLP exporter; JSON otherwise).
"""

from __future__ import annotations

import asyncio
import zlib
from collections.abc import Callable

import msgspec
import structlog
from aiohttp import ClientPayloadError, web
from aiohttp.http_exceptions import HttpProcessingError

from llm_slo.otlp_decode import (
    JSON,
    PROTOBUF,
    SUPPORTED_MEDIA_TYPES,
    OtlpDecodeError,
    decode_traces,
    encode_partial_success,
    media_type,
)
from llm_slo.spans import Span

try:  # google.rpc.Status ships with googleapis-common-protos (an OTLP exporter dependency)
    from google.rpc import status_pb2 as _status_pb2
except ImportError:  # pragma: no cover - then error bodies fall back to JSON
    _status_pb2 = None

MiB = 1024 * 1024
TRACES_PATH = "/v1/traces"
#: Bodies larger than this are decoded in a worker thread: the GIL still serialises the work,
#: but the loop (probe drains, other requests) gets a turn every switch interval instead of
#: waiting out a decode of tens of milliseconds.
OFFLOAD_DECODE_BYTES = 1 * MiB
_READ_CHUNK = 64 * 1024
#: How long stop() lets in-flight requests finish before cancelling them.
_SHUTDOWN_GRACE_S = 5.0
# google.rpc.Code values for the error bodies
_INVALID_ARGUMENT = 3
_UNAVAILABLE = 14
_ENCODINGS = {"": None, "identity": None, "gzip": "gzip", "x-gzip": "gzip", "deflate": "deflate"}

log = structlog.get_logger("otlp")


def encode_status(code: int, message: str, content_type: str) -> tuple[bytes, str]:
    """A ``google.rpc.Status`` error body and its content type, in the request's format.

    Protobuf requests get a protobuf Status when googleapis-common-protos is importable
    (it is a dependency of the OTLP exporters); anything else gets ``{"code", "message"}``.
    """
    if media_type(content_type) == PROTOBUF and _status_pb2 is not None:
        return _status_pb2.Status(code=code, message=message).SerializeToString(), PROTOBUF
    return msgspec.json.encode({"code": code, "message": message}), JSON


class _TooLarge(Exception):
    """The body, raw or decompressed, exceeded its limit."""


class _BoundedInflater:
    """Incremental gzip/deflate decoder that refuses to produce more than ``limit`` bytes."""

    def __init__(self, encoding: str, limit: int) -> None:
        # 16 + MAX_WBITS: gzip header and trailer; MAX_WBITS alone: zlib-wrapped "deflate"
        self._wbits = 16 + zlib.MAX_WBITS if encoding == "gzip" else zlib.MAX_WBITS
        self._inflater = zlib.decompressobj(self._wbits)
        self._limit = limit
        self.out = bytearray()

    def feed(self, data: bytes) -> None:
        """Inflate ``data``; raises :class:`_TooLarge` or ``zlib.error``."""
        while data:
            # asking for one byte more than the remaining room is how we detect "over"
            # without ever materialising more than limit + 1 bytes
            room = self._limit - len(self.out) + 1
            self.out += self._inflater.decompress(data, room)
            if len(self.out) > self._limit:
                raise _TooLarge(f"decompressed body exceeds {self._limit} bytes")
            if self._inflater.eof:
                # gzip allows several concatenated members; any other trailer fails here
                data = self._inflater.unused_data
                if data:
                    self._inflater = zlib.decompressobj(self._wbits)
            else:
                data = self._inflater.unconsumed_tail

    def finish(self) -> bytes:
        if not self._inflater.eof:
            raise zlib.error("truncated compressed body")
        return bytes(self.out)


class OtlpReceiver:
    """OTLP/HTTP receiver for traces.

    ``sink`` is called on the event loop with each request's decoded spans (never with an
    empty list); if it raises, the client gets 503 so its exporter retries later.
    ``max_body_bytes`` bounds the body on the wire and, unless ``max_decompressed_bytes`` is
    given, after decompression too. A body not received within ``read_timeout`` seconds
    gets 408 (aiohttp itself has no body timeout, so a stalled sender would otherwise hold
    its handler forever). ``port=0`` binds an ephemeral port, readable from :attr:`port`
    after :meth:`start`.

    Counters (plain ints, read them at will): ``received_spans``, ``accepted_requests``,
    ``rejected_requests`` keyed by ``too_large`` / ``unsupported_media_type`` /
    ``bad_request``, ``unexpected_errors`` (decoder bugs, also counted as bad_request),
    ``sink_errors`` and ``aborted_requests`` (sender vanished, broke the framing or stalled).
    """

    def __init__(
        self,
        sink: Callable[[list[Span]], None],
        host: str = "127.0.0.1",
        port: int = 4318,
        max_body_bytes: int = 8 * MiB,
        max_decompressed_bytes: int | None = None,
        read_timeout: float = 30.0,
    ) -> None:
        self._sink = sink
        self._host = host
        self._requested_port = port
        self.max_body_bytes = max_body_bytes
        self.max_decompressed_bytes = max_decompressed_bytes or max_body_bytes
        self.read_timeout = read_timeout
        self._runner: web.AppRunner | None = None
        self._port: int | None = None
        self.received_spans = 0
        self.accepted_requests = 0
        self.rejected_requests = {"too_large": 0, "unsupported_media_type": 0, "bad_request": 0}
        self.unexpected_errors = 0
        self.sink_errors = 0
        self.aborted_requests = 0

    @property
    def port(self) -> int:
        """The bound port (the ephemeral one when constructed with ``port=0``)."""
        if self._port is None:
            raise RuntimeError("OtlpReceiver.port read before start()")
        return self._port

    async def start(self) -> None:
        """Bind and serve; returns once the socket is listening."""
        # client_max_size only guards aiohttp's own body readers; we stream the body
        # ourselves, but keep it consistent in case a future handler uses request.read()
        app = web.Application(client_max_size=self.max_body_bytes)
        app.router.add_post(TRACES_PATH, self._handle_traces)  # other methods -> 405
        # auto_decompress=False: aiohttp would otherwise inflate gzip itself, hiding the wire
        # size from our limit and the Content-Encoding from our 415 check
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False,
                                     auto_decompress=False, shutdown_timeout=_SHUTDOWN_GRACE_S)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self._host, self._requested_port)
        try:
            await site.start()
        except BaseException:
            await self._runner.cleanup()
            self._runner = None
            raise
        self._port = self._runner.addresses[0][1]
        log.info("otlp_receiver_started", host=self._host, port=self._port,
                 max_body_bytes=self.max_body_bytes)

    async def stop(self) -> None:
        """Stop listening and close connections (idempotent)."""
        if self._runner is not None:
            runner, self._runner = self._runner, None
            await runner.cleanup()
            log.info("otlp_receiver_stopped", received_spans=self.received_spans,
                     rejected_requests=dict(self.rejected_requests))

    async def __aenter__(self) -> OtlpReceiver:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    # --- request handling ---------------------------------------------------------------

    async def _handle_traces(self, request: web.Request) -> web.Response:
        content_type = request.headers.get("Content-Type", "")
        kind = media_type(content_type)
        reply_type = kind if kind in SUPPORTED_MEDIA_TYPES else JSON
        # cheapest check first: refuse an oversized declared body before reading any of it
        declared = request.content_length
        if declared is not None and declared > self.max_body_bytes:
            return self._reject(request, "too_large", 413, reply_type,
                                f"Content-Length {declared} exceeds {self.max_body_bytes} bytes")
        if kind not in SUPPORTED_MEDIA_TYPES:
            return self._reject(request, "unsupported_media_type", 415, JSON,
                                f"unsupported content type {content_type!r}; use "
                                "application/x-protobuf or application/json")
        encoding = request.headers.get("Content-Encoding", "").strip().lower()
        if encoding not in _ENCODINGS:
            return self._reject(request, "unsupported_media_type", 415, reply_type,
                                f"unsupported Content-Encoding {encoding!r}; "
                                "use gzip, deflate or identity")
        try:
            async with asyncio.timeout(self.read_timeout):
                body = await self._read_body(request, _ENCODINGS[encoding])
        except TimeoutError:
            return self._abort(request, 408, f"body not received within {self.read_timeout} s")
        except (ConnectionError, ClientPayloadError, HttpProcessingError) as exc:
            return self._abort(request, 400, f"body incomplete: {type(exc).__name__}")
        except _TooLarge as exc:
            return self._reject(request, "too_large", 413, reply_type, str(exc))
        except zlib.error as exc:
            return self._reject(request, "bad_request", 400, reply_type,
                                f"invalid {encoding} body: {exc}")
        try:
            if len(body) > OFFLOAD_DECODE_BYTES:
                spans = await asyncio.to_thread(decode_traces, body, kind)
            else:
                spans = decode_traces(body, kind)
        except OtlpDecodeError as exc:
            return self._reject(request, "bad_request", 400, reply_type, exc.reason)
        except Exception as exc:  # a decoder bug must cost one request, not the server
            self.unexpected_errors += 1
            log.exception("otlp_decoder_failed", body_bytes=len(body), content_type=kind)
            return self._reject(request, "bad_request", 400, reply_type,
                                f"undecodable request ({type(exc).__name__})")
        if spans:
            try:
                self._sink(spans)
            except Exception:
                self.sink_errors += 1
                log.exception("otlp_sink_failed", spans=len(spans))
                error, error_type = encode_status(_UNAVAILABLE, "span sink failed", reply_type)
                return web.Response(status=503, body=error, content_type=error_type)
        self.received_spans += len(spans)
        self.accepted_requests += 1
        log.debug("otlp_spans_received", spans=len(spans), body_bytes=len(body))
        return web.Response(status=200, body=encode_partial_success(0, "", kind),
                            content_type=kind)

    async def _read_body(self, request: web.Request, encoding: str | None) -> bytes:
        """Read (and inflate) the body, enforcing both size limits as bytes arrive."""
        inflater = (None if encoding is None
                    else _BoundedInflater(encoding, self.max_decompressed_bytes))
        raw = bytearray()
        seen = 0  # wire bytes; compressed ones are not kept once inflated
        async for chunk in request.content.iter_chunked(_READ_CHUNK):
            seen += len(chunk)
            if seen > self.max_body_bytes:
                raise _TooLarge(f"body exceeds {self.max_body_bytes} bytes")
            if inflater is None:
                raw += chunk
            else:
                inflater.feed(chunk)
        return bytes(raw) if inflater is None else inflater.finish()

    def _abort(self, request: web.Request, status: int, message: str) -> web.Response:
        """The sender broke off; reply if it is still there, and close the connection."""
        self.aborted_requests += 1
        log.info("otlp_request_aborted", detail=message, peer=request.remote)
        response = web.Response(status=status, text=message)
        response.force_close()
        return response

    def _reject(self, request: web.Request, reason: str, status: int, reply_type: str,
                message: str) -> web.Response:
        self.rejected_requests[reason] += 1
        log.warning("otlp_request_rejected", reason=reason, status=status, detail=message,
                    peer=request.remote)
        body, body_type = encode_status(_INVALID_ARGUMENT, message, reply_type)
        return web.Response(status=status, body=body, content_type=body_type)
