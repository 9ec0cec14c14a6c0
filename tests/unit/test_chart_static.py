"""The Helm chart without a cluster: lint, render, Kubernetes schemas, RBAC and security rules.

helm comes from hack/install-tools.sh (cached under ~/.cache/wanka/tools); a missing helm is an
error, not a skip. What the chart's RBAC is *sufficient* for is proven against a real API server
in tests/integration/test_chart.py.
"""

from __future__ import annotations

import filecmp
import functools
import json
import os
import re
import shutil
import subprocess
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "wanka"
KUBE_VERSION = "1.34.0"
# Every option that adds or changes objects, so all templates are rendered and checked.
EVERYTHING_ON = [
    "--set", "agent.enabled=true", "--set", "agent.probe=file",
    "--set", "metrics.serviceMonitor.enabled=true", "--set", "logFormat=json",
]
NO_SCHEMA = {("monitoring.coreos.com/v1", "ServiceMonitor")}  # a CRD's kind, not in the schemas


@functools.cache
def helm() -> str:
    """The helm binary: $HELM, else hack/install-tools.sh's cached copy (installed if absent)."""
    if os.environ.get("HELM"):
        return os.environ["HELM"]
    out = subprocess.run(["bash", str(REPO / "hack" / "install-tools.sh")], check=True,
                         capture_output=True, text=True, timeout=300)
    path = Path(out.stdout.strip().splitlines()[-1]) / "helm"
    assert path.is_file(), f"install-tools.sh printed no helm dir: {out.stdout!r} {out.stderr!r}"
    return str(path)


def run_helm(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([helm(), *args], capture_output=True, text=True, timeout=60)


@functools.cache
def render(*args: str) -> tuple[dict[str, Any], ...]:
    out = run_helm("template", "wanka", str(CHART), "--namespace", "wanka-system",
                   "--kube-version", KUBE_VERSION, *args)
    assert out.returncode == 0, out.stderr
    return tuple(d for d in yaml.safe_load_all(out.stdout) if d)


def find(docs: tuple[dict[str, Any], ...], kind: str, name: str | None = None) -> dict[str, Any]:
    hits = [d for d in docs if d["kind"] == kind and name in (None, d["metadata"]["name"])]
    assert len(hits) == 1, f"{kind} {name}: {[d['metadata']['name'] for d in hits]}"
    return hits[0]


def pod_specs(docs: tuple[dict[str, Any], ...]) -> Iterator[tuple[str, dict[str, Any]]]:
    for d in docs:
        if d["kind"] in ("Deployment", "DaemonSet"):
            yield f"{d['kind']}/{d['metadata']['name']}", d["spec"]["template"]["spec"]
        elif d["kind"] == "Pod":
            yield f"Pod/{d['metadata']['name']}", d["spec"]


def test_helm_lint_is_clean() -> None:
    for args in ([], EVERYTHING_ON):
        out = run_helm("lint", "--strict", str(CHART), *args)
        assert out.returncode == 0, out.stdout + out.stderr


@pytest.mark.parametrize("args", [(), tuple(EVERYTHING_ON)], ids=["defaults", "everything-on"])
def test_every_rendered_object_matches_the_kubernetes_schema(args: tuple[str, ...]) -> None:
    docs = render(*args)
    assert docs
    for doc in docs:
        key = (doc["apiVersion"], doc["kind"])
        if key in NO_SCHEMA:
            continue
        try:
            kubernetes_validate.validate(doc, KUBE_VERSION, strict=True)
        except kubernetes_validate.ValidationError as exc:
            pytest.fail(f"{doc['kind']}/{doc['metadata']['name']}: {exc}")


def test_defaults_render_the_expected_objects() -> None:
    kinds = sorted((d["kind"], d["metadata"]["name"]) for d in render())
    assert kinds == sorted([
        ("ServiceAccount", "wanka"), ("ClusterRole", "wanka"), ("ClusterRoleBinding", "wanka"),
        ("Role", "wanka-leader-election"), ("RoleBinding", "wanka-leader-election"),
        ("Role", "wanka-mig-config"), ("RoleBinding", "wanka-mig-config"),
        ("Deployment", "wanka"), ("Service", "wanka-metrics"), ("PodDisruptionBudget", "wanka"),
        ("ConfigMap", "wanka-dashboard"), ("Pod", "wanka-test-metrics"),
        ("ValidatingAdmissionPolicy", "wanka-pod-template"),
        ("ValidatingAdmissionPolicyBinding", "wanka-pod-template"),
        ("ValidatingAdmissionPolicy", "wanka-queue-limits"),
        ("ValidatingAdmissionPolicyBinding", "wanka-queue-limits"),
        # The plain-pod guard; the slice policy renders only where the cluster serves
        # MutatingAdmissionPolicy (helm install asks it; offline, --api-versions).
        ("ValidatingAdmissionPolicy", "wanka-pod-guard"),
        ("ValidatingAdmissionPolicyBinding", "wanka-pod-guard"),
    ])
    on = {(d["kind"], d["metadata"]["name"]) for d in render(*EVERYTHING_ON)}
    assert {("DaemonSet", "wanka-agent"), ("ServiceMonitor", "wanka"),
            ("ClusterRole", "wanka-agent"), ("ServiceAccount", "wanka-agent"),
            ("ValidatingAdmissionPolicy", "wanka-agent-own-node")} <= on


def test_the_operator_writes_configmaps_only_in_its_own_namespace() -> None:
    docs = render()
    cluster_rules = [r for d in docs if d["kind"] == "ClusterRole" for r in d["rules"]]
    assert not [r for r in cluster_rules if {"configmaps", "secrets"} & set(r["resources"])]
    for rule in cluster_rules:
        assert not {"escalate", "bind", "impersonate", "*"} & set(rule["verbs"]), rule
    mig = next(d for d in docs if d["kind"] == "Role" and d["metadata"]["name"] == "wanka-mig-config")
    assert mig["metadata"]["namespace"] == "wanka-system"
    assert [(r["verbs"], r.get("resourceNames")) for r in mig["rules"]] == [
        (["get", "patch"], ["wanka-mig-parted-config"]), (["create"], None)]


def test_every_object_carries_the_standard_labels() -> None:
    for doc in render(*EVERYTHING_ON):
        labels = doc["metadata"].get("labels") or {}
        for key in ("app.kubernetes.io/name", "app.kubernetes.io/instance",
                    "app.kubernetes.io/version", "app.kubernetes.io/managed-by", "helm.sh/chart"):
            assert key in labels, f"{doc['kind']}/{doc['metadata']['name']} lacks {key}"


def test_no_rbac_rule_uses_a_wildcard_or_grants_dangerous_verbs() -> None:
    rules = [(d["kind"], d["metadata"]["name"], r) for d in render(*EVERYTHING_ON)
             if d["kind"] in ("ClusterRole", "Role") for r in d["rules"]]
    assert rules
    for kind, name, rule in rules:
        for field in ("apiGroups", "resources", "verbs", "resourceNames", "nonResourceURLs"):
            assert not any("*" in v for v in rule.get(field) or []), f"{kind}/{name}: {rule}"
        dangerous = {"escalate", "bind", "impersonate"} & set(rule["verbs"])
        assert not dangerous, f"{kind}/{name}: {rule}"
        assert "secrets" not in rule["resources"], f"{kind}/{name} reads secrets: {rule}"
        assert "serviceaccounts/token" not in rule["resources"], f"{kind}/{name}: {rule}"


def test_leases_are_granted_only_in_the_release_namespace() -> None:
    docs = render()
    cluster_rules = find(docs, "ClusterRole", "wanka")["rules"]
    assert not any("coordination.k8s.io" in r["apiGroups"] for r in cluster_rules)
    role = find(docs, "Role", "wanka-leader-election")
    assert role["metadata"]["namespace"] == "wanka-system"
    assert role["rules"] == [{"apiGroups": ["coordination.k8s.io"], "resources": ["leases"],
                              "verbs": ["get", "create", "update"]}]
    binding = find(docs, "RoleBinding", "wanka-leader-election")
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "wanka",
                                    "namespace": "wanka-system"}]


def test_agent_may_touch_only_nodes() -> None:
    rules = find(render(*EVERYTHING_ON), "ClusterRole", "wanka-agent")["rules"]
    assert rules == [
        {"apiGroups": [""], "resources": ["nodes"], "verbs": ["get", "patch"]},
        {"apiGroups": [""], "resources": ["nodes/status"], "verbs": ["patch"]},
    ]


def test_chart_crds_are_byte_identical_copies_of_the_repository_crds() -> None:
    top = sorted(p.name for p in (REPO / "crds").glob("*.yaml"))
    ours = sorted(p.name for p in (CHART / "crds").glob("*"))
    assert top and ours == top, f"chart crds/ {ours} != crds/ {top}: copy crds/*.yaml there"
    for name in top:
        assert filecmp.cmp(REPO / "crds" / name, CHART / "crds" / name, shallow=False), (
            f"charts/wanka/crds/{name} differs from crds/{name}; copy it after `make crds`")


@pytest.mark.parametrize("args", [(), tuple(EVERYTHING_ON)], ids=["defaults", "everything-on"])
def test_every_pod_runs_restricted(args: tuple[str, ...]) -> None:
    specs = list(pod_specs(render(*args)))
    assert len(specs) == (3 if args else 2)
    for where, spec in specs:
        pod = spec.get("securityContext") or {}
        assert pod.get("runAsNonRoot") is True, where
        assert pod.get("seccompProfile") == {"type": "RuntimeDefault"}, where
        assert not spec.get("hostNetwork") and not spec.get("hostPID"), where
        for c in spec["containers"]:
            sc = c.get("securityContext") or {}
            assert sc.get("runAsNonRoot") is True, (where, c["name"])
            assert sc.get("readOnlyRootFilesystem") is True, (where, c["name"])
            assert sc.get("allowPrivilegeEscalation") is False, (where, c["name"])
            assert sc.get("capabilities") == {"drop": ["ALL"]}, (where, c["name"])
            assert sc.get("seccompProfile") == {"type": "RuntimeDefault"}, (where, c["name"])
            assert not sc.get("privileged"), (where, c["name"])
            assert c.get("resources", {}).get("requests"), (where, c["name"])


def test_operator_deployment_runs_the_wanka_cli_with_leader_election() -> None:
    from wanka.cli import build_parser

    dep = find(render(), "Deployment")
    assert dep["spec"]["replicas"] == 2
    pod = dep["spec"]["template"]["spec"]
    (c,) = pod["containers"]
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    version = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]
    assert chart["appVersion"] == version
    assert c["image"] == f"ghcr.io/wanka-io/wanka:{version}"
    # The real `wanka run` parser accepts exactly these arguments.
    args = build_parser(["run"]).parse_args(c["args"])
    assert (args.leader_elect, args.lease_name, args.metrics_port, args.health_port) == (
        True, "wanka-operator", 8000, 8080)
    assert args.log_format == "text"
    env = {e["name"]: e for e in c["env"]}
    assert env["POD_NAMESPACE"]["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.namespace"}}
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    assert ports == {"metrics": 8000, "health": 8080}
    for probe in ("livenessProbe", "readinessProbe"):
        assert c[probe]["httpGet"] == {"path": "/healthz", "port": "health"}, probe
    assert pod["serviceAccountName"] == "wanka"
    service = find(render(), "Service", "wanka-metrics")
    assert service["spec"]["ports"][0]["targetPort"] == "metrics"
    pod_labels = dep["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= pod_labels.items()

    json_dep = find(render(*EVERYTHING_ON), "Deployment")
    json_args = json_dep["spec"]["template"]["spec"]["containers"][0]["args"]
    assert build_parser(["run"]).parse_args(json_args).log_format == "json"


def test_agent_daemonset_runs_the_wanka_agent_on_gpu_nodes() -> None:
    from wanka.cli import build_parser

    ds = find(render(*EVERYTHING_ON), "DaemonSet")
    pod = ds["spec"]["template"]["spec"]
    (c,) = pod["containers"]
    args = build_parser(["agent"]).parse_args(c["args"])
    assert (args.probe, args.fault_file) == ("file", "/var/lib/wanka/faults.json")
    env = {e["name"]: e for e in c["env"]}
    assert env["NODE_NAME"]["valueFrom"] == {"fieldRef": {"fieldPath": "spec.nodeName"}}
    assert c["volumeMounts"] == [
        {"name": "faults", "mountPath": "/var/lib/wanka", "readOnly": True}]
    terms = pod["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
    assert terms["nodeSelectorTerms"][0]["matchExpressions"] == [
        {"key": "wanka.io/gpu-model", "operator": "Exists"}]
    assert {"key": "wanka.io/unhealthy", "operator": "Exists"} in pod["tolerations"]
    assert pod["serviceAccountName"] == "wanka-agent"


def test_values_schema_refuses_bad_values() -> None:
    for bad in (["--set", "logFormat=yaml"], ["--set", "agent.probe=dcgm"],
                ["--set", "operator.leaderElection.enabled=false"], ["--set", "bogus=1"]):
        out = run_helm("template", "wanka", str(CHART), *bad)
        assert out.returncode != 0 and "schema" in out.stderr, (bad, out.stderr)
    single = run_helm("template", "wanka", str(CHART), "--set", "operator.replicas=1",
                      "--set", "operator.leaderElection.enabled=false")
    assert single.returncode == 0, single.stderr
    assert "--leader-elect" not in single.stdout


def test_dashboard_plots_only_metrics_the_operator_exports_and_all_of_them() -> None:
    import prometheus_client
    from prometheus_client.metrics import MetricWrapperBase

    import wanka.metrics

    cm = find(render(), "ConfigMap", "wanka-dashboard")
    assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
    dashboard = json.loads(cm["data"]["wanka.json"])
    assert dashboard == json.loads((CHART / "dashboards" / "wanka.json").read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    names = {m for e in exprs for m in re.findall(r"\bwanka_\w+", e)}
    used = {re.sub(r"_(bucket|sum|count)$", "", m) for m in names}
    # Every metric the module defines (the build info aside), and the scrape-time pool gauges.
    registry = prometheus_client.CollectorRegistry()
    for value in vars(wanka.metrics).values():
        if isinstance(value, MetricWrapperBase) and not isinstance(value, prometheus_client.Info):
            registry.register(value)
    wanka.metrics.register_pool_collector(dict, registry)
    exported = {f"{m.name}_total" if m.type == "counter" else m.name for m in registry.collect()}
    assert {"wanka_pool_gpus", "wanka_pool_nodes", "wanka_gang_wait_seconds"} <= exported
    assert used <= exported, f"dashboard plots unknown metrics: {sorted(used - exported)}"
    assert exported <= used, f"metrics without a panel: {sorted(exported - used)}"
    states = " ".join(exprs)
    assert 'state="stranded"' in states


def test_dockerfile_builds_the_image_the_chart_runs() -> None:
    text = (REPO / "Dockerfile").read_text()
    version = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]
    assert f"docker build -t ghcr.io/wanka-io/wanka:{version} ." in text
    assert re.search(r"python:3\.11\.\d+-slim-bookworm", text), "pin the base image's patch version"
    assert "USER 65532:65532" in text
    assert 'ENTRYPOINT ["wanka"]' in text and 'CMD ["run"]' in text
    assert "[nvml]" in text and "examples]" not in text
    assert text.count("FROM ") == 2 and "COPY --from=builder /opt/wanka /opt/wanka" in text
    # The image runs as the uid the chart's pod securityContext names.
    dep = find(render(), "Deployment")["spec"]["template"]["spec"]
    assert dep["securityContext"]["runAsUser"] == 65532


def test_kind_config_has_four_labelled_workers() -> None:
    cfg = yaml.safe_load((REPO / "kind-config.yaml").read_text())
    workers = [n for n in cfg["nodes"] if n["role"] == "worker"]
    assert [n["role"] for n in cfg["nodes"]].count("control-plane") == 1
    assert len(workers) == 4
    racks = sorted(n["labels"]["wanka.io/rack"] for n in workers)
    assert racks == ["rack-0", "rack-0", "rack-1", "rack-1"]
    assert {(n["labels"]["wanka.io/gpu-model"], n["labels"]["wanka.io/pool"]) for n in workers} == {
        ("H100-80GB", "h100-a")}
    for script in ("kind-up.sh", "kind-down.sh", "install-tools.sh"):
        assert shutil.which("bash")
        out = subprocess.run(["bash", "-n", str(REPO / "hack" / script)],
                             capture_output=True, text=True)
        assert out.returncode == 0, out.stderr
