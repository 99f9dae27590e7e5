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

Requests go through aiohttp, and bodies are decoded with msgspec into the few fields
needed. In a pod (the DaemonSet) the service account is read directly: its token is
re-read every minute, because kubelet rotates bound tokens. A kubeconfig file (running
outside the cluster) is loaded with kubernetes-asyncio, imported only then: importing
it costs ~37 MB of RSS (measured with ``ru_maxrss``), almost half the agent's budget.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import ssl
import time
from pathlib import Path
from typing import Literal

import aiohttp
import msgspec
import structlog
import yaml

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


class _ApiError(Exception):
    """A failure this module describes itself (its message is the whole story)."""


SERVICE_ACCOUNT = "/var/run/secrets/kubernetes.io/serviceaccount"
_TOKEN_REREAD_S = 60.0


class ApiEndpoint:
    """Where the API server is and how to authenticate: server URL, TLS, bearer token.

    ``token_file`` is re-read every minute (rotated service-account tokens); a fixed
    ``token`` (from a kubeconfig) is used as is.
    """

    def __init__(self, server: str, ssl_ctx: ssl.SSLContext | bool, *, token: str = "",
                 token_file: str = "") -> None:
        self.server = server.rstrip("/")
        self.ssl = ssl_ctx
        self._token, self._token_file, self._read_at = token, token_file, -_TOKEN_REREAD_S

    def headers(self) -> dict[str, str]:
        if self._token_file and time.monotonic() - self._read_at >= _TOKEN_REREAD_S:
            self._token = Path(self._token_file).read_text().strip()
            self._read_at = time.monotonic()
        return {"Authorization": f"Bearer {self._token}"} if self._token else {}


def in_cluster_endpoint(sa_dir: str = SERVICE_ACCOUNT) -> ApiEndpoint:
    """The API server as a pod sees it: $KUBERNETES_SERVICE_HOST/PORT, the service
    account's token and CA."""
    host, port = os.environ.get("KUBERNETES_SERVICE_HOST"), os.environ.get(
        "KUBERNETES_SERVICE_PORT", "443")
    where = "identity.kubernetes: in-cluster service account"
    if not host:
        raise ConfigError(f"{where}: KUBERNETES_SERVICE_HOST is not set (not running in a "
                          f"pod? set identity.kubeconfig)")
    token, ca = Path(sa_dir) / "token", Path(sa_dir) / "ca.crt"
    try:
        ctx = ssl.create_default_context(cafile=str(ca))
        token.read_text()
    except (OSError, ssl.SSLError) as e:
        raise ConfigError(f"{where}: {e} (is automountServiceAccountToken off?)") from e
    server = f"https://[{host}]:{port}" if ":" in host else f"https://{host}:{port}"
    return ApiEndpoint(server, ctx, token_file=str(token))


async def kubeconfig_endpoint(path: str) -> ApiEndpoint:
    """The API server of ``path``'s current context (token or client certificate)."""
    where = f"identity.kubernetes: kubeconfig {path}"
    if not os.path.isfile(path):
        raise ConfigError(f"{where}: no such file")
    # Only here: the package imports every API model (see the module docstring).
    from kubernetes_asyncio.client import Configuration
    from kubernetes_asyncio.config import ConfigException, load_kube_config
    cfg = Configuration()
    try:
        await load_kube_config(config_file=path, client_configuration=cfg,
                               persist_config=False)
        ctx: ssl.SSLContext | bool = False
        if cfg.verify_ssl:
            ctx = ssl.create_default_context(cafile=cfg.ssl_ca_cert or None)
            if cfg.cert_file:
                ctx.load_cert_chain(cfg.cert_file, cfg.key_file)
    except (ConfigException, OSError, ValueError, KeyError, TypeError, ssl.SSLError,
            yaml.YAMLError) as e:
        why = " ".join(str(e).split())  # YAML errors span lines; ours is one
        raise ConfigError(f"{where}: {why}") from e
    token = str(cfg.api_key.get("BearerToken") or "").removeprefix("Bearer ")
    return ApiEndpoint(cfg.host, ctx, token=token)


async def api_endpoint(kubeconfig: str | None) -> ApiEndpoint:
    """From a kubeconfig file, or the pod's service account when None."""
    return await kubeconfig_endpoint(kubeconfig) if kubeconfig else in_cluster_endpoint()


class KubernetesPods:
    """This node's pods, kept current by list+watch; ``pod_of`` answers from memory.

    ``error`` is "" while the table is in sync and says what failed otherwise;
    ``synced`` turns true after the first successful list.
    """

    def __init__(self, endpoint: ApiEndpoint, node: str, *, watch_timeout_s: int = 300,
                 backoff_s: float = 1.0) -> None:
        self.node = node
        self.error = ""
        self.synced = False
        self.counters = {"lists": 0, "watches": 0, "events": 0, "expired": 0, "errors": 0}
        self._endpoint = endpoint
        self._session: aiohttp.ClientSession | None = None
        self._table = PodTable()
        self._version = ""
        self._watch_timeout_s, self._backoff_s = watch_timeout_s, backoff_s

    def pod_of(self, ident: Identity) -> PodName | None:
        return self._table.pod_of(ident)

    def uid_of(self, namespace: str, name: str) -> str | None:
        return self._table.uid_of(namespace, name)

    def container_id_of(self, uid: str, container: str) -> str | None:
        return self._table.container_id_of(uid, container)

    async def run(self) -> None:
        """List and watch until cancelled; never raises for API or network failures."""
        backoff = self._backoff_s
        while True:
            try:
                if not self._version:
                    await self._list()
                started = time.monotonic()
                await self._watch()
                backoff = self._backoff_s
                if time.monotonic() - started < 1.0:  # ended at once: do not spin on it
                    await asyncio.sleep(backoff)
            except _Expired:
                self.counters["expired"] += 1
                self._version = ""
            except Exception as e:  # any failure: report, back off, retry; never die
                self.counters["errors"] += 1
                self._fail(str(e) if isinstance(e, _ApiError)
                           else f"{type(e).__name__}: {e}".removesuffix(": "))
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, _BACKOFF_MAX_S)

    def _fail(self, what: str) -> None:
        error = f"kubernetes pods on node {self.node!r}: {what}"
        if error != self.error:  # say it once per change, not per retry
            log.warning("pod names from the API unavailable", error=error)
        self.error = error

    async def _request(self, timeout: aiohttp.ClientTimeout,
                       **params: str) -> aiohttp.ClientResponse:
        if self._session is None:
            self._session = aiohttp.ClientSession()
        ep = self._endpoint
        resp = await self._session.get(
            f"{ep.server}/api/v1/pods", ssl=ep.ssl, headers=ep.headers(), timeout=timeout,
            params={"fieldSelector": f"spec.nodeName={self.node}", **params})
        if resp.status == 410:
            resp.release()
            raise _Expired
        if resp.status != 200:
            body = (await resp.read())[:300].decode("utf-8", "replace")
            resp.release()
            hint = {401: " (the token was refused: expired, or not this cluster's)",
                    403: " (the agent's ServiceAccount needs get/list/watch on pods: "
                         "deploy/base/rbac.yaml)"}.get(resp.status, "")
            raise _ApiError(f"HTTP {resp.status} from the API server{hint}: {_reason(body)}")
        return resp

    async def _list(self) -> None:
        resp = await self._request(aiohttp.ClientTimeout(total=30))
        try:
            pods = msgspec.json.decode(await resp.read(), type=PodList)
        except msgspec.DecodeError as e:
            raise _ApiError(f"undecodable pod list: {e}") from e
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
            aiohttp.ClientTimeout(sock_connect=30, sock_read=self._watch_timeout_s + 30),
            watch="true", resourceVersion=self._version, allowWatchBookmarks="true",
            timeoutSeconds=str(self._watch_timeout_s))
        self.counters["watches"] += 1
        self.error = ""  # accepted: the table is current again
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
                raise _ApiError(f"watch error {status.code} {status.reason}: {status.message}")
            pod = msgspec.json.decode(ev.object, type=PodObject)
        except msgspec.DecodeError as e:
            raise _ApiError(f"undecodable watch event: {e}") from e
        self.counters["events"] += 1
        if ev.type == "DELETED":
            self._table.delete(pod)
        elif ev.type != "BOOKMARK":
            self._table.upsert(pod)
        if pod.metadata.resourceVersion:
            self._version = pod.metadata.resourceVersion

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()


def _reason(body: str) -> str:
    """The ``message`` of an API Status body, else the body itself."""
    with contextlib.suppress(ValueError, AttributeError):
        return str(json.loads(body).get("message") or body)
    return body
