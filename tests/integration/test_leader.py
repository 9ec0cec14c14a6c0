"""Two operator replicas: one Lease holder acts; when it dies the standby takes over."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from tests.integration.conftest import Cluster, OperatorProcess, wait_for
from tests.integration.jobkit import live_pods, make_fleet, make_job, wait_running

pytestmark = pytest.mark.integration


def holder(cluster: Cluster, name: str) -> str | None:
    from kubernetes import client
    from kubernetes.client.exceptions import ApiException

    try:
        return client.CoordinationV1Api(cluster.api).read_namespaced_lease(name, "default").spec.holder_identity
    except ApiException:
        return None


def test_one_replica_acts_and_the_standby_takes_over(
    cluster: Cluster, namespace: str, tmp_path: Path
) -> None:
    lease = f"wanka-{uuid.uuid4().hex[:6]}"
    args = ["--leader-elect", "--lease-namespace", "default", "--lease-name", lease]
    a = OperatorProcess(cluster, tmp_path, args=args)
    b = OperatorProcess(cluster, tmp_path, args=args)
    a.start()
    wait_for(lambda: holder(cluster, lease), 15, what="a lease holder")
    b.start()
    try:
        fleet = make_fleet(cluster, namespace, nodes=4, racks=1)
        make_job(cluster, namespace, fleet, "first", replicas=2, gpus=8)
        wait_running(cluster, namespace, "first")
        logs = [a.log_path.read_text(), b.log_path.read_text()]
        assert sum("became leader" in log for log in logs) == 1, "exactly one leader"
        leader, standby = (a, b) if "became leader" in logs[0] else (b, a)
        # Both replicas watched; only the leader created pods.
        assert len(live_pods(cluster, namespace, "first")) == 2

        leader.kill()
        make_job(cluster, namespace, fleet, "second", replicas=2, gpus=8)
        wait_running(cluster, namespace, "second", 45)
        assert "taking over leadership" in standby.log_path.read_text()
        assert len(live_pods(cluster, namespace, "first")) == 2, "the running gang was left alone"
    finally:
        a.stop()
        b.stop()
