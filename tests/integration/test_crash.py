"""The operator dies in the middle of binding a gang; a restarted one finishes the job right."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.integration.conftest import Cluster, OperatorProcess, wait_for
from tests.integration.jobkit import (
    condition,
    device_load,
    job,
    live_pods,
    make_fleet,
    make_job,
    phase,
    wait_running,
)

pytestmark = pytest.mark.integration


def test_killed_mid_gang_then_restarted(cluster: Cluster, namespace: str, tmp_path: Path) -> None:
    crashing = OperatorProcess(cluster, tmp_path, env={"WANKA_FAILPOINT": "after-bind:2"})
    crashing.start()
    fleet = make_fleet(cluster, namespace, nodes=5, racks=1)
    make_job(cluster, namespace, fleet, "big", replicas=4, gpus=8)
    assert crashing.proc is not None
    crashing.proc.wait(30)
    assert crashing.proc.returncode == 137, crashing.log_tail()

    # The moment of the crash: the reservation is durable, the gang half bound.
    reserved = job(cluster, namespace, "big")["status"]["placement"]
    assert len(reserved) == 4
    bound = [p for p in live_pods(cluster, namespace, "big") if p.spec.node_name]
    assert len(bound) == 2, [p.metadata.name for p in bound]

    # While no operator runs, another gang asks for more than what is left (1 free node).
    make_job(cluster, namespace, fleet, "rival", replicas=2, gpus=8)

    restarted = OperatorProcess(cluster, tmp_path)
    restarted.start()
    try:
        wait_running(cluster, namespace, "big", 30)
        members = live_pods(cluster, namespace, "big")
        assert len(members) == 4
        placed = {p["replica"]: p["node"] for p in job(cluster, namespace, "big")["status"]["placement"]}
        assert placed == {p["replica"]: p["node"] for p in reserved}, "the reservation was kept"
        assert {int(p.metadata.labels["wanka.io/replica"]): p.spec.node_name for p in members} == placed
        wait_for(lambda: (c := condition(cluster, namespace, "rival", "Admitted")) and
                 c["status"] == "False" and c["reason"] != "Queued", 10, what="rival waits")
        assert phase(cluster, namespace, "rival") == "Queued"
        assert not live_pods(cluster, namespace, "rival")
        load = device_load(cluster, fleet.nodes)
        assert load and max(load.values()) == 1, "no device is held twice"
        status = cluster.get("gpupools", fleet.pool)["status"]
        over = next(c for c in status["conditions"] if c["type"] == "Overcommitted")
        assert over["status"] == "False", over
    finally:
        restarted.stop()


def _group(cluster: Cluster, namespace: str, fleet: Any, name: str, size: int) -> None:
    for i in range(size):
        cluster.core.create_namespaced_pod(namespace, {
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": f"{name}-{i}", "labels": {"wanka.io/queue": fleet.queue, "wanka.io/pool": fleet.pool,
                                                          "wanka.io/pod-group": name},
                         "annotations": {"wanka.io/pod-group-size": str(size)}},
            "spec": {"schedulerName": "wanka", "terminationGracePeriodSeconds": 1,
                     "containers": [{"name": "app", "image": "app:1",
                                     "resources": {"limits": {"nvidia.com/gpu": "8"}}}]}})


def _members(cluster: Cluster, namespace: str, name: str) -> list[Any]:
    return list(cluster.core.list_namespaced_pod(namespace, label_selector=f"wanka.io/pod-group={name}").items)


@pytest.mark.parametrize("failpoint", ["after-reserve:2", "after-unit-bind:2"])
def test_killed_mid_pod_group_then_restarted(
    cluster: Cluster, namespace: str, tmp_path: Path, failpoint: str
) -> None:
    crashing = OperatorProcess(cluster, tmp_path, env={"WANKA_FAILPOINT": failpoint})
    crashing.start()
    fleet = make_fleet(cluster, namespace, nodes=5, racks=1)
    _group(cluster, namespace, fleet, "ring", 4)
    assert crashing.proc is not None
    crashing.proc.wait(30)
    assert crashing.proc.returncode == 137, crashing.log_tail()
    members = _members(cluster, namespace, "ring")
    reserved = {p.metadata.name: (p.metadata.annotations or {}).get("wanka.io/node") for p in members}
    bound = [p.metadata.name for p in members if p.spec.node_name]
    if failpoint.startswith("after-reserve"):
        # Killed between two reservations: two members reserved, none bound.
        assert sum(1 for v in reserved.values() if v) == 2 and not bound
    else:
        # Killed between two bindings: every member reserved, two bound.
        assert all(reserved.values()) and len(bound) == 2

    # While no operator runs, another group asks for more than what is left.
    _group(cluster, namespace, fleet, "rival", 2)
    restarted = OperatorProcess(cluster, tmp_path)
    restarted.start()
    try:
        wait_for(lambda: all(p.spec.node_name for p in _members(cluster, namespace, "ring")), 30,
                 what="the whole group bound")
        members = _members(cluster, namespace, "ring")
        if failpoint.startswith("after-unit-bind"):
            # The reservation was whole: it is kept, not decided again.
            assert {p.metadata.name: p.spec.node_name for p in members} == reserved
        assert len({p.spec.node_name for p in members}) == 4
        wait_for(lambda: all(any(c.type == "PodScheduled" and c.status == "False" for c in p.status.conditions or [])
                             for p in _members(cluster, namespace, "rival")), 20, what="the rival group waits")
        assert not any(p.spec.node_name for p in _members(cluster, namespace, "rival"))
        load = device_load(cluster, fleet.nodes)
        assert load and max(load.values()) == 1, "no device is held twice"
    finally:
        restarted.stop()
