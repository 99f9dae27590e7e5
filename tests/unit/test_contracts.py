"""Committed JSON Schemas are exactly what the Structs generate."""

from __future__ import annotations

import pytest

from llm_slo import contracts


@pytest.mark.parametrize("path", sorted(contracts.SCHEMAS))
def test_schema_has_not_drifted(path: str) -> None:
    """Regenerating gives the committed file; run `python -m llm_slo.contracts` if not."""
    committed = (contracts.CONTRACTS_DIR / path).read_text()
    assert committed == contracts.render(path)


def test_probe_event_keeps_original_fields() -> None:
    """Consumers of the original v1alpha1 ProbeEvent keep working."""
    import json

    doc = json.loads(contracts.render("v1alpha1/probe-event.schema.json"))
    pe = doc["$defs"]["ProbeEvent"]
    original_required = {"ts_unix_nano", "signal", "node", "namespace", "pod", "container",
                         "pid", "tid", "value", "unit", "status"}
    assert original_required <= set(pe["required"])
    for optional in ("conn_tuple", "trace_id", "span_id", "errno", "confidence"):
        assert optional in pe["properties"]
    assert sorted(pe["properties"]["status"]["enum"]) == ["error", "ok", "warning"]
    assert pe["additionalProperties"] is False
