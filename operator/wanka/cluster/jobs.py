"""The TrainingJob loop: admission through the core's scheduler, pods bound as a whole gang,
recovery of interrupted gangs from their checkpoint, and release on deletion.

Everything durable lives in the API: the reservation ledger is each admitted job's
`status.placement` (written before any pod exists), so a restarted operator rebuilds it from
the cluster. A pass may stop at any line; the next pass sees what was written and carries on.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any, Protocol

from kubernetes.client.exceptions import ApiException
from pydantic import ValidationError

from wanka import failpoints
from wanka.api.common import Condition, find_condition, set_condition
from wanka.api.gpupool import GPUPoolSpec
from wanka.api.tenantqueue import TenantQueueSpec
from wanka.api.trainingjob import (
    LastCheckpoint,
    ReplicaPlacement,
    TrainingJobSpec,
    TrainingJobStatus,
)
from wanka.cluster.cache import FleetCache
from wanka.cluster.jobio import FINALIZER, Conflict, JobIO
from wanka.cluster.ledger import ACTIVE, ledger_allocations
from wanka.cluster.manifests import (
    ATTEMPT_LABEL,
    checkpoint_configmap_name,
    checkpoint_objects,
    pod_manifest,
    service_account_name,
    service_manifest,
)
from wanka.cluster.mig import CONFIG_LABEL as MIG_CONFIG_LABEL
from wanka.cluster.mig import CONFIGMAP_KEY as MIG_CONFIGMAP_KEY
from wanka.cluster.mig import CONFIGMAP_NAME as MIG_CONFIGMAP
from wanka.cluster.mig import GEOMETRY_ANNOTATION as MIG_GEOMETRY_ANNOTATION
from wanka.cluster.mig import INSTANCE_ANNOTATION as MIG_INSTANCE_ANNOTATION
from wanka.cluster.mig import (
    Repartition,
    encode_geometry,
    merge_configmap,
    mig_nodes,
    pick_instances,
    plan_repartitions,
    render_config,
)
from wanka.cluster.mig import resource_for as mig_resource
from wanka.cluster.pools import parse_spec
from wanka.cluster.translate import (
    DEVICES_ANNOTATION,
    JOB_LABEL,
    REPLICA_LABEL,
    UNHEALTHY_TAINT,
    build_pool_snapshot,
    has_taint,
    node_ready,
    pod_requests,
)
from wanka.core.mig import Geometry, mig_model
from wanka.core.queueing import (
    Admit,
    PoolQuota,
    Preempt,
    QueueSpec,
    QuotaBook,
    SchedulerConfig,
    Wait,
    fair_order,
    schedule,
)
from wanka.core.requests import GangRequest, InvalidRequest
from wanka.core.sharing import FragmentationAwareShares, workload_of
from wanka.core.snapshot import WHOLE, Allocation
from wanka.metrics import (
    BINDS,
    GANG_RESTARTS,
    GANG_WAIT_SECONDS,
    LOST_WORK_SECONDS,
    RECONCILE_ERRORS,
    SCHEDULE_SECONDS,
)

log = logging.getLogger(__name__)

# A delete we sent is repeated only if the pod still shows no deletionTimestamp this long after.
DELETE_RESEND_SECONDS = 10.0


class Recorder(Protocol):
    def record(self, obj: Mapping[str, Any], type_: Any, reason: str, message: str) -> None: ...


def ts(value: Any) -> float | None:
    if isinstance(value, datetime):
        return value.timestamp()
    if isinstance(value, str) and value:
        try:
            return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
        except ValueError:
            return None
    return None


def to_dt(epoch: float) -> datetime:
    return datetime.fromtimestamp(math.floor(epoch), UTC)


def backoff_seconds(restarts: int, base: int, cap: int) -> int:
    """Exponential backoff: base, 2 base, 4 base, ... capped."""
    if restarts <= 0 or base <= 0:
        return 0
    return int(min(cap, base * 2 ** min(restarts - 1, 30)))


@dataclass
class Job:
    """One TrainingJob as this pass sees it."""

    raw: dict[str, Any]
    spec: TrainingJobSpec | None
    status: TrainingJobStatus
    invalid: str = ""
    pods: list[dict[str, Any]] = field(default_factory=list)

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
        value = self.raw["metadata"].get("generation")
        return int(value) if value is not None else None

    @property
    def attempt(self) -> int:
        return self.status.restarts

    def attempt_pods(self) -> list[dict[str, Any]]:
        return [p for p in self.pods if p["metadata"].get("labels", {}).get(ATTEMPT_LABEL) == str(self.attempt)]

    def stale_pods(self) -> list[dict[str, Any]]:
        return [p for p in self.pods if p["metadata"].get("labels", {}).get(ATTEMPT_LABEL) != str(self.attempt)]


def job_request(job: Job, pool: GPUPoolSpec, resuming: bool, placed: bool = False) -> GangRequest:
    """The core's view of a job's gang; `placed`: as it runs now (its placement's size)."""
    assert job.spec is not None
    spec = job.spec
    replicas, min_available = spec.replicas, spec.gang.min_available
    if placed and job.status.placement:
        replicas, min_available = len(job.status.placement), None
    res = spec.resources
    cpu = mem = 0
    if spec.template.spec.containers:
        pod = {"spec": spec.template.wire()["spec"]}
        cpu, mem, _ = pod_requests(pod, pool.accelerator.resource_name)
    gpus = res.gpus or 0
    milli = 0
    if res.gpu_fraction is not None:
        gpus, milli = 0, max(1, round(res.gpu_fraction * WHOLE))
    created = ts(job.raw["metadata"].get("creationTimestamp")) or 0.0
    checkpoint = job.status.last_checkpoint
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
        topology_level=spec.topology.level if spec.topology else "",
        topology_mode=spec.topology.mode if spec.topology else "Preferred",
        # An interrupted gang goes back to the front of its queue.
        created=0.0 if resuming else created,
        started=ts(job.status.start_time),
        last_checkpoint=checkpoint.time.timestamp() if checkpoint else None,
    )


def reservations(job: Job) -> list[Allocation]:
    """The ledger entries an admitted job's status holds."""
    if job.status.phase not in ACTIVE or job.spec is None:
        return []
    return ledger_allocations(job.key, job.spec, job.status.placement)


def core_queues(queues: Mapping[str, tuple[TenantQueueSpec, dict[str, Any]]]) -> list[QueueSpec]:
    """The core's view of the TenantQueues."""
    return [QueueSpec(
        name=name, weight=q.weight, within_queue=q.preemption.within_queue,
        reclaim_borrowed=q.preemption.reclaim_borrowed,
        quotas=tuple(PoolQuota(x.pool, x.gpus, x.borrowing_limit) for x in q.quotas),
    ) for name, (q, _) in queues.items()]


def pod_exit_code(pod: Mapping[str, Any]) -> int | None:
    for cs in (pod.get("status") or {}).get("containerStatuses") or []:
        term = (cs.get("state") or {}).get("terminated")
        if term and term.get("exitCode"):
            return int(term["exitCode"])
    return None


def pod_ready(pod: Mapping[str, Any]) -> bool:
    st = pod.get("status") or {}
    if st.get("phase") != "Running":
        return False
    return any(c.get("type") == "Ready" and c.get("status") == "True" for c in st.get("conditions") or [])


@dataclass
class JobReconciler:
    """One pass over every TrainingJob and TenantQueue."""

    cache: FleetCache
    io: JobIO
    events: Recorder
    clock: Callable[[], float] = time.time
    status_writer: Any = None  # StatusWriter for TenantQueue status
    mig_namespace: str = "default"  # where the mig-parted ConfigMap lives
    # Status we wrote but the watch has not brought back yet: (version written against, status).
    _assumed: dict[str, tuple[str | None, dict[str, Any]]] = field(default_factory=dict)
    _queue_status: dict[str, dict[str, Any]] = field(default_factory=dict)
    # MIG changes we sent but the watch has not brought back: node -> (version, geometry).
    _mig_sent: dict[str, tuple[str | None, dict[int, Geometry]]] = field(default_factory=dict)
    # Deletes already sent, so a pass does not repeat them while the watch catches up:
    # pod uid -> when (sent again after DELETE_RESEND_SECONDS), and jobs whose objects are gone.
    _pod_deletes: dict[str, float] = field(default_factory=dict)
    _objects_released: set[str] = field(default_factory=set)

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
            key = f"{meta['namespace']}/{meta['name']}"
            status_raw = raw.get("status") or {}
            assumed = self._assumed.get(key)
            if assumed is not None:
                before, wrote = assumed
                if meta.get("resourceVersion") == before:
                    status_raw = wrote  # the watch has not caught up with our own write
                else:
                    del self._assumed[key]
            try:
                status = TrainingJobStatus.model_validate(status_raw)
            except ValidationError:
                status = TrainingJobStatus()
            spec, invalid = None, ""
            try:
                spec = TrainingJobSpec.model_validate(raw.get("spec") or {})
            except ValidationError as exc:
                invalid = "; ".join(f"spec.{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors()[:3])
            job = Job(raw, spec, status, invalid, pods_by_job.get((meta["namespace"], meta["name"]), []))
            jobs.append(job)
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

    # --- writing -------------------------------------------------------------------------
    def _write(self, job: Job, status: TrainingJobStatus) -> bool:
        status.observed_generation = job.generation
        wire = status.wire()
        old = job.status.wire()
        if wire == old:
            return True
        try:
            new_version = self.io.patch_status(job.ns, job.name, job.version, wire)
        except Conflict as exc:
            log.info("status of %s not written (%s); next pass re-reads it", job.key, exc)
            return False
        self._assumed[job.key] = (job.version, wire)
        job.raw["metadata"]["resourceVersion"] = new_version
        job.status = status
        return True

    def _transition(
        self, job: Job, status: TrainingJobStatus, phase: str, cond: str, cstatus: str,
        reason: str, message: str, event: str | None = "Normal",
    ) -> None:
        now = to_dt(self.clock())
        was = job.status.phase
        status.phase = phase  # type: ignore[assignment]
        changed = set_condition(status.conditions, cond, cstatus, reason, message,  # type: ignore[arg-type]
                                job.generation, now)
        if self._write(job, status) and event and (changed or was != phase):
            self.events.record(job.raw, event, reason, message)

    # --- the pass ------------------------------------------------------------------------
    def reconcile_all(self) -> None:
        now = self.clock()
        jobs = self._jobs()
        pools = self._pools()
        queues = self._queues()
        nodes = {n["metadata"]["name"]: n for n in self.cache.store("nodes").values()}
        pending: dict[str, list[Job]] = {}
        for job in jobs:
            try:
                if self._lifecycle(job, nodes, pools, now):
                    pending.setdefault(job.spec.pool if job.spec else "", []).append(job)
            except Conflict:
                continue
            except ApiException as exc:
                # One job's trouble (say, its namespace is terminating) must not stall the rest.
                RECONCILE_ERRORS.labels("trainingjob").inc()
                log.warning("job %s: %s %s; retrying on the next pass", job.key, exc.status, exc.reason)
        for pool_name, waiting in sorted(pending.items()):
            try:
                self._schedule_pool(pool_name, pools.get(pool_name), waiting, jobs, queues, now)
            except ApiException as exc:
                RECONCILE_ERRORS.labels("trainingjob").inc()
                log.warning("admission in pool %s: %s %s; retrying", pool_name, exc.status, exc.reason)
        self._queue_statuses(jobs, queues, pools)
        self._forget_deletes(jobs)

    def _forget_deletes(self, jobs: list[Job]) -> None:
        """Drop memos of deletes for pods and jobs that are gone from the cache."""
        if self._pod_deletes:
            live = {str(p["metadata"].get("uid")) for p in self.cache.store("pods").values()}
            self._pod_deletes = {uid: t for uid, t in self._pod_deletes.items() if uid in live}
        if self._objects_released:
            self._objects_released &= {str(j.raw["metadata"].get("uid")) for j in jobs}

    def _lifecycle(
        self, job: Job, nodes: Mapping[str, Mapping[str, Any]], pools: Mapping[str, GPUPoolSpec],
        now: float,
    ) -> bool:
        """Advance one job; True when it waits for a placement this pass."""
        meta = job.raw["metadata"]
        finalizers = list(meta.get("finalizers") or [])
        if meta.get("deletionTimestamp"):
            self._release(job, grace=None)
            if not job.pods and FINALIZER in finalizers:
                self.io.set_finalizers(job.ns, job.name, job.version, [f for f in finalizers if f != FINALIZER])
            return False
        if FINALIZER not in finalizers:
            self.io.set_finalizers(job.ns, job.name, job.version, [*finalizers, FINALIZER])
            return False  # the watch brings the job back with its finalizer
        status = job.status.model_copy(deep=True)
        if job.spec is None:
            self._transition(job, status, "Failed", "Failed", "True", "InvalidSpec", job.invalid, "Warning")
            return False
        if status.phase is None:
            status.gpus = job.spec.replicas * job.spec.resources.gpu_milli / WHOLE
            self._transition(job, status, "Queued", "Admitted", "False", "Queued",
                             f"waiting in queue {job.spec.queue}")
            return False
        failed = find_condition(job.status.conditions, "Failed")
        if job.status.phase == "Failed" and failed is not None and failed.reason == "InvalidSpec":
            # The spec was fixed: a job that never ran gets its chance.
            self._transition(job, status, "Queued", "Failed", "False", "SpecFixed",
                             "the spec is valid again: back in the queue")
            return False
        self._mirror_checkpoint(job)
        phase = job.status.phase
        if phase in ("Succeeded", "Failed"):
            if any((p.get("status") or {}).get("phase") not in ("Succeeded", "Failed") for p in job.pods):
                self._delete_pods(job, job.pods, grace=self._grace(job))
            return False
        if job.spec.suspend:
            self._release(job, grace=self._grace(job), keep_objects=True)
            if phase != "Suspended":
                status = job.status.model_copy(deep=True)
                status.placement = []
                status.replicas_ready = 0
                self._transition(job, status, "Suspended", "Admitted", "False", "Suspended",
                                 "spec.suspend is true: everything released")
            return False
        if phase == "Suspended":
            status = job.status.model_copy(deep=True)
            self._transition(job, status, "Queued", "Admitted", "False", "Resumed",
                             "spec.suspend is false: back in the queue")
            return False
        if phase in ACTIVE:
            self._run_gang(job, nodes, pools, now)
            return False
        # Queued or Restarting: old pods must be gone and the backoff over before re-placing.
        if job.stale_pods() or job.attempt_pods():
            self._delete_pods(job, job.pods, grace=self._grace(job))
            return False
        retry = ts(job.status.retry_after)
        return not (retry is not None and retry > now)

    def _grace(self, job: Job) -> int | None:
        if job.spec is None:
            return None
        value = job.spec.template.wire()["spec"].get("terminationGracePeriodSeconds")
        return int(value) if isinstance(value, int) else None

    def _delete_pods(self, job: Job, pods: Iterable[Mapping[str, Any]], grace: int | None) -> None:
        now = self.clock()
        for pod in pods:
            meta = pod["metadata"]
            if meta.get("deletionTimestamp"):
                continue
            uid = str(meta.get("uid"))
            sent = self._pod_deletes.get(uid)
            if sent is not None and now - sent < DELETE_RESEND_SECONDS:
                continue  # sent already; the watch has not shown it terminating yet
            self.io.delete_pod(job.ns, meta["name"], grace)
            self._pod_deletes[uid] = now

    def _release(self, job: Job, grace: int | None, keep_objects: bool = False) -> None:
        self._delete_pods(job, job.pods, grace)
        uid = str(job.raw["metadata"].get("uid"))
        if keep_objects or uid in self._objects_released:
            return
        cm = checkpoint_configmap_name(job.name)
        role = f"{job.name}-checkpoint-writer"
        self.io.delete_owned(job.ns, job.name, {
            "Service": job.name, "ServiceAccount": service_account_name(job.name),
            "ConfigMap": cm, "Role": role, "RoleBinding": role,
        })
        # Only a job being deleted gets here, and nothing recreates its objects after that.
        self._objects_released.add(uid)

    def _mirror_checkpoint(self, job: Job) -> None:
        cm = self.cache.store("configmaps").get(job.ns, checkpoint_configmap_name(job.name))
        data = (cm or {}).get("data") or {}
        if not data.get("step"):
            return
        try:
            ckpt = LastCheckpoint(step=int(data["step"]), path=data.get("path", ""),
                                  time=datetime.fromisoformat(data["time"].replace("Z", "+00:00")))
        except (ValueError, KeyError, ValidationError):
            self.events.record(job.raw, "Warning", "BadCheckpointReport",
                               f"ignoring checkpoint report {dict(data)}")
            return
        if job.status.last_checkpoint != ckpt:
            status = job.status.model_copy(deep=True)
            status.last_checkpoint = ckpt
            self._write(job, status)

    # --- an admitted gang ----------------------------------------------------------------
    def _run_gang(
        self, job: Job, nodes: Mapping[str, Mapping[str, Any]], pools: Mapping[str, GPUPoolSpec],
        now: float,
    ) -> None:
        assert job.spec is not None
        spec, status = job.spec, job.status
        # An elastic gang (gang.minAvailable < replicas) may have started smaller: this attempt
        # is as big as its placement, until a restart places it again.
        size = len(status.placement) or spec.replicas
        pool = pools.get(spec.pool)
        if job.stale_pods():
            self._delete_pods(job, job.stale_pods(), self._grace(job))
        pods = {int(p["metadata"]["labels"][REPLICA_LABEL]): p for p in job.attempt_pods()}
        # Interruptions first: a failed member, a lost member, a member on a bad node.
        bad_nodes, reasons = [], []
        for placed in status.placement:
            node = nodes.get(placed.node)
            if node is None:
                bad_nodes.append(placed.node)
                reasons.append(f"node {placed.node} is gone")
            elif has_taint(node, UNHEALTHY_TAINT):
                bad_nodes.append(placed.node)
                reasons.append(f"node {placed.node} is tainted unhealthy")
            elif not node_ready(node):
                bad_nodes.append(placed.node)
                reasons.append(f"node {placed.node} is NotReady")
        failed = {r: p for r, p in pods.items() if (p.get("status") or {}).get("phase") == "Failed"}
        for replica, pod in sorted(failed.items()):
            code = pod_exit_code(pod)
            if code is not None and code in spec.restart_policy.no_retry_exit_codes:
                self._fail(job, "NoRetryExitCode",
                           f"replica {replica} exited with {code}, listed in noRetryExitCodes")
                return
            reason = (pod.get("status") or {}).get("reason") or "Failed"
            reasons.append(f"replica {replica} {reason} (exit {code}) on {pod['spec'].get('nodeName')}")
            if pod["spec"].get("nodeName"):
                bad_nodes.append(pod["spec"]["nodeName"])
        if status.phase == "Running":
            for placed in status.placement:
                member = pods.get(placed.replica)
                if member is None or member["metadata"].get("deletionTimestamp"):
                    reasons.append(f"replica {placed.replica} was deleted")
        if reasons:
            self._interrupt(job, "MemberFailed", "; ".join(reasons[:5]), bad_nodes, now,
                            count_restart=True)
            return
        succeeded = [p for p in pods.values() if (p.get("status") or {}).get("phase") == "Succeeded"]
        if len(succeeded) == size:
            st = status.model_copy(deep=True)
            st.completion_time = to_dt(now)
            st.placement = []
            st.replicas_ready = 0
            self._transition(job, st, "Succeeded", "Succeeded", "True", "Completed",
                             f"all {size} replicas succeeded")
            return
        # Carry the reservation out: create what is missing, then bind what is unbound.
        if pool is not None:
            self._materialize(job, pool, pods)
        ready = sum(1 for p in pods.values() if pod_ready(p) or
                    (p.get("status") or {}).get("phase") == "Succeeded")
        st = status.model_copy(deep=True)
        st.replicas_ready = ready
        if ready == size and status.phase != "Running":
            st.start_time = st.start_time or to_dt(now)
            set_condition(st.conditions, "PodsReady", "True", "AllReplicasRunning",
                          f"{ready}/{size} replicas running", job.generation, to_dt(now))
            set_condition(st.conditions, "Restarting", "False", "Running", "gang running",
                          job.generation, to_dt(now))
            self._transition(job, st, "Running", "Admitted", "True", "Running",
                             f"all {size} replicas running on "
                             f"{len({p.node for p in st.placement})} nodes"
                             + (f" (elastic start: {size} of {spec.replicas})" if size < spec.replicas else ""))
            return
        admitted = ts(status.admitted_time)
        if status.phase == "Admitted" and admitted and now - admitted > spec.gang.schedule_timeout_seconds:
            self._delete_pods(job, job.pods, self._grace(job))
            st.placement, st.replicas_ready, st.admitted_time = [], 0, None
            self._transition(job, st, "Queued", "Admitted", "False", "GangTimeout",
                             f"only {ready}/{size} replicas running after "
                             f"{spec.gang.schedule_timeout_seconds}s: released and requeued", "Warning")
            return
        if st.replicas_ready != status.replicas_ready:
            self._write(job, st)

    def _materialize(self, job: Job, pool: GPUPoolSpec, pods: dict[int, dict[str, Any]]) -> None:
        assert job.spec is not None
        spec = job.spec
        if not pods:
            self.io.ensure(service_manifest(job.raw))
            for obj in checkpoint_objects(job.raw):
                self.io.ensure(obj)
        mem = int((spec.resources.gpu_memory_gi_b or 0) * 1024)
        created = False
        for placed in job.status.placement:
            if placed.replica in pods:
                continue
            devices = [(d, placed.gpu_milli or WHOLE) for d in placed.devices]
            resource = pool.accelerator.resource_name
            if spec.resources.mig_profile:
                resource = mig_resource(spec.resources.mig_profile)
            manifest = pod_manifest(job.raw, spec, placed.replica, job.attempt, devices,
                                    resource, pool.sharing.mode, mem,
                                    resume=job.attempt > 0 or job.status.last_checkpoint is not None,
                                    world_size=len(job.status.placement))
            if placed.mig_start is not None:
                # The device plugin picks the instance; ours is a ledger entry, not a device pin.
                notes = manifest["metadata"]["annotations"]
                notes.pop(DEVICES_ANNOTATION, None)
                notes[MIG_INSTANCE_ANNOTATION] = f"{placed.devices[0]}:{placed.mig_start}"
            self.io.ensure(manifest)
            pods[placed.replica] = manifest
            created = True
        if created and len(pods) < len(job.status.placement):
            return
        # Every member exists: bind them all (only now, so no pod runs before its gang).
        for placed in job.status.placement:
            pod = pods.get(placed.replica)
            if pod is None or (pod.get("spec") or {}).get("nodeName"):
                continue
            problem = self.io.bind(job.ns, pod["metadata"]["name"], placed.node)
            if problem is not None:
                BINDS.labels("failed").inc()
                self._rollback(job, problem)
                return
            BINDS.labels("bound").inc()
            failpoints.hit("after-bind")

    def _rollback(self, job: Job, problem: str) -> None:
        self._delete_pods(job, job.pods, grace=0)
        st = job.status.model_copy(deep=True)
        st.placement, st.replicas_ready, st.admitted_time = [], 0, None
        self._transition(job, st, "Queued", "Admitted", "False", "BindFailed",
                         f"{problem}; the whole gang was rolled back and requeued", "Warning")

    def _fail(self, job: Job, reason: str, message: str) -> None:
        self._delete_pods(job, [p for p in job.pods if (p.get("status") or {}).get("phase")
                                not in ("Succeeded", "Failed")], self._grace(job))
        st = job.status.model_copy(deep=True)
        st.placement, st.replicas_ready = [], 0
        st.completion_time = to_dt(self.clock())
        self._transition(job, st, "Failed", "Failed", "True", reason, message, "Warning")

    def _interrupt(
        self, job: Job, reason: str, message: str, bad_nodes: list[str], now: float,
        count_restart: bool,
    ) -> None:
        """Stop the whole gang, requeue it at the front, avoiding the nodes that failed it."""
        assert job.spec is not None
        policy = job.spec.restart_policy
        st = job.status.model_copy(deep=True)
        failures = st.restarts - st.preemptions
        if count_restart and failures >= policy.max_restarts:
            self._fail(job, "RestartLimitExceeded",
                       f"{message}; {failures} restarts after failures reached "
                       f"maxRestarts={policy.max_restarts}")
            return
        self._delete_pods(job, job.pods, self._grace(job))
        pods_ready = find_condition(st.conditions, "PodsReady")
        attempt_start = (pods_ready.last_transition_time.timestamp()
                         if pods_ready and pods_ready.status == "True" else None)
        ckpt = st.last_checkpoint.time.timestamp() if st.last_checkpoint else None
        since = max(x for x in (attempt_start, ckpt, 0.0) if x is not None)
        lost = max(0.0, now - since) if attempt_start is not None else 0.0
        st.lost_seconds = round(st.lost_seconds + lost, 1)
        st.restarts += 1
        if not count_restart:
            st.preemptions += 1
        st.excluded_nodes = sorted(set(st.excluded_nodes) | set(bad_nodes))[-1024:]
        st.placement, st.replicas_ready, st.admitted_time = [], 0, None
        wait = backoff_seconds(st.restarts, policy.backoff_seconds, policy.max_backoff_seconds)
        st.retry_after = to_dt(now + wait) if wait else None
        set_condition(st.conditions, "PodsReady", "False", reason, message, job.generation, to_dt(now))
        cond = "Preempted" if reason == "Preempted" else "Restarting"
        if cond == "Preempted":
            set_condition(st.conditions, "Restarting", "True", reason, message, job.generation, to_dt(now))
        GANG_RESTARTS.labels(job.spec.pool, reason).inc()
        LOST_WORK_SECONDS.labels(job.spec.pool).inc(lost)
        self._transition(job, st, "Restarting", cond, "True", reason,
                         f"{message}; restart {st.restarts} from the last checkpoint"
                         + (f" in {wait}s" if wait else "")
                         + (f", avoiding {', '.join(sorted(set(bad_nodes)))}" if bad_nodes else ""),
                         "Warning")

    # --- admission -----------------------------------------------------------------------
    def _schedule_pool(
        self, pool_name: str, pool: GPUPoolSpec | None, waiting: list[Job], jobs: list[Job],
        queues: Mapping[str, tuple[TenantQueueSpec, dict[str, Any]]], now: float,
    ) -> None:
        if pool is None:
            for job in waiting:
                self._wait(job, "NoPool", f"GPUPool {pool_name} does not exist or is invalid")
            return
        if pool.sharing.mode == "MIG":
            self._schedule_mig(pool_name, pool, waiting, jobs, queues, now)
            return
        requests: list[GangRequest] = []
        for job in waiting:
            assert job.spec is not None
            why = self._unservable(job, pool_name, pool, queues)
            if why:
                self._wait(job, why[0], why[1])
                continue
            try:
                requests.append(job_request(job, pool, resuming=job.status.restarts > 0))
            except InvalidRequest as exc:
                self._wait(job, "InvalidRequest", str(exc))
        active = [j for j in jobs if j.spec is not None and j.spec.pool == pool_name
                  and j.status.phase in ACTIVE]
        ledger = [a for j in active for a in reservations(j)]
        view = build_pool_snapshot(pool, self.cache.store("nodes").values(),
                                   self.cache.store("pods").values(), ledger)
        running = [job_request(j, pool, resuming=False, placed=True) for j in active]
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
        by_key = {j.key: j for j in jobs}
        for decision in result.decisions:
            target = by_key.get(decision.owner)
            if target is None:
                continue
            try:
                self._apply_decision(target, decision, now)
            except (Conflict, ApiException) as exc:
                log.warning("decision for %s not applied: %s", target.key, exc)

    def _apply_decision(self, job: Job, decision: Admit | Preempt | Wait, now: float) -> None:
        if isinstance(decision, Admit):
            self._admit(job, decision, now)
        elif isinstance(decision, Preempt):
            self._interrupt(job, "Preempted", f"preempted by {decision.preemptor}: {decision.reason}",
                            [], now, count_restart=False)
        else:
            self._wait(job, decision.cause, decision.reason)

    def _schedule_mig(
        self, pool_name: str, pool: GPUPoolSpec, waiting: list[Job], jobs: list[Job],
        queues: Mapping[str, tuple[TenantQueueSpec, dict[str, Any]]], now: float,
    ) -> None:
        """Admit MIG replicas onto free instances; repartition idle devices for the rest."""
        node_objs = [n for n in self.cache.store("nodes").values()
                     if pool.node_selector.matches(dict(n["metadata"].get("labels") or {}))
                     and node_ready(n) and not has_taint(n, UNHEALTHY_TAINT)]
        active = [j for j in jobs if j.spec is not None and j.spec.pool == pool_name
                  and j.status.phase in ACTIVE]
        reserved = [(p.node, p.devices[0], p.mig_start) for j in active for p in j.status.placement
                    if p.devices and p.mig_start is not None]
        nodes = mig_nodes(node_objs, self.cache.store("pods").values(), reserved,
                          pool.accelerator.resource_name,
                          lambda n: pool.accelerator.model or n["metadata"].get("labels", {}).get(
                              "wanka.io/gpu-model", ""))
        for name, (version, geometry) in list(self._mig_sent.items()):
            cached = self.cache.store("nodes").get("", name) or {}
            if cached.get("metadata", {}).get("resourceVersion") != version:
                del self._mig_sent[name]  # the watch caught up: the node itself says what it is
            elif name in nodes:  # our change is not in the cache yet: plan as if it were
                nodes[name].geometry, nodes[name].ready = dict(geometry), False
        # Quotas charge MIG gangs the way the scheduling cycle charges every other pool:
        # nominal quota, then borrowing from the cohort's unused quota up to the limit.
        qspecs = core_queues(queues)
        book = QuotaBook({q.name: q for q in qspecs})
        for j in active:
            assert j.spec is not None
            book.charge(j.spec.queue, pool_name, j.spec.resources.gpu_milli * j.spec.replicas)
        candidates: dict[str, tuple[Job, GangRequest]] = {}
        for job in waiting:
            why = self._unservable(job, pool_name, pool, queues)
            if why:
                self._wait(job, why[0], why[1])
                continue
            try:
                req = job_request(job, pool, resuming=job.status.restarts > 0)
            except InvalidRequest as exc:
                self._wait(job, "InvalidRequest", str(exc))
                continue
            candidates[req.owner] = (job, req)
        # The same order as every other pool: priority, then fair-share deficit, then age.
        capacity = WHOLE * sum(n.devices for n in nodes.values() if mig_model(n.model) is not None)
        busy_queues = {j.spec.queue for j in active if j.spec} | {r.queue for _, r in candidates.values()}
        weights = sum(q.weight for q in qspecs if q.name in busy_queues and q.quota(pool_name) is not None)
        demand: dict[str, int] = {}
        blocked: list[tuple[Job, str]] = []
        for req in fair_order([r for _, r in candidates.values()],
                              lambda queue, at: book.deficit(queue, at, capacity, weights)):
            job = candidates[req.owner][0]
            assert job.spec is not None
            spec = job.spec
            profile = spec.resources.mig_profile or ""
            want = spec.resources.gpu_milli * spec.replicas
            over = book.reason(spec.queue, pool_name, want)
            if over is not None:
                self._wait(job, "Quota", over)
                continue
            topology = spec.topology
            picks, short = pick_instances(
                nodes, profile, spec.replicas, excluded=set(job.status.excluded_nodes),
                level=topology.level if topology else "",
                required=topology is not None and topology.mode == "Required")
            if picks:
                for name, dev, start in picks:
                    nodes[name].used.add((dev, start))
                book.charge(spec.queue, pool_name, want)
                self._admit_mig(job, picks, now)
                continue
            if topology and pick_instances(nodes, profile, spec.replicas, set(job.status.excluded_nodes))[0]:
                self._wait(job, "Topology", short)  # enough free instances, only not in one domain
                continue
            demand[profile] = demand.get(profile, 0) + spec.replicas
            blocked.append((job, profile))
        if not blocked:
            return
        # A free instance on a node that a blocked job excluded (it failed there) cannot serve
        # that job: keep it out of the supply the planner counts, or the job waits forever.
        unusable: dict[str, set[str]] = {}
        for job, profile in blocked:
            for name in job.status.excluded_nodes:
                unusable.setdefault(name, set()).add(profile)
        supply = {name: replace(node, used=node.used | {
            inst for profile in unusable.get(name, ()) for inst in node.free_instances(profile)})
            for name, node in nodes.items()}
        changes, reasons = plan_repartitions(supply, demand, pool.sharing.mig_profiles)
        for change in changes:
            try:
                self._repartition(change, nodes[change.node].devices)
            except Conflict as exc:
                log.info("MIG change on %s deferred: %s", change.node, exc)
        in_flight = sorted(n.name for n in nodes.values() if not n.ready)
        planned = {i.profile for c in changes for g in c.geometry.values() for i in g}
        for job, profile in blocked:
            if profile in planned or in_flight:
                where = ", ".join(sorted({c.node for c in changes} | set(in_flight)))
                self._wait(job, "MIGRepartitioning",
                           f"waiting for the MIG manager on {where} to create {profile} instances")
            else:
                self._wait(job, "MIGUnserved", "; ".join(reasons) or
                           f"no idle device can be partitioned for {profile} (devices with "
                           "running work are never repartitioned)")

    def _admit_mig(self, job: Job, picks: list[tuple[str, int, int]], now: float) -> None:
        st = job.status.model_copy(deep=True)
        st.placement = [ReplicaPlacement(replica=i, node=node, devices=[dev], mig_start=start)
                        for i, (node, dev, start) in enumerate(picks)]
        st.admitted_time = to_dt(now)
        st.retry_after = None
        nodes = sorted({n for n, _, _ in picks})
        self._transition(job, st, "Admitted", "Admitted", "True", "Admitted",
                         f"{len(picks)} MIG instance(s) on {', '.join(nodes)}")

    def _repartition(self, change: Repartition, devices: int) -> None:
        """Render the config into the mig-parted ConfigMap, then point the node at it."""
        cm = self.io.read_configmap(self.mig_namespace, MIG_CONFIGMAP)
        current = ((cm or {}).get("data") or {}).get(MIG_CONFIGMAP_KEY)
        text = merge_configmap(current, change.name, render_config(change.geometry, devices))
        self.io.put_configmap(self.mig_namespace, MIG_CONFIGMAP, {MIG_CONFIGMAP_KEY: text})
        node = self.cache.store("nodes").get("", change.node) or {}
        version = node.get("metadata", {}).get("resourceVersion")
        self.io.patch_node(change.node, {"metadata": {
            "resourceVersion": version,
            "labels": {MIG_CONFIG_LABEL: change.name},
            "annotations": {MIG_GEOMETRY_ANNOTATION: encode_geometry(change.geometry)},
        }})
        self._mig_sent[change.node] = (version, dict(change.geometry))
        self.events.record({**node, "apiVersion": "v1", "kind": "Node"}, "Normal", "MIGRepartition",
                           f"MIG config {change.name}: " + "; ".join(
                               f"GPU {d}: {'+'.join(i.profile for i in g)}"
                               for d, g in sorted(change.geometry.items()) if g))

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

    def _wait(self, job: Job, cause: str, reason: str) -> None:
        st = job.status.model_copy(deep=True)
        phase = "Restarting" if st.phase == "Restarting" else "Queued"
        self._transition(job, st, phase, "Admitted", "False", cause, reason,
                         "Warning" if cause in ("NoQueue", "NoPool", "InvalidTopology",
                                                "SharingMismatch", "InvalidRequest") else "Normal")

    def _admit(self, job: Job, decision: Admit, now: float) -> None:
        """Record the reservation (the ledger) before creating anything."""
        assert job.spec is not None
        st = job.status.model_copy(deep=True)
        by_member = sorted(decision.placement.allocations, key=lambda a: int(a.member))
        st.placement = [
            ReplicaPlacement(
                replica=int(a.member), node=a.node, devices=[s.index for s in a.devices],
                gpu_milli=a.devices[0].milli if a.devices and a.devices[0].milli < WHOLE else None,
            )
            for a in by_member
        ]
        st.admitted_time = to_dt(now)
        st.retry_after = None
        created = ts(job.raw["metadata"].get("creationTimestamp"))
        if created:
            GANG_WAIT_SECONDS.labels(job.spec.pool, job.spec.queue).observe(max(0.0, now - created))
        nodes = sorted({a.node for a in by_member})
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
        pools: Mapping[str, GPUPoolSpec],
    ) -> None:
        if self.status_writer is None:
            return
        for name, (_, raw) in queues.items():
            mine = [j for j in jobs if j.spec is not None and j.spec.queue == name]
            usage: dict[str, float] = {}
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
            status = {
                "observedGeneration": raw["metadata"].get("generation"),
                "usage": [{"pool": p, "gpus": round(g, 3)} for p, g in sorted(usage.items())],
                "running": sum(1 for j in mine if j.status.phase in ACTIVE),
                "pending": sum(1 for j in mine if j.status.phase in ("Queued", "Restarting")),
                "conditions": [c.wire() for c in conditions],
            }
            if (prev != status and self._queue_status.get(name) != status
                    and self.status_writer.patch_status("tenantqueues", "", name, status)):
                self._queue_status[name] = status
