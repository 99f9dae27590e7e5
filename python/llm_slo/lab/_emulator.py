"""Shared plumbing of the lab's HTTP emulators (provider, vector DB).

aiohttp start/stop, a background-thread mode for synchronous callers, validated runtime
settings ("knobs") exposed as attributes and over ``/control``, OpenAI-style error
bodies, and the subprocess ``main`` that prints the bound port and exits on SIGTERM.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import math
import random
import signal
import ssl
import sys
import threading
from collections.abc import Callable, Sequence
from types import TracebackType
from typing import Any, ClassVar, Self

import msgspec
import structlog
from aiohttp import web

from llm_slo.errors import LabError

log = structlog.get_logger("lab.emulator")

_MAX_BODY_BYTES = 1024 * 1024
# How long stop() lets in-flight requests (a long stream) finish before cancelling them:
# short, because the lab stops servers between phases and a test must not wait out a
# 10 s stream.
_SHUTDOWN_GRACE_S = 0.5

Checker = Callable[[str, Any], Any]


# --- validated runtime settings ------------------------------------------------------------


def number(lo: float, hi: float, *, integer: bool = False) -> Checker:
    """Checker for a JSON number in ``[lo, hi]`` (an int if ``integer``); bools refused."""

    def check(name: str, value: Any) -> float | int:
        # bool is an int subclass: {"error_rate": true} is a client bug, not 1.0
        ok_type = int if integer else (int, float)
        if isinstance(value, bool) or not isinstance(value, ok_type) or \
                (isinstance(value, float) and not math.isfinite(value)):
            kind = "an integer" if integer else "a number"
            raise ValueError(f"{name} must be {kind}, got {value!r}")
        if not lo <= value <= hi:
            raise ValueError(f"{name} must be within [{lo:g}, {hi:g}], got {value!r}")
        return int(value) if integer else float(value)

    return check


def choice(options: Sequence[str]) -> Checker:
    """Checker for one of ``options``."""

    def check(name: str, value: Any) -> str:
        if value not in options:
            raise ValueError(f"{name} must be one of {', '.join(options)}; got {value!r}")
        return str(value)

    return check


def optional_seed(name: str, value: Any) -> int | None:
    """Checker for an RNG seed: a non-negative integer, or null for an unseeded RNG."""
    if value is None:
        return None
    return int(number(0, 2**63 - 1, integer=True)(name, value))


class Knob:
    """A validated runtime setting: a class attribute that checks every assignment.

    ``obj.name = value`` raises ``ValueError`` for a bad value, so the direct attribute
    setters and ``POST /control`` enforce the same rules. ``on_set`` names a method
    called with the new value after each assignment (the seed reseeds the RNG).
    """

    def __init__(self, default: Any, check: Checker, on_set: str | None = None) -> None:
        self.default, self.check, self.on_set = default, check, on_set
        self.name = self.attr = ""

    def __set_name__(self, owner: type, name: str) -> None:
        self.name, self.attr = name, f"_knob_{name}"

    def __get__(self, obj: object, objtype: type | None = None) -> Any:
        if obj is None:
            return self
        return obj.__dict__.get(self.attr, self.default)

    def __set__(self, obj: object, value: Any) -> None:
        obj.__dict__[self.attr] = self.check(self.name, value)
        if self.on_set:
            getattr(obj, self.on_set)(obj.__dict__[self.attr])


def error_body(message: str, type_: str, *, param: str | None = None,
               code: str | None = None) -> bytes:
    """An OpenAI-style error document: ``{"error": {message, type, param, code}}``."""
    return msgspec.json.encode({"error": {"message": message, "type": type_, "param": param,
                                          "code": code}})


def json_response(status: int, body: bytes | dict[str, Any],
                  headers: dict[str, str] | None = None) -> web.Response:
    """A JSON response from raw bytes or a dict (encoded with msgspec)."""
    raw = body if isinstance(body, bytes) else msgspec.json.encode(body)
    return web.Response(status=status, body=raw, content_type="application/json",
                        headers=headers)


def bad_request(message: str, param: str | None = None) -> web.Response:
    """400 with an OpenAI-style ``invalid_request_error`` body."""
    return json_response(400, error_body(message, "invalid_request_error", param=param))


async def read_json_object(request: web.Request) -> dict[str, Any]:
    """The request body as a JSON object; ``ValueError`` with a client-facing reason."""
    try:
        raw = await request.read()
    except web.HTTPRequestEntityTooLarge:
        raise ValueError(f"request body exceeds {_MAX_BODY_BYTES} bytes") from None
    try:
        body = msgspec.json.decode(raw)
    except msgspec.DecodeError as exc:
        raise ValueError(f"request body is not valid JSON: {exc}") from None
    if not isinstance(body, dict):
        raise ValueError("request body must be a JSON object")
    return body


# --- the shared emulator plumbing ----------------------------------------------------------


class HttpEmulator:
    """aiohttp server with validated runtime knobs, ``/control`` and a background-thread mode.

    Subclasses declare :class:`Knob` class attributes, ``COUNTERS`` (names of the ``int``
    counters in ``self.counters``) and add their routes in :meth:`_add_routes`. Every
    emulator has a ``seed`` knob: faults drawn from ``self.rng`` repeat exactly for the
    same seed and request sequence.

    Lifecycle: ``await start()`` / ``await stop()`` (or ``async with``) on a running loop,
    or ``with emulator:`` which runs a private event loop on a daemon thread, so
    synchronous code (tests, the lab runner) can use it. Knobs are plain attributes read
    per request; setting them from another thread is safe (single attribute stores).
    """

    KIND: ClassVar[str] = "emulator"
    COUNTERS: ClassVar[tuple[str, ...]] = ("requests",)
    seed = Knob(0, optional_seed, on_set="_reseed")

    def __init__(self, host: str = "127.0.0.1", port: int = 0, *, seed: int | None = 0,
                 **knobs: Any) -> None:
        self.host, self.port = host, port
        self.rng = random.Random(seed)
        self.counters: dict[str, int] = dict.fromkeys(self.COUNTERS, 0)
        self.configure(seed=seed, **knobs)
        self._runner: web.AppRunner | None = None
        self._thread: threading.Thread | None = None
        self._thread_loop: asyncio.AbstractEventLoop | None = None

    # settings

    @classmethod
    def knobs(cls) -> dict[str, Knob]:
        """Every runtime setting of this emulator class, by name."""
        found: dict[str, Knob] = {}
        for klass in reversed(cls.__mro__):
            found.update({k: v for k, v in vars(klass).items() if isinstance(v, Knob)})
        return found

    def configure(self, **changes: Any) -> None:
        """Apply several settings at once, all or nothing.

        Raises ``ValueError`` naming the first unknown key or bad value; then nothing
        changed, so a half-applied fault can never happen.
        """
        knobs = self.knobs()
        for key, value in changes.items():
            if key not in knobs:
                raise ValueError(f"unknown setting {key!r}; known: {', '.join(sorted(knobs))}")
            knobs[key].check(key, value)
        for key, value in changes.items():
            setattr(self, key, value)

    def settings(self) -> dict[str, Any]:
        """Current value of every knob."""
        return {name: getattr(self, name) for name in self.knobs()}

    def state(self) -> dict[str, Any]:
        """``{"settings": ..., "counters": ...}``, the ``GET /control`` document."""
        return {"settings": self.settings(), "counters": dict(self.counters)}

    def _reseed(self, seed: int | None) -> None:
        self.rng.seed(seed)

    # lifecycle

    @property
    def scheme(self) -> str:
        return "http"

    @property
    def url(self) -> str:
        """Base URL, e.g. ``http://127.0.0.1:41234`` (the real port once started)."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.scheme}://{host}:{self.port}"

    def _add_routes(self, app: web.Application) -> None:
        raise NotImplementedError

    def _ssl_context(self) -> ssl.SSLContext | None:
        """Server TLS context, or None for plain HTTP. Called by :meth:`start`."""
        return None

    def _release(self) -> None:
        """Free what :meth:`_ssl_context` made (e.g. a temporary certificate directory)."""

    def _site(self, runner: web.AppRunner, ctx: ssl.SSLContext | None) -> web.BaseSite:
        """The site listening on ``host:port``; a subclass may gate new connections."""
        return web.TCPSite(runner, self.host, self.port, ssl_context=ctx)

    async def start(self) -> None:
        """Bind ``host:port`` and serve; ``.port`` is the bound port afterwards."""
        if self._runner is not None:
            raise LabError(f"{self.KIND} already started")
        app = web.Application(client_max_size=_MAX_BODY_BYTES)
        app.router.add_get("/control", self._get_control)
        app.router.add_post("/control", self._post_control)
        app.router.add_get("/healthz", self._healthz)
        self._add_routes(app)
        runner = web.AppRunner(app, access_log=None, handle_signals=False,
                               shutdown_timeout=_SHUTDOWN_GRACE_S)
        try:
            ctx = self._ssl_context()
            await runner.setup()
            site = self._site(runner, ctx)
            await site.start()
        except BaseException:
            with contextlib.suppress(Exception):  # the original error is what matters
                await runner.cleanup()
            self._release()
            raise
        self._runner = runner
        self.port = runner.addresses[0][1]
        log.info(f"{self.KIND}_started", url=self.url, **self.settings())

    async def stop(self) -> None:
        """Stop serving (in-flight requests get a short grace) and free resources.

        Idempotent.
        """
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()
            log.info(f"{self.KIND}_stopped", url=self.url, **self.counters)
        self._release()

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    def __enter__(self) -> Self:
        """Start on a private event loop in a daemon thread; returns once listening."""
        loop = asyncio.new_event_loop()
        thread = threading.Thread(target=loop.run_forever, daemon=True,
                                  name=f"lab-{self.KIND}")
        thread.start()
        self._thread, self._thread_loop = thread, loop
        try:
            asyncio.run_coroutine_threadsafe(self.start(), loop).result(30.0)
        except BaseException:
            self._stop_thread()
            raise
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self._stop_thread()

    def _stop_thread(self) -> None:
        loop, thread = self._thread_loop, self._thread
        self._thread = self._thread_loop = None
        if loop is None or thread is None:
            return
        try:
            asyncio.run_coroutine_threadsafe(self.stop(), loop).result(10.0)
        finally:
            loop.call_soon_threadsafe(loop.stop)
            thread.join(5.0)
            loop.close()

    # shared routes

    async def _healthz(self, request: web.Request) -> web.Response:
        return web.Response(text="ok\n")

    async def _get_control(self, request: web.Request) -> web.Response:
        return json_response(200, self.state())

    async def _post_control(self, request: web.Request) -> web.Response:
        try:
            changes = await read_json_object(request)
            self.configure(**changes)
        except ValueError as exc:
            return bad_request(str(exc))
        log.info(f"{self.KIND}_reconfigured", url=self.url, **changes)
        return json_response(200, self.state())


def emulator_main(cls: type[HttpEmulator], argv: Sequence[str] | None,
                  description: str, extra_args: Callable[[argparse.ArgumentParser], None]
                  | None = None, factory: Callable[[argparse.Namespace, dict[str, Any]],
                                                   HttpEmulator] | None = None) -> int:
    """Command-line entry point shared by the emulators' ``python -m`` mode.

    Every knob becomes a ``--knob-name VALUE`` option (JSON-parsed, so ``--seed null``
    works); ``--max-s`` bounds the process's life so a crashed lab cannot leak it forever.
    Prints the bound port on stdout, logs to stderr, exits 0 on SIGTERM/SIGINT.
    """
    parser = argparse.ArgumentParser(prog=f"python -m llm_slo.lab.{cls.KIND}",
                                     description=description)
    parser.add_argument("--host", default="127.0.0.1", help="address to bind")
    parser.add_argument("--port", type=int, default=0, help="port (0: any; printed)")
    parser.add_argument("--max-s", type=float, default=0.0,
                        help="exit after this many seconds (0: run until signalled)")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    for name in cls.knobs():
        parser.add_argument(f"--{name.replace('_', '-')}", dest=f"knob_{name}",
                            metavar="VALUE", help=f"initial {name} (JSON value)")
    if extra_args is not None:
        extra_args(parser)
    args = parser.parse_args(argv)

    from llm_slo.cli import configure_logging  # deferred: only the subprocess needs it
    configure_logging(args.verbose)  # to stderr: stdout carries the port line only

    knobs: dict[str, Any] = {}
    for name in cls.knobs():
        text = getattr(args, f"knob_{name}")
        if text is not None:
            try:
                knobs[name] = msgspec.json.decode(text)
            except msgspec.DecodeError:
                knobs[name] = text  # a bare word such as --mode throttle
    try:
        emu = (factory(args, knobs) if factory is not None
               else cls(args.host, args.port, **knobs))
    except ValueError as exc:
        parser.error(str(exc))
    try:
        asyncio.run(_serve_until_signalled(emu, args.max_s))
    except (OSError, LabError) as exc:
        print(f"{cls.KIND}: {exc}", file=sys.stderr)
        return 1
    return 0


async def _serve_until_signalled(emu: HttpEmulator, max_s: float) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await emu.start()
    try:
        print(emu.port, flush=True)  # the readiness line the starter waits for
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), max_s if max_s > 0 else None)
    finally:
        await emu.stop()


# --- certificates --------------------------------------------------------------------------


def emulator_argv(kind: str, host: str, port: int, max_s: float,
                   knobs: dict[str, Any]) -> list[str]:
    argv = [sys.executable, "-m", f"llm_slo.lab.{kind}", "--host", host, "--port", str(port),
            "--max-s", str(max_s)]
    for name, value in knobs.items():
        argv += [f"--{name.replace('_', '-')}", msgspec.json.encode(value).decode()]
    return argv
