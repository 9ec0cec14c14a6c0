"""A TrainingJob's life as a pure function: (job, its pods, its nodes, now) -> a plan.

Like `health.step()`: the cluster layer observes a job, its pods and the nodes they run on,
calls `step`, and applies the plan (status, pod deletes and creates, binding, finalizer).
Every rule of a gang's life is here and is tested as a table; nothing here talks to an API.

Rules worth knowing:
- A gang is placed again only when no pod of it can still run. A pod whose node is gone or
  NotReady, or that is still terminating past its grace period plus `GONE_MARGIN_SECONDS`,
  counts as gone: the next attempt goes elsewhere without waiting, and the pod is
  force-deleted once its node is gone or after that bound.
- A member failed, lost, or on a bad node stops the whole gang (with its grace period) and
  requeues it at the front of its queue, avoiding those nodes, after an exponential backoff.
- A placement released before the gang ran (gang timeout, pods the API refused, a failed
  bind) backs off too, by `failedAdmissions`, so a gang that cannot start does not spin.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Literal

from wanka.api.common import find_condition, set_condition
from wanka.api.trainingjob import CheckpointAdvice, LastCheckpoint, TrainingJobSpec, TrainingJobStatus
from wanka.core.preflight import PreflightReport, culprits

ACTIVE = ("Admitted", "Running")  # phases that hold a reservation
WAITING = ("Queued", "Restarting")  # phases that wait for a placement
# A pod still terminating this long after its grace period ended is taken as gone (its
# kubelet is dead or wedged): the gang does not wait for it any longer.
GONE_MARGIN_SECONDS = 30.0
# Pods the API refuses (a missing ServiceAccount, an admission policy) keep the gang's
# reservation this long, in case the cause is fixed at once; then it is released.
REFUSED_RELEASE_SECONDS = 30.0
MAX_EXCLUDED_NODES = 1024
# Clock skew forgiven between the workload's node and the operator when checking its reports.
REPORT_SKEW_SECONDS = 60.0

EventType = Literal["Normal", "Warning"]
WARNING_CAUSES = frozenset(
    {"NoQueue", "NoPool", "InvalidTopology", "SharingMismatch", "InvalidRequest", "InvalidTemplate", "NoQuota",
     "TemplateNotAllowed", "PriorityTooHigh"}
)


@dataclass(frozen=True, slots=True)
class PodFacts:
    """One pod of a job, as the cluster shows it."""

    name: str
    replica: int | None = None  # None: not a member we can read (label missing or malformed)
    attempt: int | None = None
    phase: str = "Pending"
    node: str = ""  # "" while unbound
    ready: bool = False
    deleting: bool = False
    delete_deadline: float | None = None  # deletionTimestamp: when its grace period ends
    exit_code: int | None = None
    reason: str = ""
    # The gang preflight (init container): it failed; the report it left, if any.
    preflight_failed: bool = False
    preflight: PreflightReport | None = field(default=None, hash=False)

    @property
    def terminal(self) -> bool:
        return self.phase in ("Succeeded", "Failed")


@dataclass(frozen=True, slots=True)
class NodeFacts:
    """What the lifecycle needs to know of a node a job's pods use."""

    name: str
    ready: bool = True
    unhealthy: bool = False  # tainted wanka.io/unhealthy by the health loop


@dataclass(frozen=True, slots=True)
class JobFacts:
    """One TrainingJob as the cluster shows it, already parsed."""

    key: str
    spec: TrainingJobSpec | None
    status: TrainingJobStatus
    generation: int | None = None
    invalid: str = ""  # why the spec does not parse, when `spec` is None
    deleting: bool = False
    finalizer: bool = True
    created: float = 0.0
    grace: int | None = None  # the template's terminationGracePeriodSeconds
    report: LastCheckpoint | None = None  # the workload's newest checkpoint report, if any
    advice: CheckpointAdvice | None = None  # the checkpoint interval advised now, if any


@dataclass(frozen=True, slots=True)
class Event:
    type: EventType
    reason: str
    message: str


@dataclass(frozen=True, slots=True)
class Delete:
    """Delete a pod: with the job's grace period, or force (grace 0) when it cannot stop."""

    name: str
    grace: int | None = None
    force: bool = False


@dataclass(frozen=True, slots=True)
class Restart:
    """A gang was interrupted: for metrics."""

    reason: str
    lost_seconds: float


@dataclass(slots=True)
class Plan:
    """What the cluster layer should do for one job, in this order."""

    status: TrainingJobStatus | None = None  # write it when it differs from the current one
    events: list[Event] = field(default_factory=list)
    finalizer: Literal["add", "remove"] | None = None
    delete: list[Delete] = field(default_factory=list)
    release_objects: bool = False  # delete the job's Service, ServiceAccount, RBAC, progress report
    create: tuple[int, ...] = ()  # replicas of the current attempt to create
    bind: bool = False  # once every member exists, bind the unbound ones
    pending: bool = False  # wants a placement: offer it to the scheduling cycle
    restart: Restart | None = None


def to_dt(epoch: float) -> datetime:
    return datetime.fromtimestamp(math.floor(epoch), UTC)


def ts(value: datetime | None) -> float | None:
    return value.timestamp() if value is not None else None


def backoff_seconds(count: int, base: int, cap: int) -> int:
    """Exponential backoff: base, 2 base, 4 base, ... capped."""
    if count <= 0 or base <= 0:
        return 0
    return int(min(cap, base * 2 ** min(count - 1, 30)))


def gone(pod: PodFacts, nodes: Mapping[str, NodeFacts], now: float) -> bool:
    """True when the pod can no longer run or hold anything the gang must wait for."""
    if pod.node and pod.node not in nodes:
        return True
    if pod.node and not nodes[pod.node].ready:
        return True
    return pod.deleting and pod.delete_deadline is not None and now > pod.delete_deadline + GONE_MARGIN_SECONDS


def _force(pod: PodFacts, nodes: Mapping[str, NodeFacts], now: float) -> bool:
    """Force-delete: its node is gone; or its node is NotReady and its grace period is over
    (no kubelet will confirm); or it has been terminating past grace plus the margin."""
    if pod.node and pod.node not in nodes:
        return True
    if not pod.deleting or pod.delete_deadline is None:
        return False
    if pod.node and not nodes[pod.node].ready:
        return now > pod.delete_deadline
    return now > pod.delete_deadline + GONE_MARGIN_SECONDS


def _deletes(
    pods: Sequence[PodFacts], nodes: Mapping[str, NodeFacts], now: float, grace: int | None
) -> list[Delete]:
    """Deletes for `pods`: a first delete with `grace`, a forced one for pods that cannot stop."""
    out = []
    for pod in pods:
        if _force(pod, nodes, now):
            out.append(Delete(pod.name, 0, force=True))
        elif not pod.deleting:
            out.append(Delete(pod.name, grace))
    return out


class _Step:
    """One job's plan under construction."""

    def __init__(self, job: JobFacts, pods: Sequence[PodFacts], nodes: Mapping[str, NodeFacts], now: float):
        self.job = job
        self.pods = pods
        self.nodes = nodes
        self.now = now
        self.st = job.status.model_copy(deep=True)
        self.plan = Plan()

    # --- building the plan -----------------------------------------------------------------
    def transition(
        self, phase: str, cond: str, cstatus: Literal["True", "False"], reason: str, message: str,
        event: EventType | None = "Normal",
    ) -> None:
        was = self.st.phase
        self.st.phase = phase  # type: ignore[assignment]
        changed = set_condition(self.st.conditions, cond, cstatus, reason, message,
                                self.job.generation, to_dt(self.now))
        if event and (changed or was != phase):
            self.plan.events.append(Event(event, reason, message))

    def delete(self, pods: Sequence[PodFacts], grace: int | None) -> None:
        self.plan.delete.extend(_deletes(pods, self.nodes, self.now, grace))

    def done(self) -> Plan:
        if self.st != self.job.status:
            self.st.observed_generation = self.job.generation
            self.plan.status = self.st
        return self.plan

    @property
    def attempt(self) -> int:
        return self.st.restarts

    def attempt_pods(self) -> dict[int, PodFacts]:
        return {p.replica: p for p in self.pods if p.attempt == self.attempt and p.replica is not None}

    def stale_pods(self) -> list[PodFacts]:
        return [p for p in self.pods if p.attempt != self.attempt or p.replica is None]

    # --- the rules -------------------------------------------------------------------------
    def run(self) -> Plan:
        job = self.job
        if job.deleting:
            self.delete(self.pods, job.grace)
            if job.finalizer and not [p for p in self.pods if not _force(p, self.nodes, self.now)]:
                # Once, when nothing of the gang can run any more (owner references would
                # collect them too, but only once the job object is gone).
                self.plan.release_objects = True
                self.plan.finalizer = "remove"
            return self.plan
        if not job.finalizer:
            self.plan.finalizer = "add"
            return self.plan  # the watch brings the job back with its finalizer
        spec = job.spec
        if spec is None:
            self.delete([p for p in self.pods if not p.terminal], job.grace)
            self.st.placement, self.st.replicas_ready = [], 0
            self.transition("Failed", "Failed", "True", "InvalidSpec", job.invalid, "Warning")
            return self.done()
        phase = self.st.phase
        if phase is None:
            self.st.gpus = spec.replicas * spec.resources.gpu_milli / 1000
            self.transition("Queued", "Admitted", "False", "Queued", f"waiting in queue {spec.queue}")
            phase = self.st.phase  # and on: a new job may be placed in this very pass
        failed = find_condition(self.st.conditions, "Failed")
        if phase == "Failed" and failed is not None and failed.reason == "InvalidSpec" and failed.status == "True":
            # The spec was fixed: a job that never ran gets its chance.
            self.transition("Queued", "Failed", "False", "SpecFixed", "the spec is valid again: back in the queue")
            return self.done()
        self.mirror_report()
        self.advise()
        if phase in ("Succeeded", "Failed"):
            self.delete([p for p in self.pods if not p.terminal], job.grace)
            return self.done()
        if spec.suspend:
            self.delete(self.pods, job.grace)
            if phase != "Suspended":
                self.st.placement, self.st.replicas_ready, self.st.nominated_victims = [], 0, []
                self.transition("Suspended", "Admitted", "False", "Suspended",
                                "spec.suspend is true: everything released")
            return self.done()
        if phase == "Suspended":
            self.transition("Queued", "Admitted", "False", "Resumed", "spec.suspend is false: back in the queue")
            return self.done()
        if phase in ACTIVE:
            self.run_gang(spec)
            return self.done()
        # Queued or Restarting: no pod of an earlier try may still run, and the backoff is over.
        self.delete(self.pods, job.grace)
        current = {p.name for p in self.attempt_pods().values()}
        if [p for p in self.pods if p.name in current or not gone(p, self.nodes, self.now)]:
            return self.done()
        retry = ts(self.st.retry_after)
        self.plan.pending = retry is None or retry <= self.now
        return self.done()

    def mirror_report(self) -> None:
        """Take the workload's checkpoint report into status when it is believable."""
        report = self.job.report
        if report is None or report == self.st.last_checkpoint:
            return
        why = check_report(report, self.st, self.job.spec, self.now)
        if why:
            self.plan.events.append(Event("Warning", "BadCheckpointReport", f"ignoring checkpoint report: {why}"))
            return
        self.st.last_checkpoint = report

    def advise(self) -> None:
        """Take new checkpoint advice into status when it moved enough to matter (a tenth)."""
        new, old = self.job.advice, self.st.checkpoint_advice
        if new is None or self.st.phase in ("Succeeded", "Failed"):
            return
        if old is None or abs(new.interval_seconds - old.interval_seconds) > old.interval_seconds / 10:
            self.st.checkpoint_advice = new

    def run_gang(self, spec: TrainingJobSpec) -> None:
        st = self.st
        # An elastic gang (gang.minAvailable < replicas) may have started smaller: this attempt
        # is as big as its placement, until a restart places it again.
        size = len(st.placement) or spec.replicas
        self.delete(self.stale_pods(), self.job.grace)
        pods = self.attempt_pods()
        judging = False
        if spec.preflight and any(p.preflight_failed for p in pods.values()):
            # Every member reaches the same verdict, but each on its own clock: judge once all
            # have ended theirs (the program bounds its run), so a member still waiting for a
            # missing peer is not taken for one that never reported.
            ended = [r for r, p in pods.items()
                     if p.preflight_failed or p.preflight is not None or p.terminal or p.ready]
            if len(ended) >= size:
                self.preflight_failed(pods)
                return
            judging = True
        bad_nodes: list[str] = []
        reasons: list[str] = []
        for placed in st.placement:
            node = self.nodes.get(placed.node)
            if node is None:
                bad_nodes.append(placed.node)
                reasons.append(f"node {placed.node} is gone")
            elif node.unhealthy:
                bad_nodes.append(placed.node)
                reasons.append(f"node {placed.node} is tainted unhealthy")
            elif not node.ready:
                bad_nodes.append(placed.node)
                reasons.append(f"node {placed.node} is NotReady")
        for replica, pod in sorted(pods.items()):
            if pod.phase != "Failed" or (judging and pod.preflight_failed):
                continue
            code = pod.exit_code
            if code is not None and code in spec.restart_policy.no_retry_exit_codes:
                self.fail("NoRetryExitCode", f"replica {replica} exited with {code}, listed in noRetryExitCodes")
                return
            reasons.append(f"replica {replica} {pod.reason or 'Failed'} (exit {code}) on {pod.node or 'no node'}")
            if pod.node:
                bad_nodes.append(pod.node)
        if st.phase == "Running":
            for placed in st.placement:
                member = pods.get(placed.replica)
                if member is None or member.deleting:
                    reasons.append(f"replica {placed.replica} was deleted")
        if reasons:
            self.interrupt("MemberFailed", "; ".join(reasons[:5]), bad_nodes, count_restart=True)
            return
        if sum(1 for p in pods.values() if p.phase == "Succeeded") == size:
            st.completion_time = to_dt(self.now)
            st.placement, st.replicas_ready = [], 0
            self.transition("Succeeded", "Succeeded", "True", "Completed", f"all {size} replicas succeeded")
            return
        refused = find_condition(st.conditions, "PodsReady")
        if (st.phase == "Admitted" and refused is not None and refused.reason == "PodCreateRefused"
                and refused.status == "False"
                and self.now - refused.last_transition_time.timestamp() >= REFUSED_RELEASE_SECONDS):
            self.release(spec, "PodCreateRefused",
                         f"the API refused the gang's pods for {REFUSED_RELEASE_SECONDS:g}s "
                         f"({refused.message}): released and requeued")
            return
        missing = tuple(p.replica for p in st.placement if p.replica not in pods)
        self.plan.create = missing
        self.plan.bind = True
        ready = sum(1 for p in pods.values() if p.ready or p.phase == "Succeeded")
        st.replicas_ready = ready
        if ready == size and st.phase != "Running":
            st.start_time = st.start_time or to_dt(self.now)
            st.failed_admissions = 0
            now = to_dt(self.now)
            set_condition(st.conditions, "PodsReady", "True", "AllReplicasRunning",
                          f"{ready}/{size} replicas running", self.job.generation, now)
            set_condition(st.conditions, "Restarting", "False", "Running", "gang running", self.job.generation, now)
            self.transition("Running", "Admitted", "True", "Running",
                            f"all {size} replicas running on {len({p.node for p in st.placement})} nodes"
                            + (f" (elastic start: {size} of {spec.replicas})" if size < spec.replicas else ""))
            return
        admitted = ts(st.admitted_time)
        if st.phase == "Admitted" and admitted is not None and self.now - admitted > spec.gang.schedule_timeout_seconds:
            self.release(spec, "GangTimeout", f"only {ready}/{size} replicas running after "
                         f"{spec.gang.schedule_timeout_seconds}s: released and requeued")

    def preflight_failed(self, pods: Mapping[int, PodFacts]) -> None:
        """A member failed the gang preflight: exclude the nodes of the members to blame and
        place the gang again at once; with no one to blame it is an ordinary failure."""
        failed = [r for r, p in pods.items() if p.preflight_failed]
        blamed = culprits({r: p.preflight for r, p in pods.items()}, failed)
        nodes = {r: p.node for r, p in pods.items()}
        placed = {p.replica: p.node for p in self.st.placement}
        if not blamed:
            first = next((p.preflight for p in pods.values() if p.preflight is not None), None)
            why = f"{first.reason}: {first.message}" if first is not None else "no member left a report"
            self.interrupt("PreflightFailed", f"gang preflight failed with no member to blame ({why})",
                           [], count_restart=True)
            return
        bad = sorted({nodes.get(r) or placed.get(r, "") for r in blamed} - {""})
        message = "gang preflight failed: " + "; ".join(
            f"replica {r} on {nodes.get(r) or placed.get(r) or 'no node'}: {why}"
            for r, why in list(blamed.items())[:5])
        self.interrupt("PreflightFailed", message, bad, count_restart=False, preflight=True)

    def release(self, spec: TrainingJobSpec, reason: str, message: str) -> None:
        """Give the placement back before the gang ran; requeue after the admission backoff."""
        st = self.st
        self.delete(self.pods, 0)
        self.plan.create, self.plan.bind = (), False
        st.placement, st.replicas_ready, st.admitted_time = [], 0, None
        st.failed_admissions += 1
        policy = spec.restart_policy
        wait = backoff_seconds(st.failed_admissions, policy.backoff_seconds, policy.max_backoff_seconds)
        st.retry_after = to_dt(self.now + wait) if wait else None
        self.transition("Queued", "Admitted", "False", reason,
                        message + (f"; next try in {wait}s" if wait else ""), "Warning")

    def fail(self, reason: str, message: str) -> None:
        st = self.st
        self.delete([p for p in self.pods if not p.terminal], self.job.grace)
        st.placement, st.replicas_ready, st.nominated_victims = [], 0, []
        st.completion_time = to_dt(self.now)
        self.plan.create, self.plan.bind = (), False
        self.transition("Failed", "Failed", "True", reason, message, "Warning")

    def interrupt(self, reason: str, message: str, bad_nodes: Sequence[str], count_restart: bool,
                  preflight: bool = False) -> None:
        """Stop the whole gang, requeue it at the front, avoiding the nodes that failed it.

        `preflight`: a failed gang preflight that named its culprits: the gang did nothing
        wrong, its nodes did; it is placed again at once and the restart is not counted."""
        spec = self.job.spec
        assert spec is not None
        policy = spec.restart_policy
        st = self.st
        failures = st.restarts - st.preemptions - st.preflight_failures
        if count_restart and failures >= policy.max_restarts:
            self.fail("RestartLimitExceeded",
                      f"{message}; {failures} restarts after failures reached maxRestarts={policy.max_restarts}")
            return
        self.delete(self.pods, self.job.grace)
        self.plan.create, self.plan.bind = (), False
        pods_ready = find_condition(st.conditions, "PodsReady")
        attempt_start = (pods_ready.last_transition_time.timestamp()
                         if pods_ready and pods_ready.status == "True" else None)
        ckpt = ts(st.last_checkpoint.time) if st.last_checkpoint else None
        since = max(x for x in (attempt_start, ckpt, 0.0) if x is not None)
        lost = max(0.0, self.now - since) if attempt_start is not None else 0.0
        st.lost_seconds = round(st.lost_seconds + lost, 1)
        st.restarts += 1
        if preflight:
            st.preflight_failures += 1
        elif not count_restart:
            st.preemptions += 1
        st.excluded_nodes = sorted(set(st.excluded_nodes) | set(bad_nodes))[-MAX_EXCLUDED_NODES:]
        st.placement, st.replicas_ready, st.admitted_time = [], 0, None
        wait = backoff_seconds(st.restarts - st.preemptions - st.preflight_failures, policy.backoff_seconds,
                               policy.max_backoff_seconds)
        if not count_restart:
            wait = 0  # a preempted gang did nothing wrong: it waits only for room
        st.retry_after = to_dt(self.now + wait) if wait else None
        now = to_dt(self.now)
        set_condition(st.conditions, "PodsReady", "False", reason, message, self.job.generation, now)
        cond = "Preempted" if reason == "Preempted" else "Restarting"
        if cond == "Preempted":
            set_condition(st.conditions, "Restarting", "True", reason, message, self.job.generation, now)
        self.plan.restart = Restart(reason, lost)
        self.transition("Restarting", cond, "True", reason,
                        f"{message}; restart {st.restarts} from the last checkpoint"
                        + (f" in {wait}s" if wait else "")
                        + (f", avoiding {', '.join(sorted(set(bad_nodes)))}" if bad_nodes else ""),
                        "Warning")


def step(job: JobFacts, pods: Sequence[PodFacts], nodes: Mapping[str, NodeFacts], now: float) -> Plan:
    """The next things to do for `job`, given its pods and the nodes they (or it) use.

    `nodes` must hold every node the job's placement or pods name that still exists.
    """
    return _Step(job, pods, nodes, now).run()


def preempt(job: JobFacts, pods: Sequence[PodFacts], nodes: Mapping[str, NodeFacts], now: float,
            message: str) -> Plan:
    """Stop an active gang for a preemptor; it resumes from its checkpoint like any restart."""
    s = _Step(job, pods, nodes, now)
    if s.st.phase in ACTIVE and job.spec is not None:
        s.interrupt("Preempted", message, [], count_restart=False)
    return s.done()


def wait(job: JobFacts, cause: str, reason: str, now: float, nominated: Sequence[str] | None = None) -> Plan:
    """Keep a waiting job queued, saying why; `nominated`: the victims it now waits for."""
    s = _Step(job, (), {}, now)
    if s.st.phase not in WAITING:
        return s.done()  # it changed meanwhile (e.g. suspended); the next pass sees it
    if nominated is not None:
        s.st.nominated_victims = sorted(nominated)
    phase = "Restarting" if s.st.phase == "Restarting" else "Queued"
    s.transition(phase, "Admitted", "False", cause, reason, "Warning" if cause in WARNING_CAUSES else "Normal")
    return s.done()


def refused(job: JobFacts, message: str, now: float) -> Plan:
    """The API refused to create a member: say so; `step` releases the gang after a bound."""
    s = _Step(job, (), {}, now)
    if s.st.phase != "Admitted":
        return s.done()
    cond = find_condition(s.st.conditions, "PodsReady")
    if cond is None or cond.reason != "PodCreateRefused" or cond.message != message:
        set_condition(s.st.conditions, "PodsReady", "False", "PodCreateRefused", message,
                      job.generation, to_dt(now) if cond is None or cond.reason != "PodCreateRefused"
                      else cond.last_transition_time)
        s.plan.events.append(Event("Warning", "PodCreateRefused", message))
    return s.done()


def bind_failed(job: JobFacts, pods: Sequence[PodFacts], now: float, problem: str) -> Plan:
    """A bind failed: roll the whole gang back and requeue it after the admission backoff."""
    s = _Step(job, pods, {}, now)
    if s.st.phase in ACTIVE and job.spec is not None:
        s.release(job.spec, "BindFailed", f"{problem}; the whole gang was rolled back and requeued")
    return s.done()


def check_report(
    report: LastCheckpoint, status: TrainingJobStatus, spec: TrainingJobSpec | None, now: float
) -> str:
    """Why a checkpoint report is not believable ("" when it is).

    A report is the tenant's own write: it may not move time or steps backwards, claim a time in
    the future or before the current attempt was admitted, or point outside the job's
    checkpoint directory.
    """
    last = status.last_checkpoint
    when = report.time.timestamp()
    if when > now + REPORT_SKEW_SECONDS:
        return f"time {report.time.isoformat()} is in the future"
    if last is not None and report.step < last.step:
        return f"step {report.step} is behind the last accepted step {last.step}"
    if last is not None and when < last.time.timestamp():
        return f"time {report.time.isoformat()} is before the last accepted report"
    started = ts(status.start_time)
    if started is not None and when < started - REPORT_SKEW_SECONDS and last is None:
        return f"time {report.time.isoformat()} is before the job first ran"
    # An old time makes a gang look costlier to preempt than it is: within an attempt, a
    # checkpoint can be no older than the attempt's admission.
    admitted = ts(status.admitted_time)
    if admitted is not None and when < admitted - REPORT_SKEW_SECONDS:
        return f"time {report.time.isoformat()} is before this attempt was admitted ({to_dt(admitted).isoformat()})"
    root = spec.checkpoint.path.rstrip("/") if spec is not None else ""
    inside = report.path == root or report.path.startswith(root + "/")
    if ".." in report.path.split("/") or (root and report.path and not inside):
        return f"path {report.path} is outside the checkpoint directory {root}"
    return ""


@dataclass(frozen=True, slots=True)
class VictimFacts:
    """A nominated victim as the preemptor sees it."""

    active: bool  # still holds a reservation (its interruption was not applied yet)
    holding: bool  # some pod of it can still run


def nomination(victims: Mapping[str, VictimFacts | None]) -> tuple[list[str], list[str]]:
    """(victims to interrupt again, victims still stopping) for a preemptor's nominations.

    A victim that no longer exists (None) is done. A preemptor with nothing left in either list
    may be placed; until then it picks no other victims.
    """
    again = sorted(k for k, v in victims.items() if v is not None and v.active)
    stopping = sorted(k for k, v in victims.items() if v is not None and (v.active or v.holding))
    return again, stopping
