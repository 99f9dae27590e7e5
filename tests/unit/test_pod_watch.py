"""KubernetesPods against a small fake API server on loopback (real HTTP, real kubeconfig).

The fake serves ``GET /api/v1/pods`` the way the API server does for a node-scoped
informer: a PodList with a resourceVersion, and with ``watch=true`` a stream of JSON
lines. Each test scripts what the server answers and checks what the agent's table says.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from llm_slo.errors import ConfigError
from llm_slo.identity import Identity, PodName
from llm_slo.lab.provider import ensure_cert
from llm_slo.pod_watch import KubernetesPods, api_endpoint, in_cluster_endpoint

NODE, TOKEN = "node-a", "t0ken"
CID = "cd" * 32


def _pod(name: str, uid: str, rv: str, container_id: str = "") -> dict[str, Any]:
    statuses = [{"name": "app", "containerID": f"containerd://{container_id}"}] \
        if container_id else []
    return {"metadata": {"name": name, "namespace": "llm", "uid": uid, "resourceVersion": rv},
            "spec": {"nodeName": NODE}, "status": {"containerStatuses": statuses}}


def _ident(uid: str, container_id: str = "") -> Identity:
    return Identity(cgroup_id=1, cgroup_path="/kubepods", pod_uid=uid,
                    container_id=container_id)


def _uid(n: int) -> str:
    return f"{n:08x}-0000-4000-8000-000000000000"


class FakeApi:
    """Answers list and watch requests from scripted handlers; records every request."""

    def __init__(self) -> None:
        self.lists: list[Callable[[], web.StreamResponse]] = []
        self.watches: list[list[dict[str, Any]] | int] = []  # events, or an HTTP status
        self.requests: list[dict[str, str]] = []

    async def pods(self, request: web.Request) -> web.StreamResponse:
        q = dict(request.query)
        self.requests.append(q)
        assert request.headers.get("Authorization") == f"Bearer {TOKEN}"
        assert q.get("fieldSelector") == f"spec.nodeName={NODE}"
        if q.get("watch") != "true":
            return self.lists.pop(0)() if self.lists else web.json_response(
                {"kind": "Status", "message": "no more lists scripted"}, status=500)
        script = self.watches.pop(0) if self.watches else []
        if isinstance(script, int):
            return web.json_response({"kind": "Status", "code": script,
                                      "message": "scripted failure"}, status=script)
        resp = web.StreamResponse()
        await resp.prepare(request)
        for ev in script:
            await resp.write(json.dumps(ev).encode() + b"\n")
        if not script:
            await asyncio.sleep(30)  # an idle watch: the test ends before this
        await resp.write_eof()
        return resp


def _listing(rv: str, *pods: dict[str, Any]) -> Callable[[], web.StreamResponse]:
    return lambda: web.json_response({"kind": "PodList", "metadata": {"resourceVersion": rv},
                                      "items": list(pods)})


@contextlib.asynccontextmanager
async def _fake_api(tmp_path: Path) -> AsyncIterator[tuple[FakeApi, str]]:
    fake = FakeApi()
    app = web.Application()
    app.router.add_get("/api/v1/pods", fake.pods)
    runner = web.AppRunner(app, shutdown_timeout=0.1)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        yield fake, _kubeconfig(tmp_path, f"http://127.0.0.1:{port}")
    finally:
        await runner.cleanup()


def _kubeconfig(tmp_path: Path, server: str) -> str:
    path = tmp_path / "kubeconfig"
    path.write_text(json.dumps({
        "apiVersion": "v1", "kind": "Config", "current-context": "lab",
        "clusters": [{"name": "lab", "cluster": {"server": server}}],
        "users": [{"name": "agent", "user": {"token": TOKEN}}],
        "contexts": [{"name": "lab", "context": {"cluster": "lab", "user": "agent"}}]}))
    return str(path)


def _with_api(tmp_path: Path, body: Callable[[FakeApi, str], Awaitable[None]]) -> None:
    async def main() -> None:
        async with _fake_api(tmp_path) as (fake, kubeconfig):
            await asyncio.wait_for(body(fake, kubeconfig), 20)
    asyncio.run(main())


async def _until(cond: Callable[[], bool], timeout_s: float = 5.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout_s
    while not cond():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.01)


async def _running(kubeconfig: str, **kw: Any) -> tuple[KubernetesPods, asyncio.Task[None]]:
    pods = KubernetesPods(await api_endpoint(kubeconfig), NODE, **kw)
    return pods, asyncio.create_task(pods.run())


async def _stop(pods: KubernetesPods, task: asyncio.Task[None]) -> None:
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await pods.close()


def test_list_then_watch_applies_events_and_resumes_from_the_last_version(
        tmp_path: Path) -> None:
    async def body(fake: FakeApi, kubeconfig: str) -> None:
        fake.lists.append(_listing("10", _pod("rag-0", _uid(1), "9")))
        fake.watches.append([
            {"type": "ADDED", "object": _pod("vectordb-0", _uid(2), "11")},
            {"type": "MODIFIED", "object": _pod("rag-0", _uid(1), "12", container_id=CID)},
            {"type": "BOOKMARK", "object": {"metadata": {"resourceVersion": "13"}}},
            {"type": "DELETED", "object": _pod("vectordb-0", _uid(2), "14")},
        ])
        pods, task = await _running(kubeconfig)
        try:
            await _until(lambda: pods.counters["events"] == 4 and len(fake.requests) >= 3)
            assert pods.synced and pods.error == ""
            assert pods.pod_of(_ident(_uid(1), CID)) == PodName("llm", "rag-0", "app")
            assert pods.pod_of(_ident(_uid(1))) == PodName("llm", "rag-0")
            assert pods.pod_of(_ident(_uid(2))) is None  # deleted
            first_watch, resumed = fake.requests[1], fake.requests[2]
            assert first_watch["resourceVersion"] == "10"
            assert first_watch["allowWatchBookmarks"] == "true"
            assert resumed["watch"] == "true" and resumed["resourceVersion"] == "14"
            assert pods.counters["lists"] == 1  # a watch that ends is resumed, not relisted
        finally:
            await _stop(pods, task)
    _with_api(tmp_path, body)


def test_expired_version_relists_and_replaces_the_table(tmp_path: Path) -> None:
    async def body(fake: FakeApi, kubeconfig: str) -> None:
        fake.lists += [_listing("10", _pod("old-0", _uid(1), "9")),
                       _listing("50", _pod("new-0", _uid(3), "49")),
                       _listing("60", _pod("new-0", _uid(3), "49"))]
        fake.watches += [[{"type": "ERROR", "object": {"kind": "Status", "code": 410,
                                                       "reason": "Expired"}}], 410]
        pods, task = await _running(kubeconfig)
        try:
            # An ERROR 410 event on the first watch, HTTP 410 on the second: list again.
            await _until(lambda: pods.counters["expired"] == 2 and len(fake.requests) == 6)
            assert pods.pod_of(_ident(_uid(1))) is None  # gone with the relist
            assert pods.pod_of(_ident(_uid(3))) == PodName("llm", "new-0")
            assert [r.get("resourceVersion") for r in fake.requests] == \
                [None, "10", None, "50", None, "60"]
            assert pods.counters["errors"] == 0 and pods.error == ""
        finally:
            await _stop(pods, task)
    _with_api(tmp_path, body)


def test_forbidden_is_reported_with_the_rbac_hint_then_recovers(tmp_path: Path) -> None:
    async def body(fake: FakeApi, kubeconfig: str) -> None:
        fake.lists += [lambda: web.json_response(
            {"kind": "Status", "code": 403,
             "message": 'pods is forbidden: User "x" cannot list'}, status=403),
            _listing("7", _pod("rag-0", _uid(1), "6"))]
        pods, task = await _running(kubeconfig, backoff_s=0.05)
        try:
            await _until(lambda: pods.error != "")
            assert "HTTP 403" in pods.error and "rbac.yaml" in pods.error
            assert "cannot list" in pods.error and NODE in pods.error
            assert not pods.synced
            await _until(lambda: pods.synced)
            assert pods.error == "" and pods.pod_of(_ident(_uid(1))) == PodName("llm", "rag-0")
        finally:
            await _stop(pods, task)
    _with_api(tmp_path, body)


def test_garbage_from_the_server_is_an_error_not_a_crash(tmp_path: Path) -> None:
    async def body(fake: FakeApi, kubeconfig: str) -> None:
        fake.lists += [lambda: web.Response(body=b"<html>proxy error</html>",
                                            content_type="application/json"),
                       _listing("3", _pod("rag-0", _uid(1), "2"))]
        fake.watches.append([{"type": "ADDED", "object": "not a pod"}])
        pods, task = await _running(kubeconfig, backoff_s=0.05)
        try:
            await _until(lambda: pods.counters["errors"] >= 2 and pods.synced)
            assert "undecodable" in pods.error
            assert pods.pod_of(_ident(_uid(1))) == PodName("llm", "rag-0")  # last good table
            assert not task.done()
        finally:
            await _stop(pods, task)
    _with_api(tmp_path, body)


def test_unreachable_server_backs_off_and_reports(tmp_path: Path) -> None:
    async def main() -> None:
        kubeconfig = _kubeconfig(tmp_path, "http://127.0.0.1:9")  # discard port: refused
        pods, task = await _running(kubeconfig, backoff_s=0.05)
        try:
            await _until(lambda: pods.counters["errors"] >= 3)
            assert NODE in pods.error and not pods.synced
        finally:
            await _stop(pods, task)
    asyncio.run(main())


def test_missing_configuration_is_a_config_error(tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ConfigError, match=r"kubeconfig .*absent: no such file"):
        asyncio.run(api_endpoint(str(tmp_path / "absent")))
    (bad := tmp_path / "bad").write_text("clusters: [\n")
    with pytest.raises(ConfigError, match=r"kubeconfig .*bad"):
        asyncio.run(api_endpoint(str(bad)))
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    with pytest.raises(ConfigError, match="KUBERNETES_SERVICE_HOST is not set"):
        asyncio.run(api_endpoint(None))
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "10.96.0.1")
    with pytest.raises(ConfigError, match="automountServiceAccountToken"):
        in_cluster_endpoint(str(tmp_path / "no-sa"))


def test_in_cluster_service_account_over_tls_with_the_mounted_token(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The DaemonSet's path: $KUBERNETES_SERVICE_HOST/PORT, the token and the CA of the
    mounted service account, over real TLS to the fake API server."""
    cert, key = ensure_cert(tmp_path / "tls")
    sa = tmp_path / "serviceaccount"
    sa.mkdir()
    (sa / "ca.crt").write_text(Path(cert).read_text())
    (sa / "token").write_text(TOKEN + "\n")

    async def main() -> None:
        fake = FakeApi()
        fake.lists.append(_listing("3", _pod("rag-0", _uid(1), "2")))
        app = web.Application()
        app.router.add_get("/api/v1/pods", fake.pods)
        runner = web.AppRunner(app, shutdown_timeout=0.1)
        await runner.setup()
        tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        tls.load_cert_chain(cert, key)
        site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=tls)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "127.0.0.1")
        monkeypatch.setenv("KUBERNETES_SERVICE_PORT", str(port))
        pods = KubernetesPods(in_cluster_endpoint(str(sa)), NODE)
        task = asyncio.create_task(pods.run())
        try:
            await _until(lambda: pods.synced)
            assert pods.pod_of(_ident(_uid(1))) == PodName("llm", "rag-0")
        finally:
            await _stop(pods, task)
            await runner.cleanup()
    asyncio.run(main())
