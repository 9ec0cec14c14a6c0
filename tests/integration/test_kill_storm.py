"""The operator SIGKILLed again and again while gangs arrive, and an operator whose watch lags:
no device is ever held twice, no gang stays half bound, every gang runs once capacity allows."""

from __future__ import annotations

import random
import time
from pathlib import Path

import pytest

from tests.integration.conftest import Cluster, OperatorProcess, wait_for
from tests.integration.jobkit import Fleet, device_load, job, live_pods, make_fleet, make_job, phase

pytestmark = pytest.mark.integration


def _no_device_twice(cluster: Cluster, fleet: Fleet) -> None:
    load = device_load(cluster, fleet.nodes)
    assert not load or max(load.values()) == 1, {k: v for k, v in load.items() if v > 1}


def _whole_gangs(cluster: Cluster, namespace: str, names: list[str], replicas: int) -> None:
    """Every gang is all bound with one pod per member, or has nothing bound: never half."""
    for name in names:
        bound = [p for p in live_pods(cluster, namespace, name) if p.spec.node_name]
        by_replica = {p.metadata.labels["wanka.io/replica"] for p in bound}
        assert len(by_replica) == len(bound), f"{name}: two live pods for one member"
        assert len(bound) in (0, replicas), f"{name}: {len(bound)} of {replicas} members bound"


def test_kill_storm_while_thirty_gangs_arrive(cluster: Cluster, namespace: str, tmp_path: Path) -> None:
    rng = random.Random(7)
    op = OperatorProcess(cluster, tmp_path)
    op.start()
    fleet = make_fleet(cluster, namespace, nodes=16, racks=2)
    names = [f"g{i:02d}" for i in range(30)]
    kills = 0

    def kill_and_restart(after: float) -> OperatorProcess:
        """SIGKILL at whatever line it is on, check the invariant, start a fresh operator."""
        nonlocal kills
        time.sleep(after)
        op.kill()
        kills += 1
        _no_device_twice(cluster, fleet)
        fresh = OperatorProcess(cluster, tmp_path)
        fresh.start()
        return fresh

    try:
        for i, name in enumerate(names):
            make_job(cluster, namespace, fleet, name, replicas=2, gpus=2)
            if i % 4 == 3:
                op = kill_and_restart(rng.uniform(0.1, 1.0))
        for _ in range(4):  # and a few more while they are being placed and bound
            op = kill_and_restart(rng.uniform(0.2, 1.5))
        # 30 gangs x 4 GPUs fit into 128: every one runs, each exactly once.
        wait_for(lambda: all(phase(cluster, namespace, n) == "Running" for n in names), 90,
                 what="all 30 gangs Running after the storm")
        _no_device_twice(cluster, fleet)
        _whole_gangs(cluster, namespace, names, 2)
        for name in names:
            status = job(cluster, namespace, name)["status"]
            assert status.get("restarts", 0) == 0, (name, status)
        assert kills >= 10
    finally:
        op.stop()


def test_a_lagging_watch_never_double_books(cluster: Cluster, namespace: str, tmp_path: Path) -> None:
    op = OperatorProcess(cluster, tmp_path, env={"WANKA_FAILPOINT_WATCH_LAG_SECONDS": "1.5"})
    op.start()
    try:
        fleet = make_fleet(cluster, namespace, nodes=4, racks=1)
        names = [f"lag{i}" for i in range(8)]
        for name in names:
            make_job(cluster, namespace, fleet, name, replicas=1, gpus=8)
        deadline = time.monotonic() + 25
        while time.monotonic() < deadline:  # sample while decisions are made on a stale view
            _no_device_twice(cluster, fleet)
            _whole_gangs(cluster, namespace, names, 1)
            if sum(phase(cluster, namespace, n) == "Running" for n in names) == 4:
                break
            time.sleep(0.3)
        running = [n for n in names if phase(cluster, namespace, n) == "Running"]
        assert len(running) == 4, running
        # Capacity frees up: two waiting gangs take it, still never twice.
        for name in running[:2]:
            cluster.delete("trainingjobs", name, namespace)
        left = [n for n in names if n not in running[:2]]
        wait_for(lambda: sum(phase(cluster, namespace, n) == "Running" for n in left) == 4, 30,
                 what="two more gangs running")
        _no_device_twice(cluster, fleet)
        _whole_gangs(cluster, namespace, names, 1)
    finally:
        op.stop()
