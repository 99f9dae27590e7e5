"""JSON Schemas under ``contracts/``, generated from the Structs that produce the data.

``python -m llm_slo.contracts`` rewrites them; ``tests/unit/test_contracts.py`` fails
when a committed schema no longer matches its Struct.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import msgspec

from llm_slo.config import AgentConfig
from llm_slo.incident import IncidentAttribution
from llm_slo.probe_event import ProbeEvent
from llm_slo.slo_event import SloEvent

CONTRACTS_DIR = Path(__file__).resolve().parents[2] / "contracts"
BASE_ID = "https://llm-slo.dev/contracts/"

# path under contracts/ -> (Struct, title)
SCHEMAS: dict[str, tuple[type[Any], str]] = {
    "v1alpha1/probe-event.schema.json": (ProbeEvent, "ProbeEvent"),
    "v1/slo-event.schema.json": (SloEvent, "SloEvent"),
    "v1/incident-attribution.schema.json": (IncidentAttribution, "IncidentAttribution"),
    "config.schema.json": (AgentConfig, "ToolkitConfig"),
}


def render(path: str) -> str:
    """The schema text for one contract, stable byte for byte."""
    struct, title = SCHEMAS[path]
    schema = msgspec.json.schema(struct)
    doc = {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": BASE_ID + path,
        "title": title,
        **schema,
    }
    return json.dumps(doc, indent=2, sort_keys=True) + "\n"


def main() -> int:
    """Write every schema; print what changed."""
    for path in SCHEMAS:
        target = CONTRACTS_DIR / path
        text = render(path)
        if not target.exists() or target.read_text() != text:
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(text)
            print(f"wrote contracts/{path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
