"""ProviderEmulator's tls_delay_ms: clients really see slower handshakes, nothing else stalls."""

from __future__ import annotations

import asyncio
import itertools
import socket
import ssl
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import pytest
from test_lab_provider import chat_body, post, session_for, stream  # sibling test module

from llm_slo.lab.processes import stop_process
from llm_slo.lab.provider import ProviderEmulator, provider_argv
from llm_slo.lab.workloads import wait_ready


def handshake_s(port: int, cafile: str, idle_first_s: float = 0.0) -> float:
    """Connect, optionally idle, then time the client's TLS handshake alone."""
    ctx = ssl.create_default_context(cafile=cafile)
    with socket.create_connection(("127.0.0.1", port), 5) as raw:
        time.sleep(idle_first_s)
        t0 = time.monotonic()
        with ctx.wrap_socket(raw, server_hostname="provider.lab"):  # handshakes here
            return time.monotonic() - t0


def test_handshake_takes_at_least_the_delay_and_is_fast_without() -> None:
    with ProviderEmulator() as p:
        assert handshake_s(p.port, p.cafile) < 0.1
        p.configure(tls_delay_ms=300)
        assert 0.3 <= handshake_s(p.port, p.cafile) < 0.7
        # counted from the ClientHello, not the connect: idling first does not help
        assert 0.3 <= handshake_s(p.port, p.cafile, idle_first_s=0.2) < 0.7

        async def control() -> tuple[int, float]:
            async with session_for(p.cafile) as s:  # this connection pays 300 ms too
                status, _, body = await post(s, f"{p.url}/control", {"tls_delay_ms": 0})
                return status, body["settings"]["tls_delay_ms"]
        assert asyncio.run(control()) == (200, 0.0)
        assert handshake_s(p.port, p.cafile) < 0.1


def test_slow_handshake_does_not_stall_a_stream_on_another_connection() -> None:
    with ProviderEmulator(ttft_ms=0, tokens_per_s=50) as p:
        async def go() -> tuple[list[tuple[float, str]], float, float]:
            async def slow_handshake() -> tuple[float, float]:
                await asyncio.sleep(0.1)  # the stream's connection is up and flowing
                p.configure(tls_delay_ms=800)
                took = await asyncio.to_thread(handshake_s, p.port, p.cafile)
                return took, time.monotonic()
            async with session_for(p.cafile) as s:
                (_, events), (took, done) = await asyncio.gather(
                    stream(s, f"{p.url}/v1/chat/completions",
                           chat_body(stream=True, max_tokens=40)),
                    slow_handshake())
            return events, took, done
        events, took, handshake_done = asyncio.run(go())
    assert took >= 0.8
    assert len(events) == 41 and events[-1][0] < handshake_done  # finished meanwhile
    gaps = [b[0] - a[0] for a, b in itertools.pairwise(events[:-1])]
    assert max(gaps) < 0.1, max(gaps)  # one token every 20 ms throughout


def test_stop_drops_a_held_handshake_at_once() -> None:
    errors: list[BaseException] = []
    with ProviderEmulator(tls_delay_ms=10_000) as p:
        def client() -> None:
            try:
                handshake_s(p.port, p.cafile)
            except OSError as exc:  # ssl.SSLError included
                errors.append(exc)

        t = threading.Thread(target=client)
        t.start()
        time.sleep(0.2)  # the ClientHello is in and held
        t0 = time.monotonic()
    assert time.monotonic() - t0 < 2.0
    t.join(5)
    assert not t.is_alive() and len(errors) == 1  # closed on it, not left hanging


def test_cli_flag_sets_the_delay() -> None:
    with tempfile.TemporaryDirectory(prefix="llm-slo-test-provider-") as cert_dir:
        argv = provider_argv("127.0.0.1", 0, cert_dir=cert_dir, max_s=30, tls_delay_ms=200)
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        try:
            port = wait_ready(proc, timeout=15)
            assert handshake_s(port, str(Path(cert_dir) / "cert.pem")) >= 0.2
            proc.terminate()
            assert proc.wait(5) == 0
        finally:
            stop_process(proc)


@pytest.mark.parametrize("bad", [-1, 600_001, True, "100"])
def test_bad_delay_rejected(bad: object) -> None:
    with pytest.raises(ValueError, match="tls_delay_ms"):
        ProviderEmulator(tls_delay_ms=bad)
