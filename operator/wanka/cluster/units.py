"""Carries out the cycle's decisions for plain Pods, pod groups and batch Jobs (see
`cluster/consumers.py` for what a unit is and where its ledger lives).

Every write is idempotent and ordered so that a crash at any line leaves the ledger whole:
- admission reserves every member (pod annotations, or the Job's placement in the same patch
  that unsuspends it) before any member is bound;
- a group found partly reserved and not bound was interrupted mid-reservation: its
  reservations are released and it is decided again; one found wholly reserved is bound;
- preemption deletes a unit's pods (with their grace period) or suspends its Job; a
  preemptor first records its victims (`wanka.io/nominated`) so a restarted operator waits
  for the same victims instead of choosing new ones.
One unit's trouble is its own: the caller isolates each call.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from wanka import failpoints
from wanka.api.gpupool import GPUPoolSpec
from wanka.cluster.cache import FleetCache
from wanka.cluster.cache import version as version_of
from wanka.cluster.consumers import (
    NOMINATED_ANNOTATION,
    PLACEMENT_ANNOTATION,
    RESERVATION_ANNOTATIONS,
    Unit,
    batch_ledger,
    by_index,
    encode_placement,
    free_slots,
    reservation,
    slot_of,
)
from wanka.cluster.jobio import Conflict, JobIO, bind_assumed, delete_assumed
from wanka.cluster.kube import gang_writes
from wanka.cluster.translate import NODE_ANNOTATION, annotations_of
from wanka.cluster.writer import Recorder
from wanka.core.queueing import Admit
from wanka.core.snapshot import WHOLE, Allocation

log = logging.getLogger(__name__)


def _pod(obj: Mapping[str, Any]) -> dict[str, Any]:
    return {**obj, "apiVersion": "v1", "kind": "Pod"}


def _job(obj: Mapping[str, Any]) -> dict[str, Any]:
    return {**obj, "apiVersion": "batch/v1", "kind": "Job"}


def _name(pod: Mapping[str, Any]) -> str:
    return str(pod["metadata"]["name"])


def needs_reservation(alloc: Allocation) -> bool:
    """Whether a member's allocation must be written on its pod before the binding: a slice
    or MIG instance is pinned to its device through the pod's annotations (whole devices are
    the device plugin's to pick)."""
    return any(d.milli < WHOLE or d.mig_start is not None for d in alloc.devices)


def nominated(unit: Unit) -> list[str]:
    raw = annotations_of(unit.record).get(NOMINATED_ANNOTATION) or ""
    return [v for v in raw.split(",") if v]


@dataclass
class UnitWriter:
    cache: FleetCache
    io: JobIO
    events: Recorder
    clock: Callable[[], float]

    # --- reading back what we wrote ------------------------------------------------------
    def _assume_pod(self, stored: Mapping[str, Any] | None) -> None:
        if stored:
            self.cache.store("pods").assume(stored)

    def _assume_job(self, stored: Mapping[str, Any] | None) -> None:
        if stored:
            self.cache.store("jobs").assume(stored)

    # --- each pass, before the cycle ----------------------------------------------------
    def settle(self, unit: Unit, pool: GPUPoolSpec) -> bool:
        """Finish what an earlier pass began; True when the unit has members to place."""
        if unit.kind == "Job":
            return self._settle_job(unit, pool)
        free, held, bound = unit.free_pods, unit.reserved_pods, unit.bound_pods
        if unit.kind == "PodGroup" and not bound and len(unit.pods) < unit.size:
            if held:
                self.release(unit, "a member is gone before the group was bound")
            self.wait(unit, "PodGroupIncomplete",
                      f"pod group {unit.name} has {len(unit.pods)} of its {unit.size} members")
            return False
        if held and free and not bound:
            # Interrupted mid-reservation: released, and offered to this very cycle again, in
            # its place in the queue (never behind what arrived while it was half reserved).
            self.release(unit, "its reservation was not complete")
            return True
        if held:
            self.bind(unit, held)
            return False
        return bool(free)

    def _settle_job(self, unit: Unit, pool: GPUPoolSpec) -> bool:
        job = unit.batch
        assert job is not None
        if unit.finished:
            return False
        if not unit.suspended and not unit.placement:
            # Created running (or resumed by hand): Wanka admits it; until then it waits suspended.
            self._patch_job(unit, {"spec": {"suspend": True}})
            self.events.record(_job(job), "Normal", "Suspended",
                               f"suspended until Wanka admits it in queue {unit.queue}")
            return False
        if unit.suspended and unit.placement:
            self._patch_job(unit, {"metadata": {"annotations": {PLACEMENT_ANNOTATION: None}}})
            return False
        if unit.suspended:
            return True
        # Admitted: bind its pods to the ledger's slots once every member exists.
        held = [p for p in unit.pods if not p["spec"].get("nodeName") and slot_of(p) is not None
                and annotations_of(p).get(NODE_ANNOTATION)]
        if held:
            self.bind(unit, held)
        waiting = by_index(p for p in unit.free_pods if slot_of(p) is None)
        if not waiting:
            return False
        if len(unit.pods) < len(unit.placement) and not unit.bound_pods:
            return False  # members still being created: none binds before its gang exists
        ledger = batch_ledger(unit, pool)
        if len(ledger) != len(unit.placement):
            # An unreadable ledger: queued again, to be admitted afresh.
            self._patch_job(unit, {"spec": {"suspend": True},
                                   "metadata": {"annotations": {PLACEMENT_ANNOTATION: None}}})
            self.events.record(_job(job), "Warning", "InvalidPlacement",
                               f"annotation {PLACEMENT_ANNOTATION} cannot be read; suspended and queued again")
            return False
        slots = free_slots(unit)
        todo = list(zip(waiting, slots, strict=False))
        reserved = gang_writes(lambda item: self._reserve(item[0], ledger[item[1]], pool, item[1]), todo)
        self.bind(unit, [p for p in reserved if p is not None])
        return False

    # --- the cycle's decisions -----------------------------------------------------------
    def admit(self, unit: Unit, decision: Admit, pool: GPUPoolSpec) -> None:
        allocs = sorted(decision.placement.allocations, key=lambda a: (len(a.member), a.member))
        if unit.kind == "Job":
            stored = self._patch_job(unit, {"metadata": {"annotations": {
                PLACEMENT_ANNOTATION: encode_placement(allocs), NOMINATED_ANNOTATION: None}},
                "spec": {"suspend": False}}, conditional=True)
            nodes = sorted({a.node for a in allocs})
            self.events.record(_job(stored or unit.batch or {}), "Normal", "Admitted",
                               f"{decision.reason}: {len(allocs)} pods on {len(nodes)} nodes "
                               f"({', '.join(nodes[:8])}{' ...' if len(nodes) > 8 else ''})")
            return
        free = sorted(unit.free_pods, key=_name)
        if len(free) != len(allocs):
            raise Conflict(f"{unit.key}: {len(free)} members to place, {len(allocs)} placed")
        if unit.kind == "Pod" and not needs_reservation(allocs[0]):
            # A lone pod on whole devices: the binding is its whole ledger (one atomic write,
            # as kube-scheduler's), and the device plugin picks its devices. Bound, it holds
            # them in every snapshot as whole devices of no known index.
            self.bind(unit, [free[0]], allocs[0].node)
            return
        # Every member reserved first, then every member bound: never a half-bound group.
        reserved = gang_writes(lambda item: self._reserve(item[0], item[1], pool),
                               list(zip(free, allocs, strict=True)))
        if any(p is None for p in reserved):
            return  # a member changed or went away: the next pass releases and decides again
        self.bind(unit, [p for p in reserved if p is not None])

    def _reserve(self, pod: Mapping[str, Any], alloc: Any, pool: GPUPoolSpec,
                 slot: int | None = None) -> dict[str, Any] | None:
        notes: dict[str, str | None] = {k: None for k in RESERVATION_ANNOTATIONS}
        notes.update(reservation(alloc, pool.sharing.mode, slot))
        meta = pod["metadata"]
        try:
            stored = self.io.annotate_pod(meta["namespace"], meta["name"], notes,
                                          str(meta.get("resourceVersion") or "") or None)
        except Conflict as exc:
            log.info("reservation of %s/%s not written (%s); decided again", meta["namespace"], meta["name"], exc)
            return None
        self._assume_pod(stored)
        failpoints.hit("after-reserve")
        return stored

    def bind(self, unit: Unit, pods: list[dict[str, Any]], direct: str | None = None) -> None:
        """Bind reserved pods to their reserved nodes, side by side (`direct`: bind the one,
        unreserved pod of a lone-pod unit to this node)."""
        def one(pod: dict[str, Any]) -> str | None:
            meta = pod["metadata"]
            node = direct or str(annotations_of(pod).get(NODE_ANNOTATION))
            problem = bind_assumed(self.io, self.cache.store("pods"), pod, node)
            if problem is not None:
                return problem
            self.events.record(_pod(pod), "Normal", "Scheduled",
                               f"Successfully assigned {meta['namespace']}/{meta['name']} to {node}")
            failpoints.hit("after-unit-bind")
            return None

        outcomes = gang_writes(one, pods)
        problems = [p for p in outcomes if p]
        if problems:
            # The node went away or the pod changed: give back the reservations of the members
            # not bound (never of those bound: they hold their devices); decided again.
            self.events.record(_pod(pods[0]) if unit.batch is None else _job(unit.batch), "Warning",
                               "BindFailed", problems[0])
            for pod, problem in zip(pods, outcomes, strict=True):
                if problem and direct is None:  # (a direct binding reserved nothing)
                    self._clear(pod)

    def _clear(self, pod: Mapping[str, Any]) -> dict[str, Any] | None:
        """The pod with its reservation removed (as stored), or None when it is gone."""
        meta = pod["metadata"]
        try:
            stored = self.io.annotate_pod(meta["namespace"], meta["name"], {k: None for k in RESERVATION_ANNOTATIONS})
        except Conflict:
            return None  # gone: it holds nothing
        self._assume_pod(stored)
        return stored

    def release(self, unit: Unit, why: str) -> None:
        """Give back the reservations of members not bound; `unit` then shows them free."""
        held = unit.reserved_pods
        cleared = gang_writes(self._clear, held)
        now = {_name(p): p for p in cleared if p}
        unit.pods = [now.get(_name(p), p) for p in unit.pods if _name(p) in now or p not in held]
        if held:
            self.events.record(_pod(held[0]), "Normal", "ReservationReleased",
                               f"released the reservation of {len(held)} member(s): {why}")

    def wait(self, unit: Unit, cause: str, message: str) -> None:
        """PodScheduled=False (Unschedulable) with the reason, on every member still waiting;
        written only when it changes. A Job gets an Event."""
        text = f"{cause}: {message}"[:1024]
        if unit.kind == "Job":
            if unit.batch is not None:
                self.events.record(_job(unit.batch), "Warning" if cause not in ("Capacity", "Preempting",
                                                                                 "Reserved", "Quota") else "Normal",
                                   "FailedScheduling" if cause != "Preempting" else "Preempting", text)
            return
        now = datetime.fromtimestamp(self.clock(), UTC).strftime("%Y-%m-%dT%H:%M:%SZ")

        def one(pod: dict[str, Any]) -> None:
            conds = (pod.get("status") or {}).get("conditions") or []
            have = next((c for c in conds if c.get("type") == "PodScheduled"), None)
            if have and have.get("status") == "False" and have.get("message") == text:
                return
            meta = pod["metadata"]
            try:
                self.io.pod_condition(meta["namespace"], meta["name"], {
                    "type": "PodScheduled", "status": "False", "reason": "Unschedulable", "message": text,
                    "lastTransitionTime": now, "lastProbeTime": None})
            except Conflict:
                return
            seen = [c for c in conds if c.get("type") != "PodScheduled"]
            seen.append({"type": "PodScheduled", "status": "False", "reason": "Unschedulable", "message": text})
            self.cache.store("pods").assume({**pod, "status": {**(pod.get("status") or {}), "conditions": seen}},
                                            upto=version_of(pod) + 1)
            self.events.record(_pod(pod), "Warning", "FailedScheduling", text)

        gang_writes(one, unit.free_pods)

    def nominate(self, unit: Unit, victims: list[str]) -> None:
        """Record the victims before any of them is stopped (see the module's docstring)."""
        value = ",".join(sorted(victims)) if victims else None
        if (annotations_of(unit.record).get(NOMINATED_ANNOTATION) or None) == value:
            return
        if unit.kind == "Job":
            self._patch_job(unit, {"metadata": {"annotations": {NOMINATED_ANNOTATION: value}}})
            return
        meta = unit.record["metadata"]
        self._assume_pod(self.io.annotate_pod(meta["namespace"], meta["name"], {NOMINATED_ANNOTATION: value}))

    def preempt(self, unit: Unit, message: str) -> None:
        """Stop the unit so a preemptor can run: its pods deleted with their grace period (a
        Deployment makes new ones, which queue), or its Job suspended (the Job controller
        deletes its pods) and its ledger cleared."""
        if unit.kind == "Job":
            stored = self._patch_job(unit, {"spec": {"suspend": True},
                                            "metadata": {"annotations": {PLACEMENT_ANNOTATION: None}}})
            self.events.record(_job(stored or unit.batch or {}), "Normal", "Preempted", message)
            return

        def one(pod: dict[str, Any]) -> None:
            delete_assumed(self.io, self.cache.store("pods"), pod, None, self.clock())
            self.events.record(_pod(pod), "Normal", "Preempted", message)

        gang_writes(one, unit.pods)

    def _patch_job(self, unit: Unit, body: dict[str, Any], conditional: bool = False) -> dict[str, Any] | None:
        """`conditional`: only if the Job is still the version this pass decided on (its status
        changes often, so only admission, which depends on its spec, asks for that)."""
        job = unit.batch
        assert job is not None
        meta = job["metadata"]
        if conditional:
            body = {**body, "metadata": {**(body.get("metadata") or {}),
                                         "resourceVersion": meta.get("resourceVersion")}}
        stored = self.io.patch_batch_job(meta["namespace"], meta["name"], body)
        self._assume_job(stored)
        unit.batch = stored or job
        return stored
