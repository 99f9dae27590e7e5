"""A vector database emulator over plain HTTP with switchable latency and errors.

The lab's RAG service retrieves context before it calls the provider; the
``retrieval_slowdown`` fault needs that retrieval to get slow on command, and nothing
else about it to change. ``VectorDbEmulator`` answers ``POST /search`` with
``{"query": str, "top_k": 1..50}`` -> ``{"results": [{"id", "score", "text"}, ...]}``:

* results are a pure function of the query (hash-seeded), so replays and repetitions
  retrieve the same documents, and ``top_k=k`` returns the first ``k`` of ``top_k=50``;
* each answer waits ``latency_ms`` plus a uniform ``[0, jitter_ms]`` draw;
* ``error_rate`` of the requests get an immediate 503.

It runs in-process (``with VectorDbEmulator() as db:``, or ``async with`` on a running
loop) or as a subprocess that prints its port (``python -m llm_slo.lab.vectordb --host H
--port 0``), with the same ``/control`` API as :mod:`llm_slo.lab.provider`.
"""

from __future__ import annotations

import asyncio
import hashlib
import random
import sys
from collections.abc import Sequence
from typing import Any, ClassVar

from aiohttp import web

from llm_slo.lab._emulator import (
    HttpEmulator,
    Knob,
    bad_request,
    emulator_argv,
    emulator_main,
    error_body,
    json_response,
    number,
    read_json_object,
)

MAX_TOP_K = 50
DEFAULT_TOP_K = 5
#: Size of the emulated corpus; document ids are ``doc-0000`` .. ``doc-9999``.
CORPUS_SIZE = 10_000

# Passage text is built from this vocabulary, seeded by the document id, so a document
# has the same text in every result list it appears in.
_WORDS = ("latency", "budget", "error", "kernel", "scheduler", "retry", "backoff", "token",
          "stream", "cache", "index", "embedding", "vector", "shard", "replica", "quorum",
          "timeout", "socket", "resolver", "cgroup", "quota", "throttle", "memory", "page")


def _rng_for(text: str) -> random.Random:
    # sha256, not hash(): str hashes are salted per process (PYTHONHASHSEED)
    return random.Random(int.from_bytes(hashlib.sha256(text.encode()).digest()[:8]))


def document_text(doc_id: str) -> str:
    """The passage stored under ``doc_id`` (deterministic, 12 to 24 words)."""
    rng = _rng_for(doc_id)
    words = [rng.choice(_WORDS) for _ in range(rng.randint(12, 24))]
    return " ".join(words).capitalize() + "."


def search_results(query: str, top_k: int) -> list[dict[str, Any]]:
    """The ``top_k`` best matches for ``query``: distinct ids, scores descending in (0, 1)."""
    rng = _rng_for(f"query:{query}")
    ids = rng.sample(range(CORPUS_SIZE), MAX_TOP_K)
    # cosine-like similarities: a few good hits, then a long tail
    scores = sorted((round(0.95 * rng.random() ** 0.5, 6) for _ in ids), reverse=True)
    return [{"id": f"doc-{i:04d}", "score": s, "text": document_text(f"doc-{i:04d}")}
            for i, s in zip(ids[:top_k], scores[:top_k], strict=True)]


class VectorDbEmulator(HttpEmulator):
    """HTTP vector search with controllable latency, jitter and error rate.

    Knobs (constructor keywords, attributes, ``configure()`` or ``POST /control``):
    ``latency_ms`` (5), ``jitter_ms`` (0; uniform extra delay), ``error_rate`` (0..1,
    immediate 503s drawn from the seeded RNG) and ``seed`` (0; restarts the draws).
    Settings are read when a request arrives.

    Counters: ``requests`` (searches received), ``completed``, ``errors`` (injected
    503s), ``bad_requests``.
    """

    KIND: ClassVar[str] = "vectordb"
    COUNTERS: ClassVar[tuple[str, ...]] = ("requests", "completed", "errors", "bad_requests")
    latency_ms = Knob(5.0, number(0, 600_000))
    jitter_ms = Knob(0.0, number(0, 600_000))
    error_rate = Knob(0.0, number(0, 1))

    def _add_routes(self, app: web.Application) -> None:
        app.router.add_post("/search", self._search)

    async def _search(self, request: web.Request) -> web.Response:
        arrived = asyncio.get_running_loop().time()
        self.counters["requests"] += 1
        try:
            query, top_k = _parse_search(await read_json_object(request))
        except ValueError as exc:
            self.counters["bad_requests"] += 1
            return bad_request(str(exc.args[0]), exc.args[1] if len(exc.args) > 1 else None)
        # two draws per valid request, always, so the seed fixes the whole sequence
        fail, jitter = self.rng.random() < self.error_rate, self.rng.random()
        if fail:
            self.counters["errors"] += 1
            return json_response(503, error_body("vector index unavailable", "server_error"))
        delay = (self.latency_ms + jitter * self.jitter_ms) / 1000.0
        results = search_results(query, top_k)
        remaining = arrived + delay - asyncio.get_running_loop().time()
        if remaining > 0:
            await asyncio.sleep(remaining)
        self.counters["completed"] += 1
        return json_response(200, {"results": results})


def _parse_search(body: dict[str, Any]) -> tuple[str, int]:
    query = body.get("query")
    if not isinstance(query, str):
        raise ValueError("'query' must be a string", "query")
    top_k = body.get("top_k", DEFAULT_TOP_K)
    if isinstance(top_k, bool) or not isinstance(top_k, int) or not 1 <= top_k <= MAX_TOP_K:
        raise ValueError(f"'top_k' must be an integer within [1, {MAX_TOP_K}]", "top_k")
    return query, top_k


def vectordb_argv(host: str, port: int = 0, *, max_s: float = 0.0, **knobs: Any) -> list[str]:
    """Command line of a vector DB subprocess; read its port with ``wait_ready``."""
    return emulator_argv("vectordb", host, port, max_s, knobs)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m llm_slo.lab.vectordb``: serve until SIGTERM; prints the port."""
    return emulator_main(VectorDbEmulator, argv,
                         "Vector DB emulator (HTTP /search with switchable latency).")


if __name__ == "__main__":
    sys.exit(main())
