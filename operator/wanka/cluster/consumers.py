"""Plain Pods, pod groups and batch Jobs: GPU consumers other controllers create, turned into
the same core requests as TrainingJobs and placed by the same scheduling cycle.

A *unit* is what the cycle places all or nothing:
- a pod with `schedulerName: wanka` (a Deployment's or StatefulSet's pods are such pods, each
  its own unit);
- a pod group: the pods labelled `wanka.io/pod-group: <name>`, each annotated
  `wanka.io/pod-group-size: N`; nothing of it is bound until all N can be;
- a batch/v1 Job labelled `wanka.io/queue` (created with `spec.suspend: true`): admitted by
  unsuspending it once its `parallelism` pods can all be placed.

The ledger of a unit lives on its own objects, so a restarted operator rebuilds it from the
cluster like a TrainingJob's `status.placement`:
- a pod's reservation is its annotations (`wanka.io/node`, `wanka.io/devices`, ...), written
  before its binding; a group's members are all reserved before any is bound;
- a batch Job's is its annotation `wanka.io/placement`, written in the same patch that
  unsuspends it; its pods take a slot each (`wanka.io/slot`) when they are bound.

This module only reads: objects in, units and core requests out. `cluster/units.py` writes.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Literal

from wanka.api.gpupool import GPUPoolSpec
from wanka.api.tenantqueue import TenantQueueSpec
from wanka.cluster.mig import INSTANCE_ANNOTATION as MIG_INSTANCE_ANNOTATION
from wanka.cluster.mig import resource_for as mig_resource
from wanka.cluster.template import template_constraints
from wanka.cluster.translate import (
    BATCH_JOB_LABEL,
    DEVICES_ANNOTATION,
    GPU_MEMORY_ANNOTATION,
    JOB_LABEL,
    NODE_ANNOTATION,
    POD_GROUP_LABEL,
    SCHEDULER_NAME,
    SLOT_ANNOTATION,
    TERMINAL_PHASES,
    annotations_of,
    labels,
    parse_devices,
    pod_requests,
    ts,
)
from wanka.core.requests import GangRequest, InvalidRequest
from wanka.core.snapshot import WHOLE, Allocation, DeviceShare

QUEUE_LABEL = "wanka.io/queue"
POOL_LABEL = "wanka.io/pool"
GROUP_SIZE_ANNOTATION = "wanka.io/pod-group-size"
FRACTION_ANNOTATION = "wanka.io/gpu-fraction"
MEMORY_GIB_ANNOTATION = "wanka.io/gpu-memory-gib"
MIG_PROFILE_ANNOTATION = "wanka.io/mig-profile"
# Written by Wanka before the binding, read by the containers through the downward API (a pod
# someone else created cannot have its environment changed; see docs/pods.md).
VISIBLE_ANNOTATION = "wanka.io/visible-devices"
MPS_THREADS_ANNOTATION = "wanka.io/mps-thread-percentage"
MPS_MEMORY_ANNOTATION = "wanka.io/mps-memory-limit"
PLACEMENT_ANNOTATION = "wanka.io/placement"  # a batch Job's ledger
NOMINATED_ANNOTATION = "wanka.io/nominated"  # a preempting unit's victims, while they stop
INDEX_ANNOTATION = "batch.kubernetes.io/job-completion-index"
# The annotations that make up a pod's reservation (cleared together when it is released).
RESERVATION_ANNOTATIONS = (NODE_ANNOTATION, DEVICES_ANNOTATION, GPU_MEMORY_ANNOTATION, VISIBLE_ANNOTATION,
                           MPS_THREADS_ANNOTATION, MPS_MEMORY_ANNOTATION, MIG_INSTANCE_ANNOTATION,
                           SLOT_ANNOTATION)
PINNED_ENV = "NVIDIA_VISIBLE_DEVICES"
MAX_GROUP = 4096

UnitKind = Literal["Pod", "PodGroup", "Job"]


def _ts(value: Any) -> float:
    return ts(value) or 0.0


def live(pod: Mapping[str, Any]) -> bool:
    """Neither ended nor being deleted: a member that still counts."""
    return (not (pod.get("metadata") or {}).get("deletionTimestamp")
            and (pod.get("status") or {}).get("phase") not in TERMINAL_PHASES)


def bound(pod: Mapping[str, Any]) -> bool:
    return bool((pod.get("spec") or {}).get("nodeName"))


def reserved(pod: Mapping[str, Any]) -> bool:
    return not bound(pod) and bool(annotations_of(pod).get(NODE_ANNOTATION))


@dataclass
class Unit:
    """One unit as this pass sees it. Objects are the cache's: never mutated."""

    key: str  # its allocations' owner key in the snapshot (see translate.pod_owner)
    kind: UnitKind
    namespace: str
    name: str
    pods: list[dict[str, Any]] = field(default_factory=list)  # live members
    stopping: list[dict[str, Any]] = field(default_factory=list)  # members being deleted, still on a node
    batch: dict[str, Any] | None = None  # the batch Job

    @property
    def record(self) -> dict[str, Any]:
        """The object that speaks for the unit (Events, nominations): the Job, else its first pod."""
        if self.batch is not None:
            return self.batch
        return min(self.pods or self.stopping, key=lambda p: str(p["metadata"]["name"]))

    @property
    def template(self) -> dict[str, Any]:
        """A member's pod (a batch Job's pod template): what every member asks for."""
        if self.batch is not None:
            return dict((self.batch.get("spec") or {}).get("template") or {})
        return self.record

    def _label(self, key: str) -> str:
        source = self.batch if self.batch is not None else self.record
        return str(labels(source).get(key) or "")

    @property
    def queue(self) -> str:
        return self._label(QUEUE_LABEL)

    @property
    def pool(self) -> str:
        return self._label(POOL_LABEL)

    @property
    def priority(self) -> int:
        """The pods' priority (admission resolves their PriorityClass); a Job's from its
        template, else from its pods once they exist."""
        sources = ([self.template] if self.batch is not None else []) + self.pods + self.stopping
        for source in sources:
            value = (source.get("spec") or {}).get("priority")
            if isinstance(value, int):
                return value
        return 0

    @property
    def created(self) -> float:
        return _ts(self.record["metadata"].get("creationTimestamp"))

    @property
    def size(self) -> int:
        """Members wanted: 1, the group's declared size, or the Job's parallelism."""
        if self.kind == "Pod":
            return 1
        if self.kind == "Job":
            assert self.batch is not None
            spec = self.batch.get("spec") or {}
            parallelism = spec.get("parallelism")
            parallelism = 1 if parallelism is None else parallelism
            completions = spec.get("completions")
            if isinstance(completions, int) and isinstance(parallelism, int):
                done = int((self.batch.get("status") or {}).get("succeeded") or 0)
                parallelism = min(parallelism, max(0, completions - done))
            return parallelism if isinstance(parallelism, int) else 0
        sizes = {annotations_of(p).get(GROUP_SIZE_ANNOTATION) for p in self.pods + self.stopping}
        try:
            return int(str(next(iter(sizes)))) if len(sizes) == 1 else 0
        except ValueError:
            return 0

    # --- the unit's state in the ledger --------------------------------------------------
    @property
    def bound_pods(self) -> list[dict[str, Any]]:
        return [p for p in self.pods if bound(p)]

    @property
    def reserved_pods(self) -> list[dict[str, Any]]:
        return [p for p in self.pods if reserved(p)]

    @property
    def free_pods(self) -> list[dict[str, Any]]:
        return [p for p in self.pods if not bound(p) and not reserved(p)]

    @property
    def suspended(self) -> bool:
        return self.batch is not None and bool((self.batch.get("spec") or {}).get("suspend"))

    @property
    def finished(self) -> bool:
        if self.batch is None:
            return False
        conds = (self.batch.get("status") or {}).get("conditions") or []
        return any(c.get("type") in ("Complete", "Failed") and c.get("status") == "True" for c in conds)

    @property
    def placement(self) -> list[dict[str, Any]]:
        """A batch Job's ledger: one entry (node, devices) per slot."""
        if self.batch is None:
            return []
        raw = annotations_of(self.batch).get(PLACEMENT_ANNOTATION)
        try:
            out = json.loads(raw) if raw else []
        except ValueError:
            return []
        return [e for e in out if isinstance(e, dict) and isinstance(e.get("node"), str)] \
            if isinstance(out, list) else []

    @property
    def admitted(self) -> bool:
        """A batch Job Wanka admitted and that still runs."""
        return self.batch is not None and bool(self.placement) and not self.suspended and not self.finished

    @property
    def held(self) -> int:
        """Members holding devices: an admitted Job's ledger slots, else members bound or reserved."""
        return len(self.placement) if self.admitted else len(self.bound_pods) + len(self.reserved_pods)

    @property
    def holding(self) -> bool:
        """Whether anything of it still holds devices (a victim is stopped only once this is False)."""
        return bool(self.bound_pods or self.reserved_pods or any(bound(p) for p in self.stopping)
                    or self.admitted)


def collect_units(pods: Iterable[Mapping[str, Any]], jobs: Iterable[Mapping[str, Any]]) -> dict[str, Unit]:
    """Every unit in the cluster, by key: Wanka-scheduled pods that no TrainingJob owns, and
    batch Jobs labelled with a queue (whose pods belong to them, not to units of their own)."""
    units: dict[str, Unit] = {}
    ours = {}
    for job in jobs:
        if QUEUE_LABEL in labels(job):
            meta = job["metadata"]
            key = f"batch:{meta['namespace']}/{meta['name']}"
            ours[(meta["namespace"], meta["name"])] = key
            units[key] = Unit(key, "Job", meta["namespace"], meta["name"], batch=dict(job))
    for pod in pods:
        spec = pod.get("spec") or {}
        lab = labels(pod)
        if spec.get("schedulerName") != SCHEDULER_NAME or JOB_LABEL in lab:
            continue
        if (pod.get("status") or {}).get("phase") in TERMINAL_PHASES:
            continue
        meta = pod["metadata"]
        ns = meta["namespace"]
        batch = lab.get(BATCH_JOB_LABEL)
        if batch and (ns, batch) in ours:
            unit = units[ours[(ns, batch)]]
        elif lab.get(POD_GROUP_LABEL):
            group = lab[POD_GROUP_LABEL]
            key = f"group:{ns}/{group}"
            unit = units.setdefault(key, Unit(key, "PodGroup", ns, group))
        else:
            key = f"pod:{ns}/{meta['name']}"
            unit = units.setdefault(key, Unit(key, "Pod", ns, meta["name"]))
        if live(pod):
            unit.pods.append(dict(pod))
        elif bound(pod):
            unit.stopping.append(dict(pod))  # being deleted, still on its node
    return {k: u for k, u in units.items() if u.pods or u.stopping or u.batch is not None}


# --- what a unit asks for -------------------------------------------------------------------
@dataclass(frozen=True)
class Shape:
    """What each member asks for, in the core's terms."""

    gpus: int = 0
    milli: int = 0
    memory_mib: int = 0
    mig_profile: str = ""
    cpu_milli: int = 0
    mem_mib: int = 0


def shape_of(pod: Mapping[str, Any], pool: GPUPoolSpec) -> Shape:
    """A member's request; raises InvalidRequest with a message a person can act on."""
    notes = annotations_of(pod)
    cpu, mem, gpus = pod_requests(pod, pool.accelerator.resource_name)
    milli = memory = 0
    raw = notes.get(FRACTION_ANNOTATION)
    if raw is not None:
        try:
            fraction = float(raw)
        except ValueError:
            raise InvalidRequest(f"annotation {FRACTION_ANNOTATION}: {raw!r} is not a number") from None
        if not (math.isfinite(fraction) and 0 < fraction < 1):
            raise InvalidRequest(f"annotation {FRACTION_ANNOTATION}: {raw} is not between 0 and 1 "
                                 f"(ask for whole devices with {pool.accelerator.resource_name})")
        milli = max(1, round(fraction * WHOLE))
    raw = notes.get(MEMORY_GIB_ANNOTATION)
    if raw is not None:
        try:
            memory = int(float(raw) * 1024)
        except (ValueError, OverflowError):  # "inf" overflows int()
            raise InvalidRequest(f"annotation {MEMORY_GIB_ANNOTATION}: {raw!r} is not a finite number") from None
        if memory <= 0 or not milli:
            raise InvalidRequest(f"annotation {MEMORY_GIB_ANNOTATION} needs a positive value and "
                                 f"{FRACTION_ANNOTATION}")
    profile = str(notes.get(MIG_PROFILE_ANNOTATION) or "")
    if sum(1 for f in (gpus > 0, milli > 0, bool(profile)) if f) > 1:
        raise InvalidRequest(f"ask for one of {pool.accelerator.resource_name}, {FRACTION_ANNOTATION} "
                             f"or {MIG_PROFILE_ANNOTATION}, not several")
    return Shape(gpus, milli, memory, profile, cpu, mem)


def _containers(pod: Mapping[str, Any], init: bool = False) -> list[Mapping[str, Any]]:
    spec = pod.get("spec") or {}
    found = (spec.get("initContainers") or []) if init else []
    return [c for c in [*found, *(spec.get("containers") or [])] if isinstance(c, Mapping)]


def pinned(pod: Mapping[str, Any]) -> str | None:
    """None when every container, init containers included, takes its device from Wanka's
    annotation (the downward API), else which one does not: it would see every device of its
    node (a CUDA image sets NVIDIA_VISIBLE_DEVICES=all)."""
    for c in _containers(pod, init=True):
        env = {e.get("name"): e for e in c.get("env") or [] if isinstance(e, Mapping)}
        ref = ((env.get(PINNED_ENV) or {}).get("valueFrom") or {}).get("fieldRef") or {}
        if ref.get("fieldPath") != f"metadata.annotations['{VISIBLE_ANNOTATION}']":
            return str(c.get("name"))
    return None


def problem(unit: Unit, pools: Mapping[str, GPUPoolSpec],
            queues: Mapping[str, TenantQueueSpec], ns_labels: Mapping[str, str]) -> tuple[str, str] | None:
    """(reason, message) when the unit cannot be a request of its pool's cycle as it is."""
    what = {"Pod": "pod", "PodGroup": f"pod group {unit.name}", "Job": f"Job {unit.name}"}[unit.kind]
    where = "the Job" if unit.kind == "Job" else "the pod"
    if not unit.queue:
        return "NoQueue", f"{where} has no label {QUEUE_LABEL}: name the TenantQueue it runs under"
    if not unit.pool:
        return "NoPool", f"{where} has no label {POOL_LABEL}: name the GPUPool it runs in"
    queue = queues.get(unit.queue)
    if queue is None:
        return "NoQueue", f"TenantQueue {unit.queue} does not exist"
    if unit.namespace not in queue.namespaces and not (
            queue.namespace_selector and queue.namespace_selector.matches(dict(ns_labels))):
        return "NoQueue", f"TenantQueue {unit.queue} does not admit namespace {unit.namespace}"
    pool = pools.get(unit.pool)
    if pool is None:
        return "NoPool", f"GPUPool {unit.pool} does not exist or is invalid"
    if not any(q.pool == unit.pool for q in queue.quotas):
        mine = ", ".join(sorted(q.pool for q in queue.quotas)) or "none"
        return "NoQuota", f"TenantQueue {unit.queue} has no quota on pool {unit.pool} (its pools: {mine})"
    if queue.max_priority is not None and unit.priority > queue.max_priority:
        return ("PriorityTooHigh", f"priority {unit.priority} is above TenantQueue {unit.queue}'s "
                f"maxPriority {queue.max_priority}")
    if unit.kind == "PodGroup":
        size = unit.size
        if not 1 <= size <= MAX_GROUP:
            return ("InvalidRequest", f"{what}: every member needs the same annotation "
                    f"{GROUP_SIZE_ANNOTATION} with a count from 1 to {MAX_GROUP}")
        if len(unit.pods) > size:
            return "InvalidRequest", f"{what} has {len(unit.pods)} members but declares {size}"
        mixed = {(labels(p).get(QUEUE_LABEL), labels(p).get(POOL_LABEL)) for p in unit.pods}
        if len(mixed) > 1:
            return "InvalidRequest", f"{what}: members name different queues or pools"
        pool_spec = pools.get(unit.pool)
        if pool_spec is not None:
            try:
                shapes = {shape_of(p, pool_spec) for p in unit.pods}
            except InvalidRequest as exc:
                return "InvalidRequest", str(exc)
            if len(shapes) > 1:
                return ("InvalidRequest", f"{what}: members ask for different resources; a group is "
                        "placed as identical members")
    if unit.kind == "Job":
        spec = unit.template.get("spec") or {}
        if spec.get("schedulerName") != SCHEDULER_NAME:
            return ("InvalidRequest", f"spec.template.spec.schedulerName must be {SCHEDULER_NAME}, "
                    "so that Wanka binds the Job's pods")
        if unit.size < 1:
            return "InvalidRequest", "spec.parallelism must be at least 1"
    try:
        shape = shape_of(unit.template, pool)
    except InvalidRequest as exc:
        return "InvalidRequest", str(exc)
    mode = pool.sharing.mode
    if shape.milli and mode not in ("MPS", "TimeSlice"):
        return "SharingMismatch", f"{FRACTION_ANNOTATION} needs an MPS or TimeSlice pool; {unit.pool} is {mode}"
    if shape.mig_profile and mode != "MIG":
        return "SharingMismatch", f"{MIG_PROFILE_ANNOTATION} needs a MIG pool; {unit.pool} is {mode}"
    if mode == "MIG" and shape.gpus == 0 and not shape.mig_profile:
        return "SharingMismatch", f"{unit.pool} is a MIG pool: annotate {MIG_PROFILE_ANNOTATION}"
    if shape.mig_profile and shape.mig_profile not in pool.sharing.mig_profiles:
        return ("SharingMismatch", f"{unit.pool} offers MIG profiles {', '.join(pool.sharing.mig_profiles)}, "
                f"not {shape.mig_profile}")
    if shape.mig_profile and not any(mig_resource(shape.mig_profile) in ((c.get("resources") or {})
                                                                         .get("limits") or {})
                                     for c in _containers(unit.template)):
        return ("NotPinnable", f"a container must ask for {mig_resource(shape.mig_profile)}: 1 in its "
                "limits, so the device plugin hands it the instance (the chart's slice policy adds it)")
    if shape.milli:
        missing = pinned(unit.template)
        if missing is not None:
            return ("NotPinnable", f"container {missing} must take {PINNED_ENV} from "
                    f"metadata.annotations['{VISIBLE_ANNOTATION}'] (the downward API), or it would see "
                    "every device of its node; the chart's slice policy adds it")
    problems = template_constraints(unit.template).problems
    if problems:
        return "InvalidRequest", "; ".join(problems[:3])
    return None


def request(unit: Unit, pool: GPUPoolSpec, owner: str, replicas: int) -> GangRequest:
    """The core's request for `replicas` members of the unit under `owner`."""
    shape = shape_of(unit.template, pool)
    nodes = template_constraints(unit.template)
    return GangRequest(
        owner=owner, queue=unit.queue, pool=unit.pool, priority=unit.priority, replicas=replicas,
        gpus=shape.gpus, gpu_milli=shape.milli, gpu_memory_mib=shape.memory_mib, mig_profile=shape.mig_profile,
        cpu_milli=shape.cpu_milli, memory_mib=shape.mem_mib, tolerations=nodes.tolerations,
        node_selector=nodes.node_selector, affinity=nodes.affinity, created=unit.created,
    )


def fingerprint(unit: Unit) -> tuple[tuple[str, str], ...] | None:
    """The versions of every object a unit's requests are read from (its pods, its Job), or
    None when one has no version: what a `translate.PassMemo` may key a unit's derived values on."""
    out = []
    for obj in [*unit.pods, *unit.stopping, *([unit.batch] if unit.batch is not None else [])]:
        meta = obj.get("metadata") or {}
        if not meta.get("resourceVersion"):
            return None
        out.append((str(meta.get("name")), str(meta["resourceVersion"])))
    return tuple(out)


def running_request(unit: Unit, pool: GPUPoolSpec, held: int) -> GangRequest:
    """A unit holding `held` members' devices, as the cycle's running gang (quota, victims).
    A plain pod writes no checkpoint: all the work since it started is what preemption costs."""
    started = min((_ts((p.get("status") or {}).get("startTime")) or _ts(p["metadata"].get("creationTimestamp"))
                   for p in unit.bound_pods), default=None)
    base = request(unit, pool, unit.key, max(1, held))
    return replace(base, started=started)


# --- the ledger ---------------------------------------------------------------------------
def encode_share(devices: Iterable[DeviceShare]) -> str:
    return ",".join(str(d.index) if d.milli >= WHOLE else f"{d.index}:{d.milli}" for d in devices)


def reservation(alloc: Allocation, mode: str, slot: int | None = None) -> dict[str, str]:
    """The annotations that reserve `alloc` for a pod (and pin a slice to its device)."""
    notes = {NODE_ANNOTATION: alloc.node}
    mig = [d for d in alloc.devices if d.mig_start is not None]
    if mig:
        notes[MIG_INSTANCE_ANNOTATION] = f"{mig[0].index}:{mig[0].mig_start}"
    elif alloc.devices:
        notes[DEVICES_ANNOTATION] = encode_share(alloc.devices)
        share = alloc.devices[0]
        if len(alloc.devices) == 1 and share.milli < WHOLE:
            notes[VISIBLE_ANNOTATION] = str(share.index)
            if share.memory_mib:
                notes[GPU_MEMORY_ANNOTATION] = str(share.memory_mib)
            if mode == "MPS":
                notes[MPS_THREADS_ANNOTATION] = str(max(1, share.milli // 10))
                if share.memory_mib:
                    notes[MPS_MEMORY_ANNOTATION] = f"{share.index}={share.memory_mib}M"
    if slot is not None:
        notes[SLOT_ANNOTATION] = str(slot)
    return notes


def encode_placement(allocs: Iterable[Allocation]) -> str:
    """A batch Job's ledger: per slot, its node and devices."""
    out = []
    for a in allocs:
        entry: dict[str, Any] = {"node": a.node, "devices": encode_share(a.devices)}
        mig = [d for d in a.devices if d.mig_start is not None]
        if mig:
            entry = {"node": a.node, "mig": f"{mig[0].index}:{mig[0].mig_start}:{mig[0].milli}"}
        if a.devices and a.devices[0].memory_mib:
            entry["memoryMiB"] = a.devices[0].memory_mib
        out.append(entry)
    return json.dumps(out, separators=(",", ":"))


def slot_allocation(unit: Unit, slot: int, entry: Mapping[str, Any], shape: Shape) -> Allocation:
    """One slot of a batch Job's ledger as the allocation it holds."""
    devices: tuple[DeviceShare, ...] = ()
    if entry.get("mig"):
        index, start, milli = (int(x) for x in str(entry["mig"]).split(":"))
        devices = (DeviceShare(index, milli, mig_start=start),)
    elif entry.get("devices"):
        devices = parse_devices(str(entry["devices"]))
        memory = int(entry.get("memoryMiB") or 0)
        if memory and len(devices) == 1:
            devices = (DeviceShare(devices[0].index, devices[0].milli, memory),)
    return Allocation(unit.key, str(slot), str(entry["node"]), shape.cpu_milli, shape.mem_mib, devices)


def batch_ledger(unit: Unit, pool: GPUPoolSpec) -> list[Allocation]:
    """What an admitted batch Job holds by its ledger (its bound pods hold the same slots)."""
    if not unit.admitted:
        return []
    try:
        shape = shape_of(unit.template, pool)
        return [slot_allocation(unit, i, e, shape) for i, e in enumerate(unit.placement)]
    except (InvalidRequest, ValueError, TypeError):
        return []


def slot_of(pod: Mapping[str, Any]) -> int | None:
    raw = annotations_of(pod).get(SLOT_ANNOTATION)
    try:
        return int(raw) if raw is not None else None
    except ValueError:
        return None


def free_slots(unit: Unit) -> list[int]:
    """Slots of an admitted Job's ledger no live or stopping pod takes, in order."""
    taken = {slot_of(p) for p in unit.pods + unit.stopping}
    return [i for i in range(len(unit.placement)) if i not in taken]


def by_index(pods: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """Pods in completion-index order (an Indexed Job's rank i takes slot i when it is free),
    then by name."""
    def key(p: Mapping[str, Any]) -> tuple[int, str]:
        raw = str(annotations_of(p).get(INDEX_ANNOTATION) or "")
        return (int(raw) if raw.isascii() and raw.isdigit() else 1 << 30, str(p["metadata"]["name"]))
    return sorted(pods, key=key)
