"""PodDirectory: pod and container names from a `kubectl get pods -o json` file."""

from __future__ import annotations

import json
import os
from pathlib import Path

from llm_slo.identity import Identity, PodDirectory, PodName, parse_cgroup_path

UID = "8f2a6c1e-3b4d-4e5f-9a0b-1c2d3e4f5a6b"
CID = "ab" * 32


def _pods(name: str) -> dict:
    return {"apiVersion": "v1", "kind": "List", "items": [{
        "metadata": {"uid": UID, "name": name, "namespace": "llm", "labels": {"app": "rag"}},
        "spec": {"nodeName": "n1"},
        "status": {"phase": "Running", "containerStatuses": [
            {"name": "app", "containerID": f"containerd://{CID}", "ready": True}]}}]}


def _ident(path: str) -> Identity:
    ref = parse_cgroup_path(path)
    assert ref is not None
    return Identity(cgroup_id=7, cgroup_path=path, pod_uid=ref.pod_uid,
                    container_id=ref.container_id)


CONTAINER = (f"/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod"
             f"{UID.replace('-', '_')}.slice/cri-containerd-{CID}.scope")


def test_names_pod_and_container_from_a_pod_list(tmp_path: Path) -> None:
    f = tmp_path / "pods.json"
    f.write_text(json.dumps(_pods("rag-7d9f")))
    d = PodDirectory(str(f))
    assert d.pod_of(_ident(CONTAINER)) == PodName("llm", "rag-7d9f", "app")
    pod_cgroup = CONTAINER.rsplit("/", 1)[0]
    assert d.pod_of(_ident(pod_cgroup)) == PodName("llm", "rag-7d9f")
    assert d.pod_of(Identity(cgroup_id=1, cgroup_path="/system.slice")) is None


def test_reloads_on_change_and_keeps_last_good_on_garbage(tmp_path: Path) -> None:
    f = tmp_path / "pods.json"
    f.write_text(json.dumps(_pods("rag-1")))
    now = [0.0]
    d = PodDirectory(str(f), recheck_s=1.0, clock=lambda: now[0])
    assert d.pod_of(_ident(CONTAINER)).pod == "rag-1"
    f.write_text(json.dumps(_pods("rag-2")))
    os.utime(f, ns=(1, 2_000_000_000))
    assert d.pod_of(_ident(CONTAINER)).pod == "rag-1"  # not re-checked within recheck_s
    now[0] = 2.0
    assert d.pod_of(_ident(CONTAINER)).pod == "rag-2"
    f.write_text("{not json")
    os.utime(f, ns=(1, 3_000_000_000))
    now[0] = 4.0
    assert d.pod_of(_ident(CONTAINER)).pod == "rag-2"
    assert "pods file" in d.error


def test_missing_file_is_an_error_not_an_exception(tmp_path: Path) -> None:
    d = PodDirectory(str(tmp_path / "absent.json"))
    assert d.pod_of(_ident(CONTAINER)) is None
    assert "absent.json" in d.error
