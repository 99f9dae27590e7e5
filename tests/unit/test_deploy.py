"""deploy/base: the DaemonSet's agent config is valid, its privileges are the minimal
set, and kustomize renders it with the generated ConfigMap wired in."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from llm_slo.config import load_config

BASE = Path(__file__).resolve().parents[2] / "deploy" / "base"


def _docs(name: str) -> list[dict]:
    return [d for d in yaml.safe_load_all((BASE / name).read_text()) if d]


def _container() -> dict:
    (ds,) = _docs("daemonset.yaml")
    return ds["spec"]["template"]["spec"]["containers"][0]


def test_the_shipped_agent_config_is_valid_and_listens_for_pods() -> None:
    cfg = load_config(str(BASE / "agent.yaml"))
    assert cfg.intake.listen.startswith("0.0.0.0:")  # other pods send spans here
    assert cfg.outputs.otlp_endpoint and not cfg.outputs.jsonl_dir
    assert cfg.identity.kubernetes and cfg.identity.kubeconfig is None  # in-cluster account


def test_the_service_account_may_watch_pods() -> None:
    sa, role, binding = _docs("rbac.yaml")
    (ds,) = _docs("daemonset.yaml")
    assert ds["spec"]["template"]["spec"]["serviceAccountName"] == sa["metadata"]["name"]
    assert ds["spec"]["template"]["spec"].get("automountServiceAccountToken", True)
    assert any("pods" in r["resources"] and {"list", "watch"} <= set(r["verbs"])
               for r in role["rules"])
    assert binding["roleRef"]["name"] == role["metadata"]["name"]
    assert binding["subjects"][0]["name"] == sa["metadata"]["name"]


def test_minimal_privileges_and_no_cpu_limit() -> None:
    (ds,) = _docs("daemonset.yaml")
    pod = ds["spec"]["template"]["spec"]
    sec = _container()["securityContext"]
    assert sec["privileged"] is False and sec["allowPrivilegeEscalation"] is False
    assert sec["capabilities"]["drop"] == ["ALL"]
    assert {"BPF", "PERFMON"} <= set(sec["capabilities"]["add"])
    assert pod["hostPID"] is True and not pod.get("hostNetwork")
    assert "cpu" not in _container()["resources"]["limits"]
    env = {e["name"]: e for e in _container()["env"]}
    assert env["NODE_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "spec.nodeName"
    mounts = {m["mountPath"]: m for m in _container()["volumeMounts"]}
    assert all(m["readOnly"] for m in mounts.values())
    config_path = _container()["args"][_container()["args"].index("--config") + 1]
    assert str(Path(config_path).parent) in mounts
    (ns,) = _docs("namespace.yaml")
    assert ns["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "privileged"


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl not installed")
def test_kustomize_renders_with_the_generated_configmap_mounted() -> None:
    out = subprocess.run(["kubectl", "kustomize", str(BASE)], capture_output=True, text=True,
                         timeout=60, check=True).stdout
    docs = {d["kind"]: d for d in yaml.safe_load_all(out) if d}
    assert set(docs) >= {"Namespace", "ServiceAccount", "ClusterRole", "ClusterRoleBinding",
                         "ConfigMap", "Service", "DaemonSet"}
    cm_name = docs["ConfigMap"]["metadata"]["name"]
    assert cm_name.startswith("llm-slo-agent-")  # content hash: a config edit rolls the pods
    volumes = docs["DaemonSet"]["spec"]["template"]["spec"]["volumes"]
    assert {"name": "config", "configMap": {"name": cm_name}} in volumes
    svc, ds = docs["Service"], docs["DaemonSet"]
    assert svc["spec"]["selector"] == ds["spec"]["template"]["metadata"]["labels"]
    assert all(d["metadata"].get("namespace") == "llm-slo" for k, d in docs.items()
               if k not in ("Namespace", "ClusterRole", "ClusterRoleBinding"))


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl not installed")
def test_no_btf_overlay_adds_headers_and_tracefs_read_only() -> None:
    """deploy/overlays/no-btf: the BCC fallback's inputs, mounted read-only, and room to
    compile (clang and LLVM: about 180 MB RSS, scripts/bcc_footprint.py)."""
    overlay = BASE.parent / "overlays" / "no-btf"
    out = subprocess.run(["kubectl", "kustomize", str(overlay)], capture_output=True,
                         text=True, timeout=60, check=True).stdout
    (ds,) = [d for d in yaml.safe_load_all(out) if d and d["kind"] == "DaemonSet"]
    (container,) = ds["spec"]["template"]["spec"]["containers"]
    mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
    assert {"/lib/modules", "/usr/src", "/sys/kernel/tracing", "/sys/kernel/btf",
            "/etc/llm-slo"} <= set(mounts)
    assert all(m.get("readOnly") for p, m in mounts.items() if p != "/tmp")
    assert mounts["/tmp"]["name"] in {v["name"] for v in ds["spec"]["template"]["spec"]["volumes"]
                                      if "emptyDir" in v}
    paths = {v["name"]: v.get("hostPath", {}).get("path")
             for v in ds["spec"]["template"]["spec"]["volumes"]}
    assert all(paths[m["name"]] == p for p, m in mounts.items()
               if p in ("/lib/modules", "/usr/src", "/sys/kernel/tracing"))
    assert container["resources"]["limits"]["memory"] == "512Mi"
    assert container["securityContext"]["privileged"] is False
