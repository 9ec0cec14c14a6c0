"""The API server itself rejects bad Wanka objects with messages a person can act on."""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest
from kubernetes.client.exceptions import ApiException

from tests.integration.conftest import Cluster

pytestmark = pytest.mark.integration


def job(name: str = "llama") -> dict[str, Any]:
    return {
        "apiVersion": "wanka.io/v1alpha1",
        "kind": "TrainingJob",
        "metadata": {"name": name},
        "spec": {
            "pool": "h100-a",
            "queue": "team-a",
            "replicas": 4,
            "resources": {"gpus": 8},
            "template": {"spec": {"containers": [{"name": "train", "image": "trainer:1"}]}},
        },
    }


def pool(name: str = "h100-a") -> dict[str, Any]:
    return {
        "apiVersion": "wanka.io/v1alpha1",
        "kind": "GPUPool",
        "metadata": {"name": name},
        "spec": {"nodeSelector": {"matchLabels": {"wanka.io/pool": name}}},
    }


def queue(name: str = "team-a") -> dict[str, Any]:
    return {
        "apiVersion": "wanka.io/v1alpha1",
        "kind": "TenantQueue",
        "metadata": {"name": name},
        "spec": {"namespaces": ["team-a"], "quotas": [{"pool": "h100-a", "gpus": 64}]},
    }


@dataclass
class Case:
    name: str
    plural: str
    base: Callable[[], dict[str, Any]]
    mutate: Callable[[dict[str, Any]], None]
    want_message: str


def set_path(path: str, value: Any) -> Callable[[dict[str, Any]], None]:
    def mutate(obj: dict[str, Any]) -> None:
        *parents, leaf = path.split(".")
        cur = obj
        for p in parents:
            cur = cur.setdefault(p, {})
        cur[leaf] = value

    return mutate


def drop_path(path: str) -> Callable[[dict[str, Any]], None]:
    def mutate(obj: dict[str, Any]) -> None:
        *parents, leaf = path.split(".")
        cur = obj
        for p in parents:
            cur = cur[p]
        del cur[leaf]

    return mutate


CASES = [
    Case("zero replicas", "trainingjobs", job, set_path("spec.replicas", 0),
         "spec.replicas: Invalid value: 0: spec.replicas in body should be greater than or equal to 1"),
    Case("negative replicas", "trainingjobs", job, set_path("spec.replicas", -2),
         "should be greater than or equal to 1"),
    Case("no accelerator", "trainingjobs", job, set_path("spec.resources", {}),
         "each replica must ask for an accelerator: set gpus, gpuFraction or migProfile"),
    Case("zero gpus only", "trainingjobs", job, set_path("spec.resources", {"gpus": 0}),
         "each replica must ask for an accelerator"),
    Case("fraction of 1", "trainingjobs", job, set_path("spec.resources", {"gpuFraction": 1}),
         "spec.resources.gpuFraction: Invalid value: 1: spec.resources.gpuFraction in body should be less than 1"),
    Case("fraction of 0", "trainingjobs", job, set_path("spec.resources", {"gpuFraction": 0}),
         "should be greater than 0"),
    Case("negative fraction", "trainingjobs", job, set_path("spec.resources", {"gpuFraction": -0.5}),
         "should be greater than 0"),
    Case("fraction with 2 gpus", "trainingjobs", job,
         set_path("spec.resources", {"gpuFraction": 0.5, "gpus": 2}),
         "gpuFraction is a share of ONE device: it cannot be combined with gpus > 1"),
    Case("memory bound without fraction", "trainingjobs", job,
         set_path("spec.resources", {"gpus": 1, "gpuMemoryGiB": 10}),
         "gpuMemoryGiB bounds a shared device: it needs gpuFraction"),
    Case("bad MIG profile", "trainingjobs", job, set_path("spec.resources", {"migProfile": "9g.1tb"}),
         "spec.resources.migProfile"),
    Case("negative max restarts", "trainingjobs", job, set_path("spec.restartPolicy", {"maxRestarts": -1}),
         "spec.restartPolicy.maxRestarts: Invalid value: -1"),
    Case("negative backoff", "trainingjobs", job, set_path("spec.restartPolicy", {"backoffSeconds": -5}),
         "spec.restartPolicy.backoffSeconds: Invalid value: -5"),
    Case("backoff cap below backoff", "trainingjobs", job,
         set_path("spec.restartPolicy", {"backoffSeconds": 60, "maxBackoffSeconds": 10}),
         "maxBackoffSeconds must be at least backoffSeconds"),
    Case("zero gang timeout", "trainingjobs", job, set_path("spec.gang", {"scheduleTimeoutSeconds": 0}),
         "spec.gang.scheduleTimeoutSeconds: Invalid value: 0"),
    Case("negative gang timeout", "trainingjobs", job, set_path("spec.gang", {"scheduleTimeoutSeconds": -1}),
         "spec.gang.scheduleTimeoutSeconds"),
    Case("minAvailable above replicas", "trainingjobs", job, set_path("spec.gang", {"minAvailable": 5}),
         "gang.minAvailable cannot exceed replicas"),
    Case("template without containers", "trainingjobs", job,
         set_path("spec.template", {"spec": {"containers": []}}),
         "spec.template.spec.containers: Invalid value: 0: "
         "spec.template.spec.containers in body should have at least 1 items"),
    Case("template without spec", "trainingjobs", job, set_path("spec.template", {}),
         'spec.template.spec: Required value'),
    Case("name too long", "trainingjobs", lambda: job("a" * 53), lambda o: None,
         "metadata.name must be at most 52 characters"),
    Case("name starting with a digit", "trainingjobs", lambda: job("7b-llama"), lambda o: None,
         "metadata.name must start with a letter"),
    Case("relative checkpoint path", "trainingjobs", job, set_path("spec.checkpoint", {"path": "ckpt"}),
         "spec.checkpoint.path"),
    Case("unknown topology mode", "trainingjobs", job,
         set_path("spec.topology", {"level": "wanka.io/rack", "mode": "Sometimes"}),
         'spec.topology.mode: Unsupported value: "Sometimes"'),
    Case("exit code out of range", "trainingjobs", job,
         set_path("spec.restartPolicy", {"noRetryExitCodes": [300]}),
         "spec.restartPolicy.noRetryExitCodes[0]"),
    Case("negative quota", "tenantqueues", queue, set_path("spec.quotas", [{"pool": "h100-a", "gpus": -1}]),
         "spec.quotas[0].gpus: Invalid value: -1: spec.quotas[0].gpus in body should be greater than or equal to 0"),
    Case("negative borrowing limit", "tenantqueues", queue,
         set_path("spec.quotas", [{"pool": "h100-a", "gpus": 8, "borrowingLimit": -4}]),
         "spec.quotas[0].borrowingLimit"),
    Case("duplicate quota pool", "tenantqueues", queue,
         set_path("spec.quotas", [{"pool": "p", "gpus": 8}, {"pool": "p", "gpus": 4}]),
         "Duplicate value"),
    Case("queue for nobody", "tenantqueues", queue, set_path("spec.namespaces", []),
         "a TenantQueue needs namespaces or a namespaceSelector"),
    Case("zero weight", "tenantqueues", queue, set_path("spec.weight", 0),
         "spec.weight"),
    Case("pool without selector", "gpupools", pool, drop_path("spec.nodeSelector"),
         "spec.nodeSelector: Required value"),
    Case("shares on an exclusive pool", "gpupools", pool,
         set_path("spec.sharing", {"mode": "Exclusive", "maxSharesPerDevice": 4}),
         "maxSharesPerDevice applies only to the MPS and TimeSlice sharing modes"),
    Case("MIG pool without profiles", "gpupools", pool, set_path("spec.sharing", {"mode": "MIG"}),
         "a MIG pool must list the migProfiles tenants may ask for"),
    Case("unknown sharing mode", "gpupools", pool, set_path("spec.sharing", {"mode": "Magic"}),
         'spec.sharing.mode: Unsupported value: "Magic"'),
    Case("repeated topology level", "gpupools", pool,
         set_path("spec.topology", {"levels": ["wanka.io/rack", "wanka.io/rack"]}),
         "topology levels must be distinct"),
    Case("health percent over 100", "gpupools", pool,
         set_path("spec.health", {"maxUnhealthyPercent": 150}),
         "spec.health.maxUnhealthyPercent"),
    Case("In without values", "gpupools", pool,
         set_path("spec.nodeSelector", {"matchExpressions": [{"key": "a", "operator": "In"}]}),
         "matchExpressions: In and NotIn need values"),
]


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_bad_input_is_rejected_with_a_clear_message(cluster: Cluster, namespace: str, case: Case) -> None:
    body = copy.deepcopy(case.base())
    case.mutate(body)
    ns = namespace if case.plural == "trainingjobs" else ""
    if not ns:
        body["metadata"]["name"] = f"{body['metadata']['name']}-{namespace}"
    with pytest.raises(ApiException) as err:
        cluster.create(case.plural, body, ns)
    assert err.value.status == 422, err.value.body
    message = json.loads(err.value.body)["message"]
    assert case.want_message in message, message


@pytest.mark.parametrize("plural,base", [("trainingjobs", job), ("gpupools", pool), ("tenantqueues", queue)])
def test_unknown_fields_are_rejected(
    cluster: Cluster, namespace: str, plural: str, base: Callable[[], dict[str, Any]]
) -> None:
    body = base()
    body["spec"]["replicaz"] = 3
    ns = namespace if plural == "trainingjobs" else ""
    if not ns:
        body["metadata"]["name"] += f"-{namespace}"
    # Strict field validation: what kubectl does by default since 1.27.
    with pytest.raises(ApiException) as err:
        if ns:
            cluster.custom.create_namespaced_custom_object(
                "wanka.io", "v1alpha1", ns, plural, body, field_validation="Strict")
        else:
            cluster.custom.create_cluster_custom_object(
                "wanka.io", "v1alpha1", plural, body, field_validation="Strict")
    assert err.value.status == 400, err.value.body
    assert 'unknown field "spec.replicaz"' in json.loads(err.value.body)["message"]


def test_valid_objects_are_accepted_with_defaults(cluster: Cluster, namespace: str) -> None:
    created = cluster.create("trainingjobs", job(), namespace)
    spec = created["spec"]
    assert spec["gang"]["scheduleTimeoutSeconds"] == 600
    assert spec["restartPolicy"] == {"maxRestarts": 10, "backoffSeconds": 30,
                                     "maxBackoffSeconds": 600, "noRetryExitCodes": []}
    assert spec["checkpoint"]["resume"] == "Auto"
    assert spec["priority"] == 0 and spec["suspend"] is False
    p = pool(f"ok-{namespace}")
    p["spec"]["sharing"] = {"mode": "MPS", "maxSharesPerDevice": 4}
    created_pool = cluster.create("gpupools", p)
    assert created_pool["spec"]["health"]["recoveryStableSeconds"] == 300
    assert created_pool["spec"]["accelerator"]["resourceName"] == "nvidia.com/gpu"
    cluster.delete("gpupools", p["metadata"]["name"])


def test_immutable_fields(cluster: Cluster, namespace: str) -> None:
    created = cluster.create("trainingjobs", job("immutable"), namespace)
    created["spec"]["replicas"] = 8
    with pytest.raises(ApiException) as err:
        cluster.custom.replace_namespaced_custom_object(
            "wanka.io", "v1alpha1", namespace, "trainingjobs", "immutable", created)
    assert "replicas is immutable" in json.loads(err.value.body)["message"]
