"""The TrainingJob lifecycle as tables: (job, pods, nodes, now) -> the plan `core.lifecycle.step`
returns, read through the same parsers the operator uses on real objects."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pytest

from tests.objects import condition, make_node, make_pod, make_training_job
from wanka.cluster.jobs import ParseMemo, node_facts, parse_job, pod_facts, reservations
from wanka.core import lifecycle
from wanka.core.lifecycle import GONE_MARGIN_SECONDS, REFUSED_RELEASE_SECONDS, Delete, VictimFacts

NOW = 5000.0


def plan_for(job: dict[str, Any], pods: list[dict[str, Any]] = (), nodes: list[dict[str, Any]] = (),  # type: ignore[assignment]
             now: float = NOW, report: Any = None) -> lifecycle.Plan:
    parsed = parse_job(job, list(pods))
    facts = {n["metadata"]["name"]: node_facts(n) for n in nodes}
    return lifecycle.step(parsed.facts(report), [pod_facts(p) for p in pods], facts, now)


def ready(name: str) -> dict[str, Any]:
    return make_node(name).obj()


@dataclass
class Case:
    name: str
    job: dict[str, Any]
    pods: list[dict[str, Any]] = field(default_factory=list)
    nodes: list[dict[str, Any]] = field(default_factory=lambda: [ready("n1"), ready("n2")])
    now: float = NOW
    want_phase: str | None = None  # None: the status is not rewritten
    want_reason: str | None = None  # reason of the first event
    want_delete: list[Delete] = field(default_factory=list)
    want_create: tuple[int, ...] = ()
    want_bind: bool = False
    want_pending: bool = False
    want_finalizer: str | None = None
    check: Any = None  # extra assertion on the plan


job = make_training_job
RUN2 = (("n1", [0, 1, 2, 3, 4, 5, 6, 7]), ("n2", [0, 1, 2, 3, 4, 5, 6, 7]))

CASES = [
    Case("a new job gets the finalizer first", job("j").no_finalizer().obj(), want_finalizer="add"),
    Case("then it is queued and offered a placement at once", job("j").obj(), want_phase="Queued",
         want_reason="Queued", want_pending=True),
    Case("a new suspended job is queued and suspended in one step", job("j").suspend().obj(),
         want_phase="Suspended", want_reason="Queued",
         check=lambda plan: [e.reason for e in plan.events] == ["Queued", "Suspended"]),
    Case("a queued job with nothing left over wants a placement", job("j").queued().obj(), want_pending=True),
    Case("backoff holds a queued job", job("j").queued(retry_after=NOW + 10).obj()),
    Case("backoff over", job("j").queued(retry_after=NOW - 1).obj(), want_pending=True),
    Case("an old pod still running is stopped and waited for",
         job("j").queued().restarts(1).obj(), pods=[make_pod("j", 0, 0).on("n1").running().obj()],
         want_delete=[Delete("j-0-a0", 5)]),
    Case("an old pod terminating within its grace period is waited for",
         job("j").queued().restarts(1).obj(), pods=[make_pod("j", 0, 0).on("n1").deleting(NOW + 5).obj()]),
    Case("an old pod stuck terminating past grace plus margin is gone: forced, not waited for",
         job("j").queued().restarts(1).obj(),
         pods=[make_pod("j", 0, 0).on("n1").deleting(NOW - GONE_MARGIN_SECONDS - 1).obj()],
         want_delete=[Delete("j-0-a0", 0, force=True)], want_pending=True),
    Case("an old pod on a NotReady node is not waited for (dead kubelet)",
         job("j").queued().restarts(1).obj(), pods=[make_pod("j", 0, 0).on("n1").running().obj()],
         nodes=[make_node("n1").not_ready().obj()], want_delete=[Delete("j-0-a0", 5)], want_pending=True),
    Case("and is force-deleted once its grace period is over",
         job("j").queued().restarts(1).obj(), pods=[make_pod("j", 0, 0).on("n1").deleting(NOW - 1).obj()],
         nodes=[make_node("n1").not_ready().obj()], want_delete=[Delete("j-0-a0", 0, force=True)],
         want_pending=True),
    Case("an old pod whose node is gone is force-deleted at once",
         job("j").queued().restarts(1).obj(), pods=[make_pod("j", 0, 0).on("n9").running().obj()],
         want_delete=[Delete("j-0-a0", 0, force=True)], want_pending=True),
    Case("an admitted gang creates its members and binds them",
         job("j").replicas(2).admitted(*RUN2, at=NOW).obj(), want_create=(0, 1), want_bind=True),
    Case("members that exist are not created again",
         job("j").replicas(2).admitted(*RUN2, at=NOW).obj(), pods=[make_pod("j", 0).obj()], want_create=(1,),
         want_bind=True),
    Case("all members ready: Running",
         job("j").replicas(2).admitted(*RUN2, at=NOW).status_field("failedAdmissions", 2).obj(),
         pods=[make_pod("j", 0).on("n1").running().obj(), make_pod("j", 1).on("n2").running().obj()],
         want_phase="Running", want_reason="Running", want_bind=True,
         check=lambda p: p.status.failed_admissions == 0 and p.status.start_time is not None),
    Case("a failed member restarts the whole gang, avoiding its node, after a backoff",
         job("j").replicas(2).running(*RUN2).restart_policy(backoffSeconds=30).obj(),
         pods=[make_pod("j", 0).on("n1").failed(1).obj(), make_pod("j", 1).on("n2").running().obj()],
         want_phase="Restarting", want_reason="MemberFailed",
         want_delete=[Delete("j-0-a0", 5), Delete("j-1-a0", 5)],
         check=lambda p: p.status.restarts == 1 and p.status.excluded_nodes == ["n1"]
         and p.status.retry_after.timestamp() == NOW + 30 and p.restart is not None and not p.status.placement),
    Case("a no-retry exit code fails the job",
         job("j").running(RUN2[0]).restart_policy(noRetryExitCodes=[2]).obj(),
         pods=[make_pod("j", 0).on("n1").failed(2).obj()], want_phase="Failed", want_reason="NoRetryExitCode"),
    Case("the restart limit fails the job",
         job("j").running(RUN2[0]).restart_policy(maxRestarts=1).restarts(1).obj(),
         pods=[make_pod("j", 0, 1).on("n1").failed(1).obj()], want_phase="Failed",
         want_reason="RestartLimitExceeded"),
    Case("preemptions do not count against the restart limit",
         job("j").running(RUN2[0]).restart_policy(maxRestarts=1).restarts(1, preemptions=1).obj(),
         pods=[make_pod("j", 0, 1).on("n1").failed(1).obj()], want_phase="Restarting",
         want_reason="MemberFailed", want_delete=[Delete("j-0-a1", 5)]),
    Case("a member's node going NotReady restarts the gang elsewhere",
         job("j").replicas(2).running(*RUN2).obj(),
         pods=[make_pod("j", 0).on("n1").running().obj(), make_pod("j", 1).on("n2").running().obj()],
         nodes=[make_node("n1").not_ready().obj(), ready("n2")], want_phase="Restarting",
         want_reason="MemberFailed", want_delete=[Delete("j-0-a0", 5), Delete("j-1-a0", 5)],
         check=lambda p: p.status.excluded_nodes == ["n1"]),
    Case("a member's node tainted unhealthy restarts the gang",
         job("j").running(RUN2[0]).obj(), pods=[make_pod("j", 0).on("n1").running().obj()],
         nodes=[make_node("n1").unhealthy().obj()], want_phase="Restarting", want_reason="MemberFailed",
         want_delete=[Delete("j-0-a0", 5)]),
    Case("a member's node vanishing restarts the gang; its pod is forced",
         job("j").running(RUN2[0]).obj(), pods=[make_pod("j", 0).on("n1").running().obj()], nodes=[],
         want_phase="Restarting", want_reason="MemberFailed", want_delete=[Delete("j-0-a0", 0, force=True)]),
    Case("a deleted member of a running gang restarts it",
         job("j").replicas(2).running(*RUN2).obj(), pods=[make_pod("j", 0).on("n1").running().obj()],
         want_phase="Restarting", want_reason="MemberFailed", want_delete=[Delete("j-0-a0", 5)]),
    Case("all members succeeded: Succeeded",
         job("j").running(RUN2[0]).obj(), pods=[make_pod("j", 0).on("n1").succeeded().obj()],
         want_phase="Succeeded", want_reason="Completed"),
    Case("a gang not running after its schedule timeout is released and backs off",
         job("j").replicas(2).admitted(*RUN2, at=NOW - 700).gang(scheduleTimeoutSeconds=600)
         .restart_policy(backoffSeconds=20).obj(),
         pods=[make_pod("j", 0).on("n1").running().obj(), make_pod("j", 1).on("n2").obj()],
         want_phase="Queued", want_reason="GangTimeout",
         want_delete=[Delete("j-0-a0", 0), Delete("j-1-a0", 0)],
         check=lambda p: p.status.failed_admissions == 1 and p.status.retry_after.timestamp() == NOW + 20
         and not p.status.placement),
    Case("refused pods keep the reservation for a while",
         job("j").admitted(RUN2[0], at=NOW).status_condition(
             condition("PodsReady", "False", "PodCreateRefused", NOW - 5, "serviceaccount nope not found")).obj(),
         want_create=(0,), want_bind=True),
    Case("then release it and back off",
         job("j").admitted(RUN2[0], at=NOW).status_condition(condition(
             "PodsReady", "False", "PodCreateRefused", NOW - REFUSED_RELEASE_SECONDS, "serviceaccount nope")).obj(),
         want_phase="Queued", want_reason="PodCreateRefused",
         check=lambda p: p.status.failed_admissions == 1 and p.status.retry_after is not None),
    Case("a job being deleted stops its pods and keeps the finalizer while they may run",
         job("j").running(RUN2[0]).deleting().obj(), pods=[make_pod("j", 0).on("n1").running().obj()],
         want_delete=[Delete("j-0-a0", 5)]),
    Case("pods on a dead kubelet do not hold a deleted job once their grace period is over",
         job("j").running(RUN2[0]).deleting().obj(), pods=[make_pod("j", 0).on("n1").deleting(NOW - 1).obj()],
         nodes=[make_node("n1").not_ready().obj()], want_delete=[Delete("j-0-a0", 0, force=True)],
         want_finalizer="remove", check=lambda p: p.release_objects),
    Case("a deleted job with no pods left drops its finalizer and objects",
         job("j").running(RUN2[0]).deleting().obj(), want_finalizer="remove", check=lambda p: p.release_objects),
    Case("suspend releases everything",
         job("j").running(RUN2[0]).suspend().obj(), pods=[make_pod("j", 0).on("n1").running().obj()],
         want_phase="Suspended", want_reason="Suspended", want_delete=[Delete("j-0-a0", 5)],
         check=lambda p: not p.status.placement),
    Case("an invalid spec fails the job with the field named",
         job("j").queued().spec_field("replicas", "lots").obj(), want_phase="Failed", want_reason="InvalidSpec",
         check=lambda p: "spec.replicas" in p.events[0].message),
    Case("unknown status fields cost nothing else: the placement (the ledger) stays",
         job("j").replicas(2).admitted(*RUN2, at=NOW).status_field("fromANewerOperator", {"x": 1})
         .status_field("restarts", "garbage").obj(), want_create=(0, 1), want_bind=True),
]


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_lifecycle(case: Case) -> None:
    plan = plan_for(case.job, case.pods, case.nodes, case.now)
    if case.want_phase is None:
        assert plan.status is None or plan.status.phase == (case.job.get("status") or {}).get("phase")
    else:
        assert plan.status is not None and plan.status.phase == case.want_phase
    if case.want_reason is not None:
        assert plan.events and plan.events[0].reason == case.want_reason, plan.events
    assert sorted(plan.delete, key=lambda d: d.name) == case.want_delete
    assert plan.create == case.want_create
    assert plan.bind == case.want_bind
    assert plan.pending == case.want_pending
    assert plan.finalizer == case.want_finalizer
    if case.check is not None:
        assert case.check(plan), plan


@dataclass
class ReportCase:
    name: str
    report: dict[str, Any]
    want_taken: bool


GOOD = {"step": 200, "path": "/ckpt/step-200", "time": NOW - 10}
REPORTS = [
    ReportCase("a newer checkpoint inside the directory is taken", GOOD, True),
    ReportCase("a time in the future is ignored", {**GOOD, "time": NOW + 3600}, False),
    ReportCase("a step going backwards is ignored", {**GOOD, "step": 50}, False),
    ReportCase("a time before the last accepted report is ignored", {**GOOD, "time": 1500}, False),
    ReportCase("a path outside the checkpoint directory is ignored", {**GOOD, "path": "/etc/passwd"}, False),
    ReportCase("a path climbing out with .. is ignored", {**GOOD, "path": "/ckpt/../etc"}, False),
    # The attempt was admitted at 4000: an older time would make the gang look costlier to
    # preempt than it is, and move preemption onto other gangs.
    ReportCase("a time before this attempt was admitted is ignored", {**GOOD, "time": 3000}, False),
    ReportCase("a time just after this attempt was admitted is taken", {**GOOD, "time": 4001}, True),
]


@pytest.mark.parametrize("case", REPORTS, ids=[c.name for c in REPORTS])
def test_checkpoint_reports_are_checked(case: ReportCase) -> None:
    from wanka.api.trainingjob import LastCheckpoint
    from wanka.core.lifecycle import to_dt

    obj = (job("j").checkpoint("/ckpt").running(RUN2[0], since=4000).restarts(1)
           .last_checkpoint(100, 2000, "/ckpt/step-100").obj())
    report = LastCheckpoint(step=case.report["step"], path=case.report["path"], time=to_dt(case.report["time"]))
    plan = plan_for(obj, [make_pod("j", 0, attempt=1).on("n1").running().obj()], [ready("n1")], report=report)
    taken = plan.status is not None and plan.status.last_checkpoint == report
    assert taken == case.want_taken
    if not case.want_taken:
        assert [e.reason for e in plan.events] == ["BadCheckpointReport"]


def test_preempt_stops_an_active_gang_without_counting_a_failure_or_backing_off() -> None:
    parsed = parse_job(job("v").running(RUN2[0]).obj(), [make_pod("v", 0).on("n1").running().obj()])
    plan = lifecycle.preempt(parsed.facts(), [pod_facts(p) for p in parsed.pods],
                             {"n1": node_facts(ready("n1"))}, NOW, "preempted by ns/hi")
    assert plan.status is not None and plan.status.phase == "Restarting"
    assert plan.status.preemptions == 1 and plan.status.retry_after is None
    assert plan.delete == [Delete("v-0-a0", 5)]
    # A gang that is no longer active (its interruption already applied) is left alone.
    again = parse_job(job("v").queued().restarts(1, 1).obj(), [])
    assert lifecycle.preempt(again.facts(), [], {}, NOW, "again").status is None


def test_wait_records_a_nomination_and_refused_is_said_once() -> None:
    parsed = parse_job(job("p").queued().obj(), [])
    plan = lifecycle.wait(parsed.facts(), "Preempting", "preempting 1 gang(s): ns/v", NOW, nominated=["ns/v"])
    assert plan.status is not None and plan.status.nominated_victims == ["ns/v"]
    admitted = parse_job(job("a").admitted(RUN2[0], at=NOW).obj(), [])
    first = lifecycle.refused(admitted.facts(), "pods \"a-0-a0\" is forbidden", NOW)
    assert first.status is not None and [e.reason for e in first.events] == ["PodCreateRefused"]
    later = parse_job(job("a").admitted(RUN2[0], at=NOW).status_field("conditions", [
        c.wire() for c in first.status.conditions]).obj(), [])
    assert lifecycle.refused(later.facts(), "pods \"a-0-a0\" is forbidden", NOW + 1).events == []


@pytest.mark.parametrize(("victims", "want_again", "want_stopping"), [
    ({"ns/a": VictimFacts(active=False, holding=True)}, [], ["ns/a"]),
    ({"ns/a": VictimFacts(active=False, holding=False)}, [], []),
    ({"ns/a": None}, [], []),
    ({"ns/a": VictimFacts(active=True, holding=True), "ns/b": VictimFacts(False, False)}, ["ns/a"], ["ns/a"]),
], ids=["still stopping", "stopped", "deleted", "interruption lost to a crash is sent again"])
def test_nomination(victims: dict[str, VictimFacts | None], want_again: list[str], want_stopping: list[str]) -> None:
    assert lifecycle.nomination(victims) == (want_again, want_stopping)


def test_a_pod_with_unreadable_fields_is_parsed_and_treated_as_stale() -> None:
    pod = make_pod("j", 0).on("n1").running().obj()
    pod["metadata"]["name"] = "j-x"
    pod["metadata"]["labels"]["wanka.io/replica"] = "not-a-number"
    pod["status"]["containerStatuses"] = ["garbage", {"state": "also garbage"}]
    facts = pod_facts(pod)
    assert facts.replica is None and facts.exit_code is None
    plan = plan_for(job("j").running(RUN2[0]).obj(), [pod, make_pod("j", 0).on("n1").running().obj()], [ready("n1")])
    assert plan.delete == [Delete("j-x", 5)]


def test_what_a_job_version_derives_is_kept_across_passes_and_redone_for_a_new_status() -> None:
    memo = ParseMemo()
    raw = job("r").running(*RUN2).obj()
    raw["metadata"].update(uid="u-r", resourceVersion="7")
    first = memo.parse(raw, [])
    ledger = reservations(first)
    assert [(a.node, len(a.devices)) for a in ledger] == [("n1", 8), ("n2", 8)]
    memo.end_pass()
    again = memo.parse(raw, [])
    assert reservations(again) is ledger  # the same version: not read again
    # A status replaced during a pass (a decision) is derived from afresh...
    again.status = again.status.model_copy(update={"placement": again.status.placement[:1]})
    assert [a.node for a in reservations(again)] == ["n1"]
    # ...and so is a new version of the job.
    memo.end_pass()
    moved = job("r").running(("n3", [0, 1, 2, 3, 4, 5, 6, 7])).obj()
    moved["metadata"].update(uid="u-r", resourceVersion="8")
    assert [a.node for a in reservations(memo.parse(moved, []))] == ["n3"]
