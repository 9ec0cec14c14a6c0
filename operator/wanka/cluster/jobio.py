"""The API calls the TrainingJob loop makes, each idempotent (a retry after a crash is harmless)."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from kubernetes import client
from kubernetes.client.exceptions import ApiException

from wanka.api.common import GROUP, VERSION
from wanka.cluster.cache import Store, version
from wanka.cluster.fence import Fence, check
from wanka.cluster.kube import MERGE_PATCH, STRATEGIC_PATCH, request_json
from wanka.metrics import BINDS

log = logging.getLogger(__name__)
FINALIZER = "wanka.io/finalizer"


# Where `ensure` creates each kind it makes (and `delete_owned` deletes them, by name).
_CREATE = {
    "Pod": "/api/v1/namespaces/{ns}/pods",
    "Service": "/api/v1/namespaces/{ns}/services",
    "ServiceAccount": "/api/v1/namespaces/{ns}/serviceaccounts",
    "TrainingJobProgress": f"/apis/{GROUP}/{VERSION}/namespaces/{{ns}}/trainingjobprogresses",
    "Role": "/apis/rbac.authorization.k8s.io/v1/namespaces/{ns}/roles",
    "RoleBinding": "/apis/rbac.authorization.k8s.io/v1/namespaces/{ns}/rolebindings",
}


class Conflict(Exception):
    """The object changed since we read it (409) or is gone (404): re-read and decide again."""


JOBS = f"/apis/{GROUP}/{VERSION}/namespaces/{{ns}}/trainingjobs/{{name}}"


class JobIO:
    """Creates, binds and deletes what a job owns; patches its status with preconditions.

    Every call is plain JSON both ways (`request_json`): the generated client builds a model
    object, and a Configuration for each of them, for every answer it decodes. A deleted pod's
    answer cost the operator more CPU than the API server spent on the deletion."""

    def __init__(self, api: client.ApiClient, fence: Fence | None = None) -> None:
        self.api = api
        self.fence = fence

    # --- the job itself ------------------------------------------------------------------
    def patch_status(self, ns: str, name: str, version: str | None, status: Mapping[str, Any]) -> str:
        """Merge-patch status only if the job is still at `version`; returns the new version."""
        check(self.fence, f"patch status of {ns}/{name}")
        body: dict[str, Any] = {"status": dict(status)}
        if version:
            body["metadata"] = {"resourceVersion": version}
        try:
            out = request_json(self.api, "PATCH", JOBS.format(ns=ns, name=name) + "/status", body,
                               content_type=MERGE_PATCH)
        except ApiException as exc:
            if exc.status in (404, 409):
                raise Conflict(f"{ns}/{name}: {exc.reason}") from exc
            raise
        return str(out["metadata"]["resourceVersion"])

    def set_finalizers(self, ns: str, name: str, version: str | None, finalizers: list[str]) -> str | None:
        """Returns the job's new resourceVersion."""
        check(self.fence, f"set finalizers of {ns}/{name}")
        body = {"metadata": {"finalizers": finalizers, "resourceVersion": version}}
        try:
            out = request_json(self.api, "PATCH", JOBS.format(ns=ns, name=name), body, content_type=MERGE_PATCH)
        except ApiException as exc:
            if exc.status in (404, 409):
                raise Conflict(f"{ns}/{name}: {exc.reason}") from exc
            raise
        return str((out.get("metadata") or {}).get("resourceVersion") or "") or None

    # --- what it owns --------------------------------------------------------------------
    def ensure(self, obj: Mapping[str, Any]) -> dict[str, Any] | None:
        """Create `obj` unless it exists already (by name); a created Pod is returned as the API
        stored it (for the cache to assume), anything else as None."""
        check(self.fence, f"create {obj['kind']} {obj['metadata']['name']}")
        ns = obj["metadata"]["namespace"]
        kind = obj["kind"]
        path = _CREATE.get(kind)
        if path is None:
            raise ValueError(f"unexpected kind {kind}")
        try:
            # Plain JSON both ways: the generated models' round trip costs more than the call.
            created = request_json(self.api, "POST", path.format(ns=ns), dict(obj))
        except ApiException as exc:
            if exc.status != 409:
                raise
            return None
        return created if kind == "Pod" else None

    def bind(self, ns: str, pod: str, node: str) -> str | None:
        """Bind through pods/binding. None when bound (now or before); else why it failed."""
        check(self.fence, f"bind {ns}/{pod}")
        body = {"apiVersion": "v1", "kind": "Binding", "metadata": {"name": pod, "namespace": ns},
                "target": {"apiVersion": "v1", "kind": "Node", "name": node}}
        try:
            # The client cannot read the Status the server answers with: skip decoding.
            request_json(self.api, "POST", f"/api/v1/namespaces/{ns}/bindings", body)
        except ApiException as exc:
            if exc.status == 409:
                current = (request_json(self.api, "GET", f"/api/v1/namespaces/{ns}/pods/{pod}")
                           .get("spec") or {}).get("nodeName")
                return None if current == node else f"pod {pod} is bound to {current}, not {node}"
            return f"binding {pod} to {node} failed: {exc.status} {exc.reason}"
        return None

    def delete_pod(self, ns: str, name: str, grace: int | None = None) -> None:
        check(self.fence, f"delete pod {ns}/{name}")
        try:
            request_json(self.api, "DELETE", f"/api/v1/namespaces/{ns}/pods/{name}",
                         {} if grace is None else {"gracePeriodSeconds": grace})
        except ApiException as exc:
            if exc.status != 404:
                raise

    # --- pods and batch Jobs other controllers made (cluster/units.py) ---------------------
    def annotate_pod(self, ns: str, name: str, annotations: Mapping[str, str | None],
                     version: str | None = None) -> dict[str, Any]:
        """Merge-patch a pod's annotations (None removes one), only if it is still at `version`
        when given; returns the pod as stored. A pod gone or changed is a Conflict."""
        check(self.fence, f"annotate pod {ns}/{name}")
        meta: dict[str, Any] = {"annotations": dict(annotations)}
        if version:
            meta["resourceVersion"] = version
        return self._patch(f"/api/v1/namespaces/{ns}/pods/{name}", {"metadata": meta}, f"pod {ns}/{name}")

    def pod_condition(self, ns: str, name: str, condition: Mapping[str, Any]) -> None:
        """Set one condition in a pod's status (PodScheduled=False while it waits)."""
        check(self.fence, f"write status of pod {ns}/{name}")
        self._patch(f"/api/v1/namespaces/{ns}/pods/{name}/status",
                    {"status": {"conditions": [dict(condition)]}}, f"pod {ns}/{name}",
                    STRATEGIC_PATCH)

    def patch_batch_job(self, ns: str, name: str, body: Mapping[str, Any]) -> dict[str, Any]:
        """Merge-patch a batch/v1 Job (suspend, its placement); put a resourceVersion in `body`
        to make it conditional."""
        check(self.fence, f"patch Job {ns}/{name}")
        return self._patch(f"/apis/batch/v1/namespaces/{ns}/jobs/{name}", body, f"Job {ns}/{name}")

    def _patch(self, path: str, body: Mapping[str, Any], what: str,
               content_type: str = MERGE_PATCH) -> dict[str, Any]:
        try:
            return request_json(self.api, "PATCH", path, dict(body), content_type=content_type)
        except ApiException as exc:
            if exc.status in (404, 409):
                raise Conflict(f"{what}: {exc.reason}") from exc
            raise

    def read_configmap(self, ns: str, name: str) -> dict[str, Any] | None:
        try:
            return request_json(self.api, "GET", f"/api/v1/namespaces/{ns}/configmaps/{name}")
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise

    def put_configmap(self, ns: str, name: str, data: Mapping[str, str]) -> None:
        """Create the ConfigMap or merge `data` into it."""
        check(self.fence, f"write ConfigMap {ns}/{name}")
        path = f"/api/v1/namespaces/{ns}/configmaps"
        try:
            request_json(self.api, "PATCH", f"{path}/{name}", {"data": dict(data)}, content_type=STRATEGIC_PATCH)
        except ApiException as exc:
            if exc.status != 404:
                raise
            request_json(self.api, "POST", path, {"metadata": {"name": name}, "data": dict(data)})

    def patch_node(self, name: str, body: Mapping[str, Any]) -> None:
        check(self.fence, f"patch node {name}")
        try:
            request_json(self.api, "PATCH", f"/api/v1/nodes/{name}", dict(body), content_type=STRATEGIC_PATCH)
        except ApiException as exc:
            if exc.status in (404, 409):
                raise Conflict(f"node {name}: {exc.reason}") from exc
            raise

    def delete_owned(self, ns: str, job: str, names: Mapping[str, str]) -> None:
        """Delete the Service, progress report and RBAC of a job (404 is fine)."""
        check(self.fence, f"delete what {ns}/{job} owns")
        for kind, name in names.items():
            try:
                request_json(self.api, "DELETE", f"{_CREATE[kind].format(ns=ns)}/{name}")
            except ApiException as exc:
                if exc.status != 404:
                    raise


# --- a write and what the cache should read until the watch shows it -------------------------
def bind_assumed(io: JobIO, pods: Store, pod: Mapping[str, Any], node: str) -> str | None:
    """Bind `pod` (`JobIO.bind`), count it, and assume it bound in `pods` until the watch shows
    it. None when bound; else why it failed."""
    meta = pod["metadata"]
    problem = io.bind(meta["namespace"], meta["name"], node)
    if problem is not None:
        BINDS.labels("failed").inc()
        return problem
    if version(pod):
        pods.assume({**pod, "spec": {**pod["spec"], "nodeName": node}}, upto=version(pod) + 1)
    BINDS.labels("bound").inc()
    return None


def delete_assumed(io: JobIO, pods: Store, pod: Mapping[str, Any], grace: int | None, now: float) -> None:
    """Delete `pod` with `grace` seconds (None: its own), and assume it terminating in `pods`
    until the watch shows any newer version of it."""
    meta = pod["metadata"]
    io.delete_pod(meta["namespace"], meta["name"], grace)
    if grace is None:
        own = (pod.get("spec") or {}).get("terminationGracePeriodSeconds")
        grace = own if isinstance(own, int) else 30
    when = datetime.fromtimestamp(now + grace, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    pods.assume({**pod, "metadata": {**meta, "deletionTimestamp": when}}, upto=version(pod) + 1)
