"""The TrainingJob loop: observes jobs, pods and nodes, asks the core what to do, applies it.

The rules of a gang's life are the core's (`core.lifecycle.step`); admission is the core's
scheduling cycle. This module only observes and applies: it reads the cache, turns objects
into plain facts, and carries out each plan with idempotent, preconditioned writes.

Everything durable lives in the API: the reservation ledger is each admitted job's
`status.placement` (written before any pod exists), so a restarted operator rebuilds it from
the cluster. A pass may stop at any line; the next pass sees what was written and carries on.
What this operator wrote is assumed in the cache until the watch shows it, so a lagging watch
never makes a pass decide on a status older than its own last write.

One job's trouble is its own: any error while handling it becomes a `Reconciled=False`
condition and an Event on that job and a `wanka_reconcile_errors_total` increment; the pass
goes on with every other job, pool and queue.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime
from functools import partial
from typing import Any, TypeVar

from kubernetes.client.exceptions import ApiException
from pydantic import ValidationError

from wanka import failpoints
from wanka.api.common import Condition, lenient, set_condition
from wanka.api.gpupool import GPUPoolSpec
from wanka.api.tenantqueue import TenantQueueSpec
from wanka.api.trainingjob import (
    CheckpointAdvice,
    LastCheckpoint,
    TrainingJobSpec,
    TrainingJobStatus,
)
from wanka.cluster import consumers
from wanka.cluster.cache import FleetCache
from wanka.cluster.cache import version as version_of
from wanka.cluster.fence import NotLeader
from wanka.cluster.jobio import FINALIZER, Conflict, JobIO, bind_assumed, delete_assumed
from wanka.cluster.kube import api_message, gang_writes, side_by_side
from wanka.cluster.ledger import ledger_allocations, placement_of
from wanka.cluster.manifests import (
    ATTEMPT_LABEL,
    PREFLIGHT_CONTAINER,
    checkpoint_objects,
    checkpoint_role_name,
    pod_manifest,
    preflight_env,
    progress_name,
    reports,
    service_account_name,
    service_manifest,
)
from wanka.cluster.mig import INSTANCE_ANNOTATION as MIG_INSTANCE_ANNOTATION
from wanka.cluster.mig import resource_for as mig_resource
from wanka.cluster.mig import send_repartition
from wanka.cluster.pools import parse_spec
from wanka.cluster.template import template_constraints
from wanka.cluster.translate import (
    DEVICES_ANNOTATION,
    JOB_LABEL,
    REPLICA_LABEL,
    UNHEALTHY_TAINT,
    PassMemo,
    build_pool_snapshot,
    has_taint,
    node_ready,
    pod_requests,
    pool_membership,
    ts,
)
from wanka.cluster.units import UnitWriter, nominated
from wanka.cluster.writer import Recorder
from wanka.core import lifecycle, podpolicy
from wanka.core.advice import advise, interruption_rate
from wanka.core.lifecycle import ACTIVE, JobFacts, NodeFacts, PodFacts, VictimFacts
from wanka.core.mig import plan_repartitions
from wanka.core.preflight import parse_report
from wanka.core.queueing import (
    Admit,
    Decision,
    PoolQuota,
    Preempt,
    QueueSpec,
    SchedulerConfig,
    ScheduleResult,
    Wait,
    schedule,
)
from wanka.core.requests import GangRequest, InvalidRequest
from wanka.core.sharing import FragmentationAwareShares, workload_of
from wanka.core.snapshot import WHOLE, Allocation, Snapshot
from wanka.metrics import (
    BINDS,
    GANG_RESTARTS,
    GANG_WAIT_SECONDS,
    LOST_WORK_SECONDS,
    RECONCILE_ERRORS,
    SCHEDULE_SECONDS,
)

T = TypeVar("T")
log = logging.getLogger(__name__)

# Status codes with which the API refuses a pod for good (until someone changes something):
# bad request, forbidden (admission, a missing ServiceAccount), not found (namespace),
# invalid. Anything else (conflicts aside) is transient and retried on the next pass.
REFUSALS = frozenset({400, 403, 404, 422})
# A settled job (see JobReconciler._settled) is stepped again at least this often even when
# nothing it reads has changed: a safety net, not the mechanism.
QUIET_SECONDS = 60.0
# A pool's waiting gangs are offered to a new cycle when anything changed, and at least this often.
CYCLE_SECONDS = 10.0
# The stores the job loop reads.
INPUTS = ("trainingjobs", "pods", "nodes", "gpupools", "tenantqueues", "trainingjobprogresses", "namespaces",
          "jobs")


to_dt = lifecycle.to_dt


def _int(value: Any) -> int | None:
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def pod_facts(pod: Mapping[str, Any]) -> PodFacts:
    """A pod as the lifecycle reads it; any malformed part reads as absent."""
    meta = _dict(pod.get("metadata"))
    lab = _dict(meta.get("labels"))
    st = _dict(pod.get("status"))
    code = None
    for cs in st.get("containerStatuses") or []:
        term = _dict(_dict(_dict(cs).get("state")).get("terminated"))
        if term.get("exitCode"):
            code = _int(term["exitCode"])
            break
    preflight_failed, report = False, None
    for cs in st.get("initContainerStatuses") or []:
        cs = _dict(cs)
        term = _dict(_dict(cs.get("state")).get("terminated"))
        if cs.get("name") == PREFLIGHT_CONTAINER and term:
            report = parse_report(str(term.get("message") or ""))
            preflight_failed = term.get("exitCode") != 0
    conditions = [_dict(c) for c in st.get("conditions") or []]
    ready = st.get("phase") == "Running" and any(
        c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)
    return PodFacts(
        name=str(meta.get("name") or ""),
        replica=_int(lab.get(REPLICA_LABEL)),
        attempt=_int(lab.get(ATTEMPT_LABEL)),
        phase=str(st.get("phase") or "Pending"),
        node=str(_dict(pod.get("spec")).get("nodeName") or ""),
        ready=ready,
        deleting=bool(meta.get("deletionTimestamp")),
        delete_deadline=ts(meta.get("deletionTimestamp")),
        exit_code=code,
        reason=str(st.get("reason") or ""),
        preflight_failed=preflight_failed,
        preflight=report,
    )


def node_facts(node: Mapping[str, Any]) -> NodeFacts:
    return NodeFacts(name=str(_dict(node.get("metadata")).get("name") or ""), ready=node_ready(node),
                     unhealthy=has_taint(node, UNHEALTHY_TAINT))


def read_report(progress: Mapping[str, Any] | None) -> LastCheckpoint | None:
    """The workload's checkpoint report from its TrainingJobProgress; None when absent or unreadable."""
    data = _dict((progress or {}).get("spec"))
    if data.get("step") is None:
        return None
    try:
        return LastCheckpoint(step=int(data["step"]), path=str(data.get("path", "")),
                              time=datetime.fromisoformat(str(data["time"]).replace("Z", "+00:00")),
                              save_seconds=data.get("saveSeconds"))
    except (ValueError, KeyError, TypeError, ValidationError):
        return None


@dataclass
class Job:
    """One TrainingJob as this pass sees it. `raw` is the cache's object: never mutated."""

    raw: dict[str, Any]
    spec: TrainingJobSpec | None
    status: TrainingJobStatus
    invalid: str = ""
    pods: list[dict[str, Any]] = field(default_factory=list)
    # While `status` is a plan not yet written (a new job's Queued status, held so that the
    # scheduling cycle of the same pass writes it once with its decision): what the API holds,
    # and the plan's Events, recorded with the write.
    stored: TrainingJobStatus | None = None
    deferred: list[lifecycle.Event] = field(default_factory=list)
    # What is derived from this version of the job (its ledger entries, its request as it
    # runs), shared by every pass that reads the same version: see `derived`.
    memo: dict[Any, tuple[Any, Any, Any]] = field(default_factory=dict)

    def derived(self, name: Any, make: Callable[[], T]) -> T:
        """`make()` computed once per version of the job, not on every pass. Keyed on the
        very spec and status objects it was computed from: a status replaced in a pass (a
        decision) computes it again."""
        hit = self.memo.get(name)
        if hit is None or hit[0] is not self.status or hit[1] is not self.spec:
            hit = (self.status, self.spec, make())
            self.memo[name] = hit
        return hit[2]

    @property
    def ns(self) -> str:
        return str(self.raw["metadata"]["namespace"])

    @property
    def name(self) -> str:
        return str(self.raw["metadata"]["name"])

    @property
    def key(self) -> str:
        return f"{self.ns}/{self.name}"

    @property
    def version(self) -> str | None:
        value = self.raw["metadata"].get("resourceVersion")
        return str(value) if value is not None else None

    @property
    def generation(self) -> int | None:
        return _int(self.raw["metadata"].get("generation"))

    @property
    def attempt(self) -> int:
        return self.status.restarts

    @property
    def grace(self) -> int | None:
        if self.spec is None:
            return None
        value = _dict(self.spec.template.wire().get("spec")).get("terminationGracePeriodSeconds")
        return value if isinstance(value, int) and value >= 0 else None

    def facts(self, report: LastCheckpoint | None = None,
              reliability: Mapping[str, tuple[int, float]] | None = None) -> JobFacts:
        """`reliability`: per pool, (node faults, node-seconds watched), for checkpoint advice."""
        meta = self.raw["metadata"]
        return JobFacts(
            key=self.key, spec=self.spec, status=self.status, generation=self.generation,
            invalid=self.invalid, deleting=bool(meta.get("deletionTimestamp")),
            finalizer=FINALIZER in (meta.get("finalizers") or []),
            created=ts(meta.get("creationTimestamp")) or 0.0, grace=self.grace, report=report,
            advice=self.advice(report, reliability) if reliability is not None else None,
        )

    def advice(self, report: LastCheckpoint | None,
               reliability: Mapping[str, tuple[int, float]]) -> CheckpointAdvice | None:
        """Young/Daly advice from the newest measured save time and the pool's record."""
        if self.spec is None:
            return None
        last = self.status.last_checkpoint
        save = next((r.save_seconds for r in (report, last) if r is not None and r.save_seconds is not None),
                    None)
        if save is None:
            return None
        faults, node_seconds = reliability.get(self.spec.pool, (0, 0.0))
        rate = interruption_rate(faults, node_seconds)
        nodes = len({p.node for p in self.status.placement}) or self.spec.replicas
        got = advise(save, nodes, rate)
        return CheckpointAdvice(
            interval_seconds=max(1, int(got.interval_seconds)), save_seconds=round(save, 1),
            job_mtbf_seconds=round(min(got.job_mtbf_seconds, 1e12), 0),
            interruptions_per_node_day=round(rate * 86400, 6))

    def attempt_pods(self) -> list[dict[str, Any]]:
        return [p for p in self.pods if p["metadata"].get("labels", {}).get(ATTEMPT_LABEL) == str(self.attempt)]


def parse_job(raw: dict[str, Any], pods: list[dict[str, Any]]) -> Job:
    """Never raises: an unreadable spec makes an invalid job; unknown status fields are dropped
    (never the placement beside them: that is the ledger)."""
    spec, status, invalid = _parse(raw)
    return Job(raw, spec, status, invalid, pods)


def _parse(raw: Mapping[str, Any]) -> tuple[TrainingJobSpec | None, TrainingJobStatus, str]:
    status = lenient(TrainingJobStatus, raw.get("status"))
    spec, invalid = None, ""
    try:
        spec = TrainingJobSpec.model_validate(raw.get("spec") or {})
    except ValidationError as exc:
        invalid = "; ".join(f"spec.{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors()[:3])
    return spec, status, invalid


class ParseMemo:
    """Parsed jobs by (uid, resourceVersion): a version is immutable, so it is parsed once, not
    on every pass. Parsed models are shared between passes and never mutated (every change is
    made on a copy, as the lifecycle does). Holds only the jobs of the latest pass."""

    def __init__(self) -> None:
        self._memo: dict[tuple[str, str], tuple[TrainingJobSpec | None, TrainingJobStatus, str, dict[Any, Any]]] = {}
        self._next: dict[tuple[str, str], tuple[TrainingJobSpec | None, TrainingJobStatus, str, dict[Any, Any]]] = {}

    def parse(self, raw: dict[str, Any], pods: list[dict[str, Any]]) -> Job:
        meta = raw.get("metadata") or {}
        key = (str(meta.get("uid") or meta.get("name")), str(meta.get("resourceVersion") or ""))
        parsed = self._memo.get(key) or self._next.get(key)
        if parsed is None or not key[1]:
            parsed = (*_parse(raw), {})
        self._next[key] = parsed
        spec, status, invalid, memo = parsed
        return Job(raw, spec, status, invalid, pods, memo=memo)

    def end_pass(self) -> None:
        self._memo, self._next = self._next, {}


def job_request(job: Job, pool: GPUPoolSpec, resuming: bool, placed: bool = False) -> GangRequest:
    """The core's view of a job's gang; `placed`: as it runs now (its placement's size)."""
    assert job.spec is not None
    spec = job.spec
    replicas, min_available = spec.replicas, spec.gang.min_available
    if placed and job.status.placement:
        replicas, min_available = len(job.status.placement), None
    res = spec.resources
    cpu = mem = 0
    template = spec.template.wire()
    if spec.template.spec.containers:
        cpu, mem, _ = pod_requests({"spec": template["spec"]}, pool.accelerator.resource_name)
    gpus = res.gpus or 0
    milli = 0
    if res.gpu_fraction is not None:
        gpus, milli = 0, res.gpu_milli
    created = ts(job.raw["metadata"].get("creationTimestamp")) or 0.0
    checkpoint = job.status.last_checkpoint
    nodes = template_constraints(template)
    if nodes.problems and not placed:
        more = f" (and {len(nodes.problems) - 3} more)" if len(nodes.problems) > 3 else ""
        raise InvalidRequest(f"{job.key}: template: {'; '.join(nodes.problems[:3])}{more}")
    return GangRequest(
        owner=job.key,
        queue=spec.queue,
        pool=spec.pool,
        priority=spec.priority,
        replicas=replicas,
        min_available=min_available,
        gpus=gpus,
        gpu_milli=milli,
        gpu_memory_mib=int((res.gpu_memory_gi_b or 0) * 1024),
        mig_profile=res.mig_profile or "",
        cpu_milli=cpu,
        memory_mib=mem,
        excluded_nodes=frozenset(job.status.excluded_nodes),
        tolerations=nodes.tolerations,
        node_selector=nodes.node_selector,
        affinity=nodes.affinity,
        topology_level=spec.topology.level if spec.topology else "",
        topology_mode=spec.topology.mode if spec.topology else "Preferred",
        # An interrupted gang goes back to the front of its queue.
        created=0.0 if resuming else created,
        started=ts(job.status.start_time),
        last_checkpoint=checkpoint.time.timestamp() if checkpoint else None,
    )


def _gpus_per_member(unit: consumers.Unit, pool: GPUPoolSpec) -> float:
    """The core's GPU-equivalents per member of a unit, as for a TrainingJob (wanka.units)."""
    shape = consumers.shape_of(unit.template, pool)
    return GangRequest(unit.key, gpus=shape.gpus, gpu_milli=shape.milli,
                       mig_profile=shape.mig_profile).milli_per_replica / WHOLE


def reservations(job: Job) -> list[Allocation]:
    """The ledger entries an admitted job's status holds."""
    if job.status.phase not in ACTIVE or job.spec is None:
        return []
    spec = job.spec
    return job.derived("ledger", lambda: ledger_allocations(job.key, spec, job.status.placement))


def core_queues(queues: Mapping[str, tuple[TenantQueueSpec, dict[str, Any]]]) -> list[QueueSpec]:
    """The core's view of the TenantQueues."""
    return [QueueSpec(
        name=name, weight=q.weight, within_queue=q.preemption.within_queue,
        reclaim_borrowed=q.preemption.reclaim_borrowed,
        quotas=tuple(PoolQuota(x.pool, x.gpus, x.borrowing_limit) for x in q.quotas),
    ) for name, (q, _) in queues.items()]


def describe_error(exc: BaseException) -> tuple[str, str]:
    """(reason, message) for an error while handling one object, for a person to read."""
    if isinstance(exc, ApiException):
        return "ApiError", f"the API answered {exc.status} {exc.reason}"
    text = str(exc) or type(exc).__name__
    return "ReconcileError", f"{type(exc).__name__}: {text}"[:1024]


@dataclass
class JobReconciler:
    """One pass over every TrainingJob and TenantQueue."""

    cache: FleetCache
    io: JobIO
    events: Recorder
    clock: Callable[[], float] = time.time
    status_writer: Any = None  # StatusWriter for TenantQueue status
    mig_namespace: str = "default"  # where the mig-parted ConfigMap lives
    # Per pool: (node faults, node-seconds watched), kept by the health loop; for advice.
    reliability: Mapping[str, tuple[int, float]] = field(default_factory=dict)
    memo: ParseMemo = field(default_factory=ParseMemo)
    # Jobs whose last step had nothing to do, by key: (what the step read, until when to trust
    # that). A job steps again as soon as anything it reads changes, and at least every
    # QUIET_SECONDS in any case.
    _quiet: dict[str, tuple[Any, float]] = field(default_factory=dict)
    # Per pool, after its last cycle: (store changes, the gangs offered, until when to trust it).
    _cycles: dict[str, tuple[tuple[int, ...], frozenset[str], float]] = field(default_factory=dict)
    # After a pass that left every job settled: (store changes, until when to trust it).
    _idle: tuple[tuple[int, ...], float] | None = None
    _units: UnitWriter | None = None
    # Per pool: the node and pod translations of its last snapshot (translate.PassMemo).
    _memos: dict[str, PassMemo] = field(default_factory=dict)
    # What units' unchanged objects give, from one pass to the next (translate.PassMemo).
    _unit_memo: PassMemo = field(default_factory=PassMemo)

    @property
    def units(self) -> UnitWriter:
        """Writes for plain Pods, pod groups and batch Jobs (cluster/units.py)."""
        if self._units is None:
            self._units = UnitWriter(self.cache, self.io, self.events, self.clock)
        return self._units

    # --- reading the cache ---------------------------------------------------------------
    def _jobs(self) -> list[Job]:
        pods_by_job: dict[tuple[str, str], list[dict[str, Any]]] = {}
        for pod in self.cache.store("pods").values():
            lab = pod["metadata"].get("labels") or {}
            if JOB_LABEL in lab:
                pods_by_job.setdefault((pod["metadata"]["namespace"], lab[JOB_LABEL]), []).append(pod)
        jobs = []
        for raw in self.cache.store("trainingjobs").values():
            meta = raw["metadata"]
            jobs.append(self.memo.parse(raw, pods_by_job.get((meta["namespace"], meta["name"]), [])))
        self.memo.end_pass()
        return sorted(jobs, key=lambda j: j.key)

    def _pools(self) -> dict[str, GPUPoolSpec]:
        out = {}
        for pool in self.cache.store("gpupools").values():
            try:
                out[pool["metadata"]["name"]] = parse_spec(pool)
            except ValidationError:
                continue
        return out

    def _queues(self) -> dict[str, tuple[TenantQueueSpec, dict[str, Any]]]:
        out = {}
        for q in self.cache.store("tenantqueues").values():
            try:
                out[q["metadata"]["name"]] = (TenantQueueSpec.model_validate(q.get("spec") or {}), q)
            except ValidationError:
                continue
        return out

    def _nodes_of(self, job: Job, nodes: Mapping[str, Mapping[str, Any]]) -> dict[str, NodeFacts]:
        names = {p.node for p in job.status.placement}
        names |= {str((p.get("spec") or {}).get("nodeName") or "") for p in job.pods}
        return {n: node_facts(nodes[n]) for n in names if n and n in nodes}

    # --- writing -------------------------------------------------------------------------
    def _write(self, job: Job, status: TrainingJobStatus) -> bool:
        """Patch status against the version we read; assume it until the watch shows it.
        Events held with an unwritten plan (`job.deferred`) are recorded once it is written."""
        status.observed_generation = job.generation
        wire = status.wire()
        stored = job.stored if job.stored is not None else job.status
        if wire != stored.wire():
            try:
                new_version = self.io.patch_status(job.ns, job.name, job.version, wire)
            except Conflict as exc:
                log.info("status of %s not written (%s); next pass re-reads it", job.key, exc)
                return False
            raw = {**job.raw, "metadata": {**job.raw["metadata"], "resourceVersion": new_version}, "status": wire}
            self.cache.store("trainingjobs").assume(raw)
            job.raw = raw
        job.status, job.stored = status, None
        deferred, job.deferred = job.deferred, []
        for event in deferred:
            self.events.record(job.raw, event.type, event.reason, event.message)
        return True

    def _apply(self, job: Job, plan: lifecycle.Plan, pools: Mapping[str, GPUPoolSpec] | None = None) -> None:
        """Carry out one plan: finalizer, deletes, status (then its events), objects, pods."""
        meta = job.raw["metadata"]
        finalizers = list(meta.get("finalizers") or [])
        if plan.finalizer == "add":
            version = self.io.set_finalizers(job.ns, job.name, job.version, [*finalizers, FINALIZER])
            if version:
                # Assumed, so the job goes on in this very pass instead of waiting for the watch.
                job.raw = {**job.raw, "metadata": {**meta, "finalizers": [*finalizers, FINALIZER],
                                                   "resourceVersion": version}}
                self.cache.store("trainingjobs").assume(job.raw)
        by_name = {p["metadata"]["name"]: p for p in job.pods}
        # Side by side, as the members were created: a 512-member gang's deletes one after
        # another took 15 s on the local control plane.
        gang_writes(lambda delete: self._delete_pod(job, by_name.get(delete.name), delete), plan.delete)
        if plan.release_objects:
            owned = self._owned(job)
            if owned:
                self.io.delete_owned(job.ns, job.name, owned)
        if plan.finalizer == "remove":
            self.io.set_finalizers(job.ns, job.name, job.version, [f for f in finalizers if f != FINALIZER])
            return
        if plan.status is not None and not self._write(job, plan.status):
            return  # the job changed under us: the next pass decides again
        for event in plan.events:
            self.events.record(job.raw, event.type, event.reason, event.message)
        if plan.restart is not None and job.spec is not None:
            GANG_RESTARTS.labels(job.spec.pool, plan.restart.reason).inc()
            LOST_WORK_SECONDS.labels(job.spec.pool).inc(plan.restart.lost_seconds)
        if (plan.create or plan.bind) and pools is not None and job.spec is not None:
            pool = pools.get(job.spec.pool)
            if pool is not None:
                self._materialize(job, pool, plan.create)

    @staticmethod
    def _owned(job: Job) -> dict[str, str]:
        """What the job can own besides its pods, by kind: the headless Service of a gang of
        more than one, the progress report and its RBAC of a job that reports (`_materialize`
        makes no other). A sweep's one-GPU trial owns none: its deletion asks for nothing more.
        Owner references collect whatever this misses once the job is gone."""
        spec = job.spec
        owned = {"Service": job.name} if spec is None or spec.replicas > 1 else {}
        if spec is None or reports(spec):
            role = checkpoint_role_name(job.name)
            owned |= {"ServiceAccount": service_account_name(job.name),
                      "TrainingJobProgress": progress_name(job.name), "Role": role, "RoleBinding": role}
        return owned

    def _delete_pod(self, job: Job, pod: Mapping[str, Any] | None, delete: lifecycle.Delete) -> None:
        if pod is None:
            return
        if delete.force:
            self.io.delete_pod(job.ns, delete.name, 0)
            log.warning("force-deleted pod %s/%s of %s: it cannot stop (node gone, NotReady or stuck)",
                        job.ns, delete.name, job.key)
            return
        delete_assumed(self.io, self.cache.store("pods"), pod, delete.grace, self.clock())

    # --- the pass ------------------------------------------------------------------------
    def reconcile_all(self) -> None:
        now = self.clock()
        # Nothing the loop reads changed since a pass that left every job settled: nothing to do.
        if self._idle is not None and self._idle[0] == self.cache.changes(*INPUTS) and now < self._idle[1]:
            return
        self._idle = None
        # What this pass is about to read. Taken before reading, never after: a watch event that
        # lands while the pass runs must count as unseen, or a pass that left every job settled
        # would let the next ones skip that event (a new job) for up to QUIET_SECONDS.
        seen = self.cache.changes(*INPUTS)
        jobs = self._jobs()
        pools = self._pools()
        queues = self._queues()
        nodes = {n["metadata"]["name"]: n for n in self.cache.store("nodes").values()}
        reports = self.cache.store("trainingjobprogresses")
        quiet, self._quiet = self._quiet, {}
        work: list[tuple[Job, Any, lifecycle.Plan]] = []
        for job in jobs:
            try:
                progress = reports.get(job.ns, progress_name(job.name))
                job_nodes = self._nodes_of(job, nodes)
                reads = (job.version, tuple((p["metadata"]["name"], p["metadata"].get("resourceVersion"))
                                            for p in job.pods),
                         version_of(progress) if progress else None, tuple(sorted(job_nodes.items())))
                last = quiet.get(job.key)
                if last is not None and last[0] == reads and now < last[1]:
                    self._quiet[job.key] = last  # nothing it reads changed: nothing to do
                    continue
                plan = lifecycle.step(job.facts(read_report(progress), self.reliability),
                                      [pod_facts(p) for p in job.pods],
                                      job_nodes, now)
                work.append((job, reads, plan))
            except Exception as exc:  # one job's trouble must never stall the others
                self._isolate(job, exc)
        # Each job's plan is its own: carry them out side by side (bounded), each isolated.
        outcomes = side_by_side(lambda item: self._carry_out(item[0], item[2], pools, nodes, now), work)
        pending: dict[str, list[Job]] = {}
        for (job, reads, _), (settled, wants) in zip(work, outcomes, strict=True):
            if settled:
                self._quiet[job.key] = (reads, now + QUIET_SECONDS)
            if wants and job.spec is not None:
                pending.setdefault(job.spec.pool, []).append(job)
        by_key = {j.key: j for j in jobs}
        units = consumers.collect_units(self.cache.store("pods").values(), self.cache.store("jobs").values())
        offers = self._offer_units(units, pools, queues, by_key, nodes, now)
        unit_pending: dict[str, list[tuple[consumers.Unit, GangRequest]]] = {}
        for unit, req in offers:
            unit_pending.setdefault(req.pool, []).append((unit, req))
        cycles, self._cycles = self._cycles, {}
        try:
            for pool_name in sorted(set(pending) | set(unit_pending)):
                waiting = pending.get(pool_name, [])
                offered = frozenset([j.key for j in waiting] + [r.owner for _, r in unit_pending.get(pool_name, [])])
                cycle = cycles.get(pool_name)
                if (cycle is not None and cycle[0] == self.cache.changes(*INPUTS) and cycle[1] == offered
                        and now < cycle[2] and not any(j.stored is not None for j in waiting)):
                    # The same gangs waiting on the same pool as after the last cycle: it
                    # would decide the same (a cycle runs again at least every CYCLE_SECONDS).
                    self._cycles[pool_name] = cycle
                    continue
                try:
                    ready = self._nominations(waiting, by_key, nodes, now, units)
                    self._schedule_pool(pool_name, pools.get(pool_name), ready, jobs, queues, now,
                                        unit_pending.get(pool_name, []), units)
                except NotLeader:
                    raise  # this replica must stop writing altogether
                except Exception as exc:
                    RECONCILE_ERRORS.labels("gpupool").inc()
                    log.exception("admission in pool %s failed; the other pools go on", pool_name)
                    pool_obj = self.cache.store("gpupools").get("", pool_name)
                    if pool_obj is not None:
                        reason, message = describe_error(exc)
                        self.events.record({**pool_obj, "apiVersion": "wanka.io/v1alpha1", "kind": "GPUPool"},
                                           "Warning", reason, f"admission failed: {message}")
        finally:
            # A new job's Queued status that no decision wrote (its pool failed, or it was not
            # offered): written now, so it never waits unseen.
            held = [j for js in pending.values() for j in js if j.stored is not None]
            side_by_side(lambda j: self._write(j, j.status), held)
        self._queue_statuses(jobs, queues, pools, units)
        self._unit_memo.turn()
        # What this pass saw, to tell the next one whether anything happened since (this pass's
        # own writes included: the next pass looks once more, and then rests).
        for pool_name in set(pending) | set(unit_pending):
            if pool_name not in self._cycles:
                offered = frozenset([j.key for j in pending.get(pool_name, [])]
                                    + [r.owner for _, r in unit_pending.get(pool_name, [])])
                self._cycles[pool_name] = (seen, offered, now + CYCLE_SECONDS)
            else:
                self._cycles[pool_name] = (seen, *self._cycles[pool_name][1:])
        if not pending and not unit_pending and len(self._quiet) == len(jobs):
            self._idle = (seen, min((until for _, until in self._quiet.values()), default=now + QUIET_SECONDS))

    def _carry_out(self, job: Job, plan: lifecycle.Plan, pools: Mapping[str, GPUPoolSpec],
                   nodes: Mapping[str, Mapping[str, Any]], now: float) -> tuple[bool, bool]:
        """Apply one job's plan; returns (settled, wants a placement). Runs in a worker thread:
        it touches only this job (and the thread-safe cache, IO and recorder)."""
        try:
            if plan.finalizer == "add":
                self._apply(job, plan, pools)
                if FINALIZER not in (job.raw["metadata"].get("finalizers") or []):
                    return False, False
                # The finalizer is on: step again at once rather than a watch round trip later.
                plan = lifecycle.step(job.facts(), [pod_facts(p) for p in job.pods], self._nodes_of(job, nodes), now)
            if (plan.pending and plan.status is not None and not plan.delete and not plan.create
                    and plan.finalizer is None and not plan.release_objects and plan.restart is None):
                # Held: the scheduling cycle of this pass writes it, together with its decision.
                job.stored, job.status, job.deferred = job.status, plan.status, list(plan.events)
            else:
                self._apply(job, plan, pools)
                self._healed(job)
            return self._settled(job, plan), plan.pending
        except Conflict:
            return False, False
        except NotLeader:
            raise  # this replica must stop writing altogether
        except Exception as exc:  # one job's trouble must never stall the others
            self._isolate(job, exc)
            return False, False

    @staticmethod
    def _settled(job: Job, plan: lifecycle.Plan) -> bool:
        """The step had nothing to do, and only a change in what it read can give it something:
        a gang running (or ended) with every member bound and none terminating. (A terminating
        pod, a backoff, a gang timeout: those states change with time alone, so they step on.)"""
        if (plan.status is not None or plan.events or plan.finalizer or plan.delete or plan.release_objects
                or plan.create or plan.pending or plan.restart is not None):
            return False
        if job.status.phase not in ("Running", "Succeeded", "Failed", "Suspended"):
            return False
        if any(c.type == "Reconciled" and c.status != "True" for c in job.status.conditions):
            return False
        return all((p.get("spec") or {}).get("nodeName") and not p["metadata"].get("deletionTimestamp")
                   for p in job.pods)

    def _isolate(self, job: Job, exc: Exception) -> None:
        """Record one job's failure on the job itself; never let it escape the pass."""
        if isinstance(exc, Conflict):
            log.info("job %s changed under us (%s); the next pass decides again", job.key, exc)
            return
        RECONCILE_ERRORS.labels("trainingjob").inc()
        reason, message = describe_error(exc)
        log.warning("job %s: %s (%s); the other jobs go on", job.key, message, reason,
                    exc_info=not isinstance(exc, ApiException))
        try:
            st = job.status.model_copy(deep=True)
            if set_condition(st.conditions, "Reconciled", "False", reason, message, job.generation,
                             to_dt(self.clock())) and self._write(job, st):
                self.events.record(job.raw, "Warning", reason, message)
        except Exception:  # the API may be the trouble itself
            log.debug("could not record the failure on %s", job.key, exc_info=True)

    def _healed(self, job: Job) -> None:
        """A job whose last pass failed and this one did not: clear the Reconciled condition."""
        cond = next((c for c in job.status.conditions if c.type == "Reconciled"), None)
        if cond is None or cond.status == "True":
            return
        st = job.status.model_copy(deep=True)
        set_condition(st.conditions, "Reconciled", "True", "Reconciled", "handled without error",
                      job.generation, to_dt(self.clock()))
        self._write(job, st)

    def _victim(self, key: str, by_key: Mapping[str, Job], units: Mapping[str, consumers.Unit],
                nodes: Mapping[str, Mapping[str, Any]], now: float) -> VictimFacts | None:
        """A nominated victim as it stands now: None once it is gone altogether."""
        victim = by_key.get(key)
        if victim is not None:
            nodes_of = self._nodes_of(victim, nodes)
            holding = any(not p.terminal and not lifecycle.gone(p, nodes_of, now)
                          for p in map(pod_facts, victim.pods))
            return VictimFacts(active=victim.status.phase in ACTIVE, holding=holding)
        unit = units.get(key)
        if unit is None:
            return None
        return VictimFacts(active=unit.held > 0, holding=unit.holding)

    def _preempt_again(self, key: str, by: str, by_key: Mapping[str, Job], units: Mapping[str, consumers.Unit],
                       nodes: Mapping[str, Mapping[str, Any]], now: float) -> None:
        """Send an interruption a crash lost between the nomination and the victim."""
        message = f"preempted by {by} (nominated earlier)"
        victim = by_key.get(key)
        if victim is not None:
            self._apply(victim, lifecycle.preempt(
                victim.facts(), [pod_facts(p) for p in victim.pods], self._nodes_of(victim, nodes), now, message))
        elif key in units:
            self.units.preempt(units[key], message)

    def _nominations(
        self, waiting: list[Job], by_key: Mapping[str, Job], nodes: Mapping[str, Mapping[str, Any]], now: float,
        units: Mapping[str, consumers.Unit] | None = None,
    ) -> list[Job]:
        """Preemptors wait for the victims they nominated instead of picking new ones; an
        interruption lost to a crash between the nomination and the victim is sent again."""
        units = units or {}
        ready = []
        for job in waiting:
            if not job.status.nominated_victims:
                ready.append(job)
                continue
            victims = {key: self._victim(key, by_key, units, nodes, now) for key in job.status.nominated_victims}
            again, stopping = lifecycle.nomination(victims)
            for key in again:
                self._preempt_again(key, job.key, by_key, units, nodes, now)
            if stopping:
                self._apply(job, lifecycle.wait(job.facts(), "Preempting",
                                                f"waiting for {len(stopping)} preempted gang(s) to stop: "
                                                f"{', '.join(stopping[:5])}", now))
                continue
            self._apply(job, lifecycle.wait(job.facts(), "Queued", "preempted gangs stopped; placing", now,
                                            nominated=[]))
            ready.append(job)
        return ready

    # --- plain Pods, pod groups, batch Jobs ------------------------------------------------
    def _offer_units(
        self, units: Mapping[str, consumers.Unit], pools: Mapping[str, GPUPoolSpec],
        queues: Mapping[str, tuple[TenantQueueSpec, dict[str, Any]]], by_key: Mapping[str, Job],
        nodes: Mapping[str, Mapping[str, Any]], now: float,
    ) -> list[tuple[consumers.Unit, GangRequest]]:
        """Each unit's request for this pass's cycles, once what earlier passes began is
        finished; a unit that cannot be one says why on itself. Side by side, each isolated."""
        specs = {name: q for name, (q, _) in queues.items()}
        namespaces = self.cache.store("namespaces")

        def one(unit: consumers.Unit) -> tuple[consumers.Unit, GangRequest] | None:
            try:
                ns_labels = (namespaces.get("", unit.namespace) or {}).get("metadata", {}).get("labels") or {}
                why = consumers.problem(unit, pools, specs, ns_labels)
                if why is not None:
                    if unit.free_pods or (unit.batch is not None and unit.suspended):
                        self.units.wait(unit, *why)
                    return None
                pool = pools[unit.pool]
                if not self.units.settle(unit, pool):
                    return None
                victims = nominated(unit)
                if victims:
                    facts = {key: self._victim(key, by_key, units, nodes, now) for key in victims}
                    again, stopping = lifecycle.nomination(facts)
                    for key in again:
                        self._preempt_again(key, unit.key, by_key, units, nodes, now)
                    if stopping:
                        self.units.wait(unit, "Preempting", f"waiting for {len(stopping)} preempted gang(s) "
                                        f"to stop: {', '.join(stopping[:5])}")
                        return None
                    self.units.nominate(unit, [])
                owner = f"{unit.key}+" if unit.held else unit.key
                replicas = unit.size if unit.kind == "Job" else len(unit.free_pods)
                return unit, consumers.request(unit, pool, owner, replicas)
            except NotLeader:
                raise  # this replica must stop writing altogether
            except Exception as exc:  # one unit's trouble must never stall the others
                self._isolate_unit(unit, exc)
                return None

        # A unit whose members are all bound (or stopping) has nothing to do: not even a
        # thread's turn, at any scale.
        pending = [u for u in units.values() if u.batch is not None or u.free_pods or u.reserved_pods]
        return [o for o in side_by_side(one, pending) if o is not None]

    def _isolate_unit(self, unit: consumers.Unit, exc: Exception) -> None:
        if isinstance(exc, Conflict):
            log.info("%s changed under us (%s); the next pass decides again", unit.key, exc)
            return
        RECONCILE_ERRORS.labels("pod" if unit.batch is None else "job").inc()
        reason, message = describe_error(exc)
        log.warning("%s: %s (%s); the others go on", unit.key, message, reason,
                    exc_info=not isinstance(exc, ApiException))
        try:
            record = unit.record
            kind = ("v1", "Pod") if unit.batch is None else ("batch/v1", "Job")
            self.events.record({**record, "apiVersion": kind[0], "kind": kind[1]}, "Warning", reason, message)
        except Exception:  # the API may be the trouble itself
            log.debug("could not record the failure on %s", unit.key, exc_info=True)

    def _running_units(self, pool_name: str, pool: GPUPoolSpec,
                       units: Mapping[str, consumers.Unit]) -> list[GangRequest]:
        """The pool's units holding devices, as running gangs (their quota, and victims)."""
        out = []
        for unit in units.values():
            if unit.pool != pool_name:
                continue
            if not unit.held:
                continue
            key = consumers.fingerprint(unit)
            try:
                out.append(self._unit_memo.get(
                    None if key is None else ("running", unit.key, key, unit.held, pool.accelerator.resource_name),
                    partial(consumers.running_request, unit, pool, unit.held)))
            except Exception as exc:  # it still holds its devices; it only cannot be a victim
                log.warning("%s is not a preemption candidate: %s", unit.key, exc)
        return out

    # --- an admitted gang ----------------------------------------------------------------
    def _materialize(self, job: Job, pool: GPUPoolSpec, missing: Iterable[int]) -> None:
        """Create the members `missing`, then, once every member exists, bind them all.

        Only what the job needs: the headless Service only for more than one replica. A gang
        of one is created bound (`spec.nodeName`): it is whole the moment it exists. The rest
        are created side by side, then bound side by side."""
        assert job.spec is not None
        spec = job.spec
        pods = {int(p["metadata"]["labels"][REPLICA_LABEL]): p for p in job.attempt_pods()
                if str(p["metadata"]["labels"].get(REPLICA_LABEL, "")).isdigit()}
        missing = [r for r in missing if r not in pods]
        world = len(job.status.placement)
        if missing and not pods:
            owned = ((checkpoint_objects(job.raw) if reports(spec) else [])
                     + ([service_manifest(job.raw)] if world > 1 else []))
            gang_writes(self.io.ensure, owned)
        mem = int((spec.resources.gpu_memory_gi_b or 0) * 1024)
        placed_by_replica = {p.replica: p for p in job.status.placement}
        manifests = []
        for replica in missing:
            placed = placed_by_replica[replica]
            devices = [(d, placed.gpu_milli or WHOLE) for d in placed.devices]
            resource = pool.accelerator.resource_name
            if spec.resources.mig_profile:
                resource = mig_resource(spec.resources.mig_profile)
            manifest = pod_manifest(job.raw, spec, placed.replica, job.attempt, devices,
                                    resource, pool.sharing.mode, mem,
                                    resume=job.attempt > 0 or job.status.last_checkpoint is not None,
                                    world_size=world,
                                    preflight=preflight_env(pool) if spec.preflight else None,
                                    advice=job.status.checkpoint_advice)
            if placed.mig_start is not None:
                # The device plugin picks the instance; ours is a ledger entry, not a device pin.
                notes = manifest["metadata"]["annotations"]
                notes.pop(DEVICES_ANNOTATION, None)
                notes[MIG_INSTANCE_ANNOTATION] = f"{placed.devices[0]}:{placed.mig_start}"
            if world == 1:
                manifest["spec"]["nodeName"] = placed.node  # a gang of one: bound as it is created
            manifests.append((placed.replica, manifest))

        def create(item: tuple[int, dict[str, Any]]) -> tuple[int, dict[str, Any], dict[str, Any] | None, Any]:
            replica, manifest = item
            try:
                return replica, manifest, self.io.ensure(manifest), None
            except ApiException as exc:
                if exc.status not in REFUSALS:
                    raise
                return replica, manifest, None, exc

        refused = None
        for replica, manifest, created, problem in gang_writes(create, manifests):
            if problem is not None:
                refused = refused or (manifest, problem)
                continue
            if created is not None:
                self.cache.store("pods").assume(created, created=True)
                if world == 1:
                    BINDS.labels("bound").inc()
            pods[replica] = created or manifest
        if refused is not None:
            manifest, exc = refused
            message = f"the API refused pod {manifest['metadata']['name']}: {exc.status} {api_message(exc)}"
            self._apply(job, lifecycle.refused(job.facts(), message, self.clock()))
            return
        if len(pods) < len(job.status.placement):
            return
        # Every member exists: bind them all (only now, so no pod runs before its gang).
        unbound = [(placed, pods[placed.replica]) for placed in job.status.placement
                   if placed.replica in pods and not (pods[placed.replica].get("spec") or {}).get("nodeName")]

        def bind(item: tuple[Any, dict[str, Any]]) -> str | None:
            placed, pod = item
            problem = bind_assumed(self.io, self.cache.store("pods"), pod, placed.node)
            if problem is None:
                failpoints.hit("after-bind")
            return problem

        problems = [p for p in gang_writes(bind, unbound) if p is not None]
        if problems:
            self._apply(job, lifecycle.bind_failed(job.facts(), [pod_facts(p) for p in job.pods],
                                                   self.clock(), problems[0]))

    def _transition(
        self, job: Job, status: TrainingJobStatus, phase: str, cond: str, cstatus: str,
        reason: str, message: str, event: str | None = "Normal",
    ) -> None:
        was = job.status.phase
        status.phase = phase  # type: ignore[assignment]
        changed = set_condition(status.conditions, cond, cstatus, reason, message,  # type: ignore[arg-type]
                                job.generation, to_dt(self.clock()))
        if self._write(job, status) and event and (changed or was != phase):
            self.events.record(job.raw, event, reason, message)

    # --- admission -----------------------------------------------------------------------
    def _schedule_pool(
        self, pool_name: str, pool: GPUPoolSpec | None, waiting: list[Job], jobs: list[Job],
        queues: Mapping[str, tuple[TenantQueueSpec, dict[str, Any]]], now: float,
        unit_waiting: list[tuple[consumers.Unit, GangRequest]] | None = None,
        units: Mapping[str, consumers.Unit] | None = None,
    ) -> None:
        unit_waiting, units = unit_waiting or [], units or {}
        if pool is None:
            for job in waiting:
                self._wait(job, "NoPool", f"GPUPool {pool_name} does not exist or is invalid")
            return
        requests: list[GangRequest] = []
        for job in waiting:
            assert job.spec is not None
            try:
                why = self._unservable(job, pool_name, pool, queues)
                if why:
                    self._wait(job, why[0], why[1])
                    continue
                try:
                    requests.append(job_request(job, pool, resuming=job.status.restarts > 0))
                except InvalidRequest as exc:
                    self._wait(job, "InvalidRequest", str(exc))
            except NotLeader:
                raise  # this replica must stop writing altogether
            except Exception as exc:  # this job's trouble only
                self._isolate(job, exc)
        active = [j for j in jobs if j.spec is not None and j.spec.pool == pool_name
                  and j.status.phase in ACTIVE]
        ledger = [a for j in active for a in reservations(j)]
        ledger += [a for u in units.values() if u.pool == pool_name for a in consumers.batch_ledger(u, pool)]
        node_objs = self.cache.store("nodes").values()
        # A node several pools select is in none of them: the same rule as pool status.
        view = build_pool_snapshot(pool, node_objs, self.cache.store("pods").values(), ledger,
                                   pool_membership(self._pools(), node_objs).nodes_of(pool_name),
                                   self._memos.setdefault(pool_name, PassMemo()))
        running = []
        for j in active:
            try:
                running.append(j.derived(("running", pool.accelerator.resource_name),
                                         partial(job_request, j, pool, resuming=False, placed=True)))
            except Exception as exc:  # its ledger still holds its devices; it only cannot be a victim
                log.warning("running gang %s is not a preemption candidate: %s", j.key, exc)
        running += self._running_units(pool_name, pool, units)
        requests += [req for _, req in unit_waiting]
        by_owner = {req.owner: unit for unit, req in unit_waiting}
        queue_specs = core_queues(queues)
        if not requests:
            return
        shares = FragmentationAwareShares(
            max_shares_per_device=pool.sharing.max_shares_per_device,
            workload=workload_of([*requests, *running]),
        )
        started = time.perf_counter()
        result = schedule(view.snapshot, queue_specs, requests, running, now,
                          config=SchedulerConfig(slice_policy=shares))
        SCHEDULE_SECONDS.labels(pool_name).observe(time.perf_counter() - started)
        decisions = result.decisions
        if pool.sharing.mode == "MIG":
            decisions = self._repartition(view.snapshot, result, requests, pool)
        by_key = {j.key: j for j in jobs}
        victims: dict[str, list[Preempt]] = {}
        for decision in result.decisions:
            if isinstance(decision, Preempt):
                victims.setdefault(decision.preemptor, []).append(decision)
        nodes = {n["metadata"]["name"]: n for n in node_objs}

        def victims_of(decision: Decision) -> list[str]:
            own = [v.owner for v in victims.get(decision.owner, [])]
            return own + list(decision.victims) if isinstance(decision, Wait) else own

        def decide(decision: Decision) -> str | None:
            if decision.owner in by_owner and not isinstance(decision, Preempt):
                return self._decide_unit(by_owner[decision.owner], decision, pool, victims_of(decision))
            target = by_key.get(decision.owner)
            if target is None or isinstance(decision, Preempt):
                return None
            try:
                self._apply_decision(target, decision, now, victims_of(decision))
                if isinstance(decision, Admit) and target.status.phase == "Admitted":
                    # Admitted (the ledger is written): create and bind its pods in this pass.
                    plan = lifecycle.step(target.facts(), [pod_facts(p) for p in target.pods],
                                          self._nodes_of(target, nodes), now)
                    self._apply(target, plan, {pool_name: pool})
                if isinstance(decision, Wait) and decision.owner in victims:
                    return decision.owner
            except NotLeader:
                raise  # this replica must stop writing altogether
            except Exception as exc:  # this job's trouble only
                self._isolate(target, exc)
            return None

        # A preemptor records its victims before any of them is stopped: a crash in between
        # leaves a nomination the next pass carries out, never victims without a preemptor.
        nominated = {owner for owner in side_by_side(decide, list(decisions)) if owner}
        for preemptor in sorted(nominated):
            for decision in victims.get(preemptor, []):
                victim = by_key.get(decision.owner)
                if victim is None:
                    unit = units.get(decision.owner)
                    if unit is not None:
                        try:
                            self.units.preempt(unit, decision.reason)
                        except NotLeader:
                            raise
                        except Exception as exc:
                            self._isolate_unit(unit, exc)
                    continue
                try:
                    self._apply(victim, lifecycle.preempt(
                        victim.facts(), [pod_facts(p) for p in victim.pods], self._nodes_of(victim, nodes),
                        now, decision.reason))
                except NotLeader:
                    raise  # this replica must stop writing altogether
                except Exception as exc:
                    self._isolate(victim, exc)

    def _decide_unit(self, unit: consumers.Unit, decision: Admit | Wait, pool: GPUPoolSpec,
                     victims: list[str]) -> str | None:
        """Carry out the cycle's decision for a unit; returns its key when it nominated victims."""
        try:
            if isinstance(decision, Admit):
                self.units.admit(unit, decision, pool)
                return None
            if decision.cause == "Preempting" and victims:
                self.units.nominate(unit, victims)  # before any victim is stopped
                self.units.wait(unit, decision.cause, decision.reason)
                return decision.owner
            self.units.wait(unit, decision.cause, decision.reason)
        except NotLeader:
            raise
        except Exception as exc:  # this unit's trouble only
            self._isolate_unit(unit, exc)
        return None

    def _apply_decision(self, job: Job, decision: Admit | Preempt | Wait, now: float,
                        victims: list[str]) -> None:
        if isinstance(decision, Admit):
            self._admit(job, decision, now)
        elif isinstance(decision, Wait):
            self._wait(job, decision.cause, decision.reason, victims if decision.cause == "Preempting" else None)

    def _repartition(
        self, snapshot: Snapshot, result: ScheduleResult, requests: list[GangRequest], pool: GPUPoolSpec,
    ) -> tuple[Decision, ...]:
        """Send the core planner's MIG changes for the gangs the cycle left waiting on capacity;
        their waits then say MIGRepartitioning or MIGUnserved where the planner speaks for them."""
        for admit in result.admitted:
            for alloc in admit.placement.allocations:
                if snapshot.check(alloc) is None:  # (a victim still holds what the cycle freed)
                    snapshot.apply(alloc)  # taken this cycle: not free supply for the planner
        by_owner = {r.owner: r for r in requests}
        blocked = [by_owner[w.owner] for w in result.waiting
                   if w.cause in ("Capacity", "Reserved") and w.owner in by_owner]
        plan = plan_repartitions(snapshot, blocked, pool.sharing.mig_profiles)
        for change in plan.changes:
            node = self.cache.store("nodes").get("", change.node) or {}
            try:
                meant = send_repartition(self.io, self.events, self.mig_namespace, node, change)
                # Being applied until the watch shows the node again: never planned twice.
                self.cache.store("nodes").assume(meant, upto=version_of(node) + 1)
            except Conflict as exc:
                log.info("MIG change on %s deferred: %s", change.node, exc)
        return tuple(
            replace(d, cause=w.cause, reason=w.reason)
            if isinstance(d, Wait) and (w := plan.waits.get(d.owner)) is not None else d
            for d in result.decisions
        )

    def _unservable(
        self, job: Job, pool_name: str, pool: GPUPoolSpec,
        queues: Mapping[str, tuple[TenantQueueSpec, dict[str, Any]]],
    ) -> tuple[str, str] | None:
        assert job.spec is not None
        spec = job.spec
        queue = queues.get(spec.queue)
        if queue is None:
            return "NoQueue", f"TenantQueue {spec.queue} does not exist"
        q = queue[0]
        ns_labels = (self.cache.store("namespaces").get("", job.ns) or {}).get("metadata", {}).get("labels") or {}
        if job.ns not in q.namespaces and not (q.namespace_selector and q.namespace_selector.matches(ns_labels)):
            return "NoQueue", f"TenantQueue {spec.queue} does not admit namespace {job.ns}"
        refused = podpolicy.admission_refusal(spec, service_account_name(job.name), q, spec.queue, pool)
        if refused:
            return refused
        try:
            devices = [(i, WHOLE) for i in range(spec.resources.gpus or 0)] or [(0, spec.resources.gpu_milli)]
            pod_manifest(job.raw, spec, 0, job.attempt, devices, pool.accelerator.resource_name, pool.sharing.mode)
        except Exception as exc:  # a tenant's template may be any shape the schema lets through
            return "InvalidTemplate", f"the pod template cannot make a pod: {type(exc).__name__}: {exc}"[:1024]
        if not any(x.pool == pool_name for x in q.quotas):
            pools = ", ".join(sorted(x.pool for x in q.quotas)) or "none"
            return "NoQuota", f"TenantQueue {spec.queue} has no quota on pool {pool_name} (its pools: {pools})"
        if spec.topology and spec.topology.level not in pool.topology.levels:
            return ("InvalidTopology", f"topology level {spec.topology.level} is not one of pool "
                    f"{pool_name}'s levels {pool.topology.levels}")
        res = spec.resources
        if res.gpu_fraction is not None and pool.sharing.mode not in ("MPS", "TimeSlice"):
            return ("SharingMismatch", f"gpuFraction needs an MPS or TimeSlice pool; {pool_name} "
                    f"is {pool.sharing.mode}")
        if res.mig_profile and pool.sharing.mode != "MIG":
            return "SharingMismatch", f"migProfile needs a MIG pool; {pool_name} is {pool.sharing.mode}"
        if pool.sharing.mode == "MIG" and not res.mig_profile:
            return "SharingMismatch", f"{pool_name} is a MIG pool: ask for a migProfile"
        if res.mig_profile and res.mig_profile not in pool.sharing.mig_profiles:
            return ("SharingMismatch", f"{pool_name} offers MIG profiles "
                    f"{', '.join(pool.sharing.mig_profiles)}, not {res.mig_profile}")
        return None

    def _wait(self, job: Job, cause: str, reason: str, nominated: list[str] | None = None) -> None:
        plan = lifecycle.wait(job.facts(), cause, reason, self.clock(), nominated)
        if nominated and plan.status is not None and plan.status.nominated_victims != job.status.nominated_victims:
            self._apply(job, plan)
            if job.status.nominated_victims != sorted(nominated):
                raise Conflict(f"{job.key}: nomination not recorded")
            return
        self._apply(job, plan)

    def _admit(self, job: Job, decision: Admit, now: float) -> None:
        """Record the reservation (the ledger) before creating anything."""
        assert job.spec is not None
        st = job.status.model_copy(deep=True)
        by_member = sorted(decision.placement.allocations, key=lambda a: int(a.member))
        st.placement = [placement_of(a) for a in by_member]
        st.admitted_time = to_dt(now)
        st.retry_after = None
        st.nominated_victims = []
        created = ts(job.raw["metadata"].get("creationTimestamp"))
        if created:
            GANG_WAIT_SECONDS.labels(job.spec.pool, job.spec.queue).observe(max(0.0, now - created))
        nodes = sorted({a.node for a in by_member})
        job.deferred = []  # it never waited: its Queued event would only be noise
        elastic = ""
        if len(by_member) < job.spec.replicas:
            elastic = (f"; elastic start with {len(by_member)} of {job.spec.replicas} replicas "
                       f"(gang.minAvailable {job.spec.gang.min_available}): the next restart asks for all")
        self._transition(job, st, "Admitted", "Admitted", "True", "Admitted",
                         f"{decision.reason or 'placed'}: {len(by_member)} replicas on "
                         f"{len(nodes)} nodes ({', '.join(nodes[:8])}{' ...' if len(nodes) > 8 else ''})"
                         + elastic)

    # --- queues --------------------------------------------------------------------------
    def _queue_statuses(
        self, jobs: list[Job], queues: Mapping[str, tuple[TenantQueueSpec, dict[str, Any]]],
        pools: Mapping[str, GPUPoolSpec], units: Mapping[str, consumers.Unit] | None = None,
    ) -> None:
        if self.status_writer is None:
            return
        unit_usage: dict[str, dict[str, float]] = {}
        unit_counts: dict[str, tuple[int, int]] = {}
        for unit in (units or {}).values():
            pool = pools.get(unit.pool)
            if pool is None or not unit.queue:
                continue
            try:
                # Read once per version of the unit's objects: this runs for every unit on every pass.
                key = consumers.fingerprint(unit)
                per = self._unit_memo.get(
                    None if key is None else ("per", unit.key, key, pool.accelerator.resource_name),
                    partial(_gpus_per_member, unit, pool))
            except InvalidRequest:
                continue
            mine_u = unit_usage.setdefault(unit.queue, {})
            mine_u[unit.pool] = mine_u.get(unit.pool, 0) + unit.held * per
            running_n, pending_n = unit_counts.get(unit.queue, (0, 0))
            unit_counts[unit.queue] = (running_n + (1 if unit.held else 0),
                                       pending_n + (1 if unit.free_pods or unit.suspended else 0))
        for name, (spec, raw) in queues.items():
            try:
                mine = [j for j in jobs if j.spec is not None and j.spec.queue == name]
                usage: dict[str, float] = dict(unit_usage.get(name, {}))
                for j in mine:
                    if j.status.phase in ACTIVE and j.spec is not None:
                        size = len(j.status.placement) or j.spec.replicas  # an elastic gang may run smaller
                        share = size * j.spec.resources.gpu_milli / WHOLE
                        usage[j.spec.pool] = usage.get(j.spec.pool, 0) + share
                conditions: list[Condition] = []
                prev = raw.get("status") or {}
                for c in prev.get("conditions") or []:
                    try:
                        conditions.append(Condition.model_validate(c))
                    except ValidationError:
                        pass
                missing = sorted({q.pool for q in spec.quotas} - set(pools))
                generation = _int(raw["metadata"].get("generation"))
                if missing:
                    set_condition(conditions, "Ready", "False", "PoolNotFound",
                                  f"quotas name pools that do not exist: {', '.join(missing[:5])}; jobs for "
                                  "them wait with NoPool", generation, to_dt(self.clock()))
                else:
                    set_condition(conditions, "Ready", "True", "Ready",
                                  f"{len(spec.quotas)} quota(s), every pool exists", generation, to_dt(self.clock()))
                status = {
                    "observedGeneration": raw["metadata"].get("generation"),
                    "usage": [{"pool": p, "gpus": round(g, 3)} for p, g in sorted(usage.items())],
                    "running": sum(1 for j in mine if j.status.phase in ACTIVE) + unit_counts.get(name, (0, 0))[0],
                    "pending": (sum(1 for j in mine if j.status.phase in ("Queued", "Restarting"))
                                + unit_counts.get(name, (0, 0))[1]),
                    "conditions": [c.wire() for c in conditions],
                }
                if prev != status and self.status_writer.patch_status("tenantqueues", "", name, status):
                    # Assumed until the watch shows the queue again, so a lagging watch is not a rewrite.
                    self.cache.store("tenantqueues").assume({**raw, "status": status}, upto=version_of(raw) + 1)

            except NotLeader:
                raise  # this replica must stop writing altogether
            except Exception as exc:  # one queue's trouble only
                RECONCILE_ERRORS.labels("tenantqueue").inc()
                log.exception("status of TenantQueue %s not written; the others go on", name)
                reason, message = describe_error(exc)
                self.events.record({**raw, "apiVersion": "wanka.io/v1alpha1", "kind": "TenantQueue"},
                                   "Warning", reason, message)
