"""The operator dies in the middle of binding a gang; a restarted one finishes the job right."""

from __future__ import annotations

from pathlib import Path

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
