"""``sloctl replay``: the agent's engine over recorded JSONL, no kernel needed.

Spans and ProbeEvents are merged in timestamp order (a span counts at its end) and fed
to :class:`~llm_slo.engine.SloEngine`; the engine ticks every ``tick_s`` of recorded
time, exactly as the live agent ticks every interval.
"""

from __future__ import annotations

import contextlib
import heapq
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import msgspec

from llm_slo.engine import EngineConfig, SloEngine
from llm_slo.errors import ConfigError
from llm_slo.probe_event import ProbeEvent
from llm_slo.spans import Span


def read_structs(path: str, kind: type[Any]) -> Iterator[Any]:
    """Each line of the JSONL file at ``path`` as a ``kind``; a clear ConfigError naming
    the file (and line) when it cannot be read or a line is not one."""
    dec = msgspec.json.Decoder(kind)
    try:
        with open(path, "rb") as f:
            for n, line in enumerate(f, 1):
                if line.strip():
                    try:
                        yield dec.decode(line)
                    except (msgspec.ValidationError, msgspec.DecodeError) as e:
                        raise ConfigError(f"{path}:{n}: not a {kind.__name__}: {e}") from e
    except OSError as e:
        raise ConfigError(f"{path}: {e.strerror}") from e


def replay(spans_path: str, signals_path: str, out_dir: str, config: EngineConfig, *,
           tick_s: float = 1.0, cgroup_of_pid: dict[int, int] | None = None,
           active_signals: Iterable[str] = ()) -> dict[str, int]:
    """Replay both files; write slo-events.jsonl and attributions.jsonl to ``out_dir``.

    ``cgroup_of_pid`` stands in for the /proc lookups the live agent makes; without it,
    a service's cgroups are learned only from correlated signals. ``active_signals``
    are the probes that ran (as the live agent declares them); without them, the signals
    present in the recording.
    """
    spans = sorted(read_structs(spans_path, Span), key=lambda s: s.end_unix_nano)
    signals = sorted(read_structs(signals_path, ProbeEvent), key=lambda e: e.ts_unix_nano)
    merged = heapq.merge(((s.end_unix_nano, 1, s) for s in spans),
                         ((e.ts_unix_nano, 0, e) for e in signals), key=lambda t: t[:2])
    engine = SloEngine(config, cgroup_of_pid=cgroup_of_pid)
    if active_signals:
        engine.set_active_signals(active_signals)
    out = Path(out_dir)
    enc = msgspec.json.Encoder()
    tick_ns = int(tick_s * 1e9)
    next_tick = None
    with contextlib.ExitStack() as files:
        try:
            out.mkdir(parents=True, exist_ok=True)
            slo_f = files.enter_context(open(out / "slo-events.jsonl", "wb"))
            att_f = files.enter_context(open(out / "attributions.jsonl", "wb"))
        except OSError as e:
            raise ConfigError(f"--out {out_dir}: {e.strerror or e}") from e
        for ts, _, rec in merged:
            if next_tick is None:
                next_tick = ts + tick_ns
            while ts >= next_tick:
                att_f.write(enc.encode_lines(engine.tick(next_tick)))
                next_tick += tick_ns
            if isinstance(rec, Span):
                slo_f.write(enc.encode_lines(engine.add_spans([rec])))
            else:
                engine.add_signals([rec])
        if next_tick is not None:
            att_f.write(enc.encode_lines(engine.tick(next_tick)))
    return dict(engine.counters)
