"""Seeded, fixed-rate, open-loop load generator for the lab's RAG service.

Open loop: requests start on a schedule fixed in advance, never waiting for earlier
answers, so a slow service meets the same offered load as a fast one (a closed loop would
back off exactly when a fault bites, and hide it). The schedule and the prompts are a
pure function of profile, duration and seed (:func:`plan`), so a run with the agent on
and one with it off see the same requests at the same offsets.

Profile ``rag_mixed_20rps``: 20 requests/s with **fixed spacing** (one every 50 ms; a
``poisson`` arrival process is available to other profiles), prompts mixed 60 % short /
30 % medium / 10 % long (12 / 60 / 240 words, ``max_tokens`` 16 / 48 / 128), drawn from
``random.Random(seed)``.

In-flight requests are bounded (``max_in_flight``): a request due while the bound is
reached is not sent but recorded with ``error="dropped"``, so a stalled service cannot
make the generator pile up unbounded connections, and the drop itself is visible.

Client-side measurements per request (:class:`RequestResult`): wall-clock start, TTFT
(request sent to first token event received), total time, HTTP status, tokens, error.
``python -m llm_slo.lab.loadgen --url URL --profile rag_mixed_20rps --duration 20
--seed 1 --out results.jsonl`` writes one result per line and prints a summary.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import random
import signal
import statistics
import sys
import time
import uuid
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Literal

import aiohttp
import msgspec
import structlog

log = structlog.get_logger("lab.loadgen")

Arrival = Literal["fixed", "poisson"]

# Prompt words; the text only has to vary in length and content, not make sense.
_WORDS = ("why", "does", "the", "service", "latency", "budget", "burn", "when", "dns",
          "lookups", "stall", "explain", "retrieval", "provider", "throttling", "tokens",
          "kernel", "queue", "cpu", "memory", "pressure", "packet", "loss", "handshake",
          "cluster", "pod", "node", "window", "error", "rate", "stream", "context")


class PromptClass(msgspec.Struct, frozen=True, kw_only=True):
    """One prompt size of a profile's mix, drawn with probability ``weight``."""

    name: str
    weight: float
    words: int
    max_tokens: int


class LoadProfile(msgspec.Struct, frozen=True, kw_only=True):
    """Offered load: arrival rate and process, prompt mix, client bounds."""

    name: str
    rate_rps: float
    mix: tuple[PromptClass, ...]
    arrival: Arrival = "fixed"
    max_in_flight: int = 64
    timeout_s: float = 30.0  # per request, connect to end of stream


PROFILES: dict[str, LoadProfile] = {
    "rag_mixed_20rps": LoadProfile(
        name="rag_mixed_20rps", rate_rps=20.0, arrival="fixed", mix=(
            PromptClass(name="short", weight=0.6, words=12, max_tokens=16),
            PromptClass(name="medium", weight=0.3, words=60, max_tokens=48),
            PromptClass(name="long", weight=0.1, words=240, max_tokens=128))),
}


class PlannedRequest(msgspec.Struct, frozen=True, kw_only=True):
    """One request of a plan: when (offset from run start) and what."""

    seq: int
    offset_s: float
    size: str
    prompt: str
    max_tokens: int


class RequestResult(msgspec.Struct, frozen=True, kw_only=True):
    """What the client saw of one request.

    ``start_unix_nano`` is when it was sent (or dropped); ``ttft_ms`` is None without a
    token. ``status`` is the HTTP status, 0 when none arrived. ``error`` is "" for a
    complete answer, else ``http_<status>``, ``stream_error``, ``stream_truncated``,
    ``timeout``, ``dropped`` or the client exception's class name.
    """

    seq: int
    request_id: str
    size: str
    max_tokens: int
    offset_s: float
    start_unix_nano: int
    ttft_ms: float | None
    total_ms: float
    status: int
    tokens: int
    error: str = ""

    @property
    def ok(self) -> bool:
        return self.status == 200 and not self.error


class LoadRun(msgspec.Struct, kw_only=True):
    """A finished run: its parameters and one result per planned request, in order."""

    url: str
    profile: str
    seed: int
    duration_s: float
    results: list[RequestResult]

    @property
    def dropped(self) -> int:
        """Requests not sent because ``max_in_flight`` were already in flight."""
        return sum(r.error == "dropped" for r in self.results)

    def summary(self) -> dict[str, Any]:
        """Counts and latency percentiles (ms) of the run, for humans and logs."""
        ok = [r for r in self.results if r.ok]
        ttft = sorted(r.ttft_ms for r in ok if r.ttft_ms is not None)
        total = sorted(r.total_ms for r in ok)
        errors: dict[str, int] = {}
        for r in self.results:
            if r.error:
                errors[r.error] = errors.get(r.error, 0) + 1
        return {"profile": self.profile, "seed": self.seed, "duration_s": self.duration_s,
                "requests": len(self.results), "ok": len(ok), "dropped": self.dropped,
                "errors": errors,
                "ttft_ms": {"p50": percentile(ttft, 50), "p95": percentile(ttft, 95),
                            "p99": percentile(ttft, 99)},
                "total_ms": {"p50": percentile(total, 50), "p99": percentile(total, 99)}}


def percentile(sorted_values: list[float], q: float) -> float | None:
    """Nearest-rank percentile; None for no values."""
    if not sorted_values:
        return None
    rank = max(1, round(q / 100 * len(sorted_values) + 0.5))
    return round(sorted_values[min(rank, len(sorted_values)) - 1], 3)


def plan(profile: LoadProfile, duration_s: float, seed: int) -> list[PlannedRequest]:
    """Every request of a run, deterministic in (profile, duration, seed).

    Fixed arrival: request ``i`` at ``i / rate``. Poisson: exponential gaps of mean
    ``1 / rate``. Offsets are ``< duration_s``.
    """
    if profile.rate_rps <= 0 or duration_s < 0:
        raise ValueError("rate must be > 0 and duration >= 0")
    rng = random.Random(seed)
    weights = [c.weight for c in profile.mix]
    out: list[PlannedRequest] = []
    t = 0.0
    while True:
        if profile.arrival == "fixed":
            t = len(out) / profile.rate_rps  # no float drift from repeated addition
        elif out:
            t += rng.expovariate(profile.rate_rps)
        if t >= duration_s:
            return out
        cls = rng.choices(profile.mix, weights)[0]
        prompt = " ".join(rng.choice(_WORDS) for _ in range(cls.words))
        out.append(PlannedRequest(seq=len(out), offset_s=round(t, 6), size=cls.name,
                                  prompt=prompt, max_tokens=cls.max_tokens))


async def _send(session: aiohttp.ClientSession, url: str, req: PlannedRequest,
                request_id: str, timeout_s: float) -> RequestResult:
    """Send one request and read its event stream to the end."""
    start_ns = time.time_ns()
    t0 = time.perf_counter()
    ttft_ms: float | None = None
    status = tokens = 0
    error = ""
    try:
        async with asyncio.timeout(timeout_s):
            async with session.post(url, json={"prompt": req.prompt,
                                               "max_tokens": req.max_tokens},
                                    headers={"X-Request-Id": request_id}) as resp:
                status = resp.status
                if status != 200:
                    await resp.read()
                    error = f"http_{status}"
                else:
                    error = "stream_truncated"  # until [DONE] says otherwise
                    event = ""
                    async for raw in resp.content:
                        line = raw.strip()
                        if line.startswith(b"event:"):
                            event = line[6:].strip().decode(errors="replace")
                        elif line.startswith(b"data:"):
                            if event == "error":
                                error = "stream_error"
                                break
                            if line[5:].strip() == b"[DONE]":
                                error = ""
                                break
                            if ttft_ms is None:
                                ttft_ms = (time.perf_counter() - t0) * 1e3
                            tokens += 1
                        elif not line:
                            event = ""  # a blank line ends an event
    except TimeoutError:
        error = "timeout"
    except (aiohttp.ClientError, OSError, ValueError) as exc:  # ValueError: line too long
        error = type(exc).__name__
    return RequestResult(seq=req.seq, request_id=request_id, size=req.size,
                         max_tokens=req.max_tokens, offset_s=req.offset_s,
                         start_unix_nano=start_ns, ttft_ms=ttft_ms,
                         total_ms=(time.perf_counter() - t0) * 1e3, status=status,
                         tokens=tokens, error=error)


async def run_load(url: str, profile: LoadProfile | str, duration_s: float, seed: int, *,
                   max_in_flight: int | None = None, stop: asyncio.Event | None = None
                   ) -> LoadRun:
    """Run ``profile`` against ``url`` (the ``/chat`` endpoint) for ``duration_s``.

    Returns after the last planned request has finished or timed out. Setting ``stop``
    ends the schedule early; requests already in flight still complete.
    """
    prof = PROFILES[profile] if isinstance(profile, str) else profile
    bound = max_in_flight or prof.max_in_flight
    requests = plan(prof, duration_s, seed)
    run_id = uuid.uuid4().hex[:8]  # request ids stay unique across repeated runs
    results: dict[int, RequestResult] = {}
    tasks: set[asyncio.Task[RequestResult]] = set()
    loop = asyncio.get_running_loop()
    # limit = bound: the connector never queues a request the bound admitted.
    connector = aiohttp.TCPConnector(limit=bound)
    async with aiohttp.ClientSession(connector=connector) as session:
        try:
            t_start = loop.time()
            for req in requests:
                delay = t_start + req.offset_s - loop.time()
                if stop is not None:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(stop.wait(), max(delay, 0))
                    if stop.is_set():
                        break
                elif delay > 0:
                    await asyncio.sleep(delay)
                request_id = f"lg-{run_id}-{req.seq}"
                if len(tasks) >= bound:
                    results[req.seq] = RequestResult(
                        seq=req.seq, request_id=request_id, size=req.size,
                        max_tokens=req.max_tokens, offset_s=req.offset_s,
                        start_unix_nano=time.time_ns(), ttft_ms=None, total_ms=0.0,
                        status=0, tokens=0, error="dropped")
                    continue
                task = asyncio.create_task(_send(session, url, req, request_id,
                                                 prof.timeout_s))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
                task.add_done_callback(
                    lambda t, s=req.seq: None if t.cancelled()
                    else results.__setitem__(s, t.result()))
            if tasks:
                await asyncio.wait(set(tasks))
        finally:  # cancelled from outside: leave no request running past the session
            for task in tasks:
                task.cancel()
            if tasks:
                await asyncio.wait(set(tasks))
    out = [results[k] for k in sorted(results)]
    run = LoadRun(url=url, profile=prof.name, seed=seed, duration_s=duration_s, results=out)
    log.info("loadgen_finished", **{k: v for k, v in run.summary().items()
                                    if k in ("requests", "ok", "dropped", "errors")})
    return run


def write_jsonl(results: Iterable[RequestResult], path: str | Path) -> None:
    """One JSON :class:`RequestResult` per line."""
    enc = msgspec.json.Encoder()
    with Path(path).open("wb") as f:
        for r in results:
            f.write(enc.encode(r) + b"\n")


def read_jsonl(path: str | Path) -> list[RequestResult]:
    """The results :func:`write_jsonl` wrote."""
    dec = msgspec.json.Decoder(RequestResult)
    with Path(path).open("rb") as f:
        return [dec.decode(line) for line in f if line.strip()]


async def _main_async(args: argparse.Namespace) -> LoadRun:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):  # stop the schedule, keep what we have
        loop.add_signal_handler(sig, stop.set)
    profile = PROFILES[args.profile]
    if args.rate is not None:
        profile = msgspec.structs.replace(profile, rate_rps=args.rate)
    return await run_load(args.url, profile, args.duration, args.seed,
                          max_in_flight=args.max_in_flight, stop=stop)


def main(argv: list[str] | None = None) -> int:
    """``python -m llm_slo.lab.loadgen``: run, write ``--out`` JSONL, print a summary."""
    # deferred: the CLI module is heavier
    from llm_slo.cli import configure_logging, positive_number

    p = argparse.ArgumentParser(prog="python -m llm_slo.lab.loadgen",
                                description="Seeded open-loop load for the lab RAG service.")
    p.add_argument("--url", required=True, help="the RAG service's /chat URL")
    p.add_argument("--profile", default="rag_mixed_20rps", choices=sorted(PROFILES))
    p.add_argument("--rate", type=positive_number, metavar="RPS",
                   help="requests per second instead of the profile's (same prompt mix)")
    p.add_argument("--duration", type=float, required=True, help="seconds of schedule")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--out", required=True, help="JSONL file, one result per request")
    p.add_argument("--max-in-flight", type=int, default=None)
    p.add_argument("--verbose", action="store_true")
    args = p.parse_args(argv)
    configure_logging(args.verbose)
    run = asyncio.run(_main_async(args))
    write_jsonl(run.results, args.out)
    sys.stdout.write(msgspec.json.encode(run.summary()).decode() + "\n")
    return 0


def ttft_median(results: Iterable[RequestResult]) -> float | None:
    """Median client TTFT (ms) of the successful results; None if there are none."""
    values = [r.ttft_ms for r in results if r.ok and r.ttft_ms is not None]
    return statistics.median(values) if values else None


if __name__ == "__main__":
    sys.exit(main())
