"""Node health on the real control plane: taints, stable recovery, quarantine, the guard, the agent."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from tests.integration.conftest import Cluster, OperatorProcess, holds, wait_for
from tests.integration.test_gpupool import make_pool, pool_status
from wanka.cluster.dev import create_nodes
from wanka.cluster.localcluster import REPO

pytestmark = pytest.mark.integration
TAINT = "wanka.io/unhealthy"


def set_gpu_condition(cluster: Cluster, node: str, status: str, reason: str) -> None:
    now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    cluster.core.patch_node_status(node, {"status": {"conditions": [{
        "type": "GPUHealthy", "status": status, "reason": reason, "message": f"test: {reason}",
        "lastHeartbeatTime": now, "lastTransitionTime": now,
    }]}})


def our_taint(cluster: Cluster, node: str) -> dict[str, Any] | None:
    for t in cluster.core.read_node(node).spec.taints or []:
        if t.key == TAINT:
            return {"value": t.value, "effect": t.effect}
    return None


def record(cluster: Cluster, node: str) -> dict[str, Any]:
    raw = (cluster.core.read_node(node).metadata.annotations or {}).get("wanka.io/health")
    return json.loads(raw) if raw else {}


def health_pool(cluster: Cluster, count: int, **health: Any) -> tuple[str, list[str]]:
    tag = uuid.uuid4().hex[:6]
    names = create_nodes(cluster.api, count, 8, "H100-80GB", 1, prefix=f"hl{tag}",
                         labels={"wanka.io/pool": tag})
    pool = make_pool(cluster, tag, health={"fatalReasons": ["XID79"], **health})
    wait_for(lambda: (pool_status(cluster, pool).get("nodes") or {}).get("healthy") == count, 15,
             what=f"{count} healthy nodes")
    return pool, names


def test_sick_condition_taints_at_once_and_recovers_after_the_stable_window(
    cluster: Cluster, operator: OperatorProcess
) -> None:
    pool, names = health_pool(cluster, 5, recoveryStableSeconds=4)
    node = names[0]

    # How fast is bench/bench_taint_latency.py's business; here: tainted, with the reason.
    set_gpu_condition(cluster, node, "False", "EccUncorrectable")
    taint = wait_for(lambda: our_taint(cluster, node), 10, interval=0.05, what="the unhealthy taint")
    assert taint == {"value": "EccUncorrectable", "effect": "NoSchedule"}
    assert record(cluster, node)["state"] == "Sick"
    wait_for(lambda: (pool_status(cluster, pool).get("nodes") or {}).get("sick") == 1, 10,
             what="pool counts the sick node")

    cleared = time.monotonic()
    set_gpu_condition(cluster, node, "True", "Healthy")
    wait_for(lambda: record(cluster, node).get("state") == "Recovering", 5, what="Recovering")
    assert our_taint(cluster, node) is not None, "the taint must stay while recovering"
    assert (pool_status(cluster, pool).get("nodes") or {}).get("recovering") in (0, 1)
    wait_for(lambda: our_taint(cluster, node) is None, 15, interval=0.1, what="taint removed")
    held = time.monotonic() - cleared
    assert held >= 3.5, f"taint removed after {held:.1f}s, before the 4s stable window"
    assert record(cluster, node)["state"] == "Healthy"
    events = [e.reason for e in cluster.events_for(node)]
    assert events, "the node's transitions must be visible as Events"


def test_fatal_reason_taints_no_execute(cluster: Cluster, operator: OperatorProcess) -> None:
    _, names = health_pool(cluster, 5)
    set_gpu_condition(cluster, names[1], "False", "XID79")
    assert wait_for(lambda: our_taint(cluster, names[1]), 5, what="taint") == {
        "value": "XID79", "effect": "NoExecute"}


def test_flapping_node_is_quarantined_until_a_person_clears_it(
    cluster: Cluster, operator: OperatorProcess
) -> None:
    _, names = health_pool(cluster, 5, recoveryStableSeconds=1, flapLimit=2, flapWindowSeconds=600)
    node = names[2]
    for i in range(3):
        set_gpu_condition(cluster, node, "False", f"Flap{i}")
        wait_for(lambda i=i: record(cluster, node).get("reason") == f"Flap{i}"
                 or record(cluster, node).get("state") == "Quarantined", 5, what=f"sick #{i}")
        set_gpu_condition(cluster, node, "True", "Healthy")
        wait_for(lambda: record(cluster, node).get("state") in ("Recovering", "Quarantined"), 5,
                 what="recovering or quarantined")
    wait_for(lambda: record(cluster, node).get("state") == "Quarantined", 5, what="Quarantined")
    # Well past the stable window (1 s): quarantine holds all the while.
    holds(lambda: record(cluster, node)["state"] == "Quarantined", 2.5, what="quarantine")
    assert our_taint(cluster, node) is not None
    assert any(e.reason == "NodeQuarantined" or "uarantin" in e.reason
               for e in cluster.events_for(node)), [e.reason for e in cluster.events_for(node)]

    now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    cluster.core.patch_node(node, {"metadata": {"annotations": {"wanka.io/quarantine-clear": now}}})
    wait_for(lambda: our_taint(cluster, node) is None, 10, what="quarantine released")


def test_guard_stops_tainting_when_too_much_of_the_pool_turns_sick(
    cluster: Cluster, operator: OperatorProcess
) -> None:
    pool, names = health_pool(cluster, 10, maxUnhealthyPercent=20, recoveryStableSeconds=2)
    for node in names[:6]:
        set_gpu_condition(cluster, node, "False", "ProbeBroken")

    def guard() -> dict[str, Any] | None:
        return next((c for c in pool_status(cluster, pool).get("conditions") or []
                     if c["type"] == "HealthGuardTripped" and c["status"] == "True"), None)

    cond = wait_for(guard, 10, what="HealthGuardTripped=True on the pool")
    holds(lambda: len([n for n in names if our_taint(cluster, n) is not None]) <= 2, 1.5,
          what="the guard allows 20% of 10 nodes tainted")
    assert "20" in cond["message"], cond["message"]
    assert any(e.reason == "HealthGuardTripped" for e in cluster.events_for(pool))

    for node in names[:6]:
        set_gpu_condition(cluster, node, "True", "Healthy")
    # Released once the cleared nodes have been stable for the window.
    wait_for(lambda: not guard(), 15, what="guard released")
    wait_for(lambda: all(our_taint(cluster, n) is None for n in names), 10, what="no taint left")


def test_one_sick_device_leaves_the_rest_of_the_node_usable(
    cluster: Cluster, operator: OperatorProcess
) -> None:
    pool, names = health_pool(cluster, 2)
    cluster.core.patch_node(names[0], {"metadata": {"annotations": {
        "wanka.io/gpu-health": json.dumps({"3": {"healthy": False, "reason": "XID94"}})}}})
    wait_for(lambda: (pool_status(cluster, pool).get("gpus") or {}).get("allocatable") == 15, 10,
             what="15 allocatable GPUs (one device excluded)")
    assert our_taint(cluster, names[0]) is None, "one sick device must not taint the node"
    st = pool_status(cluster, pool)
    assert st["nodes"]["healthy"] == 2


def test_agent_file_probe_writes_condition_and_device_health(
    cluster: Cluster, tmp_path: Path
) -> None:
    tag = uuid.uuid4().hex[:6]
    (node,) = create_nodes(cluster.api, 1, 8, "H100-80GB", 1, prefix=f"ag{tag}")
    faults = tmp_path / "faults.json"
    faults.write_text(json.dumps({"count": 8, "devices": {"5": {"reason": "XID79",
                                                                 "message": "fell off the bus"}}}))
    proc = subprocess.run(
        [sys.executable, "-m", "wanka.cli", "agent", "--node-name", node, "--probe", "file",
         "--fault-file", str(faults), "--expected-devices", "8", "--once",
         "--kubeconfig", str(cluster.kubeconfig)],
        capture_output=True, text=True, timeout=60, cwd=REPO,
        env={"PYTHONPATH": str(REPO / "operator"), "PATH": "/usr/bin:/bin"},
    )
    assert proc.returncode == 0, proc.stderr
    n = cluster.core.read_node(node)
    cond = next(c for c in n.status.conditions if c.type == "GPUHealthy")
    assert cond.reason == "XID79" and "5" in cond.message
    health = json.loads(n.metadata.annotations["wanka.io/gpu-health"])
    assert health["5"]["healthy"] is False and health["5"]["reason"] == "XID79"
    assert all(health[str(i)]["healthy"] for i in range(8) if i != 5)
    # kwok's conditions are still there.
    assert any(c.type == "Ready" and c.status == "True" for c in n.status.conditions)


def test_a_silent_agent_is_a_signal(cluster: Cluster, operator: OperatorProcess) -> None:
    _, names = health_pool(cluster, 5)
    node = names[3]
    stale = "2026-01-01T00:00:00Z"  # the agent's last heartbeat, long ago
    cluster.core.patch_node_status(node, {"status": {"conditions": [{
        "type": "GPUHealthy", "status": "True", "reason": "AllDevicesHealthy", "message": "ok",
        "lastHeartbeatTime": stale, "lastTransitionTime": stale}]}})
    taint = wait_for(lambda: our_taint(cluster, node), 10, what="taint for a silent agent")
    assert taint == {"value": "AgentSilent", "effect": "NoSchedule"}, "silence is never fatal"
    # The agent speaks again: the node recovers (after the stable window).
    set_gpu_condition(cluster, node, "True", "AllDevicesHealthy")
    wait_for(lambda: record(cluster, node).get("state") in ("Recovering", "Healthy"), 10,
             what="recovering once the heartbeat is fresh")
