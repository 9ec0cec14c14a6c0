"""The Helm chart on the real API server: its RBAC is enough for a whole job lifecycle, and no more.

The chart is rendered with `helm template` and applied as admin; the operator then runs with a
token of the chart's own ServiceAccount (TokenRequest) and the exact arguments of the chart's
Deployment, so a missing verb shows up as a 403 in its log, which fails the test. This module
runs its own operator: it never uses the module-scoped `operator` fixture.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from tests.integration.conftest import Cluster, OperatorProcess, wait_for
from tests.integration.jobkit import (
    condition,
    job,
    live_pods,
    make_fleet,
    make_job,
    pods,
    wait_running,
)
from wanka.cluster.devenv import (
    CHART,
    apply_manifests,
    helm_binary,
    render_chart,
    service_account_kubeconfig,
)
from wanka.cluster.localcluster import REPO, kubeconfig_dict, write_private

pytestmark = pytest.mark.integration

RELEASE = "wrbac"  # not "wanka": test_helm_install_creates_the_release installs that one
# A line that says the API refused us; the timestamp is cut off first (",403" milliseconds).
DENIED = re.compile(r"forbidden|\b403\b|not enough (rbac )?permissions", re.IGNORECASE)
TIMESTAMP = re.compile(r"^\d{4}-\d\d-\d\d[ T]\d\d:\d\d:\d\d[,.]\d+\s*")


def render(namespace: str, *args: str) -> list[dict[str, Any]]:
    return render_chart(RELEASE, namespace, *args)


def sa_kubeconfig(cluster: Cluster, namespace: str, account: str, path: Path) -> Path:
    return service_account_kubeconfig(cluster.api, cluster.local.state_dir / "pki" / "ca.crt",
                                      namespace, account, path)


class ChartOperator(OperatorProcess):
    """`wanka` with the chart Deployment's own arguments, under the chart's ServiceAccount."""

    def __init__(self, cluster: Cluster, log_dir: Path, args: list[str], kubeconfig: Path,
                 env: dict[str, str]) -> None:
        super().__init__(cluster, log_dir, env)
        self.args = args
        self.kubeconfig = kubeconfig

    def start(self) -> None:
        args = [a for a in self.args
                if not a.startswith(("--metrics-port", "--health-port"))]  # free ports instead
        env = dict(os.environ, PYTHONPATH=str(REPO / "operator"), PYTHONUNBUFFERED="1",
                   **self.extra_env)
        env.pop("KUBECONFIG", None)
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "wanka.cli", *args, "--kubeconfig", str(self.kubeconfig),
                 "--metrics-port", str(self.metrics_port), "--metrics-addr", "127.0.0.1",
                 "--health-port", str(self.health_port), "--health-addr", "127.0.0.1"],
                stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True,
            )
        wait_for(self._healthy, 30, what="operator liveness endpoint")

    def denials(self) -> list[str]:
        lines = self.log_path.read_text(errors="replace").splitlines()
        return [line for line in lines if DENIED.search(TIMESTAMP.sub("", line))]


def apply_as_admin(cluster: Cluster, docs: list[dict[str, Any]], namespace: str) -> None:
    apply_manifests(cluster.api, docs, namespace)


def agent_kubeconfig(cluster: Cluster, namespace: str, account: str, node: str, path: Path) -> Path:
    """A kubeconfig with the agent's token bound to an agent pod on `node`, as in the DaemonSet."""
    pod = cluster.core.create_namespaced_pod(namespace, {
        "metadata": {"name": f"agent-{node}"},
        "spec": {"serviceAccountName": account, "nodeName": node, "tolerations": [{"operator": "Exists"}],
                 "containers": [{"name": "agent", "image": "wanka:1"}]}})
    token = cluster.core.create_namespaced_service_account_token(account, namespace, {"spec": {
        "expirationSeconds": 3600,
        "boundObjectRef": {"kind": "Pod", "apiVersion": "v1", "name": pod.metadata.name,
                           "uid": pod.metadata.uid}}}).status.token
    ca = cluster.local.state_dir / "pki" / "ca.crt"
    write_private(path, yaml.safe_dump(kubeconfig_dict(cluster.api.configuration.host, ca, token, user=account)))
    return path


def delete_cluster_scoped(cluster: Cluster, docs: list[dict[str, Any]]) -> None:
    rbac = client.RbacAuthorizationV1Api(cluster.api)
    adm = client.AdmissionregistrationV1Api(cluster.api)
    for doc in docs:
        try:
            if doc["kind"] == "ClusterRole":
                rbac.delete_cluster_role(doc["metadata"]["name"])
            elif doc["kind"] == "ClusterRoleBinding":
                rbac.delete_cluster_role_binding(doc["metadata"]["name"])
            elif doc["kind"] == "ValidatingAdmissionPolicy":
                adm.delete_validating_admission_policy(doc["metadata"]["name"])
            elif doc["kind"] == "ValidatingAdmissionPolicyBinding":
                adm.delete_validating_admission_policy_binding(doc["metadata"]["name"])
        except ApiException as exc:
            if exc.status != 404:
                raise


@pytest.fixture
def release_ns(cluster: Cluster) -> Iterator[str]:
    name = f"wanka-rbac-{uuid.uuid4().hex[:6]}"
    cluster.core.create_namespace({"metadata": {"name": name}})
    yield name
    cluster.core.delete_namespace(name)


def test_operator_runs_a_whole_job_lifecycle_under_the_charts_rbac(
    cluster: Cluster, namespace: str, release_ns: str, tmp_path: Path
) -> None:
    # Earlier modules' namespaces must be gone first: the API refuses new content in a
    # terminating namespace with 403 Forbidden too, which would read as an RBAC gap here.
    wait_for(lambda: not _terminating(cluster), 60, what="no namespace left Terminating")
    tag = f"t{uuid.uuid4().hex[:6]}"
    # The agent DaemonSet is limited to this test's nodes, so the session's other nodes get no pods.
    docs = render(release_ns, "--set", "agent.enabled=true", "--set", "agent.probe=file",
                  "--set-string", f"agent.nodeSelector.wanka\\.io/rbac-test={tag}")
    apply_as_admin(cluster, docs, release_ns)
    deployment = next(d for d in docs if d["kind"] == "Deployment")
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    account = deployment["spec"]["template"]["spec"]["serviceAccountName"]
    assert "--leader-elect" in container["args"]

    kubeconfig = sa_kubeconfig(cluster, release_ns, account, tmp_path / "operator.kubeconfig")
    proc = ChartOperator(cluster, tmp_path, container["args"], kubeconfig,
                         env={"POD_NAMESPACE": release_ns})
    proc.start()
    try:
        # It holds the Lease in the release namespace (Role, not ClusterRole).
        coord = client.CoordinationV1Api(cluster.api)
        wait_for(lambda: _lease_holder(coord, release_ns), 20, what="the operator holds its Lease")

        fleet = make_fleet(cluster, namespace, nodes=4, racks=1)
        for node in fleet.nodes:
            cluster.core.patch_node(node, {"metadata": {"labels": {"wanka.io/rbac-test": tag}}})
        make_job(cluster, namespace, fleet, "rbac", replicas=2, gpus=8,
                 restartPolicy={"maxRestarts": 3, "backoffSeconds": 0, "maxBackoffSeconds": 0})
        wait_running(cluster, namespace, "rbac")
        admitted = condition(cluster, namespace, "rbac", "Admitted")
        assert admitted and admitted["status"] == "True", admitted
        first = {p.metadata.name: p.spec.node_name for p in live_pods(cluster, namespace, "rbac")}
        assert len(first) == 2 and all(first.values())
        # The per-job Role: creating it needs the verbs it grants, on Wanka's own report type.
        rbac = client.RbacAuthorizationV1Api(cluster.api)
        rule = rbac.read_namespaced_role("rbac-checkpoint-writer", namespace).rules[0]
        assert (rule.resources, rule.resource_names, rule.verbs) == (
            ["trainingjobprogresses"], ["rbac"], ["get", "update", "patch"])
        # The workload's report reaches status through the operator's watch of its own type.
        when = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        client.CustomObjectsApi(cluster.api).patch_namespaced_custom_object(
            "wanka.io", "v1alpha1", namespace, "trainingjobprogresses", "rbac",
            {"spec": {"step": 40, "path": "/ckpt/step-00000040", "time": when}})
        wait_for(lambda: (job(cluster, namespace, "rbac")["status"].get("lastCheckpoint") or {}).get("step") == 40,
                 20, what="the report mirrored into lastCheckpoint")

        victim = sorted(first)[0]
        cluster.core.patch_namespaced_pod(victim, namespace,
                                          {"metadata": {"labels": {"wanka.io/sim": "fail"}}})
        wait_for(lambda: (job(cluster, namespace, "rbac").get("status") or {}).get("restarts") == 1,
                 20, what="a restart after the member failed")
        restarting = condition(cluster, namespace, "rbac", "Restarting")
        assert restarting is not None, job(cluster, namespace, "rbac")["status"]
        wait_running(cluster, namespace, "rbac", 30)
        again = {p.metadata.name: p.spec.node_name for p in live_pods(cluster, namespace, "rbac")}
        assert len(again) == 2 and not set(again) & set(first)
        assert first[victim] not in again.values()
        assert any(e.reason == "MemberFailed" for e in cluster.events_for("rbac", namespace))

        cluster.delete("trainingjobs", "rbac", namespace)
        wait_for(lambda: _nothing_left(cluster, namespace, "rbac"), 20,
                 what="no pod, Service, ServiceAccount, progress report, Role or job left")

        # Health: the chart's agent account reports a node-wide GPU fault (one sick device only
        # excludes that device); the operator taints the node (nodes patch), then lifts the
        # taint once the agent reports it healthy again.
        sick = fleet.nodes[0]
        # The chart's policy lets the agent write only the node its pod-bound token names.
        agent_kc = agent_kubeconfig(cluster, release_ns, f"{RELEASE}-wanka-agent", sick,
                                    tmp_path / "agent.kubeconfig")
        fault = tmp_path / "faults.json"
        fault.write_text(json.dumps({"node": [{"reason": "NVMLInitFailed", "message": "drill"}]}))
        _agent_once(agent_kc, sick, fault)
        wait_for(lambda: _taint(cluster, sick), 15, what=f"wanka.io/unhealthy taint on {sick}")
        fault.write_text(json.dumps({"count": 8}))
        _agent_once(agent_kc, sick, fault)
        wait_for(lambda: not _taint(cluster, sick), 20, what=f"taint lifted from {sick}")

        assert proc.alive(), proc.log_tail()
        denied = proc.denials()
        assert not denied, "the chart's RBAC refused the operator:\n" + "\n".join(denied[:20])
        # Some refusals end up in what the operator writes rather than in its log (a bind
        # refused with 403 is a BindFailed Event and condition, and no log line).
        ours = {"rbac", fleet.pool, fleet.queue, *fleet.nodes}
        said = [f"{e.reason}: {e.message}" for ns in (namespace, "default")
                for e in cluster.core.list_namespaced_event(ns).items
                if e.source and e.source.component == "wanka-operator"
                and e.involved_object.name in ours]
        assert said and not [m for m in said if DENIED.search(m)], said
    finally:
        proc.stop()
        print(proc.log_tail(80))  # shown by pytest when the test failed
        delete_cluster_scoped(cluster, docs)


def test_helm_install_creates_the_release(cluster: Cluster, tmp_path: Path) -> None:
    """`helm install` against the control plane (pods stay Pending: nothing runs images here)."""
    ns = f"wanka-system-{uuid.uuid4().hex[:6]}"
    base = [helm_binary(), "--kubeconfig", str(cluster.kubeconfig), "-n", ns]
    out = subprocess.run([*base, "install", "wanka", str(CHART), "--create-namespace"],
                         capture_output=True, text=True, timeout=120)
    try:
        assert out.returncode == 0, out.stdout + out.stderr
        assert "kubectl apply --server-side -f crds/" in out.stdout  # NOTES.txt
        apps = client.AppsV1Api(cluster.api)
        dep = apps.read_namespaced_deployment("wanka", ns)
        assert dep.spec.replicas == 2
        assert dep.spec.template.spec.containers[0].image == "ghcr.io/wanka-io/wanka:0.1.0"
        cluster.core.read_namespaced_service_account("wanka", ns)
        cluster.core.read_namespaced_service("wanka-metrics", ns)
        rbac = client.RbacAuthorizationV1Api(cluster.api)
        role = rbac.read_cluster_role("wanka")
        assert role.metadata.labels["app.kubernetes.io/managed-by"] == "Helm"
        binding = rbac.read_cluster_role_binding("wanka")
        assert [(s.name, s.namespace) for s in binding.subjects] == [("wanka", ns)]
        rbac.read_namespaced_role("wanka-leader-election", ns)
        status = subprocess.run([*base, "status", "wanka", "-o", "json"],
                                capture_output=True, text=True, timeout=60)
        assert json.loads(status.stdout)["info"]["status"] == "deployed", status.stderr
    finally:
        subprocess.run([*base, "uninstall", "wanka"], capture_output=True, timeout=120)
        cluster.core.delete_namespace(ns)
    with pytest.raises(ApiException) as gone:
        client.RbacAuthorizationV1Api(cluster.api).read_cluster_role("wanka")
    assert gone.value.status == 404


def _terminating(cluster: Cluster) -> list[str]:
    return [n.metadata.name for n in cluster.core.list_namespace().items
            if n.status.phase == "Terminating"]


def _lease_holder(coord: client.CoordinationV1Api, namespace: str) -> str | None:
    try:
        lease = coord.read_namespaced_lease("wanka-operator", namespace)
        return str(lease.spec.holder_identity or "")
    except ApiException:
        return None


def _taint(cluster: Cluster, node: str) -> bool:
    taints = cluster.core.read_node(node).spec.taints or []
    return any(t.key == "wanka.io/unhealthy" for t in taints)


def _agent_once(kubeconfig: Path, node: str, fault: Path) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "wanka.cli", "agent", "--probe", "file", "--fault-file", str(fault),
         "--node-name", node, "--kubeconfig", str(kubeconfig), "--once"],
        capture_output=True, text=True, timeout=60,
        env=dict(os.environ, PYTHONPATH=str(REPO / "operator")),
    )
    said = out.stdout + out.stderr
    assert out.returncode == 0 and not DENIED.search(said), said


def _nothing_left(cluster: Cluster, namespace: str, name: str) -> bool:
    if pods(cluster, namespace, name):
        return False
    rbac = client.RbacAuthorizationV1Api(cluster.api)
    reads = [
        lambda: cluster.core.read_namespaced_service(name, namespace),
        lambda: cluster.core.read_namespaced_service_account(f"{name}-wanka", namespace),
        lambda: cluster.get("trainingjobprogresses", name, namespace),
        lambda: rbac.read_namespaced_role(f"{name}-checkpoint-writer", namespace),
        lambda: rbac.read_namespaced_role_binding(f"{name}-checkpoint-writer", namespace),
        lambda: job(cluster, namespace, name),
    ]
    for read in reads:
        try:
            read()
            return False
        except ApiException as exc:
            if exc.status != 404:
                raise
    return True
