"""``sloctl``: check a node, inspect BTF and attach points, watch kernel signals live.

Every expected failure (bad flags, missing privilege, missing BTF) ends in one line on
stderr naming what is wrong and a non-zero exit, never a traceback.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import socket
import sys
from typing import Any

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


class _StderrNow:
    """Writes to whatever ``sys.stderr`` is at the time of the write, not at configure
    time: embedding code and test runners swap it, and a cached, closed stream would
    break every later log call."""

    def write(self, text: str) -> int:
        return sys.stderr.write(text)

    def flush(self) -> None:
        sys.stderr.flush()


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
        logger_factory=structlog.PrintLoggerFactory(file=_StderrNow()),
        cache_logger_on_first_use=True,
    )


def positive_number(text: str) -> float:
    """An argparse type: a number above 0."""
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
    check.add_argument("--kernel-headers", metavar="DIR",
                       help="header tree the BCC fallback would compile against (default: "
                       "the running kernel's)")

    btf = sub.add_parser(
        "btf",
        help="where BTF comes from and, per probe, whether its attach points exist",
        description="Shows the BTF source (kernel, --btf FILE, or none: then the BCC "
        "fallback's classic tracepoints) and every hook each probe needs, marked present or "
        "missing on this host.",
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
    watch.add_argument("--duration", type=positive_number, metavar="S",
                       help="stop after S seconds (default: run until Ctrl-C)")
    watch.add_argument("--interval", type=positive_number, default=1.0, metavar="S",
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
    watch.add_argument("--attach-mode", choices=("auto", "tp_btf", "raw_tp", "bcc"),
                       default="auto",
                       help="what to load: tp_btf needs kernel BTF; raw_tp works without "
                       "it given --btf; bcc compiles the fallback programs against the "
                       "kernel headers; auto picks (default)")
    watch.add_argument("--kernel-headers", metavar="DIR",
                       help="bcc: kernel header tree to compile against (default: "
                       "/lib/modules/$(uname -r)/build or the kheaders module)")
    agent = sub.add_parser(
        "agent",
        help="run the agent: probes, OTLP span intake, SLOs, correlation, attribution",
        description="Runs everything in one process: kernel probes, an OTLP/HTTP trace "
        "receiver (POST /v1/traces), LLM SLIs and burn rates, correlation of spans with "
        "kernel signals, and fault-domain attribution of every SLO violation. Results go "
        "to JSONL files and/or an OTLP/HTTP logs endpoint. Flags override the config "
        "file. Stops cleanly on SIGTERM/SIGINT.",
        epilog="example:\n  sloctl agent --output-dir /var/lib/llm-slo "
        "--otlp-endpoint http://otel-collector:4318/v1/logs",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    agent.add_argument("--config", metavar="FILE", help="YAML or JSON config "
                       "(schema: contracts/config.schema.json)")
    agent.add_argument("--output", choices=("jsonl", "none"),
                       help="jsonl: write probe-events, slo-events and attributions .jsonl")
    agent.add_argument("--output-dir", metavar="DIR", help="directory for --output jsonl")
    agent.add_argument("--record-spans", action="store_true",
                       help="also write every received span to spans.jsonl in the output "
                       "directory, for `sloctl replay --spans`")
    agent.add_argument("--otlp-endpoint", metavar="URL",
                       help="OTLP/HTTP logs endpoint, e.g. http://collector:4318/v1/logs")
    agent.add_argument("--listen", metavar="HOST:PORT",
                       help="OTLP/HTTP trace receiver address (default 127.0.0.1:4318)")
    agent.add_argument("--signals", metavar="A,B", help="comma-separated signals (default: all)")
    agent.add_argument("--interval", type=positive_number, metavar="S",
                       help="probe poll and evaluation tick in seconds (default 1)")
    agent.add_argument("--node", help="node name (default: $NODE_NAME or hostname)")

    replay = sub.add_parser(
        "replay",
        help="re-run correlation and attribution over recorded JSONL, without a kernel",
        description="Feeds recorded spans and ProbeEvents through the same engine as the "
        "agent, in timestamp order, and writes slo-events.jsonl and attributions.jsonl.",
    )
    replay.add_argument("--spans", required=True, metavar="FILE",
                        help="JSONL of Span objects (one per line)")
    replay.add_argument("--signals", required=True, metavar="FILE",
                        help="JSONL of ProbeEvents (e.g. an agent's probe-events.jsonl)")
    replay.add_argument("--out", required=True, metavar="DIR")
    replay.add_argument("--config", metavar="FILE", help="agent config whose engine section "
                        "to use")
    replay.add_argument("--tick", type=positive_number, default=1.0, metavar="S",
                        help="evaluation tick in seconds of recorded time (default 1)")
    _add_lab(sub)
    return p


def _add_lab(sub: Any) -> None:
    lab = sub.add_parser(
        "lab", help="the incident lab: a real RAG workload, real faults, scored attribution",
        description="Builds a small cluster on this machine (network namespaces and cgroups "
        "for rag, provider, vectordb, dns, noisy and loadgen pods), runs the real agent "
        "against real load, injects faults and scores the agent's attributions against "
        "what was injected. Needs root.")
    lab_sub = lab.add_subparsers(dest="lab_command", required=True, metavar="ACTION")
    lab_sub.add_parser("list", help="scenarios, their faults and parameters with defaults")
    run = lab_sub.add_parser(
        "run", help="run a scenario and write scored artifacts to --out",
        description="Runs SCENARIO: per repetition a fresh agent, a baseline phase, then a "
        "fault and a recovery phase per scenario step, load at 20 requests/s throughout. "
        "Writes slo-events.jsonl, attributions.jsonl, predictions.csv, "
        "confusion-matrix.csv, summary.json, provenance.json, report.md and timeline SVGs "
        "to --out. Ctrl-C stops and cleans up.",
        epilog="example:\n  sloctl lab run --scenario dns_latency --set dns.delay_ms=150 "
        "--reps 3 --out out/dns",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    run.add_argument("--scenario", required=True, help="see `sloctl lab list`")
    run.add_argument("--set", dest="sets", action="append", default=[], metavar="NAME=VALUE",
                     help="override a fault or workload parameter (repeatable; `sloctl lab "
                     "list` shows them)")
    run.add_argument("--reps", type=int, default=1, help="repetitions (default 1)")
    run.add_argument("--phases", default="baseline=20s,fault=20s,recovery=10s",
                     help="phase lengths (default baseline=20s,fault=20s,recovery=10s)")
    run.add_argument("--seed", type=int, default=1, help="load and emulator seed (default 1)")
    run.add_argument("--out", required=True, metavar="DIR", help="output directory")
    run.add_argument("--no-agent", action="store_true",
                     help="run the workload without the agent (a plain span sink takes its "
                     "place): the baseline for the agent's latency overhead")
    run.add_argument("--paired-no-agent", metavar="DIR",
                     help="also run every repetition without the agent, on the same load, "
                     "into DIR, alternating which of the two goes first: a slow stretch of "
                     "the machine then hits both sides of the latency-overhead comparison")
    rescore = lab_sub.add_parser(
        "rescore", help="replay a finished run's recordings through the engine (its own or "
        "another engine config) and score that; no kernel, seconds",
        description="Replays each repetition's spans.jsonl and probe-events.jsonl of a "
        "`sloctl lab run` output through the engine and scores the attributions against "
        "the same faults. An approximation of the live agent (fixed ticks, no wake on a "
        "breach, records at their timestamps): for comparing settings, not a result.",
        epilog="example:\n  sloctl lab rescore --run out/dns --config tuned.yaml "
        "--out out/dns-tuned\n\ntuned.yaml's engine section is merged over each "
        "repetition's recorded config:\n  engine:\n    attribution:\n      "
        "min_confidence: 0.6", formatter_class=argparse.RawDescriptionHelpFormatter)
    rescore.add_argument("--run", required=True, metavar="DIR",
                         help="a `sloctl lab run --out` directory")
    rescore.add_argument("--config", metavar="FILE", help="agent config whose engine section "
                         "is merged over the run's own (default: the run's own)")
    rescore.add_argument("--out", required=True, metavar="DIR",
                         help="where the replayed attributions and summary.json go")
    rescore.add_argument("--recorded", action="store_true",
                         help="replay nothing: score the live agent's own attributions "
                         "again with this version's scoring (after a change of the "
                         "scoring); span joins are judged again where the run kept the "
                         "rag's truth log, overhead is carried over from the run's "
                         "summary.json, and the report is written again in --out")
    lab_sub.add_parser("clean", help="remove every namespace, cgroup, nftables table and "
                       "process a lab run left behind (also of crashed runs)")


def _lab_rescore(args: argparse.Namespace) -> int:
    from pathlib import Path

    from llm_slo.config import load_config
    from llm_slo.lab.rescore import rescore, rescore_recorded

    if args.recorded:
        if args.config:
            raise ConfigError("--recorded scores the live attributions again; --config (an "
                              "engine to replay with) does not apply to it")
        s = rescore_recorded(Path(args.run), Path(args.out))
        how, written = "live, scored again", "summary.json, predictions.csv, report.md"
        print("the live attributions, scored again with this version's scoring (no replay)")
    else:
        engine = None
        if args.config:
            load_config(args.config)  # validated whole, errors named
            raw = Path(args.config).read_bytes()
            doc = (msgspec.yaml.decode(raw) if args.config.endswith((".yaml", ".yml"))
                   else msgspec.json.decode(raw))
            engine = doc.get("engine") or {}
        s = rescore(Path(args.run), Path(args.out), engine)
        how, written = "replayed", "summary.json, predictions.csv, rep-NN/attributions.jsonl"
        print(s["note"])

    def num(x: float | None, nd: int = 3) -> str:
        return "n/a" if x is None else f"{x:.{nd}f}"

    print(f"macro-F1 {num(s['macro_f1'])}  FPR {num(s['fpr'])}  "
          f"delay median {num(s['detection_delay_s']['median'], 2)} s ({how})  "
          f"reps {s['reps']}")
    for domain, c in s["per_class"].items():
        print(f"  {domain:<20} precision {c['precision']:.3f}  recall {c['recall']:.3f}  "
              f"F1 {c['f1']:.3f}  support {c['support']}")
    print(f"written: {args.out}/{written}")
    return 0


def _lab(args: argparse.Namespace) -> int:
    from pathlib import Path

    from llm_slo.lab import cleanup_all
    from llm_slo.lab.faults import FAULTS, SCENARIOS, WORKLOAD, parse_sets, resolve_params
    from llm_slo.lab.topology import clean_netns_etc

    if args.lab_command == "list":
        print("workload (every scenario)")
        for name, p in WORKLOAD.items():
            print(f"{'':<22}--set {name}={p.default:g}  ({p.help}; {p.lo:g}..{p.hi:g})")
        for sc in SCENARIOS.values():
            steps = " -> ".join("+".join(step) for step in sc.steps) or "(no fault)"
            domains = {FAULTS[f].domain for step in sc.steps for f in step}
            print(f"{sc.name:<20} {steps}\n{'':<20} {sc.description}")
            if domains:
                print(f"{'':<20} ground truth: {', '.join(sorted(domains))}")
            for name, p in sc.params().items():
                print(f"{'':<22}--set {name}={p.default:g}  ({p.help}; "
                      f"{p.lo:g}..{p.hi:g})")
        return 0
    if args.lab_command == "clean":
        if os.geteuid() != 0:
            raise LlmSloError("sloctl lab clean needs root")
        removed = cleanup_all("llm-slo-lab", include_live=True) + clean_netns_etc()
        print(f"removed {len(removed)} lab object(s)")
        for r in removed:
            print(f"  {r}")
        return 0
    if args.lab_command == "rescore":
        return _lab_rescore(args)
    from llm_slo.lab.report import results_table
    from llm_slo.lab.runner import LabRun, Phases

    if args.scenario not in SCENARIOS:
        raise ConfigError(f"--scenario {args.scenario}: unknown; one of "
                          f"{', '.join(SCENARIOS)} (see `sloctl lab list`)")
    if args.reps < 1:
        raise ConfigError("--reps must be at least 1")
    if args.paired_no_agent and args.no_agent:
        raise ConfigError("--paired-no-agent and --no-agent: choose one (the first already "
                          "runs every repetition without the agent too)")
    if args.paired_no_agent and Path(args.paired_no_agent).resolve() == Path(args.out).resolve():
        raise ConfigError(f"--paired-no-agent {args.paired_no_agent} is --out: the two "
                          "runs need separate directories")
    scenario = SCENARIOS[args.scenario]
    params = resolve_params(scenario, parse_sets(args.sets))
    command = " ".join(["sloctl", "lab", "run", "--scenario", args.scenario,
                        *(f"--set {x}" for x in args.sets), "--reps", str(args.reps),
                        "--phases", args.phases, "--seed", str(args.seed), "--out", args.out,
                        *(["--no-agent"] if args.no_agent else []),
                        *(["--paired-no-agent", args.paired_no_agent]
                          if args.paired_no_agent else [])])
    run = LabRun(scenario, params, reps=args.reps, phases=Phases.parse(args.phases),
                 seed=args.seed, out=Path(args.out), command=command,
                 with_agent=not args.no_agent,
                 paired_no_agent=Path(args.paired_no_agent) if args.paired_no_agent else None)
    # Ctrl-C and `kill` both stop the run through the same clean-up path, also when the
    # shell started us with SIGINT ignored (a background job).
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        summary = run.run()
    except KeyboardInterrupt:
        kept = (f"; its {len(run.results)} finished repetition(s) are scored in "
                f"{args.out}/" if run.results else "")
        print(f"\nsloctl: lab run interrupted; everything it made was removed{kept}",
              file=sys.stderr)
        raise
    finally:
        cleanup_all("llm-slo-lab")
        clean_netns_etc()
    print(results_table(summary))
    print(f"artifacts: {args.out}/ (report.md, summary.json, timeline.svg, ...)")
    return 0


def _agent(args: argparse.Namespace) -> int:
    import asyncio

    from llm_slo.agent import Agent
    from llm_slo.config import IntakeConfig, load_config
    from llm_slo.probes import parse_signals

    cfg = load_config(args.config)
    outputs = cfg.outputs
    if args.output == "jsonl" and not (args.output_dir or outputs.jsonl_dir):
        raise ConfigError("--output jsonl needs --output-dir (or outputs.jsonl_dir)")
    jsonl_dir = None if args.output == "none" else args.output_dir or outputs.jsonl_dir
    spans = args.record_spans or outputs.spans
    if spans and not jsonl_dir:
        raise ConfigError("recording spans (--record-spans or outputs.spans) needs JSONL "
                          "output: pass --output-dir DIR (and not --output none)")
    outputs = msgspec.structs.replace(outputs, jsonl_dir=jsonl_dir, spans=spans)
    if args.otlp_endpoint:
        outputs = msgspec.structs.replace(outputs, otlp_endpoint=args.otlp_endpoint)
    changes: dict[str, object] = {"outputs": outputs}
    if args.listen:
        changes["intake"] = IntakeConfig(listen=args.listen,
                                         max_body_bytes=cfg.intake.max_body_bytes)
    if args.signals:
        changes["signal_set"] = parse_signals(args.signals)
    if args.interval:
        changes["interval_s"] = args.interval
    if args.node:
        changes["node"] = args.node
    cfg = msgspec.structs.replace(cfg, **changes)
    if not cfg.outputs.jsonl_dir and not cfg.outputs.otlp_endpoint:
        raise ConfigError("no output: pass --output-dir DIR and/or --otlp-endpoint URL")
    return asyncio.run(Agent(cfg).run())


def _replay(args: argparse.Namespace) -> int:
    from llm_slo.config import load_config
    from llm_slo.replay import replay

    cfg = load_config(args.config)
    totals = replay(args.spans, args.signals, args.out, cfg.engine, tick_s=args.tick)
    print(msgspec.json.encode(totals).decode())
    return 0


def _prereq(args: argparse.Namespace) -> int:
    from llm_slo import prereq

    checks = prereq.run_checks(btf_path=args.btf, kernel_headers=args.kernel_headers)
    if args.output == "json":
        sys.stdout.write(prereq.render_json(checks).decode() + "\n")
    else:
        sys.stdout.write(prereq.render_text(checks) + "\n")
    return prereq.exit_code(checks, args.strict)


def _btf(args: argparse.Namespace) -> int:
    from llm_slo.probes import PROBES, ProbeOptions, base

    path = args.btf or base.KERNEL_BTF
    if args.btf and not os.path.exists(path):
        raise LlmSloError(f"no BTF at {path}: pass this kernel's BTF file (e.g. from BTFHub)")
    source = ("file" if args.btf else "kernel") if os.path.exists(path) else "none"
    options = ProbeOptions(btf_path=args.btf)
    points = [pt for cls in PROBES.values() for pt in cls(options).attach_points()]
    if args.output == "json":
        doc = {"btf": {"source": source, "path": path if source != "none" else None},
               "attach_points": points}
        sys.stdout.write(msgspec.json.encode(doc).decode() + "\n")
    else:
        if source == "none":
            print(f"BTF: none ({path} missing): the probes use the BCC fallback, compiled "
                  "against the kernel headers (see `sloctl prereq check`)")
        else:
            print(f"BTF: {source} ({path}, {os.path.getsize(path)} bytes)")
        for pt in points:
            mark = "present" if pt.present else ("MISSING" if pt.required else "missing")
            print(f"  {pt.probe:<24} {pt.kind:<10} {mark:<8} {pt.target}")
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
                           attach_mode=args.attach_mode, kernel_headers=args.kernel_headers)
    return watch(signals, output=args.output, interval_s=args.interval,
                 duration_s=args.duration, node=args.node, options=options)


def main(argv: list[str] | None = None) -> int:
    """Run ``sloctl``; returns the exit code."""
    args = build_parser().parse_args(argv)
    configure_logging(args.verbose)
    handlers = {"prereq": _prereq, "btf": _btf, "probe": _watch, "agent": _agent,
                "replay": _replay, "lab": _lab}
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
    except BrokenPipeError:  # `sloctl lab list | head`: the reader left, nothing to say
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


if __name__ == "__main__":
    sys.exit(main())
