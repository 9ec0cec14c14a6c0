"""The reservation ledger: what each admitted TrainingJob's `status.placement` holds.

The ledger lives in the API (job status), so every pass that accounts for capacity (the job
loop deciding admission, the pool loop reporting free and stranded GPUs) reads the same
entries and a gang reserved but not yet bound is never counted as free.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from pydantic import ValidationError

from wanka.api.common import lenient
from wanka.api.trainingjob import ReplicaPlacement, TrainingJobSpec, TrainingJobStatus
from wanka.cluster.translate import pod_requests
from wanka.core.lifecycle import ACTIVE
from wanka.core.snapshot import WHOLE, Allocation, DeviceShare


def ledger_allocations(
    key: str, spec: TrainingJobSpec, placement: Iterable[ReplicaPlacement]
) -> list[Allocation]:
    """One allocation per placed replica: whole devices, a share of one device, or one MIG
    instance (worth the spec's `gpu_milli`, as in quota)."""
    cpu_mem = (0, 0)
    try:
        cpu_mem = pod_requests({"spec": spec.template.wire()["spec"]}, "")[:2]
    except (KeyError, TypeError):
        pass
    mem_mib = int((spec.resources.gpu_memory_gi_b or 0) * 1024)
    out = []
    for p in placement:
        if p.mig_start is not None:
            shares: tuple[DeviceShare, ...] = tuple(
                DeviceShare(d, spec.resources.gpu_milli, mig_start=p.mig_start) for d in p.devices
            )
        elif p.gpu_milli:
            shares = tuple(DeviceShare(d, p.gpu_milli, mem_mib) for d in p.devices)
        else:
            shares = tuple(DeviceShare(d) for d in p.devices)
        out.append(Allocation(key, str(p.replica), p.node, cpu_mem[0], cpu_mem[1], shares))
    return out


def placement_of(alloc: Allocation) -> ReplicaPlacement:
    """The ledger entry of one member the scheduler placed (the inverse of the above)."""
    first = alloc.devices[0] if alloc.devices else None
    share = first is not None and first.mig_start is None and first.milli < WHOLE
    return ReplicaPlacement(
        replica=int(alloc.member), node=alloc.node, devices=[s.index for s in alloc.devices],
        gpu_milli=first.milli if share and first is not None else None,
        mig_start=first.mig_start if first is not None else None,
    )


def raw_ledger(job: Mapping[str, Any]) -> list[Allocation]:
    """The ledger entries of a TrainingJob as the API holds it (a dict); none when the job
    is not active or its spec or status cannot be read."""
    status_raw = job.get("status") or {}
    if status_raw.get("phase") not in ACTIVE or not status_raw.get("placement"):
        return []
    meta = job.get("metadata") or {}
    try:
        spec = TrainingJobSpec.model_validate(job.get("spec") or {})
    except ValidationError:
        return []
    status = lenient(TrainingJobStatus, status_raw)  # unknown fields never cost the placement
    return ledger_allocations(f"{meta.get('namespace')}/{meta.get('name')}", spec, status.placement)
