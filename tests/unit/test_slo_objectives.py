"""SLO objectives beyond the two defaults (``ttft_ms`` and ``error_rate``).

An agent config that adds objectives for ``retrieval_latency_ms`` and
``provider_error_rate`` gets burn rates, alerts and attributions for them from the
engine, with numbers checkable by hand; without those objectives the same requests are
still judged (breaches) but burn no budget.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from llm_slo.burn_rate import BurnRateAlert
from llm_slo.config import load_config
from llm_slo.engine import EngineConfig, SloEngine
from llm_slo.errors import ConfigError
from llm_slo.incident import SloImpact
from llm_slo.slo_event import SliName
from llm_slo.spans import SPAN_KIND_CLIENT, Span

NS = 1_000_000_000
T0 = 1_800_000_000 * NS  # a multiple of the engine's 10 s burn-rate bucket
NOW = T0 + 59 * NS  # in bucket 5: the 60 s window is buckets 0-5, the 10 s one bucket 5
CONFIG = """\
engine:
  objectives:
    - {name: ttft, sli_name: ttft_ms, target: 0.99}
    - {name: retrieval, sli_name: retrieval_latency_ms, target: 0.9}
    - {name: provider, sli_name: provider_error_rate, target: 0.95}
  rules:
    - {long_window_s: 60, short_window_s: 10, threshold: 2.0}
"""
# Per 10 s bucket, four requests: a retrieval (its latency, ms; 800 is the breach) and a
# provider call (its HTTP status; 429 and 5xx are errors). Bucket 0 is empty.
RETRIEVAL_MS = {1: [100, 100, 100, 900], 2: [100, 100, 100, 900], 3: [100, 100, 100, 900],
                4: [100, 100, 100, 900], 5: [100, 100, 900, 900]}
PROVIDER_STATUS = {1: [200, 200, 200, 200], 2: [200, 200, 200, 502], 3: [200, 200, 200, 200],
                   4: [200, 200, 200, 200], 5: [429, 503, 500, 200]}
RESOURCE = {"service.name": "rag", "k8s.namespace.name": "llm", "k8s.cluster.name": "lab"}


def _spans() -> list[Span]:
    """The retrievals and provider calls of the tables, each ending at 10 b + 2 j + 1 s."""
    out = []
    for b, latencies in RETRIEVAL_MS.items():
        for j, (ms, status) in enumerate(zip(latencies, PROVIDER_STATUS[b], strict=True)):
            end = T0 + (10 * b + 2 * j + 1) * NS
            trace = f"{b:016x}{j:016x}"
            out += [
                Span(trace_id=trace, span_id=f"{b:08x}{j:07x}1", name="retrieval docs",
                     start_unix_nano=end - ms * 1_000_000, end_unix_nano=end,
                     attributes={"gen_ai.operation.name": "retrieval"}, resource=RESOURCE),
                Span(trace_id=trace, span_id=f"{b:08x}{j:07x}2", name="chat gpt",
                     kind=SPAN_KIND_CLIENT, start_unix_nano=end - 50_000_000,
                     end_unix_nano=end,
                     attributes={"gen_ai.provider.name": "openai",
                                 "http.response.status_code": status},
                     resource=RESOURCE),
            ]
    return out


def _engine(config: EngineConfig) -> SloEngine:
    engine = SloEngine(config)
    engine.add_spans(_spans())
    return engine


def _configured(tmp_path: Path) -> EngineConfig:
    path = tmp_path / "agent.yaml"
    path.write_text(CONFIG)
    return load_config(str(path)).engine


def test_configured_objectives_burn_and_alert_on_their_sli(tmp_path: Path) -> None:
    """Retrieval at 90 %: 6 of 20 slow over 60 s is 0.3 / 0.1 = 3.0, 2 of the last 4 is
    0.5 / 0.1 = 5.0. Provider at 95 %: 4 errors (502, 429, 503, 500) of 20 is
    0.2 / 0.05 = 4.0, 3 of the last 4 is 0.75 / 0.05 = 15.0. Both exceed the rule's 2.0
    in both windows, so both alert, with exactly those burn rates."""
    engine = _engine(_configured(tmp_path))
    book = engine.book
    assert set(book.trackers) == {("rag", "retrieval"), ("rag", "provider")}  # no TTFT seen
    assert book.burn_rate("rag", "retrieval_latency_ms", 60, NOW) == 3.0
    assert book.burn_rate("rag", "retrieval_latency_ms", 10, NOW) == 5.0
    assert book.burn_rate("rag", "provider_error_rate", 60, NOW) == 4.0
    assert book.burn_rate("rag", "provider_error_rate", 10, NOW) == 15.0

    def alert(slo: str, sli: SliName, long: float, short: float) -> BurnRateAlert:
        return BurnRateAlert(service="rag", slo=slo, sli_name=sli, long_window_s=60,
                             short_window_s=10, threshold=2.0, burn_rate_long=long,
                             burn_rate_short=short, ts_unix_nano=NOW)

    assert book.alerts(NOW) == [alert("retrieval", "retrieval_latency_ms", 3.0, 5.0),
                                alert("provider", "provider_error_rate", 4.0, 15.0)]


def test_an_alerting_objective_sets_the_attributions_slo_impact(tmp_path: Path) -> None:
    """The tick explains both SLIs; each attribution reports its alert's long-window burn
    rate and the rule's 60 s window (1 minute)."""
    atts = _engine(_configured(tmp_path)).tick(NOW)
    assert {a.slo_impact.sli: a.slo_impact for a in atts} == {
        "retrieval_latency_ms": SloImpact(sli="retrieval_latency_ms", burn_rate=3.0,
                                          window_minutes=1),
        "provider_error_rate": SloImpact(sli="provider_error_rate", burn_rate=4.0,
                                         window_minutes=1)}


def test_without_the_objectives_the_same_requests_burn_nothing() -> None:
    """The defaults have no objective on these SLIs: the slow retrievals and failed
    provider calls are still breaches and still explained, but no tracker counts them, so
    there is no burn rate and no alert, and the attributions report a burn of 0 over
    the shortest default alert window (5 minutes)."""
    engine = _engine(EngineConfig())
    assert engine.book.trackers == {}
    assert engine.book.burn_rate("rag", "retrieval_latency_ms", 60, NOW) is None
    assert engine.book.alerts(NOW) == []
    atts = engine.tick(NOW)
    assert sorted((a.slo_impact.sli, a.slo_impact.burn_rate, a.slo_impact.window_minutes)
                  for a in atts) == [("provider_error_rate", 0.0, 5),
                                     ("retrieval_latency_ms", 0.0, 5)]


def test_an_objective_on_an_unknown_sli_is_rejected_at_load(tmp_path: Path) -> None:
    """A typo in an objective's SLI fails the config load, naming the field."""
    path = tmp_path / "agent.yaml"
    path.write_text(CONFIG.replace("sli_name: retrieval_latency_ms", "sli_name: retrieval_ms"))
    with pytest.raises(ConfigError, match=r"engine\.objectives\[1\]\.sli_name"):
        load_config(str(path))
