"""Pod names from the Kubernetes API: list, then watch, the pods scheduled on this node.

The agent sees cgroups; the API server knows which pod and container each cgroup is.
:class:`KubernetesPods` keeps a :class:`~llm_slo.identity.PodTable` current with the
usual informer loop, narrowed to one node (``fieldSelector=spec.nodeName=NODE``) so a
DaemonSet's cost does not grow with the cluster:

1. LIST the node's pods, replace the table, remember ``metadata.resourceVersion``;
2. WATCH from that version (bookmarks on, server timeout ``watch_timeout_s``), applying
   ADDED / MODIFIED / DELETED as they come and advancing the version;
3. when the watch ends, resume it from the last version; when the version has expired
   (HTTP 410 or an ERROR event with code 410), list again;
4. on any other failure, record it in ``error`` (and keep the last good table: names of
   running pods do not change) and retry after a backoff that doubles up to 30 s.

kubernetes-asyncio supplies the configuration (in-cluster service account or a
kubeconfig: TLS, tokens and their refresh); bodies are read raw and decoded with msgspec
into the few fields needed, rather than into the client's full V1Pod models.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
from typing import Any, Literal

import aiohttp
import msgspec
import structlog
import yaml
from kubernetes_asyncio import client as k8s
from kubernetes_asyncio.config import ConfigException, load_incluster_config, load_kube_config

from llm_slo.errors import ConfigError
from llm_slo.identity import Identity, PodList, PodName, PodObject, PodTable

log = structlog.get_logger("llm_slo.pod_watch")
_BACKOFF_MAX_S = 30.0


class _Status(msgspec.Struct):
    """The API's Status object (what an ERROR watch event carries)."""

    code: int = 0
    reason: str = ""
    message: str = ""


class _WatchEvent(msgspec.Struct):
    type: Literal["ADDED", "MODIFIED", "DELETED", "BOOKMARK", "ERROR"]
    object: msgspec.Raw


class _Expired(Exception):
    """The resource version is too old to watch from: list again."""


async def api_client(kubeconfig: str | None) -> k8s.ApiClient:
    """An API client from a kubeconfig file, or the pod's service account when None."""
    cfg = k8s.Configuration()
    where = f"kubeconfig {kubeconfig}" if kubeconfig else "in-cluster service account"
    if kubeconfig and not os.path.isfile(kubeconfig):
        raise ConfigError(f"identity.kubernetes: {where}: no such file")
    try:
        if kubeconfig:
            await load_kube_config(config_file=kubeconfig, client_configuration=cfg,
                                   persist_config=False)
        else:
            load_incluster_config(client_configuration=cfg)
    except (ConfigException, OSError, ValueError, KeyError, TypeError, yaml.YAMLError) as e:
        why = " ".join(str(e).split())  # YAML errors span lines; ours is one
        raise ConfigError(f"identity.kubernetes: cannot configure the API client from the "
                          f"{where}: {why}") from e
    return k8s.ApiClient(cfg)


class KubernetesPods:
    """This node's pods, kept current by list+watch; ``pod_of`` answers from memory.

    ``error`` is "" while the table is in sync and says what failed otherwise;
    ``synced`` turns true after the first successful list.
    """

    def __init__(self, api: k8s.ApiClient, node: str, *, watch_timeout_s: int = 300,
                 backoff_s: float = 1.0) -> None:
        self.node = node
        self.error = ""
        self.synced = False
        self.counters = {"lists": 0, "watches": 0, "events": 0, "expired": 0, "errors": 0}
        self._api, self._core = api, k8s.CoreV1Api(api)
        self._table = PodTable()
        self._version = ""
        self._watch_timeout_s, self._backoff_s = watch_timeout_s, backoff_s

    def pod_of(self, ident: Identity) -> PodName | None:
        return self._table.pod_of(ident)

    def uid_of(self, namespace: str, name: str) -> str | None:
        return self._table.uid_of(namespace, name)

    async def run(self) -> None:
        """List and watch until cancelled; never raises for API or network failures."""
        backoff = self._backoff_s
        while True:
            try:
                if not self._version:
                    await self._list()
                await self._watch()
                backoff = self._backoff_s  # a watch that ended normally: resume at once
            except _Expired:
                self.counters["expired"] += 1
                self._version = ""
            except (aiohttp.ClientError, TimeoutError, OSError, ValueError) as e:
                self.counters["errors"] += 1
                self._fail(str(e) or type(e).__name__)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, _BACKOFF_MAX_S)

    def _fail(self, what: str) -> None:
        error = f"kubernetes pods on node {self.node!r}: {what}"
        if error != self.error:  # say it once per change, not per retry
            log.warning("pod names from the API unavailable", error=error)
        self.error = error

    async def _request(self, **params: Any) -> aiohttp.ClientResponse:
        resp: aiohttp.ClientResponse = await self._core.list_pod_for_all_namespaces(
            field_selector=f"spec.nodeName={self.node}", _preload_content=False, **params)
        if resp.status == 410:
            resp.release()
            raise _Expired
        if resp.status != 200:
            body = (await resp.read())[:300].decode("utf-8", "replace")
            resp.release()
            hint = " (the agent's ServiceAccount needs get/list/watch on pods: deploy/base/" \
                   "rbac.yaml)" if resp.status in (401, 403) else ""
            raise ValueError(f"HTTP {resp.status} from the API server{hint}: {_reason(body)}")
        return resp

    async def _list(self) -> None:
        resp = await self._request(_request_timeout=30)
        try:
            pods = msgspec.json.decode(await resp.read(), type=PodList)
        except msgspec.DecodeError as e:
            raise ValueError(f"undecodable pod list: {e}") from e
        finally:
            resp.release()
        self._table.replace(pods.items)
        self._version = pods.metadata.resourceVersion
        self.counters["lists"] += 1
        if self.error or not self.synced:
            log.info("pod names from the API", node=self.node, pods=len(self._table))
        self.synced, self.error = True, ""

    async def _watch(self) -> None:
        # The server ends the watch after timeout_seconds; the client read timeout is a
        # little longer, so only a dead connection trips it.
        resp = await self._request(
            watch="true", resource_version=self._version, allow_watch_bookmarks="true",
            timeout_seconds=self._watch_timeout_s,
            _request_timeout=aiohttp.ClientTimeout(sock_connect=30,
                                                   sock_read=self._watch_timeout_s + 30))
        self.counters["watches"] += 1
        try:
            async for line in resp.content:
                if line.strip():
                    self._apply(line)
        finally:
            resp.release()

    def _apply(self, line: bytes) -> None:
        try:
            ev = msgspec.json.decode(line, type=_WatchEvent)
            if ev.type == "ERROR":
                status = msgspec.json.decode(ev.object, type=_Status)
                if status.code == 410:
                    raise _Expired
                raise ValueError(f"watch error {status.code} {status.reason}: {status.message}")
            pod = msgspec.json.decode(ev.object, type=PodObject)
        except msgspec.DecodeError as e:
            raise ValueError(f"undecodable watch event: {e}") from e
        self.counters["events"] += 1
        if ev.type == "DELETED":
            self._table.delete(pod)
        elif ev.type != "BOOKMARK":
            self._table.upsert(pod)
        if pod.metadata.resourceVersion:
            self._version = pod.metadata.resourceVersion

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            await self._api.close()


def _reason(body: str) -> str:
    """The ``message`` of an API Status body, else the body itself."""
    with contextlib.suppress(ValueError, AttributeError):
        return str(json.loads(body).get("message") or body)
    return body
