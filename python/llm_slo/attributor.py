"""Fault-domain attribution of one SLO violation: a noisy-OR Bayesian model over evidence
groups, each group's evidence being how far its features deviate from the workload's own
learned baseline. Pure: no clock, no I/O, and no input that could carry a fault label.

Model (details and every default in docs/attribution.md):

* Each catalogued feature is scored against the workload's baseline (``z``) and turned
  into a soft "elevated" probability ``e = sigmoid(z_slope * (z - z_elevated))``. A group
  of redundant features (DNS wire p99, resolver mean, timeouts...) takes the max, so the
  same cause is not counted several times.
* A hypothesis is a set of at most ``max_concurrent`` active domains (the empty set is
  "unknown": no modelled domain). ``T[g][d]`` is P(group elevated | d alone), as in the
  original table; its noisy-OR activation is ``a = (T - leak_g) / (1 - leak_g)``, and under
  a set, ``P(g) = 1 - (1 - leak_g) * prod(1 - a[g][d])``. The soft evidence enters as
  ``e * P + (1 - e) * (1 - P)``. Priors: ``prior_unknown`` on the empty set,
  ``prior_overlap`` spread over the sets of two or more, the rest over single domains.
* A domain's posterior is its share of the posterior mass: a set of two splits its mass
  evenly, ``unknown`` takes the empty set's, so the shares sum to 1.
"""

from __future__ import annotations

import hashlib
import itertools
import math
from datetime import UTC, datetime
from typing import Annotated, NamedTuple

import msgspec

from llm_slo.baseline import Baseline, WindowFeatures, spec_of, workload_key
from llm_slo.incident import (
    FAULT_DOMAINS,
    Evidence,
    FaultHypothesis,
    IncidentAttribution,
    SloImpact,
)

UNKNOWN = "unknown"
DOMAINS: tuple[str, ...] = tuple(d for d in FAULT_DOMAINS if d != UNKNOWN)

_COLUMNS = ("network_dns", "network_egress", "network_connect", "tls_handshake",
            "cpu_contention", "cpu_throttle", "memory_pressure", "provider_throttle",
            "provider_error", "retrieval_backend")
# T = P(group elevated | this domain alone is at fault), columns as _COLUMNS, then the
# leak P(group elevated | no modelled fault). Seeded from the original Go system's Bayes table
# (its `unknown` column is our leak); docs/attribution.md lists which cells are original,
# which were lowered (secondary effects its synthetic generator raised together with the
# primary one) and which are new (domains and groups it did not have).
_TABLE: dict[str, tuple[tuple[float, ...], float]] = {
    #              dns  egress conn  tls   cont  thr   mem   429   5xx   retr    leak
    "dns":        ((.95, .20, .10, .10, .50, .50, .10, .10, .10, .15), .10),
    "dns_wire":   ((.50, .05, .05, .05, .05, .05, .05, .05, .05, .05), .05),
    "tcp_retx":   ((.15, .90, .10, .10, .10, .10, .10, .10, .15, .10), .10),
    "syn_retx":   ((.05, .40, .95, .05, .05, .05, .05, .05, .05, .05), .05),
    "connect":    ((.10, .40, .95, .10, .10, .10, .10, .10, .20, .15), .10),
    "tls":        ((.10, .20, .10, .95, .50, .50, .10, .10, .20, .10), .10),
    "runq":       ((.10, .10, .10, .10, .90, .60, .20, .10, .10, .10), .10),
    "runq_other": ((.05, .05, .05, .05, .85, .20, .05, .05, .05, .05), .05),
    "cfs":        ((.10, .10, .10, .10, .10, .85, .10, .10, .10, .10), .10),
    "reclaim":    ((.05, .05, .05, .05, .15, .15, .95, .05, .05, .05), .05),
    "steal":      ((.10, .10, .10, .10, .20, .10, .10, .10, .10, .10), .10),
    "provider_429": ((.05, .05, .05, .05, .05, .05, .05, .95, .05, .05), .05),
    "provider_5xx": ((.05, .05, .05, .05, .05, .05, .05, .05, .95, .05), .05),
    "retrieval":  ((.10, .05, .05, .05, .60, .60, .60, .05, .05, .95), .05),
}


def default_likelihoods() -> dict[str, dict[str, float]]:
    """The default likelihood table: group -> domain -> P(elevated | domain)."""
    return {g: dict(zip(_COLUMNS, row, strict=True)) for g, (row, _) in _TABLE.items()}


def default_leak() -> dict[str, float]:
    """The default leak per group: P(elevated | no modelled fault)."""
    return {g: leak for g, (_, leak) in _TABLE.items()}


class AttributionConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Every parameter of the attributor, with the defaults documented in
    docs/attribution.md."""

    z_elevated: float = 3.0  # deviation at which a feature is 50 % "elevated"
    z_slope: float = 2.0  # steepness of that soft step (per unit of z)
    min_deviation: float = 3.0  # abstain unless some feature deviates at least this much
    # abstain unless the top hypothesis has this posterior (or, when the most probable
    # explanation is overlapping faults including it, this probability of being at fault)
    min_confidence: float = 0.5
    report_threshold: float = 0.15  # list every hypothesis at or above this posterior
    prior_unknown: float = 0.15  # prior that no modelled domain caused the violation
    prior_overlap: float = 0.2  # prior that two or more domains are at fault together
    max_concurrent: int = 2  # largest set of simultaneous domains considered
    evidence_min_z: float = 2.0  # features at or above this deviation become evidence
    max_evidence: int = 12
    primary_p: float = 0.8  # groups with p at least this are a domain's signature
    likelihoods: dict[str, dict[str, float]] = msgspec.field(
        default_factory=default_likelihoods)
    leak: dict[str, float] = msgspec.field(default_factory=default_leak)

    def __post_init__(self) -> None:
        for name in ("min_confidence", "report_threshold", "primary_p"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be within [0, 1]")
        if not (self.prior_unknown > 0.0 and self.prior_overlap >= 0.0
                and self.prior_unknown + self.prior_overlap < 1.0):
            raise ValueError("priors: unknown > 0, overlap >= 0, together below 1")
        if self.z_slope <= 0 or self.max_concurrent < 1:
            raise ValueError("z_slope must be > 0 and max_concurrent >= 1")
        for g, row in self.likelihoods.items():
            if g not in self.leak or set(row) - set(DOMAINS):
                raise ValueError(f"likelihood row {g!r}: needs a leak and known domains")
            if not 0.0 <= self.leak[g] < 1.0:
                raise ValueError(f"leak of {g!r} must be within [0, 1)")


class Violation(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """An SLO violation (a breach or a burn-rate alert) to explain. ``ts`` is Unix
    seconds. It has no field for a fault or scenario: the attributor cannot see one."""

    service: str
    cluster: str
    sli: str
    burn_rate: float
    window_minutes: int
    ts: float
    namespace: str | None = None
    trace_ids: tuple[str, ...] = ()
    request_ids: tuple[str, ...] = ()
    # Bad and good events of ``sli`` in the engine's last ``past_burn_windows`` windows. A
    # burn-rate alert that fires on earlier bad events while requests now succeed: the
    # window shows the recovery, not the cause. (No events at all may be requests that
    # hang: not that.) A request bad on TTFT may count twice, at its first token and
    # when its request span ends; only whether there is any is read.
    bad_in_window: Annotated[int, msgspec.Meta(ge=0)] = 1
    good_in_window: Annotated[int, msgspec.Meta(ge=0)] = 0


PAST_BURN = "past_burn"  # the abstain reason's prefix for a burn-rate alert on past events
_CLAMP = (0.01, 0.99)  # as the original: no single group may be certain either way


def _clamp(p: float) -> float:
    return min(max(p, _CLAMP[0]), _CLAMP[1])


def _soft(z: float, cfg: AttributionConfig) -> float:
    """P(elevated) of one feature from its deviation; only increases count as faults."""
    x = cfg.z_slope * (z - cfg.z_elevated)
    return 1.0 / (1.0 + math.exp(-x)) if x > -700 else 0.0


class _SetTable(NamedTuple):
    """What the posterior needs of a config whatever the evidence: every candidate set
    of domains, its log prior, and per group P(elevated | set) (noisy-OR over the set's
    domains on top of the group's leak, clamped) and its complement."""

    sets: list[tuple[str, ...]]
    log_prior: list[float]
    p: dict[str, tuple[list[float], list[float]]]  # group -> (p, 1 - p) per set


_TABLES: dict[bytes, _SetTable] = {}  # by the config's contents


def _set_table(cfg: AttributionConfig) -> _SetTable:
    """The config's table, built once per distinct config: an attribution weighs 56 sets
    against up to 14 groups, and the noisy-OR per (set, group) was most of its time.
    Keyed by the config's contents, not its identity: its likelihood and leak tables
    are dicts that a caller could change in place, and callers may build equal configs
    afresh for each call."""
    key = msgspec.json.encode(cfg)
    hit = _TABLES.get(key)
    if hit is not None:
        return hit
    sets: list[tuple[str, ...]] = [(), *((d,) for d in DOMAINS)]
    for k in range(2, cfg.max_concurrent + 1):
        sets.extend(itertools.combinations(DOMAINS, k))
    n_multi = len(sets) - 1 - len(DOMAINS)
    single = 1.0 - cfg.prior_unknown - (cfg.prior_overlap if n_multi else 0.0)
    by_size = (math.log(cfg.prior_unknown), math.log(single / len(DOMAINS)),
               math.log(cfg.prior_overlap / n_multi) if n_multi and cfg.prior_overlap
               else -math.inf)
    p: dict[str, tuple[list[float], list[float]]] = {}
    for g, row in cfg.likelihoods.items():
        leak = cfg.leak[g]
        col = []
        for s in sets:
            miss = 1.0 - leak
            for d in s:  # a domain's activation on top of the leak (noisy-OR)
                miss *= 1.0 - max(row.get(d, leak) - leak, 0.0) / (1.0 - leak)
            col.append(_clamp(1.0 - miss))
        p[g] = (col, [1.0 - x for x in col])
    table = _SetTable(sets, [by_size[min(len(s), 2)] for s in sets], p)
    if len(_TABLES) >= 16:  # configs are few; a test may make many
        _TABLES.clear()
    _TABLES[key] = table
    return table


def _posterior(groups: dict[str, float], cfg: AttributionConfig
               ) -> tuple[dict[str, float], dict[str, float], tuple[str, ...]]:
    """From soft group evidence: the posterior share per domain and ``unknown`` (sums to
    1), each domain's marginal (the mass of every set containing it: P(it is at fault)),
    and the most probable set."""
    table = _set_table(cfg)
    sets, logs, log = table.sets, table.log_prior, math.log
    for g, e in groups.items():
        ps, qs = table.p[g]
        ne = 1.0 - e
        logs = [lp + log(e * p + ne * q) for lp, p, q in zip(logs, ps, qs, strict=True)]
    top = max(logs)
    weights = [math.exp(lp - top) if lp > -math.inf else 0.0 for lp in logs]
    total = sum(weights)
    share = dict.fromkeys((*DOMAINS, UNKNOWN), 0.0)
    marginal = dict.fromkeys(DOMAINS, 0.0)
    for s, w in zip(sets, weights, strict=True):
        if not s:
            share[UNKNOWN] += w / total
        for d in s:
            share[d] += w / total / len(s)
            marginal[d] += w / total
    best = max(range(len(sets)), key=lambda i: (weights[i], -i))
    return share, marginal, sets[best]


def _sub_cause(domain: str, zs: dict[str, float], groups: dict[str, float],
               cfg: AttributionConfig) -> str | None:
    """Sub-cause of ``domain``: among its elevated signature groups (else any elevated
    group supporting it), the most specific (highest T/leak); there, the most deviant
    feature names it."""
    row = {g: cfg.likelihoods[g].get(domain, 0.0) for g in groups}
    sig = [g for g, p in row.items() if p >= cfg.primary_p and groups[g] >= 0.5]
    if not sig:
        sig = [g for g, p in row.items() if p > cfg.leak[g] and groups[g] >= 0.5]
    if not sig:
        return None
    best = max(sig, key=lambda g: (row[g] / cfg.leak[g], groups[g], g))
    feat = max((f for f in zs if best in (spec_of(f).group, *spec_of(f).also_groups)),
               key=lambda f: (zs[f], f))
    return spec_of(feat).sub_cause


def _incident_id(v: Violation) -> str:
    """Deterministic, so replaying the same violation gives the same id."""
    raw = f"{v.cluster}/{v.namespace}/{v.service}/{v.sli}/{v.ts!r}".encode()
    return "inc-" + hashlib.sha256(raw).hexdigest()[:20]


def _rfc3339(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds")[:-6] + "Z"


def attribute_violation(violation: Violation, features: WindowFeatures, baseline: Baseline,
                        config: AttributionConfig | None = None) -> IncidentAttribution:
    """Rank fault-domain hypotheses for ``violation`` from ``features`` of the violating
    workload's window, each scored against ``baseline`` (read, never updated).

    Abstains (``unknown``, ``abstain=True``, a reason) when the SLI had only good events
    in the window (a burn-rate alert on earlier bad ones: the window shows the recovery),
    when no feature has a baseline yet, when no feature deviates by ``min_deviation``, or
    when the top hypothesis is unknown or below ``min_confidence`` (unless the most
    probable explanation is overlapping faults that include it, and its marginal
    probability of being at fault reaches ``min_confidence``). Every hypothesis at or
    above ``report_threshold`` is listed.
    """
    cfg = config or AttributionConfig()
    key = workload_key(violation.cluster, violation.namespace, violation.service)
    zs: dict[str, float] = {}
    groups: dict[str, float] = {}
    for name in sorted(features.values):  # sorted: the result must not depend on order
        spec = spec_of(name)
        z = baseline.score(key, name, features.values[name], features.trials.get(name),
                           features.windows.get(name))
        if spec.group not in cfg.likelihoods or z is None:
            continue  # uncatalogued or still warming up: no evidence either way
        zs[name] = z
        for group in (spec.group, *spec.also_groups):
            if group in cfg.likelihoods:
                groups[group] = max(groups.get(group, 0.0), _soft(z, cfg))
    share, marginal, best_set = _posterior(groups, cfg)
    ranked = sorted(share.items(), key=lambda kv: (-kv[1], kv[0]))
    top, top_p = ranked[0]
    # Two faults at once split their mass, so neither share may reach min_confidence.
    # When the most probable explanation is such a set, the top domain's probability of
    # being at fault (every set containing it) is what must reach it.
    overlap = (len(best_set) > 1 and top in best_set and top_p >= cfg.report_threshold
               and marginal[top] >= cfg.min_confidence)
    max_z = max(zs.values(), default=None)
    reason = None
    if violation.bad_in_window == 0 and violation.good_in_window > 0:
        reason = (f"{PAST_BURN}: the burn rate ({violation.burn_rate:.1f}) comes from earlier "
                  f"bad {violation.sli} events; the last windows have "
                  f"{violation.good_in_window} good and none bad")
    elif max_z is None:
        reason = "no_baseline: no feature of this workload has a warmed-up baseline"
    elif max_z < cfg.min_deviation:
        reason = (f"no_deviation: largest deviation {max_z:.2f} is below "
                  f"min_deviation {cfg.min_deviation:g}")
    elif top == UNKNOWN or (top_p < cfg.min_confidence and not overlap):
        reason = (f"low_confidence: top hypothesis {top} at {top_p:.2f} "
                  f"(min_confidence {cfg.min_confidence:g})")
    evidence = _evidence(key, features, zs, baseline, cfg)
    named = {ev.signal for ev in evidence}
    hyps = [FaultHypothesis(domain=d, posterior=min(max(p, 0.0), 1.0),
                            evidence=sorted(f for f in named if d != UNKNOWN and
                                            cfg.likelihoods[spec_of(f).group].get(d, 0.0)
                                            > cfg.leak[spec_of(f).group]))
            for d, p in ranked if p >= cfg.report_threshold]
    predicted = UNKNOWN if reason else top
    return IncidentAttribution(
        incident_id=_incident_id(violation),
        timestamp=_rfc3339(violation.ts),
        cluster=violation.cluster,
        namespace=violation.namespace,
        service=violation.service,
        predicted_fault_domain=predicted,  # type: ignore[arg-type]
        confidence=min(max(share[predicted], 0.0), 1.0),
        evidence=evidence,
        slo_impact=SloImpact(sli=violation.sli, burn_rate=violation.burn_rate,
                             window_minutes=violation.window_minutes),
        trace_ids=list(violation.trace_ids) or None,
        request_ids=list(violation.request_ids) or None,
        fault_hypotheses=hyps,
        sub_cause=None if reason else _sub_cause(top, zs, groups, cfg),
        abstain=reason is not None,
        abstain_reason=reason,
    )


def _evidence(key: str, features: WindowFeatures, zs: dict[str, float], baseline: Baseline,
              cfg: AttributionConfig) -> list[Evidence]:
    """Deviating features, most deviant first, with value, unit, baseline and join quality."""
    chosen = sorted((f for f, z in zs.items() if z >= cfg.evidence_min_z),
                    key=lambda f: (-zs[f], f))[: cfg.max_evidence]
    out = []
    for f in chosen:
        spec, st, meta = spec_of(f), baseline.stats(key, f), features.meta.get(f)
        out.append(Evidence(
            signal=f, value=round(features.values[f], 6), source=spec.source,
            unit=spec.unit or None, baseline=round(st.center, 6) if st else None,
            correlation_tier=meta.correlation_tier if meta else None,
            confidence=meta.confidence if meta else None))
    return out
