"""Kubernetes client construction: one place that decides which cluster Wanka talks to."""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Literal, overload

from kubernetes import client, config
from kubernetes.client.exceptions import ApiException

LOCAL_KUBECONFIG = Path(".wanka/kubeconfig")
KUBECONFIG_HELP = "kubeconfig file (default: $KUBECONFIG, .wanka/kubeconfig, in-cluster, ~/.kube/config)"
IN_CLUSTER_NAMESPACE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")
# (connect, read) seconds for any call that names no timeout of its own: a hung API server
# fails the call, and the pass that made it, instead of blocking it forever.
REQUEST_TIMEOUT = (5.0, 30.0)
# A full LIST of a large fleet's pods may legitimately take longer than one object's write.
LIST_TIMEOUT = (5.0, 120.0)
CONNECTIONS = 32
# Concurrent API writes of one pass (each object's writes are independent of the others').
WRITERS = 16
_WRITERS: dict[str, ThreadPoolExecutor] = {}
_WRITERS_LOCK = threading.Lock()


def writers(name: str = "writer") -> ThreadPoolExecutor:
    """The process's writer threads, WRITERS of them per name: "writer" carries out one
    object's work each (a job's plan, a node's health record), "gang" one write of a gang each
    (separate, so a job waiting on its gang's writes never waits on itself)."""
    with _WRITERS_LOCK:
        if name not in _WRITERS:
            _WRITERS[name] = ThreadPoolExecutor(WRITERS, thread_name_prefix=f"wanka-{name}")
        return _WRITERS[name]


def side_by_side(fn: Callable[[Any], Any], items: Sequence[Any], pool: str = "writer",
                 at_least: int = 2) -> list[Any]:
    """`fn` over `items` on the `pool` writer threads, results in order; fewer than `at_least`
    items run here, one by one. Once every call has returned, the first error is raised (so a
    NotLeader stops the caller only after the writes already under way are done)."""
    if len(items) < at_least:
        return [fn(item) for item in items]
    futures = [writers(pool).submit(fn, item) for item in items]
    first = next((e for e in (f.exception() for f in futures) if e is not None), None)
    if first is not None:
        raise first
    return [f.result() for f in futures]


# A gang's own writes (pods, binds, reservations) go side by side on the "gang" threads (the
# object's worker waits on them, so never on its own pool) from this many members on: smaller
# gangs go one by one, as a pass already runs WRITERS objects at once.
FAN_OUT_FROM = 8


def gang_writes(fn: Callable[[Any], Any], items: Sequence[Any]) -> list[Any]:
    """The writes of one gang's members: `side_by_side` on the "gang" threads."""
    return side_by_side(fn, items, "gang", FAN_OUT_FROM)


class DeadlineApiClient(client.ApiClient):  # type: ignore[misc]  # the client is untyped
    """An ApiClient whose every request has a deadline unless the call sets `_request_timeout`."""

    request_timeout: tuple[float, float] = REQUEST_TIMEOUT

    def request(self, method: str, url: str, query_params: Any = None, headers: Any = None,
                post_params: Any = None, body: Any = None, _preload_content: bool = True,
                _request_timeout: Any = None) -> Any:
        return super().request(method, url, query_params, headers, post_params, body,
                               _preload_content, _request_timeout or self.request_timeout)


def kubeconfig_path(kubeconfig: str | os.PathLike[str] | None = None) -> str | None:
    """The kubeconfig file Wanka reads: the one given, else $KUBECONFIG, else .wanka/kubeconfig;
    None means in-cluster (in a pod) or ~/.kube/config."""
    path = kubeconfig or os.environ.get("KUBECONFIG")
    if not path and LOCAL_KUBECONFIG.exists():
        path = LOCAL_KUBECONFIG
    return str(path) if path else None


def api_client(kubeconfig: str | os.PathLike[str] | None = None, context: str | None = None) -> client.ApiClient:
    """An ApiClient (with a timeout on every call) for the given kubeconfig, else $KUBECONFIG,
    .wanka/kubeconfig, in-cluster, then ~/.kube/config, in that order; `context` picks a
    kubeconfig context other than the current one."""
    path = kubeconfig_path(kubeconfig)
    cfg = client.Configuration()
    if path:
        config.load_kube_config(config_file=path, context=context, client_configuration=cfg)
    elif os.environ.get("KUBERNETES_SERVICE_HOST") and not context:
        config.load_incluster_config(client_configuration=cfg)
    else:
        config.load_kube_config(context=context, client_configuration=cfg)
    # Writes go out concurrently (the operator's and the benchmarks' alike): keep that many
    # connections open instead of discarding and re-dialling TLS.
    cfg.connection_pool_maxsize = max(cfg.connection_pool_maxsize or 0, CONNECTIONS)
    return DeadlineApiClient(configuration=cfg)


def default_namespace(kubeconfig: str | os.PathLike[str] | None = None, context: str | None = None) -> str:
    """The namespace of the kubeconfig context in use (kubectl's default), else the pod's own
    namespace in a cluster, else "default"."""
    path = kubeconfig_path(kubeconfig)
    if path or not os.environ.get("KUBERNETES_SERVICE_HOST"):
        try:
            contexts, current = config.list_kube_config_contexts(config_file=path)
        except (config.ConfigException, OSError):
            return "default"
        chosen = next((c for c in contexts if c.get("name") == context), None) if context else current
        return str(((chosen or {}).get("context") or {}).get("namespace") or "default")
    try:
        return IN_CLUSTER_NAMESPACE.read_text().strip() or "default"
    except OSError:
        return "default"


def connection_settings(api: client.ApiClient) -> dict[str, object]:
    """Server, CA, token or client certificate of an ApiClient, for other HTTP clients (kopf)."""
    cfg = api.configuration
    auth = (cfg.api_key or {}).get("authorization") or (cfg.api_key or {}).get("BearerToken") or ""
    prefix = (cfg.api_key_prefix or {}).get("authorization", "")
    # kubeconfigs store "Bearer <token>", the in-cluster loader "bearer <token>".
    token = auth.split(" ", 1)[1] if auth.lower().startswith("bearer ") else auth
    if prefix and prefix.lower() != "bearer":
        token = ""
    return {
        "server": cfg.host,
        "ca_path": cfg.ssl_ca_cert,
        "insecure": not cfg.verify_ssl,
        "token": token or None,
        "certificate_path": cfg.cert_file,
        "private_key_path": cfg.key_file,
    }


LIST_PAGE = 500
_PATHS = {
    "nodes": ("/api/v1/nodes", "v1", "Node"),
    "pods": ("/api/v1/pods", "v1", "Pod"),
    "namespaces": ("/api/v1/namespaces", "v1", "Namespace"),
    "jobs": ("/apis/batch/v1/jobs", "batch/v1", "Job"),
}


# Kinds of which the cache holds only what Wanka governs: batch Jobs labelled with a queue (a
# cluster's other Jobs, often thousands, are never read).
SELECTORS = {"jobs": "wanka.io/queue"}


def collection(kind: str) -> tuple[str, str, str]:
    """(path, apiVersion, kind) of one of the cache's kinds; kind is "" for Wanka's own (its
    objects carry it)."""
    from wanka.api.common import GROUP, VERSION

    return _PATHS.get(kind, (f"/apis/{GROUP}/{VERSION}/{kind}", f"{GROUP}/{VERSION}", ""))


@overload
def list_all(api: client.ApiClient, kind: str, page: int = ...,
             with_version: Literal[False] = ...) -> list[dict[str, Any]]: ...


@overload
def list_all(api: client.ApiClient, kind: str, page: int = ...,
             *, with_version: Literal[True]) -> tuple[list[dict[str, Any]], str]: ...


def list_all(api: client.ApiClient, kind: str, page: int = LIST_PAGE,
             with_version: bool = False) -> list[dict[str, Any]] | tuple[list[dict[str, Any]], str]:
    """Every object of one of the cache's kinds, as plain dicts: a LIST in pages of `page`
    (the API server serves each from one consistent snapshot), so neither side ever holds
    one giant response. `with_version`: also the collection's resourceVersion (to watch from)."""
    path, api_version, kind_name = collection(kind)
    items: list[dict[str, Any]] = []
    token = ""
    while True:
        query = [("limit", str(page))] + ([("continue", token)] if token else [])
        if kind in SELECTORS:
            query.append(("labelSelector", SELECTORS[kind]))
        out = request_json(api, "GET", path, query=query, timeout=LIST_TIMEOUT)
        for item in out.get("items") or []:
            item.setdefault("apiVersion", api_version)
            if kind_name:
                item.setdefault("kind", kind_name)
            items.append(item)
        meta = out.get("metadata") or {}
        token = str(meta.get("continue") or "")
        if not token:
            return (items, str(meta.get("resourceVersion") or "")) if with_version else items


# The patch types Wanka sends (`request_json`'s content_type): JSON merge patch for custom
# resources and a few core fields, strategic merge patch where a core list must merge by key.
MERGE_PATCH = "application/merge-patch+json"
STRATEGIC_PATCH = "application/strategic-merge-patch+json"


def request_json(api: client.ApiClient, method: str, path: str, body: Any = None,
                 query: list[tuple[str, str]] | None = None, timeout: Any = None,
                 content_type: str = "application/json") -> dict[str, Any]:
    """One API call as plain JSON in and out: no model classes on either side (the generated
    client's (de)serialization costs more CPU than the request itself). Raises ApiException."""
    import json

    resp = api.call_api(
        path, method, query_params=query or [],
        header_params={"Accept": "application/json", "Content-Type": content_type},
        body=body, auth_settings=["BearerToken"], _preload_content=False,
        _return_http_data_only=True, _request_timeout=timeout,
    )
    try:
        data = resp.data
    finally:
        resp.release_conn()  # back to the pool: unread, it would cost a TLS handshake per call
    return dict(json.loads(data)) if data else {}


def api_message(exc: ApiException) -> str:
    """The message of the Status the API answered with, else its reason phrase."""
    import json

    try:
        body = json.loads(exc.body or "{}")
    except (ValueError, TypeError):
        body = {}
    return str(body.get("message") or exc.reason or "")
