"""The gang preflight end to end: Wanka adds the preflight to each member, the real preflight
program runs a gloo collective on this machine's CPU with the environment Wanka gave each
member, its reports reach the API as the members' init-container results (this test plays the
kubelet, which kwok does not run), and Wanka excludes the failing member's node and places the
gang again without it."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.integration.conftest import Cluster, OperatorProcess, wait_for
from tests.integration.jobkit import condition, job, live_pods, make_fleet, make_job
from wanka.cluster.localcluster import REPO

pytestmark = pytest.mark.integration


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def run_members(pods: list[Any], tmp: Path, unreachable: int) -> dict[int, tuple[int, str]]:
    """Run each member's preflight as a local process with the env Wanka put on its init
    container; member `unreachable` cannot reach the rendezvous (as on a node whose network is
    broken). Returns rank -> (exit code, termination message)."""
    port = free_port()
    closed = free_port()  # nothing listens there
    procs = {}
    for pod in pods:
        init = pod.spec.init_containers[-1]
        assert init.name == "wanka-preflight"
        env = {e.name: e.value or "" for e in init.env}  # the API leaves out empty values
        rank = int(env["RANK"])
        result = tmp / f"rank-{rank}.json"
        env.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(closed if rank == unreachable else port),
                   WANKA_PREFLIGHT_BACKEND="gloo", WANKA_PREFLIGHT_SIZE_MB="1",
                   WANKA_PREFLIGHT_TIMEOUT_SECONDS="6", WANKA_PREFLIGHT_RESULT_FILE=str(result))
        procs[rank] = (subprocess.Popen(
            [sys.executable, *init.command[1:]], env={**os.environ, **env, "PYTHONPATH": str(REPO / "operator")},
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL), result)
    out = {}
    for rank, (proc, result) in procs.items():
        code = proc.wait(60)
        out[rank] = (code, result.read_text() if result.exists() else "")
    return out


def report_init_result(cluster: Cluster, pod: Any, code: int, message: str) -> None:
    """What the kubelet writes when an init container ends (restartPolicy Never: the pod fails)."""
    cluster.core.patch_namespaced_pod_status(pod.metadata.name, pod.metadata.namespace, {"status": {
        "phase": "Failed" if code else "Pending",
        "initContainerStatuses": [{
            "name": "wanka-preflight", "image": pod.spec.init_containers[-1].image, "imageID": "",
            "ready": False, "restartCount": 0,
            "state": {"terminated": {"exitCode": code, "reason": "Error" if code else "Completed",
                                     "message": message}},
        }],
    }})


def test_a_member_failing_the_gang_preflight_has_its_node_excluded(
    cluster: Cluster, operator: OperatorProcess, namespace: str, tmp_path: Path
) -> None:
    fleet = make_fleet(cluster, namespace, nodes=4, racks=1,
                       pool_spec={"preflight": {"timeoutSeconds": 30, "minBusBandwidthGBps": 0}})
    make_job(cluster, namespace, fleet, "pf", replicas=3, preflight=True,
             labels={"wanka.io/sim": "pending"})  # kwok leaves the members to this test
    members = wait_for(lambda: (lambda ps: ps if len(ps) == 3 and all(p.spec.node_name for p in ps) else None)(
        live_pods(cluster, namespace, "pf")), 30, what="3 bound members")
    env = {e.name: e.value for e in members[0].spec.init_containers[-1].env}
    assert env["WANKA_PREFLIGHT_TIMEOUT_SECONDS"] == "30"

    results = run_members(members, tmp_path, unreachable=2)
    assert {rank: code for rank, (code, _) in results.items()} == {0: 1, 1: 1, 2: 1}, results
    assert '"MasterUnreachable"' in results[2][1] and '"PeersMissing"' in results[0][1]
    bad = next(p.spec.node_name for p in members if p.metadata.labels["wanka.io/replica"] == "2")
    for pod in members:
        code, message = results[int(pod.metadata.labels["wanka.io/replica"])]
        report_init_result(cluster, pod, code, message)

    wait_for(lambda: (job(cluster, namespace, "pf").get("status") or {}).get("preflightFailures") == 1, 20,
             what="the failed preflight handled")
    status = job(cluster, namespace, "pf")["status"]
    assert status["excludedNodes"] == [bad]
    ready = condition(cluster, namespace, "pf", "PodsReady")
    assert ready is not None and ready["reason"] == "PreflightFailed" and f"replica 2 on {bad}" in ready["message"]

    def next_attempt() -> list[Any] | None:
        pods = [p for p in live_pods(cluster, namespace, "pf") if p.metadata.labels["wanka.io/attempt"] == "1"]
        return pods if len(pods) == 3 and all(p.spec.node_name for p in pods) else None

    again = wait_for(next_attempt, 30, what="the gang placed again")
    assert bad not in {p.spec.node_name for p in again}
    assert len({p.spec.node_name for p in again}) == 3
