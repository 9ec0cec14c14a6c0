"""The chart's plain-pod admission policies (templates/podslices.yaml) on the real API server: the
slice policy pins a slice or MIG pod a tenant creates, and the guard keeps the operator's
annotations and a wanka pod's device pinning out of tenants' hands."""

from __future__ import annotations

import copy
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from kubernetes import client, config
from kubernetes.client.exceptions import ApiException

from tests.integration.conftest import Cluster, wait_for
from wanka.cluster.devenv import apply_manifests, delete_manifests, render_chart
from wanka.cluster.localcluster import kubeconfig_dict

pytestmark = pytest.mark.integration

MAP_API = "admissionregistration.k8s.io/v1beta1/MutatingAdmissionPolicy"
PINNING = {
    "NVIDIA_VISIBLE_DEVICES": "metadata.annotations['wanka.io/visible-devices']",
    "CUDA_MPS_ACTIVE_THREAD_PERCENTAGE": "metadata.annotations['wanka.io/mps-thread-percentage']",
    "CUDA_MPS_PINNED_DEVICE_MEM_LIMIT": "metadata.annotations['wanka.io/mps-memory-limit']",
}
SLICE = {"wanka.io/gpu-fraction": "0.25"}
RESERVATION = {"wanka.io/node": "gpu-node-1", "wanka.io/devices": "3:250", "wanka.io/visible-devices": "3",
               "wanka.io/mps-thread-percentage": "25"}


def pinned(name: str) -> dict[str, Any]:
    return {"name": name, "valueFrom": {"fieldRef": {"fieldPath": PINNING[name]}}}


def pod_body(name: str, annotations: dict[str, str] | None = None, scheduler: str = "wanka",
             env: list[dict[str, Any]] | None = None, limits: dict[str, str] | None = None,
             init: bool = False) -> dict[str, Any]:
    """A plain pod as a tenant writes it; `init` adds an init container without env."""
    container: dict[str, Any] = {"name": "app", "image": "app:1"}
    if env is not None:
        container["env"] = env
    if limits is not None:
        container["resources"] = {"limits": limits}
    spec: dict[str, Any] = {"schedulerName": scheduler, "terminationGracePeriodSeconds": 1,
                            "containers": [container, {"name": "sidecar", "image": "sidecar:1"}]}
    if init:
        spec["initContainers"] = [{"name": "setup", "image": "setup:1"}]
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "labels": {"wanka.io/queue": "q", "wanka.io/pool": "p"},
                         "annotations": annotations or {}},
            "spec": spec}


def env_of(container: Any) -> list[tuple[str, str]]:
    """(name, literal value or fieldRef path) of each env entry, in order."""
    return [(e.name, e.value if e.value_from is None else e.value_from.field_ref.field_path)
            for e in container.env or []]


def annotations_of(api: client.CoreV1Api, namespace: str, name: str) -> Any:
    return (api.read_namespaced_pod(name, namespace).metadata.annotations or {}).items()


def refusal(call: Callable[[], Any]) -> str:
    """The API's 403 message for `call` ("" when the call went through)."""
    try:
        call()
    except ApiException as exc:
        assert exc.status == 403, exc.body
        return str(exc.body or "")
    return ""


def token_client(cluster: Cluster, namespace: str, account: str) -> client.CoreV1Api:
    token = cluster.core.create_namespaced_service_account_token(
        account, namespace, {"spec": {"expirationSeconds": 600}}).status.token
    settings = kubeconfig_dict(cluster.api.configuration.host, cluster.local.state_dir / "pki" / "ca.crt", token,
                               user=account)
    return client.CoreV1Api(config.new_client_from_config_dict(settings))


def authorized(api: client.CoreV1Api, namespace: str) -> bool:
    """Whether RBAC lets `api` read pods there yet (the authorizer sees new bindings late)."""
    try:
        api.read_namespaced_pod("absent", namespace)
    except ApiException as exc:
        if exc.status == 403:
            return False
        assert exc.status == 404, exc.body
    return True


@dataclass
class Release:
    namespace: str
    operator: client.CoreV1Api  # under the chart's own ServiceAccount and ClusterRole


@pytest.fixture(scope="module")
def release(cluster: Cluster) -> Iterator[Release]:
    """The chart's plain-pod policies and the operator's account, as `helm install` makes them on
    an API server that serves MutatingAdmissionPolicy; in force when this yields."""
    ns = f"wanka-pp-{uuid.uuid4().hex[:6]}"
    cluster.core.create_namespace({"metadata": {"name": ns}})
    docs = render_chart(f"pp{uuid.uuid4().hex[:5]}", ns, "--api-versions", MAP_API,
                        "--show-only", "templates/podslices.yaml", "--show-only", "templates/serviceaccount.yaml",
                        "--show-only", "templates/clusterrole.yaml")
    kinds = {d["kind"] for d in docs}
    assert {"MutatingAdmissionPolicy", "ValidatingAdmissionPolicy"} <= kinds, kinds
    try:
        apply_manifests(cluster.api, docs, ns)
        account = next(d["metadata"]["name"] for d in docs if d["kind"] == "ServiceAccount")
        # The API server loads policies and bindings asynchronously: wait for both to act on a
        # sentinel pod (as admin, who is no more the operator than a tenant is).
        wait_for(lambda: "NVIDIA_VISIBLE_DEVICES" in refusal(lambda: cluster.core.create_namespaced_pod(
            ns, pod_body(f"s-{uuid.uuid4().hex[:6]}", env=[{"name": "NVIDIA_VISIBLE_DEVICES", "value": "all"}]))),
            30, what="the pod guard in force")
        wait_for(lambda: _sentinel_pinned(cluster, ns), 30, what="the slice policy in force")
        operator = token_client(cluster, ns, account)
        wait_for(lambda: authorized(operator, ns), 20, what="the operator's ClusterRole in force")
        yield Release(ns, operator)
    finally:
        delete_manifests(cluster.api, docs)
        cluster.core.delete_namespace(ns)


def _sentinel_pinned(cluster: Cluster, ns: str) -> bool:
    try:
        pod = cluster.core.create_namespaced_pod(ns, pod_body(f"s-{uuid.uuid4().hex[:6]}", SLICE))
    except ApiException as exc:  # the guard, in force first, refuses a slice pod left unpinned
        assert exc.status == 403, exc.body
        return False
    return "NVIDIA_VISIBLE_DEVICES" in dict(env_of(pod.spec.containers[0]))


@pytest.fixture
def tenant(cluster: Cluster, namespace: str, release: Release) -> client.CoreV1Api:
    """A ServiceAccount that may create, patch, debug and bind pods in the test namespace, no more."""
    rbac = client.RbacAuthorizationV1Api(cluster.api)
    cluster.core.create_namespaced_service_account(namespace, {"metadata": {"name": "tenant"}})
    rbac.create_namespaced_role(namespace, {"metadata": {"name": "pods"}, "rules": [
        {"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "create", "patch", "delete"]},
        {"apiGroups": [""], "resources": ["pods/status", "pods/ephemeralcontainers"], "verbs": ["patch"]},
        {"apiGroups": [""], "resources": ["pods/binding"], "verbs": ["create"]}]})
    rbac.create_namespaced_role_binding(namespace, {
        "metadata": {"name": "tenant-pods"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "pods"},
        "subjects": [{"kind": "ServiceAccount", "name": "tenant", "namespace": namespace}]})
    api = token_client(cluster, namespace, "tenant")
    wait_for(lambda: authorized(api, namespace), 20, what="the tenant's Role in force")
    return api


def test_the_slice_policy_is_rendered_only_where_the_api_server_serves_it() -> None:
    offline = {d["kind"] for d in render_chart("x", "ns", "--show-only", "templates/podslices.yaml")}
    assert offline == {"ValidatingAdmissionPolicy", "ValidatingAdmissionPolicyBinding"}
    off = render_chart("x", "ns", "--api-versions", MAP_API, "--set", "plainPods.slicePolicy.enabled=false",
                       "--set", "plainPods.guard.enabled=false", "--show-only", "templates/clusterrole.yaml")
    assert {d["kind"] for d in off} == {"ClusterRole", "ClusterRoleBinding"}


def test_a_slice_pod_reads_its_devices_from_the_operators_annotations(
    namespace: str, tenant: client.CoreV1Api,
) -> None:
    mine = [{"name": "FOO", "value": "bar"}, pinned("NVIDIA_VISIBLE_DEVICES")]
    pod = tenant.create_namespaced_pod(namespace, pod_body(
        "mps", {**SLICE, "wanka.io/gpu-memory-gib": "10"}, env=mine, init=True))
    everything = [(n, PINNING[n]) for n in PINNING]
    # The entries a container had stay where they were; the missing ones follow, once each.
    assert env_of(pod.spec.containers[0]) == [("FOO", "bar"), everything[0], *everything[1:]]
    assert env_of(pod.spec.containers[1]) == everything
    assert env_of(pod.spec.init_containers[0]) == everything
    # Without a memory bound there is no CUDA_MPS_PINNED_DEVICE_MEM_LIMIT to read.
    pod = tenant.create_namespaced_pod(namespace, pod_body("timeslice", SLICE))
    assert [env_of(c) for c in pod.spec.containers] == [everything[:2]] * 2
    # `kubectl debug`: an ephemeral container is pinned like the others.
    debugged = tenant.patch_namespaced_pod_ephemeralcontainers("timeslice", namespace, {"spec": {
        "ephemeralContainers": [{"name": "debug", "image": "busybox:1", "targetContainerName": "app"}]}})
    assert env_of(debugged.spec.ephemeral_containers[0]) == everything[:2]


def test_a_mig_pod_asks_the_device_plugin_for_its_profile(namespace: str, tenant: client.CoreV1Api) -> None:
    pod = tenant.create_namespaced_pod(namespace, pod_body(
        "mig", {"wanka.io/mig-profile": "1g.10gb"}, limits={"cpu": "1"}))
    assert pod.spec.containers[0].resources.limits == {"cpu": "1", "nvidia.com/mig-1g.10gb": "1"}
    assert not pod.spec.containers[1].resources.limits
    assert [c.env for c in pod.spec.containers] == [None, None]
    # A pod that asks for the instance itself, in any container, keeps what it wrote.
    body = pod_body("asked", {"wanka.io/mig-profile": "2g.20gb"})
    body["spec"]["containers"][1]["resources"] = {"limits": {"nvidia.com/mig-2g.20gb": "1"}}
    pod = tenant.create_namespaced_pod(namespace, body)
    assert [c.resources.limits for c in pod.spec.containers] == [None, {"nvidia.com/mig-2g.20gb": "1"}]


def test_a_pod_asking_for_neither_is_left_as_written(namespace: str, tenant: client.CoreV1Api) -> None:
    whole = pod_body("whole", env=[{"name": "FOO", "value": "bar"}], limits={"nvidia.com/gpu": "2"})
    pod = tenant.create_namespaced_pod(namespace, whole)
    assert env_of(pod.spec.containers[0]) == [("FOO", "bar")] and pod.spec.containers[1].env is None
    assert pod.spec.containers[0].resources.limits == {"nvidia.com/gpu": "2"}
    # Another scheduler's pod: Wanka's annotations mean nothing there, and its env is its own.
    pod = tenant.create_namespaced_pod(namespace, pod_body(
        "elsewhere", {**SLICE, "wanka.io/mig-profile": "1g.10gb"}, scheduler="default-scheduler",
        env=[{"name": "NVIDIA_VISIBLE_DEVICES", "value": "all"}]))
    assert env_of(pod.spec.containers[0]) == [("NVIDIA_VISIBLE_DEVICES", "all")]
    assert pod.spec.containers[1].env is None and not pod.spec.containers[0].resources.limits


def test_only_the_operator_writes_its_annotations(
    namespace: str, tenant: client.CoreV1Api, release: Release,
) -> None:
    said = refusal(lambda: tenant.create_namespaced_pod(namespace, pod_body(
        "forged", {**SLICE, "wanka.io/devices": "0:250"})))
    assert "annotation wanka.io/devices is written by the Wanka operator only" in said
    assert "wanka.io/node, wanka.io/devices are written by the Wanka operator only" in refusal(
        lambda: tenant.create_namespaced_pod(namespace, pod_body(
            "forged", {"wanka.io/node": "n", "wanka.io/devices": "0,1"}, limits={"nvidia.com/gpu": "2"})))

    tenant.create_namespaced_pod(namespace, pod_body("slice", SLICE))
    forge = {"metadata": {"annotations": {"wanka.io/devices": "0:1000"}}}
    assert "annotation wanka.io/devices is written" in refusal(
        lambda: tenant.patch_namespaced_pod("slice", namespace, forge))
    # The status subresource carries metadata changes too.
    assert "annotation wanka.io/devices is written" in refusal(
        lambda: tenant.patch_namespaced_pod_status("slice", namespace, forge))
    # So does a Binding: the API server copies its annotations onto the pod.
    bind = {"metadata": {"name": "slice", "annotations": forge["metadata"]["annotations"]},
            "target": {"apiVersion": "v1", "kind": "Node", "name": "gpu-node-1"}}
    assert "annotation wanka.io/devices is written" in refusal(
        lambda: tenant.create_namespaced_pod_binding("slice", namespace, bind))

    # The operator reserves the slice; the tenant may neither change nor drop the reservation,
    # and may still change anything else of its pod.
    release.operator.patch_namespaced_pod("slice", namespace, {"metadata": {"annotations": RESERVATION}})
    assert annotations_of(tenant, namespace, "slice") >= RESERVATION.items()
    assert "annotation wanka.io/visible-devices is written" in refusal(lambda: tenant.patch_namespaced_pod(
        "slice", namespace, {"metadata": {"annotations": {"wanka.io/visible-devices": "0,1,2,3"}}}))
    assert "annotation wanka.io/node is written" in refusal(lambda: tenant.patch_namespaced_pod(
        "slice", namespace, {"metadata": {"annotations": {"wanka.io/node": None}}}))
    tenant.patch_namespaced_pod("slice", namespace, {"metadata": {"labels": {"team": "vision"}}})
    assert annotations_of(tenant, namespace, "slice") >= RESERVATION.items()


def test_a_wanka_pod_takes_its_pinning_only_from_the_annotations(
    namespace: str, tenant: client.CoreV1Api,
) -> None:
    literal = pod_body("literal", env=[{"name": "NVIDIA_VISIBLE_DEVICES", "value": "all"}],
                       limits={"nvidia.com/gpu": "1"})
    assert ("spec.containers[app].env[NVIDIA_VISIBLE_DEVICES]: Wanka pins a wanka pod's devices; this variable"
            " may only read the annotation the operator writes (valueFrom.fieldRef.fieldPath:"
            " metadata.annotations['wanka.io/visible-devices'])") in refusal(
        lambda: tenant.create_namespaced_pod(namespace, literal))
    # A slice pod's literal value is not overwritten by the slice policy: refused the same.
    sliced = copy.deepcopy(literal)
    sliced["metadata"]["annotations"] = SLICE
    assert "env[NVIDIA_VISIBLE_DEVICES]: Wanka pins" in refusal(lambda: tenant.create_namespaced_pod(namespace, sliced))
    # Reading another field or annotation is no better than a literal.
    other = {"name": "CUDA_MPS_ACTIVE_THREAD_PERCENTAGE", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}
    assert "env[CUDA_MPS_ACTIVE_THREAD_PERCENTAGE]: Wanka pins" in refusal(
        lambda: tenant.create_namespaced_pod(namespace, pod_body("other", SLICE, env=[other])))
    # An MPS client pointed elsewhere would escape the server's limits.
    escape = {"name": "CUDA_MPS_PIPE_DIRECTORY", "value": "/tmp/mine"}
    said = refusal(lambda: tenant.create_namespaced_pod(namespace, pod_body("escape", SLICE, env=[escape])))
    assert "env[CUDA_MPS_PIPE_DIRECTORY]: Wanka sets a wanka pod's MPS limits" in said
    # Nor through a debug container.
    tenant.create_namespaced_pod(namespace, pod_body("target", SLICE))
    assert "spec.ephemeralContainers[debug].env[NVIDIA_VISIBLE_DEVICES]" in refusal(
        lambda: tenant.patch_namespaced_pod_ephemeralcontainers("target", namespace, {"spec": {"ephemeralContainers": [
            {"name": "debug", "image": "busybox:1", "env": [{"name": "NVIDIA_VISIBLE_DEVICES", "value": "all"}]}]}}))
    # A pod that starts asking for a slice after its creation has no pinning env to read with.
    tenant.create_namespaced_pod(namespace, pod_body("late", limits={"nvidia.com/gpu": "1"}))
    said = refusal(lambda: tenant.patch_namespaced_pod("late", namespace, {"metadata": {"annotations": SLICE}}))
    assert ("spec.containers[app].env: a pod asking for a GPU slice (wanka.io/gpu-fraction) reads its devices"
            " from the annotations the Wanka operator writes: add NVIDIA_VISIBLE_DEVICES") in said
    # Another scheduler's pod sets what it likes.
    assert refusal(lambda: tenant.create_namespaced_pod(
        namespace, pod_body("free", scheduler="default-scheduler", env=literal["spec"]["containers"][0]["env"]))) == ""
