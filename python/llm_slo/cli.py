"""``sloctl``: check a node, inspect BTF and attach points, watch kernel signals live.

Every expected failure (bad flags, missing privilege, missing BTF) ends in one line on
stderr naming what is wrong and a non-zero exit, never a traceback.
"""

from __future__ import annotations

import argparse
import logging
import os
import socket
import sys

import msgspec
import structlog

from llm_slo.errors import ConfigError, LlmSloError
from llm_slo.events import SIGNALS

EPILOG_WATCH = """\
signals: """ + ", ".join(SIGNALS) + """

examples:
  sloctl probe watch                                # every signal, table, until Ctrl-C
  sloctl probe watch --signals dns_latency_ms,connect_latency_ms --duration 30
  sloctl probe watch --output jsonl > events.jsonl  # one ProbeEvent per line, logs on stderr
"""


def configure_logging(verbose: bool) -> None:
    """structlog to stderr: coloured console on a terminal, JSON lines otherwise."""
    renderer = (
        structlog.dev.ConsoleRenderer()
        if sys.stderr.isatty()
        else structlog.processors.JSONRenderer()
    )
    structlog.configure(
        processors=[
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(
            logging.DEBUG if verbose else logging.INFO
        ),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=True,
    )


def _positive(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if v <= 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
    return v


def build_parser() -> argparse.ArgumentParser:
    """The full command tree (also used by tests and --help)."""
    p = argparse.ArgumentParser(
        prog="sloctl",
        description="Kernel-grounded SLO attribution for LLM services: node checks, BTF and "
        "probe inspection, live kernel signals.",
    )
    p.add_argument("-v", "--verbose", action="store_true", help="debug logs (libbpf included)")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    prereq = sub.add_parser("prereq", help="check that this node can run the agent")
    prereq_sub = prereq.add_subparsers(dest="prereq_command", required=True, metavar="ACTION")
    check = prereq_sub.add_parser(
        "check",
        help="kernel, BTF, bpf() and capabilities, tracefs, uprobes, cgroup v2, libbpf, "
        "libssl, memlock",
        description="One line per check with the fix when it is not ok. Exit 1 when a "
        "blocker fails (with --strict: when anything is not ok).",
    )
    check.add_argument("--output", choices=("text", "json"), default="text")
    check.add_argument("--strict", action="store_true", help="treat warnings as failures")
    check.add_argument("--btf", metavar="FILE", help="BTF file to use if the kernel has none")

    btf = sub.add_parser(
        "btf",
        help="where BTF comes from and, per probe, whether its attach points exist",
        description="Shows the BTF source (kernel or --btf FILE) and every hook each probe "
        "needs, marked present or missing on this host.",
    )
    btf.add_argument("--btf", metavar="FILE", help="BTF file to use instead of the kernel's")
    btf.add_argument("--output", choices=("text", "json"), default="text")

    probe = sub.add_parser("probe", help="load probes and look at what they see")
    probe_sub = probe.add_subparsers(dest="probe_command", required=True, metavar="ACTION")
    watch = probe_sub.add_parser(
        "watch",
        help="print kernel signal events live",
        description="Loads the selected probes into the kernel and prints their events: "
        "streamed exceptions (slow, failed, sampled) as they happen and per-cgroup "
        "aggregates each interval. Detaches everything on exit.",
        epilog=EPILOG_WATCH,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    watch.add_argument("--signals", metavar="A,B", help="comma-separated signals (default: all)")
    watch.add_argument("--duration", type=_positive, metavar="S",
                       help="stop after S seconds (default: run until Ctrl-C)")
    watch.add_argument("--interval", type=_positive, default=1.0, metavar="S",
                       help="poll and aggregate interval in seconds (default 1)")
    watch.add_argument("--output", choices=("text", "jsonl"), default="text")
    watch.add_argument("--node", default=os.environ.get("NODE_NAME") or socket.gethostname(),
                       help="node name to stamp on events (default: $NODE_NAME or hostname)")
    watch.add_argument("--dns-slow-ms", type=float, default=20.0, metavar="MS",
                       help="stream DNS answers at or above this latency (default 20)")
    watch.add_argument("--connect-slow-ms", type=float, default=100.0, metavar="MS",
                       help="stream established connects at or above this (default 100)")
    watch.add_argument("--runq-slow-ms", type=float, default=10.0, metavar="MS",
                       help="stream run-queue waits at or above this (default 10)")
    watch.add_argument("--btf", metavar="FILE", help="BTF file for CO-RE relocation")
    watch.add_argument("--attach-mode", choices=("auto", "tp_btf", "raw_tp"), default="auto",
                       help="tracepoint flavour: tp_btf needs kernel BTF; raw_tp works "
                       "without it (with --btf); auto picks (default)")
    return p


def _prereq(args: argparse.Namespace) -> int:
    from llm_slo import prereq

    checks = prereq.run_checks(btf_path=args.btf)
    if args.output == "json":
        sys.stdout.write(prereq.render_json(checks).decode() + "\n")
    else:
        sys.stdout.write(prereq.render_text(checks) + "\n")
    return prereq.exit_code(checks, args.strict)


def _btf(args: argparse.Namespace) -> int:
    from llm_slo.probes import PROBES, ProbeOptions

    path = args.btf or "/sys/kernel/btf/vmlinux"
    if not os.path.exists(path):
        raise LlmSloError(
            f"no BTF at {path}: use a kernel with CONFIG_DEBUG_INFO_BTF=y or pass --btf FILE"
        )
    source = "file" if args.btf else "kernel"
    options = ProbeOptions(btf_path=args.btf)
    points = [pt for cls in PROBES.values() for pt in cls(options).attach_points()]
    if args.output == "json":
        doc = {"btf": {"source": source, "path": path}, "attach_points": points}
        sys.stdout.write(msgspec.json.encode(doc).decode() + "\n")
    else:
        print(f"BTF: {source} ({path}, {os.path.getsize(path)} bytes)")
        for pt in points:
            mark = "present" if pt.present else ("MISSING" if pt.required else "missing")
            print(f"  {pt.probe:<24} {pt.kind:<7} {mark:<8} {pt.target}")
    missing = [pt for pt in points if pt.required and not pt.present]
    return 1 if missing else 0


def _watch(args: argparse.Namespace) -> int:
    from llm_slo.probes import ProbeOptions, parse_signals
    from llm_slo.watch import watch

    signals = parse_signals(args.signals)
    if args.btf and not os.path.isfile(args.btf):
        raise ConfigError(f"--btf {args.btf}: no such file")
    options = ProbeOptions(dns_slow_ms=args.dns_slow_ms, connect_slow_ms=args.connect_slow_ms,
                           runq_slow_ms=args.runq_slow_ms, btf_path=args.btf,
                           attach_mode=args.attach_mode)
    return watch(signals, output=args.output, interval_s=args.interval,
                 duration_s=args.duration, node=args.node, options=options)


def main(argv: list[str] | None = None) -> int:
    """Run ``sloctl``; returns the exit code."""
    args = build_parser().parse_args(argv)
    configure_logging(args.verbose)
    handlers = {"prereq": _prereq, "btf": _btf, "probe": _watch}
    try:
        return handlers[args.command](args)
    except ConfigError as e:
        print(f"sloctl: invalid input: {e}", file=sys.stderr)
        return 2
    except LlmSloError as e:
        print(f"sloctl: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
