"""`kubectl wanka` as a process against the real control plane and a running operator."""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

import pytest

from tests.integration.conftest import Cluster, OperatorProcess, wait_for
from tests.integration.jobkit import make_fleet, make_job, phase, wait_running
from wanka.cluster.localcluster import REPO

pytestmark = pytest.mark.integration


def plugin(cluster: Cluster, *argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "wanka.cluster.kubectl", "--kubeconfig", str(cluster.kubeconfig),
                           *argv], capture_output=True, text=True, timeout=60,
                          env={"PYTHONPATH": str(REPO / "operator"), "PATH": "/usr/bin:/bin"})


def as_json(cluster: Cluster, *argv: str) -> Any:
    out = plugin(cluster, *argv, "-o", "json")
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def test_jobs_why_suspend_resume_and_top(cluster: Cluster, operator: OperatorProcess, namespace: str) -> None:
    fleet = make_fleet(cluster, namespace, nodes=2, quota=8)
    make_job(cluster, namespace, fleet, "fits", replicas=1)
    wait_running(cluster, namespace, "fits")
    make_job(cluster, namespace, fleet, "over-quota", replicas=1)

    placed = as_json(cluster, "why", "fits", "-n", namespace)
    assert placed["state"] == "placed" and placed["placement"][0]["node"] in fleet.nodes
    waiting = wait_for(lambda: (w := as_json(cluster, "why", "over-quota", "-n", namespace))["reason"] != "NotSeen"
                       and w, 20, what="the operator's reason for the waiting job")
    assert waiting["state"] == "waiting" and waiting["message"], waiting

    jobs = {j["name"]: j for j in as_json(cluster, "jobs", "-n", namespace)["jobs"]}
    assert jobs["fits"]["phase"] == "Running" and jobs["over-quota"]["reason"] == waiting["reason"]

    text = plugin(cluster, "-n", namespace, "why", "over-quota").stdout
    assert text.startswith(f"{namespace}/over-quota is waiting") and waiting["reason"] in text

    usage = wait_for(lambda: [q for q in as_json(cluster, "top")["queues"] if q["queue"] == fleet.queue
                              and q["used"] == 8], 20, what="the queue's usage in top")
    assert usage == [{"queue": fleet.queue, "pool": fleet.pool, "quota": 8, "used": 8, "use%OfQuota": "100%",
                      "running": 1, "pending": 1}]

    out = plugin(cluster, "suspend", "fits", "-n", namespace)
    assert out.returncode == 0 and out.stdout.strip() == "trainingjob.wanka.io/fits suspended"
    wait_for(lambda: phase(cluster, namespace, "fits") == "Suspended", 20, what="fits suspended")
    wait_running(cluster, namespace, "over-quota")  # the GPUs the suspended job released
    assert as_json(cluster, "why", "fits", "-n", namespace)["state"] == "suspended"

    assert plugin(cluster, "resume", "fits", "-n", namespace).returncode == 0
    assert cluster.get("trainingjobs", "fits", namespace)["spec"]["suspend"] is False

    missing = plugin(cluster, "why", "nope", "-n", namespace)
    assert missing.returncode == 1
    assert missing.stderr == f'error: trainingjob "nope" not found in namespace "{namespace}"\n'
    status = plugin(cluster, "status")
    assert status.returncode == 0 and fleet.pool in status.stdout and fleet.queue in status.stdout
