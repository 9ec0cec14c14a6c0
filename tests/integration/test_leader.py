"""Two operator replicas: one Lease holder acts; when it dies the standby takes over, and after
the API server restarts under both exactly one of them leads again."""

from __future__ import annotations

import re
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


def replicas(cluster: Cluster, tmp_path: Path) -> tuple[str, OperatorProcess, OperatorProcess]:
    """A fresh Lease name and two `--leader-elect` replicas on it (not started)."""
    lease = f"wanka-{uuid.uuid4().hex[:6]}"
    args = ["--leader-elect", "--lease-namespace", "default", "--lease-name", lease]
    return lease, OperatorProcess(cluster, tmp_path, args=args), OperatorProcess(cluster, tmp_path, args=args)


def identity(replica: OperatorProcess) -> str:
    found = wait_for(lambda: re.search(r"leader election on lease \S+ as (\S+)", replica.log_path.read_text()),
                     30, what="the replica's identity in its log")
    return str(found.group(1))


def leader_gauge(replica: OperatorProcess) -> float | None:
    found = re.search(r"^wanka_leader (\S+)$", replica.metrics(), re.MULTILINE)
    return float(found.group(1)) if found else None


def sole_leader(cluster: Cluster, lease: str, a: OperatorProcess,
                b: OperatorProcess) -> tuple[OperatorProcess, OperatorProcess] | None:
    """(leader, standby) when exactly one replica says it leads, the other says it does not,
    and the Lease names the one that leads; else None."""
    gauge_a, gauge_b = leader_gauge(a), leader_gauge(b)
    if {gauge_a, gauge_b} != {0.0, 1.0}:
        return None
    leader, standby = (a, b) if gauge_a == 1.0 else (b, a)
    if holder(cluster, lease) != identity(leader):
        return None
    return leader, standby


def test_one_replica_acts_and_the_standby_takes_over(
    cluster: Cluster, namespace: str, tmp_path: Path
) -> None:
    lease, a, b = replicas(cluster, tmp_path)
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
        assert f"the lease of {identity(leader)} expired" in standby.log_path.read_text()
        assert len(live_pods(cluster, namespace, "first")) == 2, "the running gang was left alone"
    finally:
        a.stop()
        b.stop()


def test_exactly_one_replica_leads_after_the_api_server_restarts(
    cluster: Cluster, namespace: str, tmp_path: Path
) -> None:
    lease, a, b = replicas(cluster, tmp_path)
    a.start()
    b.start()
    try:
        fleet = make_fleet(cluster, namespace, nodes=2, racks=1)
        wait_for(lambda: sole_leader(cluster, lease, a, b), 30, what="one leader before the restart")

        cluster.local.restart_apiserver()

        assert a.alive() and b.alive(), "a replica died with the API server"
        wait_for(lambda: sole_leader(cluster, lease, a, b), 60, what="one leader after the restart")
        make_job(cluster, namespace, fleet, "after", replicas=2, gpus=8)
        wait_running(cluster, namespace, "after", 60)
        settled = sole_leader(cluster, lease, a, b)
        assert settled is not None, "leadership is stable once a job ran"
        leader, standby = settled
        assert a.alive() and b.alive()
        assert re.search(rf'^wanka_pool_gpus\{{pool="{fleet.pool}"', leader.metrics(), re.MULTILINE)
        assert "wanka_pool_gpus" not in standby.metrics(), "a standby exports no pool gauges"
    finally:
        a.stop()
        b.stop()
