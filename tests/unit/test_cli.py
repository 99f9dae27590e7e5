"""sloctl: help that explains, clear one-line errors for bad input."""

from __future__ import annotations

import subprocess
import sys

import pytest

from llm_slo.cli import build_parser, main


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "llm_slo.cli", *args],
                          capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize("argv", [["--help"], ["probe", "watch", "--help"],
                                  ["prereq", "check", "--help"], ["btf", "--help"]])
def test_help_exits_zero(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    """Every command explains itself."""
    with pytest.raises(SystemExit) as e:
        build_parser().parse_args(argv)
    assert e.value.code == 0
    assert "usage: sloctl" in capsys.readouterr().out


def test_watch_help_lists_signals(capsys: pytest.CaptureFixture[str]) -> None:
    """probe watch --help names every signal and shows examples."""
    with pytest.raises(SystemExit):
        build_parser().parse_args(["probe", "watch", "--help"])
    out = capsys.readouterr().out
    assert "dns_latency_ms" in out and "cfs_throttled_ms" in out and "examples:" in out


def test_unknown_signal_is_a_clear_error() -> None:
    """A misspelt signal names itself and the valid choices; no traceback."""
    r = run("probe", "watch", "--signals", "dns_latency_ms,dsn_latency", "--duration", "1")
    assert r.returncode == 2
    assert "unknown signal(s) dsn_latency" in r.stderr
    assert "Traceback" not in r.stderr


@pytest.mark.parametrize("flag,value", [("--duration", "-3"), ("--interval", "abc")])
def test_bad_numbers_rejected(flag: str, value: str) -> None:
    """Non-positive or non-numeric durations are usage errors."""
    r = run("probe", "watch", flag, value)
    assert r.returncode == 2
    assert flag in r.stderr and "Traceback" not in r.stderr


def test_btf_missing_file_is_clear(tmp_path) -> None:
    """sloctl btf --btf on a missing file says so in one line."""
    assert main(["btf", "--btf", str(tmp_path / "none.btf")]) == 1


def test_btf_without_kernel_btf_lists_the_bcc_fallbacks_hooks(tmp_path, monkeypatch,
                                                              capsys) -> None:
    """No kernel BTF and no --btf: not an error but the fallback, with the classic
    tracepoints its probes need, each marked present or MISSING from tracefs."""
    from llm_slo.probes import base

    monkeypatch.setattr(base, "KERNEL_BTF", str(tmp_path / "vmlinux"))
    code = main(["btf"])
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("BTF: none") and "BCC fallback" in out[0]
    rows = [line.split() for line in out[1:]]
    tracepoints = {r[3] for r in rows if r[1] == "tracepoint"}
    assert {"sched/sched_switch", "sock/inet_sock_set_state", "tcp/tcp_retransmit_skb",
            "vmscan/mm_vmscan_memcg_reclaim_end"} <= tracepoints
    assert not [r for r in rows if r[1] in ("tp_btf", "raw_tp", "cgroup")]
    assert code == int(any(r[2] == "MISSING" for r in rows))


def test_agent_port_in_use_is_a_clear_error(tmp_path) -> None:
    """The OTLP port already taken: one line naming the address, exit 2, no traceback."""
    import socket

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        r = run("agent", "--signals", "cpu_steal_pct", "--listen", f"127.0.0.1:{port}",
                "--output-dir", str(tmp_path / "out"))
    assert r.returncode == 2, r.stderr
    assert f"cannot listen on 127.0.0.1:{port}" in r.stderr and "Traceback" not in r.stderr


def test_agent_unwritable_output_dir_is_a_clear_error(tmp_path) -> None:
    """An output directory that cannot be created is named in one line."""
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    r = run("agent", "--signals", "cpu_steal_pct", "--listen", "127.0.0.1:0",
            "--output-dir", str(blocker / "out"))
    assert r.returncode == 2 and "output directory" in r.stderr, r.stderr
    assert "Traceback" not in r.stderr


def test_recording_spans_without_jsonl_output_is_a_clear_error(tmp_path) -> None:
    """Spans are recorded into the JSONL directory: asking for them without one is named
    in one line, whether by flag or by config."""
    r = run("agent", "--signals", "cpu_steal_pct", "--listen", "127.0.0.1:0",
            "--output", "none", "--otlp-endpoint", "http://127.0.0.1:9/v1/logs",
            "--record-spans")
    assert r.returncode == 2 and "--record-spans" in r.stderr, r.stderr
    cfg = tmp_path / "agent.yaml"
    cfg.write_text("outputs:\n  spans: true\n")
    r = run("agent", "--config", str(cfg), "--signals", "cpu_steal_pct")
    assert r.returncode == 2 and "outputs.spans" in r.stderr, r.stderr
    assert "Traceback" not in r.stderr
    # ... while --output-dir supplies the directory: accepted (this agent then stops at
    # its busy port, which proves the configuration passed).
    import socket

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        r = run("agent", "--config", str(cfg), "--signals", "cpu_steal_pct", "--listen",
                f"127.0.0.1:{port}", "--output-dir", str(tmp_path / "out"))
    assert r.returncode == 2 and "cannot listen" in r.stderr, r.stderr


@pytest.mark.parametrize("extra,message", [
    (["--no-agent"], "--paired-no-agent and --no-agent: choose one"),
    ([], "is --out: the two runs need separate directories")])
def test_lab_run_paired_no_agent_conflicts_are_clear(tmp_path, extra: list[str],
                                                     message: str) -> None:
    """A paired run's directory must differ from --out, and pairing already runs
    without the agent: both refused before anything is built."""
    out = str(tmp_path / "none")
    r = run("lab", "run", "--scenario", "none", "--out", out, "--paired-no-agent",
            out if not extra else str(tmp_path / "off"), *extra)
    assert r.returncode != 0 and message in r.stderr, r.stderr
    assert "Traceback" not in r.stderr and not (tmp_path / "none").exists()
