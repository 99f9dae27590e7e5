"""The example documents in ``contracts/examples/`` against their contracts.

Each example validates against its generated JSON Schema, decodes strictly into the
Struct the schema is generated from, and re-encodes to the same document. The config
example also loads with ``load_config``. Per contract, a document missing a required field
or carrying a value outside an enum is rejected by the schema and by the decoder alike.
The examples are records from a run of ``tests/kernel/test_agent_e2e.py``;
``docs/contracts.md`` documents every field.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import msgspec
import pytest
import yaml
from jsonschema import Draft202012Validator

from llm_slo import contracts
from llm_slo.attributor import Violation, attribute_violation
from llm_slo.baseline import Baseline, WindowFeatures
from llm_slo.config import AgentConfig, load_config
from llm_slo.errors import ConfigError

EXAMPLES = contracts.CONTRACTS_DIR / "examples"
# example file -> its contract, as a path under contracts/ (a key of contracts.SCHEMAS)
CONTRACT_OF: dict[str, str] = {
    "probe-event.json": "v1alpha1/probe-event.schema.json",
    "slo-event.json": "v1/slo-event.schema.json",
    "incident-attribution.json": "v1/incident-attribution.schema.json",
    "config.yaml": "config.schema.json",
}
JSON_EXAMPLES = sorted(n for n in CONTRACT_OF if n.endswith(".json"))
# config fields the example leaves out on purpose (docs/attribution.md has the table)
CONFIG_LEFT_OUT = {("engine", "attribution", "likelihoods"), ("engine", "attribution", "leak")}
# config fields where the example carries the end-to-end test's values, not the default
CONFIG_E2E = {("interval_s",), ("probes", "dns_slow_ms"), ("outputs", "jsonl_dir"),
              ("engine", "window_s"), ("engine", "cooldown_s"), ("engine", "baseline", "warmup")}


def validator(example: str) -> Draft202012Validator:
    """A validator for the schema generated for ``example``'s contract.

    Rendered from the Struct, as ``python -m llm_slo.contracts`` writes it; that the
    committed file under ``contracts/`` is the same text is ``test_contracts.py``'s check.
    """
    return Draft202012Validator(json.loads(contracts.render(CONTRACT_OF[example])))


def struct_of(example: str) -> type[Any]:
    """The Struct the contract of ``example`` is generated from."""
    return contracts.SCHEMAS[CONTRACT_OF[example]][0]


def load(example: str) -> Any:
    """The example document as plain JSON data."""
    text = (EXAMPLES / example).read_text()
    return yaml.safe_load(text) if example.endswith(".yaml") else json.loads(text)


def leaves(doc: Any, path: tuple[str, ...] = ()) -> dict[tuple[str, ...], Any]:
    """Every value of a JSON document that is not a non-empty object, by its key path."""
    if not isinstance(doc, dict) or not doc:
        return {path: doc}
    out: dict[tuple[str, ...], Any] = {}
    for key, value in doc.items():
        out.update(leaves(value, (*path, key)))
    return out


def test_every_contract_has_an_example() -> None:
    """One example per generated contract, and no example without a contract."""
    assert sorted(CONTRACT_OF.values()) == sorted(contracts.SCHEMAS)
    assert sorted(p.name for p in EXAMPLES.iterdir()) == sorted(CONTRACT_OF)


@pytest.mark.parametrize("example", sorted(CONTRACT_OF))
def test_example_validates_against_its_schema(example: str) -> None:
    """Schemas are valid 2020-12, their top-level $ref resolves, and the example passes."""
    v = validator(example)
    Draft202012Validator.check_schema(v.schema)
    assert v.schema["$ref"] == f"#/$defs/{struct_of(example).__name__}"
    errors = [f"{list(e.absolute_path)}: {e.message}" for e in v.iter_errors(load(example))]
    assert errors == []


@pytest.mark.parametrize("example", JSON_EXAMPLES)
def test_example_decodes_strictly_and_round_trips(example: str) -> None:
    """Strict msgspec decode into the Struct, then encode: the same document again."""
    struct = struct_of(example)
    raw = (EXAMPLES / example).read_bytes()
    obj = msgspec.json.decode(raw, type=struct, strict=True)
    encoded = msgspec.json.encode(obj)
    assert json.loads(encoded) == json.loads(raw)
    assert msgspec.json.decode(encoded, type=struct, strict=True) == obj


@pytest.mark.parametrize("example", ["slo-event.json", "incident-attribution.json"])
def test_timestamps_are_rfc3339_utc(example: str) -> None:
    """The generated schemas only say "string"; the writers emit RFC 3339 in UTC."""
    ts = load(example)["timestamp"]
    assert ts.endswith("Z")
    assert datetime.fromisoformat(ts).utcoffset() == timedelta(0)


def test_config_example_loads_and_round_trips() -> None:
    """``load_config`` accepts it; re-encoding gives the example back, plus the fields
    the example leaves out (likelihoods and leak), and decodes to an equal config."""
    cfg = load_config(str(EXAMPLES / "config.yaml"))
    doc = load("config.yaml")
    encoded = msgspec.to_builtins(cfg)
    given, full = leaves(doc), leaves(encoded)
    assert {p: full[p] for p in given} == given
    assert {p[:3] for p in set(full) - set(given)} == CONFIG_LEFT_OUT
    again = msgspec.json.decode(msgspec.json.encode(cfg), type=AgentConfig, strict=True)
    assert again == cfg


def test_config_example_differs_from_the_defaults_only_where_marked() -> None:
    """The example promises the default everywhere except the lines marked "e2e"."""
    cfg = msgspec.to_builtins(load_config(str(EXAMPLES / "config.yaml")))
    default = msgspec.to_builtins(AgentConfig())
    ours, theirs = leaves(cfg), leaves(default)
    assert {p for p in ours if ours[p] != theirs[p]} == CONFIG_E2E


def test_abstaining_attribution_is_valid() -> None:
    """An abstention is an ordinary document: unknown, abstain true, a reason, no sub-cause."""
    violation = Violation(service="rag", cluster="lab", namespace="llm", sli="ttft_ms",
                          burn_rate=2.5, window_minutes=4320, ts=1795607604.609)
    att = attribute_violation(violation, WindowFeatures(values={"dns_wire_p99_ms": 2147.48}),
                              Baseline())
    doc = json.loads(msgspec.json.encode(att))
    validator("incident-attribution.json").validate(doc)
    assert doc["predicted_fault_domain"] == "unknown" and doc["abstain"] is True
    assert doc["abstain_reason"].startswith("no_baseline")
    assert "sub_cause" not in doc


# ---- rejected documents ------------------------------------------------------------


def _drop(*path: str | int) -> Callable[[Any], None]:
    def edit(doc: Any) -> None:
        for key in path[:-1]:
            doc = doc[key]
        del doc[path[-1]]
    return edit


def _set(*path: str | int, value: Any) -> Callable[[Any], None]:
    def edit(doc: Any) -> None:
        for key in path[:-1]:
            doc = doc[key]
        doc[path[-1]] = value
    return edit


def _assert_json_rejected(example: str, edit: Callable[[Any], None]) -> None:
    doc = copy.deepcopy(load(example))
    edit(doc)
    assert not validator(example).is_valid(doc)
    with pytest.raises(msgspec.ValidationError):
        msgspec.json.decode(json.dumps(doc), type=struct_of(example), strict=True)


@pytest.mark.parametrize("edit", [
    _drop("status"),
    _set("status", value="breach"),  # SloEvent's word; ProbeEvent says "error"
    _drop("conn_tuple", "dst_port"),  # conn_tuple is optional, its fields are not
], ids=["missing-status", "status-breach", "conn-tuple-missing-dst-port"])
def test_probe_event_rejects(edit: Callable[[Any], None]) -> None:
    _assert_json_rejected("probe-event.json", edit)


@pytest.mark.parametrize("edit", [
    _drop("request_id"),
    _set("status", value="error"),  # ProbeEvent's word; SloEvent says "breach"
    _set("sli_name", value="ttft"),
], ids=["missing-request-id", "status-error", "sli-name-ttft"])
def test_slo_event_rejects(edit: Callable[[Any], None]) -> None:
    _assert_json_rejected("slo-event.json", edit)


@pytest.mark.parametrize("edit", [
    _drop("slo_impact"),
    _set("predicted_fault_domain", value="dns"),
    _set("evidence", 0, "source", value="prometheus"),
], ids=["missing-slo-impact", "domain-dns", "evidence-source-prometheus"])
def test_incident_attribution_rejects(edit: Callable[[Any], None]) -> None:
    _assert_json_rejected("incident-attribution.json", edit)


@pytest.mark.parametrize("edit", [
    _drop("engine", "rules", 0, "threshold"),
    _set("signal_set", value=["syscall_latency_ms"]),  # an original signal without a probe
    _set("probes", "attach_mode", value="kprobe"),
], ids=["rule-missing-threshold", "signal-syscall", "attach-mode-kprobe"])
def test_config_rejects(edit: Callable[[Any], None], tmp_path: Path) -> None:
    doc = copy.deepcopy(load("config.yaml"))
    edit(doc)
    assert not validator("config.yaml").is_valid(doc)
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(doc))
    with pytest.raises(ConfigError):
        load_config(str(path))
