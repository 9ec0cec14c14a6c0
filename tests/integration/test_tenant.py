"""The tenant boundary on the real API server: what a TrainingJob may ask for, whose quota it uses,
what its progress report and its RBAC may do, and which Node an agent may write."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
from kubernetes import client, config
from kubernetes.client.exceptions import ApiException

from tests.integration.conftest import Cluster, OperatorProcess, wait_for
from tests.integration.jobkit import Fleet, condition, job, make_fleet, make_job, pods, wait_running
from wanka.cluster.devenv import apply_manifests, render_chart
from wanka.cluster.localcluster import kubeconfig_dict
from wanka.cluster.manifests import checkpoint_role_name, progress_name, service_account_name
from wanka.core import podpolicy

pytestmark = pytest.mark.integration

OWN_LIMIT = {"resources": {"requests": {"cpu": "1"}, "limits": {"nvidia.com/gpu": "8"}}}
# (name, what the template adds): each breaks one rule of the pod policy.
BAD_TEMPLATES: list[tuple[str, dict[str, Any]]] = [
    ("privileged", {"container": {"securityContext": {"privileged": True}}}),
    ("hostpath", {"spec": {"volumes": [{"name": "root", "hostPath": {"path": "/"}}]}}),
    ("foreign-sa", {"spec": {"serviceAccountName": "default"}}),
    ("visible-devices", {"container": {"env": [{"name": "NVIDIA_VISIBLE_DEVICES", "value": "all"}]}}),
    ("own-gpu-limit", {"container": OWN_LIMIT}),
]


def bad_job(cluster: Cluster, namespace: str, fleet: Fleet, name: str, change: dict[str, Any],
            **spec: Any) -> dict[str, Any]:
    """A one-replica job whose template has `change` applied."""
    body = _job_body(fleet, name, change, **spec)
    return cluster.create("trainingjobs", body, namespace)


def _job_body(fleet: Fleet, name: str, change: dict[str, Any], **spec: Any) -> dict[str, Any]:
    container = {"name": "train", "image": "trainer:1", "resources": {"requests": {"cpu": "1"}},
                 **change.get("container", {})}
    pod = {"terminationGracePeriodSeconds": 1, "containers": [container], **change.get("spec", {})}
    return {"apiVersion": "wanka.io/v1alpha1", "kind": "TrainingJob", "metadata": {"name": name},
            "spec": {"pool": fleet.pool, "queue": fleet.queue, "replicas": 1, "resources": {"gpus": 1},
                     "template": {"spec": pod}, **spec}}


def expected_refusal(body: dict[str, Any], allowed: list[str] | None = None) -> str:
    return podpolicy.refusal(body["spec"]["template"], own_service_account=service_account_name(
        body["metadata"]["name"]), allowed_service_accounts=allowed or [], pool_resource="nvidia.com/gpu")


def refused_with(cluster: Cluster, namespace: str, name: str, cause: str) -> dict[str, Any] | None:
    cond = condition(cluster, namespace, name, "Admitted")
    return cond if cond and cond["status"] == "False" and cond["reason"] == cause else None


def test_templates_breaking_the_pod_policy_get_no_pod(
    cluster: Cluster, namespace: str, operator: OperatorProcess,
) -> None:
    """Without the admission policy, the operator refuses each template, naming the field."""
    fleet = make_fleet(cluster, namespace, nodes=2, gpus=8, racks=1)
    for name, change in BAD_TEMPLATES:
        bad_job(cluster, namespace, fleet, name, change)
    make_job(cluster, namespace, fleet, "fine", replicas=1, gpus=1)
    wait_running(cluster, namespace, "fine")
    for name, change in BAD_TEMPLATES:
        cond = wait_for(lambda n=name: refused_with(cluster, namespace, n, "TemplateNotAllowed"), 20,
                        what=f"{name} refused")
        assert cond["message"] == expected_refusal(_job_body(fleet, name, change)), name
        events = [e for e in cluster.events_for(name, namespace) if e.reason == "TemplateNotAllowed"]
        assert events and events[0].type == "Warning", name
    # The fine job ran while they waited: the refusals were seen after pods could have been made.
    for name, _ in BAD_TEMPLATES:
        assert pods(cluster, namespace, name) == [], name


def test_a_queue_caps_priority_and_allows_named_service_accounts(
    cluster: Cluster, namespace: str, operator: OperatorProcess,
) -> None:
    fleet = make_fleet(cluster, namespace, nodes=1, gpus=8, racks=1)
    cluster.custom.patch_cluster_custom_object(
        "wanka.io", "v1alpha1", "tenantqueues", fleet.queue,
        {"spec": {"maxPriority": 10, "allowedServiceAccounts": ["default"]}})
    bad_job(cluster, namespace, fleet, "greedy", {}, priority=11)
    bad_job(cluster, namespace, fleet, "allowed-sa", {"spec": {"serviceAccountName": "default"}}, priority=10)
    wait_running(cluster, namespace, "allowed-sa")
    cond = wait_for(lambda: refused_with(cluster, namespace, "greedy", "PriorityTooHigh"), 20, what="refused")
    assert cond["message"] == f"spec.priority: 11 is above TenantQueue {fleet.queue}'s maxPriority 10"
    assert pods(cluster, namespace, "greedy") == []
    assert pods(cluster, namespace, "allowed-sa")[0].spec.service_account_name == "default"


def test_a_jobs_queue_cannot_be_changed(cluster: Cluster, namespace: str) -> None:
    fleet = Fleet("some-pool", "q-a", [])
    bad_job(cluster, namespace, fleet, "stays", {})
    with pytest.raises(ApiException) as exc:
        cluster.custom.patch_namespaced_custom_object("wanka.io", "v1alpha1", namespace, "trainingjobs",
                                                      "stays", {"spec": {"queue": "q-b"}})
    assert exc.value.status == 422 and "queue is immutable" in (exc.value.body or "")


@pytest.fixture
def policies(cluster: Cluster, namespace: str) -> Iterator[None]:
    """The chart's admission policies, bound to this test's namespace only."""
    release = f"pp{uuid.uuid4().hex[:5]}"
    docs = render_chart(release, namespace, "--show-only", "templates/podpolicy.yaml",
                        "--set", f"podPolicy.namespaceSelector.matchLabels.kubernetes\\.io/metadata\\.name={namespace}")
    apply_manifests(cluster.api, docs, namespace)
    yield
    adm = client.AdmissionregistrationV1Api(cluster.api)
    for doc in docs:
        if doc["kind"] == "ValidatingAdmissionPolicyBinding":
            adm.delete_validating_admission_policy_binding(doc["metadata"]["name"])
        else:
            adm.delete_validating_admission_policy(doc["metadata"]["name"])


def _create_error(cluster: Cluster, namespace: str, body: dict[str, Any]) -> str:
    """The API's refusal of `body` ("" when it was created, and then deleted again)."""
    try:
        cluster.create("trainingjobs", body, namespace)
    except ApiException as exc:
        return str(exc.body or "")
    cluster.delete("trainingjobs", body["metadata"]["name"], namespace)
    return ""


def test_the_admission_policy_refuses_at_apply_with_the_operators_message(
    cluster: Cluster, namespace: str, policies: None, operator: OperatorProcess,
) -> None:
    fleet = make_fleet(cluster, namespace, nodes=1, gpus=8, racks=1)
    relaxed = make_fleet(cluster, namespace, nodes=1, gpus=8, racks=1)
    cluster.custom.patch_cluster_custom_object("wanka.io", "v1alpha1", "gpupools", relaxed.pool,
                                               {"spec": {"podPolicy": {"allow": ["HostPath"]}}})
    cluster.custom.patch_cluster_custom_object("wanka.io", "v1alpha1", "tenantqueues", fleet.queue,
                                               {"spec": {"maxPriority": 10}})
    first = _job_body(fleet, "probe", BAD_TEMPLATES[0][1])
    # The API server picks policies and their parameters (the queue, the pool) up
    # asynchronously: wait until it enforces each parameter this test just changed.
    wait_for(lambda: _create_error(cluster, namespace, first), 30, what="the policy in force")
    wait_for(lambda: "maxPriority 10" in _create_error(cluster, namespace, _job_body(fleet, "greedy", {}, priority=11)),
             30, what="the policy sees the queue's maxPriority")
    hostpath = dict(BAD_TEMPLATES)["hostpath"]
    wait_for(lambda: _create_error(cluster, namespace, _job_body(relaxed, "trusted", hostpath)) == "", 30,
             what="the policy sees the pool's relaxed rule")
    cases = [*BAD_TEMPLATES,
             ("caps", {"container": {"securityContext": {"capabilities": {"add": ["CHOWN", "SYS_ADMIN"]}}}}),
             ("hostnet", {"spec": {"hostNetwork": True}}), ("node", {"spec": {"nodeName": fleet.nodes[0]}}),
             ("mps", {"container": {"env": [{"name": "CUDA_MPS_PIPE_DIRECTORY", "value": "/x"}]}}),
             ("init", {"spec": {"initContainers": [{"name": "setup", "image": "x",
                                                    "securityContext": {"privileged": True}}]}})]
    for name, change in cases:
        body = _job_body(fleet, name, change)
        error = _create_error(cluster, namespace, body)
        assert expected_refusal(body) in error, (name, error)
    assert "maxPriority 10" in _create_error(cluster, namespace, _job_body(fleet, "greedy", {}, priority=11))
    assert _create_error(cluster, namespace, _job_body(fleet, "modest", {}, priority=10)) == ""
    # A pool relaxes only what it names.
    assert _create_error(cluster, namespace, _job_body(relaxed, "trusted", hostpath)) == ""
    assert "rule Privileged" in _create_error(cluster, namespace, _job_body(relaxed, "x", BAD_TEMPLATES[0][1]))
    # An existing job's spec may not be changed into a refused one either.
    cluster.create("trainingjobs", _job_body(fleet, "later", {}), namespace)
    with pytest.raises(ApiException) as exc:
        cluster.custom.patch_namespaced_custom_object(
            "wanka.io", "v1alpha1", namespace, "trainingjobs", "later",
            {"spec": {"template": {"spec": {"hostPID": True}}}})
    assert "spec.template.spec.hostPID" in (exc.value.body or "")


def _token_api(cluster: Cluster, namespace: str, account: str, bound_pod: Any = None) -> client.ApiClient:
    spec: dict[str, Any] = {"expirationSeconds": 600}
    if bound_pod is not None:
        spec["boundObjectRef"] = {"kind": "Pod", "apiVersion": "v1", "name": bound_pod.metadata.name,
                                  "uid": bound_pod.metadata.uid}
    token = cluster.core.create_namespaced_service_account_token(account, namespace, {"spec": spec}).status.token
    settings = kubeconfig_dict(cluster.api.configuration.host, cluster.local.state_dir / "pki" / "ca.crt", token,
                               user=account)
    return config.new_client_from_config_dict(settings)


def _status(call: Any) -> int:
    try:
        call()
    except ApiException as exc:
        return int(exc.status)
    return 200


def _stamp(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def test_a_jobs_own_account_writes_only_its_progress_and_a_forged_report_is_ignored(
    cluster: Cluster, namespace: str, operator: OperatorProcess,
) -> None:
    fleet = make_fleet(cluster, namespace, nodes=1, gpus=8, racks=1)
    make_job(cluster, namespace, fleet, "mine", replicas=1, gpus=8)
    running = wait_running(cluster, namespace, "mine")
    cluster.core.create_namespaced_config_map(namespace, {"metadata": {"name": "other-config"}, "data": {}})
    cluster.core.create_namespaced_secret(namespace, {"metadata": {"name": "s"}, "string_data": {"k": "v"}})
    job_api = _token_api(cluster, namespace, service_account_name("mine"))
    as_job, rbac = client.CoreV1Api(job_api), client.RbacAuthorizationV1Api(job_api)
    reports = client.CustomObjectsApi(job_api)
    report, role = progress_name("mine"), checkpoint_role_name("mine")
    # Another job's report in the same namespace (its owner is irrelevant to RBAC).
    cluster.create("trainingjobprogresses", {"apiVersion": "wanka.io/v1alpha1", "kind": "TrainingJobProgress",
                                             "metadata": {"name": "theirs"}, "spec": {}}, namespace)

    def patch_report(name: str, spec: dict[str, Any]) -> Any:
        return reports.patch_namespaced_custom_object("wanka.io", "v1alpha1", namespace, "trainingjobprogresses",
                                                      name, {"spec": spec})
    # What the per-job Role and RoleBinding must never give: anything but its own progress.
    denied = {
        "another ConfigMap": lambda: as_job.patch_namespaced_config_map("other-config", namespace,
                                                                        {"data": {"a": "b"}}),
        "list ConfigMaps": lambda: as_job.list_namespaced_config_map(namespace),
        "read a Secret": lambda: as_job.read_namespaced_secret("s", namespace),
        "create a pod": lambda: as_job.create_namespaced_pod(namespace, {"metadata": {"name": "p"}, "spec": {
            "containers": [{"name": "c", "image": "x"}]}}),
        "widen its Role": lambda: rbac.patch_namespaced_role(role, namespace, {"rules": [
            {"apiGroups": [""], "resources": ["secrets"], "verbs": ["get"]}]}),
        "bind its Role to someone else": lambda: rbac.create_namespaced_role_binding(namespace, {
            "metadata": {"name": "grab"}, "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role",
                                                      "name": role},
            "subjects": [{"kind": "ServiceAccount", "name": "default", "namespace": namespace}]}),
        "delete its progress": lambda: reports.delete_namespaced_custom_object(
            "wanka.io", "v1alpha1", namespace, "trainingjobprogresses", report),
        "update another job's report": lambda: patch_report("theirs", {"step": 9}),
        "create a report": lambda: reports.create_namespaced_custom_object(
            "wanka.io", "v1alpha1", namespace, "trainingjobprogresses",
            {"apiVersion": "wanka.io/v1alpha1", "kind": "TrainingJobProgress", "metadata": {"name": "new"}}),
        "list reports": lambda: reports.list_namespaced_custom_object(
            "wanka.io", "v1alpha1", namespace, "trainingjobprogresses"),
    }
    got = {what: _status(call) for what, call in denied.items()}
    assert got == dict.fromkeys(denied, 403)

    # A forged report: a checkpoint older than the attempt, to look costly to preempt.
    admitted = datetime.fromisoformat(running["status"]["admittedTime"].replace("Z", "+00:00")).timestamp()
    patch_report(report, {"step": 5, "path": "/ckpt/step-5", "time": _stamp(admitted - 3600)})
    wait_for(lambda: [e for e in cluster.events_for("mine", namespace) if e.reason == "BadCheckpointReport"
                      and "is before" in e.message], 20, what="BadCheckpointReport")
    assert job(cluster, namespace, "mine")["status"].get("lastCheckpoint") is None
    patch_report(report, {"step": 6, "path": "/ckpt/step-6", "time": _stamp(admitted + 1)})
    wait_for(lambda: (job(cluster, namespace, "mine")["status"].get("lastCheckpoint") or {}).get("step") == 6,
             20, what="the honest report mirrored")


def test_an_agent_writes_only_its_own_nodes_health(cluster: Cluster) -> None:
    """Two agents, each with a token bound to its pod on its node: A's writes to B are refused."""
    ns = f"wanka-agent-{uuid.uuid4().hex[:5]}"
    cluster.core.create_namespace({"metadata": {"name": ns}})
    docs = [d for d in render_chart("wag", ns, "--set", "agent.enabled=true", "--show-only", "templates/agent.yaml")
            if d["kind"] != "DaemonSet"]
    apply_manifests(cluster.api, docs, ns)
    account = next(d["metadata"]["name"] for d in docs if d["kind"] == "ServiceAccount")
    tag = uuid.uuid4().hex[:5]
    from wanka.cluster.dev import create_nodes

    node_a, node_b = create_nodes(cluster.api, 2, 8, "H100-80GB", 1, prefix=f"ag{tag}")
    agents = {}
    try:
        for node in (node_a, node_b):
            pod = cluster.core.create_namespaced_pod(ns, {
                "metadata": {"name": f"agent-{node}"},
                "spec": {"serviceAccountName": account, "nodeName": node,
                         "tolerations": [{"operator": "Exists"}],
                         "containers": [{"name": "agent", "image": "wanka:1"}]}})
            agents[node] = client.CoreV1Api(_token_api(cluster, ns, account, bound_pod=pod))
        a = agents[node_a]
        health = {"metadata": {"annotations": {"wanka.io/gpu-health": '{"3": {"healthy": false}}'}}}
        condition_patch = {"status": {"conditions": [{"type": "GPUHealthy", "status": "True", "reason": "AllHealthy",
                                                      "message": "ok", "lastHeartbeatTime": _stamp(0)}]}}
        # The policy is picked up asynchronously: wait until A is refused on B, then check the rest.
        wait_for(lambda: _status(lambda: a.patch_node(node_b, health)) == 403, 30, what="the policy in force")
        assert _status(lambda: a.patch_node(node_a, health)) == 200
        assert _status(lambda: a.patch_node_status(node_a, condition_patch)) == 200
        assert _status(lambda: a.patch_node_status(node_b, condition_patch)) == 403
        assert _status(lambda: agents[node_b].patch_node(node_b, health)) == 200
        own_overreach = {
            "label": {"metadata": {"labels": {"wanka.io/pool": "stolen"}}},
            "taint": {"spec": {"taints": [{"key": "wanka.io/unhealthy", "effect": "NoSchedule"}]}},
            "quarantine annotation": {"metadata": {"annotations": {"wanka.io/health": "{}"}}},
        }
        got = {what: _status(lambda p=p: a.patch_node(node_a, p)) for what, p in own_overreach.items()}
        with pytest.raises(ApiException) as exc:
            a.patch_node_status(node_a, {"status": {"capacity": {"nvidia.com/gpu": str(10**12)}}})
        assert exc.value.status == 403 and "capacity" in (exc.value.body or "")
        got["another condition"] = _status(lambda: a.patch_node_status(node_a, {"status": {"conditions": [
            {"type": "Ready", "status": "False", "reason": "Forged", "message": "x"}]}}))
        assert got == dict.fromkeys(got, 403)
        # An unbound token (not from a pod) names no node: refused everywhere.
        unbound = client.CoreV1Api(_token_api(cluster, ns, account))
        assert _status(lambda: unbound.patch_node(node_a, health)) == 403
    finally:
        adm = client.AdmissionregistrationV1Api(cluster.api)
        rbac = client.RbacAuthorizationV1Api(cluster.api)
        for doc in docs:
            name, kind = doc["metadata"]["name"], doc["kind"]
            deleters = {"ValidatingAdmissionPolicyBinding": adm.delete_validating_admission_policy_binding,
                        "ValidatingAdmissionPolicy": adm.delete_validating_admission_policy,
                        "ClusterRole": rbac.delete_cluster_role, "ClusterRoleBinding": rbac.delete_cluster_role_binding}
            if kind in deleters:
                deleters[kind](name)
        for node in (node_a, node_b):
            cluster.core.delete_node(node)
        cluster.core.delete_namespace(ns)


def test_the_operators_account_cannot_write_a_tenants_configmaps(cluster: Cluster, namespace: str) -> None:
    """The chart's ClusterRole holds no ConfigMap rule: the operator can neither write a tenant's
    ConfigMaps nor mint a Role that would (RBAC refuses granting what the granter lacks)."""
    release_ns = f"wanka-op-{uuid.uuid4().hex[:5]}"
    cluster.core.create_namespace({"metadata": {"name": release_ns}})
    release = f"op{uuid.uuid4().hex[:5]}"
    docs = render_chart(release, release_ns, "--show-only", "templates/serviceaccount.yaml",
                        "--show-only", "templates/clusterrole.yaml", "--show-only", "templates/mig-rbac.yaml")
    apply_manifests(cluster.api, docs, release_ns)
    account = next(d["metadata"]["name"] for d in docs if d["kind"] == "ServiceAccount")
    cluster.core.create_namespaced_config_map(namespace, {"metadata": {"name": "app-config"}, "data": {"a": "b"}})
    try:
        op_api = _token_api(cluster, release_ns, account)
        core, rbac = client.CoreV1Api(op_api), client.RbacAuthorizationV1Api(op_api)
        reports = client.CustomObjectsApi(op_api)
        granting = {"metadata": {"name": "cm-writer"}, "rules": [
            {"apiGroups": [""], "resources": ["configmaps"], "verbs": ["get", "update", "patch"]}]}
        denied = {
            "update a tenant's ConfigMap": lambda: core.patch_namespaced_config_map(
                "app-config", namespace, {"data": {"a": "forged"}}),
            "create a ConfigMap there": lambda: core.create_namespaced_config_map(
                namespace, {"metadata": {"name": "planted"}}),
            "delete it": lambda: core.delete_namespaced_config_map("app-config", namespace),
            "read it": lambda: core.read_namespaced_config_map("app-config", namespace),
            "read a Secret": lambda: core.list_namespaced_secret(namespace),
            "mint a Role granting ConfigMap writes": lambda: rbac.create_namespaced_role(namespace, granting),
            "the MIG ConfigMap's rights outside its namespace": lambda: core.patch_namespaced_config_map(
                "wanka-mig-parted-config", namespace, {"data": {}}),
        }
        # Granted, for contrast: a per-job Role on Wanka's own report type, and the MIG
        # manager's ConfigMap in the operator's namespace.
        allowed = {
            "a per-job report Role": lambda: rbac.create_namespaced_role(namespace, {
                "metadata": {"name": "j-checkpoint-writer"}, "rules": [
                    {"apiGroups": ["wanka.io"], "resources": ["trainingjobprogresses"], "resourceNames": ["j"],
                     "verbs": ["get", "update", "patch"]}]}),
            "a report": lambda: reports.create_namespaced_custom_object(
                "wanka.io", "v1alpha1", namespace, "trainingjobprogresses",
                {"apiVersion": "wanka.io/v1alpha1", "kind": "TrainingJobProgress", "metadata": {"name": "j"},
                 "spec": {}}),
            "the MIG ConfigMap": lambda: core.create_namespaced_config_map(
                release_ns, {"metadata": {"name": "wanka-mig-parted-config"}, "data": {}}),
            "a change to it": lambda: core.patch_namespaced_config_map(
                "wanka-mig-parted-config", release_ns, {"data": {"config.yaml": "version: v1"}}),
        }
        got = {what: _status(call) for what, call in {**denied, **allowed}.items()}
        assert got == {**dict.fromkeys(denied, 403), **dict.fromkeys(allowed, 200)}
        assert cluster.core.read_namespaced_config_map("app-config", namespace).data == {"a": "b"}
    finally:
        rbac_admin = client.RbacAuthorizationV1Api(cluster.api)
        for doc in docs:
            if doc["kind"] == "ClusterRole":
                rbac_admin.delete_cluster_role(doc["metadata"]["name"])
            elif doc["kind"] == "ClusterRoleBinding":
                rbac_admin.delete_cluster_role_binding(doc["metadata"]["name"])
        cluster.core.delete_namespace(release_ns)
