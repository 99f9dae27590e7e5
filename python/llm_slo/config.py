"""Agent configuration: one YAML or JSON file, validated, overridable by flags.

The JSON Schema ``contracts/config.schema.json`` is generated from :class:`AgentConfig`;
an invalid file is a :class:`~llm_slo.errors.ConfigError` naming the field's path.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

import msgspec

from llm_slo.engine import EngineConfig
from llm_slo.errors import ConfigError
from llm_slo.events import SIGNALS
from llm_slo.probes.base import ProbeOptions

Signal = Literal[SIGNALS]  # type: ignore[valid-type]


class IntakeConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """The OTLP/HTTP trace receiver."""

    listen: str = "127.0.0.1:4318"
    max_body_bytes: Annotated[int, msgspec.Meta(ge=1024)] = 8 << 20


class OutputConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Where results go: JSONL files and/or an OTLP/HTTP logs endpoint."""

    jsonl_dir: str | None = None
    otlp_endpoint: str | None = None  # e.g. http://otel-collector:4318/v1/logs
    probe_events: bool = True  # also export every ProbeEvent, not only SLO results
    # Also record every received span (spans.jsonl in jsonl_dir, as it reached the engine:
    # host pids), so that `sloctl replay` can rerun the engine over the recording. Needs
    # jsonl_dir (checked by `sloctl agent` once flags are applied: --output-dir may set it).
    spans: bool = False


class IdentityConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Where pod names come from besides span resources."""

    # A PodList JSON file (``kubectl get pods -A -o json``), re-read when it changes.
    pods_file: str | None = None
    # List and watch this node's pods through the API server (what the DaemonSet does).
    kubernetes: bool = False
    # The kubeconfig for that; null = the pod's in-cluster service account.
    kubeconfig: str | None = None


class AgentConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """``sloctl agent`` configuration."""

    apiVersion: Literal["toolkit.llm-slo.dev/v1alpha1"] = "toolkit.llm-slo.dev/v1alpha1"
    kind: Literal["ToolkitConfig"] = "ToolkitConfig"
    node: str = ""  # default: $NODE_NAME or the hostname
    signal_set: Annotated[list[Signal], msgspec.Meta(min_length=1)] = msgspec.field(
        default_factory=lambda: list(SIGNALS))
    interval_s: Annotated[float, msgspec.Meta(gt=0)] = 1.0
    probes: ProbeOptions = msgspec.field(default_factory=ProbeOptions)
    intake: IntakeConfig = msgspec.field(default_factory=IntakeConfig)
    outputs: OutputConfig = msgspec.field(default_factory=OutputConfig)
    identity: IdentityConfig = msgspec.field(default_factory=IdentityConfig)
    engine: EngineConfig = msgspec.field(default_factory=EngineConfig)


def load_config(path: str | None) -> AgentConfig:
    """Read and validate ``path`` (YAML or JSON); defaults when ``path`` is None."""
    if path is None:
        return AgentConfig()
    p = Path(path)
    try:
        data = p.read_bytes()
    except OSError as e:
        raise ConfigError(f"config {path}: {e.strerror}") from e
    try:
        if p.suffix in (".yaml", ".yml"):
            return msgspec.yaml.decode(data, type=AgentConfig)
        return msgspec.json.decode(data, type=AgentConfig)
    except msgspec.ValidationError as e:
        raise ConfigError(f"config {path}: {e}") from e
    except msgspec.DecodeError as e:
        raise ConfigError(f"config {path}: not valid {'YAML' if p.suffix != '.json' else 'JSON'}"
                          f": {e}") from e


def parse_listen(listen: str) -> tuple[str, int]:
    """``host:port`` (``[v6]:port`` too) -> (host, port), or ConfigError."""
    host, sep, port = listen.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ConfigError(f"listen address {listen!r}: expected host:port")
    return host.strip("[]") or "127.0.0.1", int(port)
