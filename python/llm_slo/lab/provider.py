"""An OpenAI-compatible LLM provider emulator: TLS, SSE token streaming, 429s and 5xxs,
slow TLS handshakes.

The lab's RAG service calls "the provider" exactly as it would call a hosted LLM API:
``POST /v1/chat/completions`` over HTTPS, usually with ``stream: true``. This emulator
answers with realistic ``chat.completion.chunk`` Server-Sent Events, paced like a real
model (time to first token, then a steady token rate), and can be switched at runtime to
throttle (429 with ``Retry-After``) or fail (5xx), always or for a seeded share of
requests, which is what the ``provider_throttle`` and ``provider_error`` faults need,
and to hold every new TLS handshake for a while (the ``tls_slow`` fault).

Two ways to run it, same code:

* in-process, on the caller's event loop (``await p.start()`` / ``async with``) or on a
  background thread of its own (``with ProviderEmulator() as p:``);
* as a subprocess, e.g. inside a lab network namespace::

      python -m llm_slo.lab.provider --host 10.253.1.2 --port 0 --cert-dir DIR

  It prints its bound port on stdout once listening (read it with
  :func:`llm_slo.lab.workloads.wait_ready`) and exits 0 on SIGTERM/SIGINT.

Runtime control, in-process or over HTTP: attributes (``p.mode = "throttle"``), or
``p.configure(...)``, or ``POST /control`` with the same keys as JSON; ``GET /control``
returns ``{"settings": {...}, "counters": {...}}``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import math
import os
import secrets
import shutil
import socket
import ssl
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, ClassVar

import msgspec
import structlog
from aiohttp import web

from llm_slo.lab._emulator import (
    HttpEmulator,
    Knob,
    bad_request,
    choice,
    emulator_argv,
    emulator_main,
    error_body,
    json_response,
    number,
    read_json_object,
)
from llm_slo.lab.naming import unique_name
from llm_slo.lab.processes import run_cmd

log = structlog.get_logger("lab.provider")

#: Hostname the provider's certificate is issued for (the lab's DNS zone resolves it).
PROVIDER_HOSTNAME = "provider.lab"
#: Upper bound on completion tokens per request, whatever ``max_tokens`` asks for.
MAX_TOKENS_CAP = 512
DEFAULT_MAX_TOKENS = 16
MODES = ("ok", "throttle", "error")
def ensure_cert(cert_dir: str | os.PathLike[str], *, days: int = 7) -> tuple[str, str]:
    """Return ``(cert.pem, key.pem)`` in ``cert_dir``, generating them if absent.

    A self-signed P-256 certificate for ``CN=provider.lab`` with SANs ``provider.lab``,
    ``localhost`` and ``127.0.0.1``; the certificate is its own CA, so clients trust it
    with ``cafile=cert.pem``. An existing pair is reused, so the lab can hand the CA to
    the RAG service before (re)starting the provider.
    """
    d = Path(cert_dir)
    d.mkdir(parents=True, exist_ok=True)
    cert, key = d / "cert.pem", d / "key.pem"
    if not (cert.is_file() and key.is_file()):
        run_cmd(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
                 "ec_paramgen_curve:P-256", "-nodes", "-keyout", str(key), "-out", str(cert),
                 "-days", str(days), "-subj", f"/CN={PROVIDER_HOSTNAME}", "-addext",
                 f"subjectAltName=DNS:{PROVIDER_HOSTNAME},DNS:localhost,IP:127.0.0.1"])
    return str(cert), str(key)


# --- slow TLS handshakes ----------------------------------------------------------------------

# asyncio's own default limit for a TLS handshake: a client that connects but never
# sends its ClientHello is dropped after it, as it would be without the gate.
_HANDSHAKE_TIMEOUT_S = 60.0


class _Handoff(asyncio.Protocol):
    """Takes each connection from asyncio's listener before a byte of it is read."""

    def __init__(self, admit: Callable[[socket.socket], None]) -> None:
        self._admit = admit

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # The duplicate outlives the transport: abort() only closes the transport's own
        # descriptor (no FIN, no RST), so the connection itself stays untouched.
        sock = transport.get_extra_info("socket").dup()
        transport.abort()
        self._admit(sock)


async def _readable(sock: socket.socket) -> None:
    """Return once ``sock`` has bytes (or EOF) to read; reads none of them."""
    loop = asyncio.get_running_loop()
    ready = loop.create_future()

    def wake() -> None:
        if not ready.done():
            ready.set_result(None)

    loop.add_reader(sock.fileno(), wake)
    try:
        await ready
    finally:
        loop.remove_reader(sock.fileno())


class _TlsGateSite(web.BaseSite):
    """An HTTPS site that holds each new connection's handshake for ``delay_s()``.

    Per connection: accept, wait for the client's first bytes (its ClientHello), sleep
    the delay on the event loop, then hand the socket to the TLS transport aiohttp
    would have made. The client's handshake takes that much longer, while every other
    connection is served as usual. Without a delay the socket is handed over at once:
    the same transport as a plain ``TCPSite``, nothing added per request.
    """

    def __init__(self, runner: web.AppRunner, host: str, port: int,
                 ctx: ssl.SSLContext | None, delay_s: Callable[[], float]) -> None:
        super().__init__(runner, ssl_context=ctx)
        self._host, self._port, self._delay_s = host, port, delay_s
        self._pending: set[asyncio.Task[None]] = set()
        self._stopping = False

    @property
    def name(self) -> str:
        host = f"[{self._host}]" if ":" in self._host else self._host
        return f"https://{host}:{self._port}"

    async def start(self) -> None:
        await super().start()
        self._server = await asyncio.get_running_loop().create_server(
            lambda: _Handoff(self._admit), self._host, self._port, backlog=self._backlog)

    async def stop(self) -> None:
        self._stopping = True
        await super().stop()  # closes the listener: nothing new gets accepted
        for task in self._pending:
            task.cancel()
        await asyncio.gather(*self._pending, return_exceptions=True)

    def _admit(self, sock: socket.socket) -> None:
        if self._stopping:  # accepted just before the listener closed
            sock.close()
            return
        # the delay is read once, when the connection arrives
        task = asyncio.get_running_loop().create_task(self._handshake(sock, self._delay_s()))
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    async def _handshake(self, sock: socket.socket, delay_s: float) -> None:
        try:
            if delay_s > 0:
                # counted from the ClientHello's arrival, i.e. from when the client's
                # handshake has begun: a client slow to start it is not let off early
                await asyncio.wait_for(_readable(sock), _HANDSHAKE_TIMEOUT_S)
                await asyncio.sleep(delay_s)
        except TimeoutError:  # no ClientHello: drop the connection
            sock.close()
            return
        except asyncio.CancelledError:  # stop()
            sock.close()
            raise
        server = self._runner.server
        assert server is not None  # set up before any site starts
        # The TLS transport owns the socket from here and closes it if the handshake
        # fails, which any client can make happen: not an error of ours to report.
        with contextlib.suppress(OSError):
            await asyncio.get_running_loop().connect_accepted_socket(
                server, sock, ssl=self._ssl_context)


# --- the provider ----------------------------------------------------------------------------

# Completion text is drawn from this vocabulary, deterministically per prompt, so a
# replayed request gets the same answer.
_WORDS = ("the", "service", "latency", "budget", "token", "cluster", "request", "model",
          "answer", "retrieval", "context", "kernel", "packet", "queue", "window", "error",
          "rate", "signal", "trace", "span", "quota", "memory", "network", "provider")


def _message_text(content: Any) -> str:
    """Text of a message ``content``: a string or a list of ``{"type":"text"}`` parts."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(p.get("text", "") for p in content
                        if isinstance(p, dict) and isinstance(p.get("text"), str))
    return ""


def count_prompt_tokens(messages: list[dict[str, Any]]) -> int:
    """Rough prompt token count: 4 characters a token plus 4 tokens of framing a message.

    Close to what OpenAI's tokenizers report for English; exact counts need tiktoken,
    and nothing in the lab depends on them.
    """
    return sum(4 + math.ceil(len(_message_text(m.get("content"))) / 4) for m in messages) + 3


class _ChatRequest(msgspec.Struct):
    """The validated parts of a chat completion request we act on."""

    model: str
    messages: list[dict[str, Any]]
    max_tokens: int
    stream: bool
    include_usage: bool


def parse_chat_request(body: dict[str, Any]) -> _ChatRequest:
    """Validate a ``/v1/chat/completions`` body; ``ValueError(message, param)`` if bad."""
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise ValueError("you must provide a model parameter", "model")
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise ValueError("'messages' must be a non-empty array", "messages")
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or not isinstance(m.get("role"), str) or \
                not isinstance(m.get("content"), str | list | None):
            raise ValueError(f"messages[{i}] must be an object with 'role' and 'content'",
                             f"messages[{i}]")
    # max_completion_tokens is the newer name for the same limit
    key = "max_completion_tokens" if "max_completion_tokens" in body else "max_tokens"
    max_tokens = body.get(key, DEFAULT_MAX_TOKENS)
    if max_tokens is None:
        max_tokens = DEFAULT_MAX_TOKENS
    if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1:
        raise ValueError(f"'{key}' must be a positive integer", key)
    stream = body.get("stream", False)
    if not isinstance(stream, bool | None):
        raise ValueError("'stream' must be a boolean", "stream")
    opts = body.get("stream_options") or {}
    include_usage = isinstance(opts, dict) and opts.get("include_usage") is True
    return _ChatRequest(model, messages, min(max_tokens, MAX_TOKENS_CAP), bool(stream),
                        include_usage)


class ProviderEmulator(HttpEmulator):
    """OpenAI-compatible chat completions over HTTPS with pacing and injectable faults.

    Knobs (constructor keywords, attributes, ``configure()`` or ``POST /control``):

    * ``mode``: ``ok``; ``throttle`` (every request 429 with ``Retry-After``) or
      ``error`` (every request ``error_status``);
    * ``ttft_ms`` (120) and ``tokens_per_s`` (50): token ``i`` of a response is sent
      ``ttft_ms + i / tokens_per_s`` after the request arrived; a non-streamed response
      is sent when its last token would have been;
    * ``throttle_rate`` / ``error_rate`` (0..1): in ``ok`` mode, the share of requests
      that get a 429 / an ``error_status``, drawn from the seeded RNG (one draw per valid
      request, so a seed fixes which requests fail);
    * ``error_status`` (503; any 5xx) and ``retry_after_s`` (1; whole seconds);
    * ``tls_delay_ms`` (0): every new connection's TLS handshake is held that long on
      the server side (from the ClientHello's arrival; read when the connection
      arrives), without stalling other connections;
    * ``seed`` (0; null for an unseeded RNG): setting it restarts the fault sequence.

    Faults answer at once, like a real gateway. Invalid requests always get 400, in every
    mode. Settings are read when a request arrives; in-flight streams keep their pacing.

    Counters: ``requests`` (chat completion requests received), ``completed``,
    ``streamed_tokens``, ``throttled``, ``errors`` (injected 5xx), ``bad_requests`` and
    ``disconnects`` (client left mid-response).

    TLS: ``cert_dir`` holds (or receives) ``cert.pem``/``key.pem``, see
    :func:`ensure_cert`; without it a temporary ``llm-slo-provider-<pid>-<6 hex>``
    directory is made on start and removed on stop. ``.cafile`` is the certificate to
    trust.
    """

    KIND: ClassVar[str] = "provider"
    COUNTERS: ClassVar[tuple[str, ...]] = ("requests", "completed", "streamed_tokens",
                                           "throttled", "errors", "bad_requests",
                                           "disconnects")
    mode = Knob("ok", choice(MODES))
    ttft_ms = Knob(120.0, number(0, 600_000))
    tokens_per_s = Knob(50.0, number(0.001, 1_000_000))
    throttle_rate = Knob(0.0, number(0, 1))
    error_rate = Knob(0.0, number(0, 1))
    error_status = Knob(503, number(500, 599, integer=True))
    retry_after_s = Knob(1, number(0, 86_400, integer=True))
    tls_delay_ms = Knob(0.0, number(0, 600_000))

    def __init__(self, host: str = "127.0.0.1", port: int = 0, *,
                 cert_dir: str | os.PathLike[str] | None = None, seed: int | None = 0,
                 **knobs: Any) -> None:
        super().__init__(host, port, seed=seed, **knobs)
        self.cert_dir = str(cert_dir) if cert_dir is not None else None
        self.cafile = ""
        self._tmp_dir: str | None = None

    @property
    def scheme(self) -> str:
        return "https"

    def _ssl_context(self) -> ssl.SSLContext:
        cert_dir = self.cert_dir
        if cert_dir is None:
            # named like every lab object (<prefix>-<pid>-<6 hex>), so the leftover of a
            # SIGKILLed run is traceable to its dead owner (naming.owner_alive)
            tmp = Path(tempfile.gettempdir()) / unique_name("llm-slo-provider")
            tmp.mkdir(mode=0o700)
            cert_dir = self._tmp_dir = str(tmp)
        cert, key = ensure_cert(cert_dir)
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.load_cert_chain(cert, key)
        self.cafile = cert
        return ctx

    def _site(self, runner: web.AppRunner, ctx: ssl.SSLContext | None) -> web.BaseSite:
        return _TlsGateSite(runner, self.host, self.port, ctx,
                            lambda: self.tls_delay_ms / 1000.0)

    def _release(self) -> None:
        if self._tmp_dir is not None:
            shutil.rmtree(self._tmp_dir, ignore_errors=True)
            self._tmp_dir = None

    def _add_routes(self, app: web.Application) -> None:
        app.router.add_post("/v1/chat/completions", self._chat_completions)

    def _draw_fault(self) -> str | None:
        """``"throttle"``, ``"error"`` or None for this request, per mode and rates."""
        # Always one draw, even in a forced mode, so request n meets the same draw
        # whatever the mode was for the requests before it.
        u = self.rng.random()
        if self.mode != "ok":
            return self.mode
        if u < self.throttle_rate:
            return "throttle"
        if u < self.throttle_rate + self.error_rate:
            return "error"
        return None

    def _fault_response(self, fault: str) -> web.Response:
        if fault == "throttle":
            self.counters["throttled"] += 1
            retry = self.retry_after_s
            body = error_body(f"Rate limit reached for requests. Please try again in {retry}s.",
                              "requests", code="rate_limit_exceeded")
            return json_response(429, body, {"Retry-After": str(retry)})
        self.counters["errors"] += 1
        status = self.error_status
        message = ("The server is overloaded or not ready yet." if status == 503
                   else "The server had an error while processing your request.")
        return json_response(status, error_body(message, "server_error"))

    async def _chat_completions(self, request: web.Request) -> web.StreamResponse:
        arrived = asyncio.get_running_loop().time()
        self.counters["requests"] += 1
        try:
            req = parse_chat_request(await read_json_object(request))
        except ValueError as exc:
            self.counters["bad_requests"] += 1
            return bad_request(str(exc.args[0]), exc.args[1] if len(exc.args) > 1 else None)
        fault = self._draw_fault()
        if fault is not None:
            return self._fault_response(fault)
        # settings are sampled once: a /control change applies to the next request
        ttft_s, gap_s = self.ttft_ms / 1000.0, 1.0 / self.tokens_per_s
        tokens = self._completion_tokens(req)
        cid = f"chatcmpl-{secrets.token_hex(12)}"
        if not req.stream:
            await _sleep_until(arrived + ttft_s + (len(tokens) - 1) * gap_s)
            self.counters["completed"] += 1
            return json_response(200, self._completion(cid, req, tokens),
                                 {"x-request-id": cid})
        return await self._stream(request, req, cid, tokens, arrived + ttft_s, gap_s)

    def _completion_tokens(self, req: _ChatRequest) -> list[str]:
        seed = int.from_bytes(hashlib.sha256(msgspec.json.encode(req.messages)).digest()[:8])
        words = [_WORDS[(seed >> (i % 48) ^ i * 7919) % len(_WORDS)]
                 for i in range(req.max_tokens)]
        # tokens carry their leading space, as BPE tokens do
        return [w if i == 0 else f" {w}" for i, w in enumerate(words)]

    def _usage(self, req: _ChatRequest, n: int) -> dict[str, int]:
        prompt = count_prompt_tokens(req.messages)
        return {"prompt_tokens": prompt, "completion_tokens": n, "total_tokens": prompt + n}

    def _completion(self, cid: str, req: _ChatRequest, tokens: list[str]) -> dict[str, Any]:
        return {"id": cid, "object": "chat.completion", "created": int(time.time()),
                "model": req.model, "system_fingerprint": "fp_llm_slo_lab",
                "choices": [{"index": 0, "message": {"role": "assistant",
                                                     "content": "".join(tokens)},
                             "logprobs": None, "finish_reason": "stop"}],
                "usage": self._usage(req, len(tokens))}

    async def _stream(self, request: web.Request, req: _ChatRequest, cid: str,
                      tokens: list[str], first_at: float, gap_s: float) -> web.StreamResponse:
        resp = web.StreamResponse(status=200, headers={
            "Content-Type": "text/event-stream", "Cache-Control": "no-cache",
            "x-request-id": cid})
        created = int(time.time())
        last = len(tokens) - 1
        try:
            await resp.prepare(request)
            for i, tok in enumerate(tokens):
                # absolute deadlines: write and scheduling delays do not accumulate
                await _sleep_until(first_at + i * gap_s)
                delta = {"role": "assistant", "content": tok} if i == 0 else {"content": tok}
                chunk = {"id": cid, "object": "chat.completion.chunk", "created": created,
                         "model": req.model, "system_fingerprint": "fp_llm_slo_lab",
                         "choices": [{"index": 0, "delta": delta, "logprobs": None,
                                      "finish_reason": "stop" if i == last else None}]}
                await resp.write(b"data: " + msgspec.json.encode(chunk) + b"\n\n")
                self.counters["streamed_tokens"] += 1
            if req.include_usage:  # as OpenAI does: one extra chunk, empty choices
                usage = {"id": cid, "object": "chat.completion.chunk", "created": created,
                         "model": req.model, "choices": [],
                         "usage": self._usage(req, len(tokens))}
                await resp.write(b"data: " + msgspec.json.encode(usage) + b"\n\n")
            await resp.write(b"data: [DONE]\n\n")
            await resp.write_eof()
        except ConnectionError:  # the client went away mid-stream: nothing to send to
            self.counters["disconnects"] += 1
            return resp
        self.counters["completed"] += 1
        return resp


async def _sleep_until(deadline: float) -> None:
    delay = deadline - asyncio.get_running_loop().time()
    if delay > 0:
        await asyncio.sleep(delay)


def provider_argv(host: str, port: int = 0, *, cert_dir: str, max_s: float = 0.0,
                  **knobs: Any) -> list[str]:
    """Command line of a provider subprocess (e.g. for ``NetnsPair.run``).

    ``knobs`` are initial settings (``mode="throttle"``, ``ttft_ms=200``, ...). Start it
    with ``stdout=PIPE`` and read its port with :func:`llm_slo.lab.workloads.wait_ready`;
    the CA to trust is ``<cert_dir>/cert.pem`` once it is ready.
    """
    return [*emulator_argv("provider", host, port, max_s, knobs), "--cert-dir", cert_dir]


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m llm_slo.lab.provider``: serve until SIGTERM; prints the port."""

    def extra(parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--cert-dir", required=True,
                            help="directory with cert.pem/key.pem (generated if absent)")

    def factory(args: argparse.Namespace, knobs: dict[str, Any]) -> HttpEmulator:
        return ProviderEmulator(args.host, args.port, cert_dir=args.cert_dir, **knobs)

    return emulator_main(ProviderEmulator, argv, "OpenAI-compatible provider emulator "
                         "(HTTPS, SSE streaming, injectable 429/5xx).", extra, factory)


if __name__ == "__main__":
    sys.exit(main())
