"""Checkpoint advice from report to pod: the operator's Young/Daly advice in status, the
variable on new pods, and the SDK side that measures saves and follows the advice."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime

from tests.objects import make_training_job
from wanka.api.trainingjob import CheckpointAdvice, LastCheckpoint, TrainingJobSpec
from wanka.cluster.jobs import parse_job, read_report
from wanka.cluster.manifests import pod_manifest
from wanka.core import lifecycle
from wanka.core.advice import advise, interruption_rate
from wanka.sdk import CheckpointTimer, Settings

NOW = 5000.0
RUN = (("n1", [0, 1, 2, 3, 4, 5, 6, 7]), ("n2", [0, 1, 2, 3, 4, 5, 6, 7]))


def report(save: float | None) -> LastCheckpoint:
    return LastCheckpoint(step=10, path="/ckpt/step-10", time=datetime.fromtimestamp(NOW - 5, UTC),
                          save_seconds=save)


def test_the_advice_follows_the_save_time_the_node_count_and_the_pools_record() -> None:
    job = parse_job(make_training_job("j").replicas(2).running(*RUN, since=NOW - 100).obj(), [])
    assert job.spec is not None
    assert job.advice(report(None), {}) is None  # no measured save: no advice
    faults, seconds = 40, 30 * 86400 * 100.0  # 40 faults in 100 node-months
    got = job.advice(report(30.0), {job.spec.pool: (faults, seconds)})
    assert got is not None
    rate = interruption_rate(faults, seconds)
    assert got.interval_seconds == int(advise(30.0, 2, rate).interval_seconds)
    assert abs(got.interruptions_per_node_day - rate * 86400) < 1e-6
    slower = job.advice(report(120.0), {job.spec.pool: (faults, seconds)})
    assert slower is not None and slower.interval_seconds > got.interval_seconds
    shakier = job.advice(report(30.0), {job.spec.pool: (faults * 10, seconds)})
    assert shakier is not None and shakier.interval_seconds < got.interval_seconds


def test_status_takes_new_advice_only_when_it_moved_by_more_than_a_tenth() -> None:
    raw = make_training_job("j").replicas(2).running(*RUN, since=NOW - 100).obj()
    nodes = {n: lifecycle.NodeFacts(n) for n in ("n1", "n2")}
    first = CheckpointAdvice(interval_seconds=1000, save_seconds=30, job_mtbf_seconds=1e5,
                             interruptions_per_node_day=0.01)
    plan = lifecycle.step(replace(parse_job(raw, []).facts(), advice=first), [], nodes, NOW)
    assert plan.status is not None and plan.status.checkpoint_advice == first
    raw["status"]["checkpointAdvice"] = first.model_dump(by_alias=True)
    for interval, taken in ((1090, False), (1200, True)):
        moved = first.model_copy(update={"interval_seconds": interval})
        plan = lifecycle.step(replace(parse_job(raw, []).facts(), advice=moved), [], nodes, NOW)
        got = plan.status.checkpoint_advice if plan.status is not None else first
        assert (got == moved) is taken


def test_new_pods_carry_the_advised_interval() -> None:
    raw = make_training_job("j").replicas(2).obj()
    raw["metadata"]["uid"] = "u"
    spec = TrainingJobSpec.model_validate(raw["spec"])
    advice = CheckpointAdvice(interval_seconds=1800, save_seconds=30, job_mtbf_seconds=1e5,
                              interruptions_per_node_day=0.01)
    env = {e["name"]: e["value"] for e in pod_manifest(raw, spec, 0, 0, [(0, 1000)], "nvidia.com/gpu",
                                                      advice=advice)["spec"]["containers"][0]["env"]}
    assert env["WANKA_CHECKPOINT_INTERVAL_SECONDS"] == "1800"
    plain = pod_manifest(raw, spec, 0, 0, [(0, 1000)], "nvidia.com/gpu")["spec"]["containers"][0]["env"]
    assert {e["name"]: e["value"] for e in plain}["WANKA_CHECKPOINT_INTERVAL_SECONDS"] == ""


def test_the_report_carries_the_save_time_into_last_checkpoint() -> None:
    progress = {"spec": {"step": 3, "path": "/ckpt/s", "time": "2026-12-01T10:00:00Z", "saveSeconds": 12.5}}
    got = read_report(progress)
    assert got is not None and got.save_seconds == 12.5
    plain = read_report({"spec": {"step": 3, "path": "/p", "time": "2026-12-01T10:00:00Z"}})
    assert plain is not None and plain.save_seconds is None


def test_the_sdk_reads_the_advice_and_times_saves() -> None:
    assert Settings.from_env({"WANKA_CHECKPOINT_INTERVAL_SECONDS": "900"}).checkpoint_interval_seconds == 900
    for raw in ("", "0", "soon", "-5"):
        assert Settings.from_env({"WANKA_CHECKPOINT_INTERVAL_SECONDS": raw}).checkpoint_interval_seconds is None
    now = [100.0]
    timer = CheckpointTimer(60, clock=lambda: now[0])
    assert not timer.due()
    now[0] = 161.0
    assert timer.due()
    timer.saved()
    assert not timer.due()
    assert not CheckpointTimer(None, clock=lambda: 1e9).due()
