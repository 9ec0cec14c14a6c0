"""The chart's job-finalizer policy (templates/jobfinalizer.yaml) on the real API server: a new
TrainingJob carries the operator's finalizer from its create request on, so the operator has one
write fewer per job, and the job's life (running, deletion) is the same as with the operator's
own write."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from kubernetes.client.exceptions import ApiException

from tests.integration.conftest import Cluster, OperatorProcess, wait_for
from tests.integration.jobkit import make_fleet, make_job, wait_running
from wanka.cluster.devenv import apply_manifests, delete_manifests, render_chart

pytestmark = pytest.mark.integration

MAP_API = "admissionregistration.k8s.io/v1beta1/MutatingAdmissionPolicy"
FINALIZER = "wanka.io/finalizer"


@pytest.fixture(scope="module")
def policy(cluster: Cluster) -> Iterator[None]:
    docs = render_chart(f"jf{uuid.uuid4().hex[:5]}", "default", "--api-versions", MAP_API,
                        "--show-only", "templates/jobfinalizer.yaml")
    assert {d["kind"] for d in docs} == {"MutatingAdmissionPolicy", "MutatingAdmissionPolicyBinding"}
    try:
        apply_manifests(cluster.api, docs, "default")
        yield
    finally:
        delete_manifests(cluster.api, docs)


def sentinel(cluster: Cluster, namespace: str, finalizers: list[str] | None = None) -> dict[str, Any]:
    """A job no pool serves (it only waits), created with `finalizers`, as the API returns it."""
    return cluster.create("trainingjobs", {
        "apiVersion": "wanka.io/v1alpha1", "kind": "TrainingJob",
        "metadata": {"name": f"s-{uuid.uuid4().hex[:6]}", "finalizers": finalizers or []},
        "spec": {"pool": "no-such-pool", "queue": "no-such-queue", "replicas": 1, "resources": {"gpus": 1},
                 "template": {"spec": {"containers": [{"name": "t", "image": "trainer:1"}]}}}}, namespace)


def finalizers_of(obj: dict[str, Any] | None) -> list[str]:
    return list(obj["metadata"].get("finalizers") or []) if obj else []


def first_sentinel(cluster: Cluster, namespace: str) -> dict[str, Any] | None:
    """A sentinel, or None while the API server does not serve TrainingJobs yet (a new CRD)."""
    try:
        return sentinel(cluster, namespace)
    except ApiException as exc:
        if exc.status != 503:
            raise
        return None


def test_a_new_job_carries_the_finalizer_from_its_create_request(
    cluster: Cluster, operator: OperatorProcess, namespace: str, policy: None
) -> None:
    # The API server loads a policy and its binding asynchronously: the first jobs may miss it
    # (the operator adds the finalizer to those itself, as without the policy).
    wait_for(lambda: FINALIZER in finalizers_of(first_sentinel(cluster, namespace)), 30,
             what="the policy in force")
    # Another controller's finalizer stays, and ours is added beside it, once.
    kept = sentinel(cluster, namespace, ["example.com/keep"])
    # (no one else removes example.com/keep: the namespace must be able to go)
    cluster.custom.patch_namespaced_custom_object("wanka.io", "v1alpha1", namespace, "trainingjobs",
                                                  kept["metadata"]["name"], {"metadata": {"finalizers": [FINALIZER]}})
    assert finalizers_of(kept) == ["example.com/keep", FINALIZER]
    assert finalizers_of(sentinel(cluster, namespace, [FINALIZER])) == [FINALIZER]

    # Such a job runs, and when deleted its pods are stopped and the operator lets it go.
    fleet = make_fleet(cluster, namespace, nodes=1, racks=1)
    created = make_job(cluster, namespace, fleet, "train", replicas=1, gpus=8)
    assert finalizers_of(created) == [FINALIZER]
    wait_running(cluster, namespace, "train")
    cluster.custom.delete_namespaced_custom_object("wanka.io", "v1alpha1", namespace, "trainingjobs", "train")

    def gone() -> bool:
        try:
            cluster.get("trainingjobs", "train", namespace)
        except ApiException as exc:
            return exc.status == 404
        return False

    wait_for(gone, 60, what="the deleted job released by the operator")
    assert not [p for p in cluster.core.list_namespaced_pod(namespace).items
                if (p.metadata.labels or {}).get("wanka.io/job") == "train"]
