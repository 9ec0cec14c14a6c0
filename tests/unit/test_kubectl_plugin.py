"""`kubectl wanka`: what each command shows, read from objects alone, and kubectl's flags."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import pytest
import yaml

from wanka.cluster.kubectl import Section, build_parser, job_rows, render, top, why

NOW = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)


def job(name: str, phase: str | None = None, queue: str = "team-a", pool: str = "h100",
        **status: Any) -> dict[str, Any]:
    return {"metadata": {"name": name, "namespace": "ml", "creationTimestamp": "2026-01-01T11:50:00Z"},
            "spec": {"queue": queue, "pool": pool, "replicas": 2, **status.pop("spec", {})},
            "status": {**({"phase": phase} if phase else {}), **status}}


def admitted(status: str, reason: str, message: str) -> list[dict[str, str]]:
    return [{"type": "Admitted", "status": status, "reason": reason, "message": message}]


WHY_CASES = [
    pytest.param(job("new"), {"state": "waiting", "reason": "NotSeen"}, id="not-seen-yet"),
    pytest.param(job("q", "Queued", conditions=admitted("False", "QuotaExceeded", "team-a uses 16 of 16 GPUs"),
                     retryAfter="2026-01-01T12:05:00Z"),
                 {"state": "waiting", "reason": "QuotaExceeded", "message": "team-a uses 16 of 16 GPUs",
                  "retryAfter": "2026-01-01T12:05:00Z"}, id="quota"),
    pytest.param(job("r", "Running", conditions=admitted("True", "Running", "2/2 replicas ready"),
                     placement=[{"replica": 1, "node": "n2", "devices": [0, 1]},
                                {"replica": 0, "node": "n1", "devices": [4], "gpuMilli": 500}],
                     excludedNodes=["n9"]),
                 {"state": "placed", "reason": "Running", "excludedNodes": ["n9"],
                  "placement": [{"replica": 0, "node": "n1", "devices": [4], "gpuMilli": 500},
                                {"replica": 1, "node": "n2", "devices": [0, 1]}]}, id="running"),
    pytest.param(job("s", "Suspended", spec={"suspend": True}), {"state": "suspended"}, id="suspended"),
    pytest.param(job("f", "Failed", conditions=[{"type": "Failed", "status": "True", "reason": "BackoffLimit",
                                                "message": "5 restarts"}]),
                 {"state": "finished", "reason": "BackoffLimit", "message": "5 restarts"}, id="failed"),
]


@pytest.mark.parametrize(("obj", "want"), WHY_CASES)
def test_why(obj: dict[str, Any], want: dict[str, Any]) -> None:
    got = why(obj, NOW)
    assert {k: got.get(k) for k in want} == want
    assert got["age"] == "10m" and got["job"] == f"ml/{obj['metadata']['name']}"


def test_why_as_text_names_the_reason_and_every_replica() -> None:
    text = render(why(WHY_CASES[2].values[0], NOW), "table")
    assert text.splitlines() == [
        "ml/r is placed (Running, queue team-a, pool h100, age 10m)",
        "  Running: 2/2 replicas ready",
        "  replica 0 on n1, devices 4 (0.5 of a GPU)",
        "  replica 1 on n2, devices 0,1",
        "  avoids nodes that failed it: n9",
    ]


def test_jobs_show_the_core_reason_while_waiting() -> None:
    rows = job_rows([job("b", "Running", replicasReady=2, gpus=16),
                     job("a", "Queued", conditions=admitted("False", "NoFit", "no rack with 16 free"))], NOW)
    assert rows == [["ml", "a", "team-a", "h100", "Queued", "0/2", None, "10m", "NoFit"],
                    ["ml", "b", "team-a", "h100", "Running", "2/2", 16, "10m", None]]


def test_top_per_pool_and_per_queue_and_pool() -> None:
    pools = [{"metadata": {"name": "h100"}, "status": {"gpus": {"total": 32, "allocated": 8, "free": 24}}}]
    queues = [{"metadata": {"name": "team-a"}, "spec": {"quotas": [{"pool": "h100", "gpus": 16}]},
               "status": {"usage": [{"pool": "h100", "gpus": 8}]}}]
    jobs = [job("r", "Running"), job("w", "Queued"), job("x", None, queue="team-a", pool="a100")]
    got = {s.name: s.rows for s in top(pools, queues, jobs)}
    assert got == {"pools": [["h100", 32, 8, 24, "25%", 1]],
                   "queues": [["team-a", "a100", None, 0, None, 0, 1], ["team-a", "h100", 16, 8, "50%", 1, 1]]}


def test_json_and_yaml_are_records_keyed_by_column() -> None:
    report = [Section("pools", ["POOL", "USE %", "PENDING JOBS"], [["h100", "25%", 1]]), Section("queues", ["QUEUE"])]
    want = {"pools": [{"pool": "h100", "use%": "25%", "pendingJobs": 1}], "queues": []}
    assert json.loads(render(report, "json")) == want
    assert yaml.safe_load(render(report, "yaml")) == want
    assert render(report, "table") == "POOL  USE %  PENDING JOBS\nh100  25%    1\n\nNo queues found."


@pytest.mark.parametrize(("argv", "want"), [
    (["jobs"], {"namespace": None, "output": "table", "all_namespaces": False, "context": None}),
    (["-n", "ml", "jobs", "-o", "json"], {"namespace": "ml", "output": "json"}),
    (["jobs", "-n", "ml", "--context", "prod", "-A"], {"namespace": "ml", "context": "prod", "all_namespaces": True}),
    (["why", "j", "--kubeconfig", "/k", "-o", "yaml"], {"job": "j", "kubeconfig": "/k", "output": "yaml"}),
    (["--kubeconfig", "/k", "resume", "j"], {"job": "j", "kubeconfig": "/k", "output": "table"}),
])
def test_kubectl_flags_before_or_after_the_command(argv: list[str], want: dict[str, Any]) -> None:
    args = vars(build_parser().parse_args(argv))
    assert {k: args.get(k) for k in want} == want
