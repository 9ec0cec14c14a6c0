"""A plain-data snapshot of the fleet that placement decisions read and tentatively modify.

Units are integers so sums never drift: GPU shares in milli-GPU (1000 = one whole device),
CPU in millicores, memory in MiB. A MIG-partitioned device is held instance by instance
(each worth its `wanka.units.mig_share_milli`), never whole or by fraction. What-if changes
(dry runs, preemption) use a `Transaction`, which records an undo log instead of copying
the fleet.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

from wanka.core.constraints import Taint
from wanka.units import WHOLE as WHOLE  # milli-GPU in one device (re-exported for the core)
from wanka.units import mig_share_milli

if TYPE_CHECKING:
    from wanka.core.gang import CandidateCache

HealthState = Literal["Healthy", "Sick", "Recovering", "Quarantined", "Onboarding"]


class OverAllocation(ValueError):
    """Raised when an allocation would take more than a device, or a node, has."""


@dataclass(slots=True)
class Device:
    """One accelerator on a node, with what is already allocated on it."""

    index: int
    model: str = ""
    memory_mib: int = 0
    healthy: bool = True
    used_milli: int = 0
    used_memory_mib: int = 0
    shares: int = 0  # how many allocations currently hold a piece of this device
    # MIG geometry: start memory slice -> profile of each instance; empty for a whole device.
    mig: dict[int, str] = field(default_factory=dict)
    mig_held: set[int] = field(default_factory=set)  # starts of the instances allocations hold
    # A new geometry is being applied: its instances are planned for but not placeable yet.
    mig_settling: bool = False

    def free_instances(self, profile: str) -> list[int]:
        """Starts of the placeable, unheld instances of `profile`, lowest first."""
        if self.mig_settling:
            return []
        return sorted(s for s, p in self.mig.items() if p == profile and s not in self.mig_held)

    @property
    def free_milli(self) -> int:
        return WHOLE - self.used_milli

    @property
    def free_memory_mib(self) -> int:
        return self.memory_mib - self.used_memory_mib

    @property
    def idle(self) -> bool:
        return self.used_milli == 0 and self.shares == 0

    @property
    def usable(self) -> bool:
        return self.healthy


@dataclass(slots=True)
class Node:
    """A schedulable machine: allocatable resources, devices, labels and topology path."""

    name: str
    cpu_milli: int
    memory_mib: int
    devices: list[Device] = field(default_factory=list)
    labels: dict[str, str] = field(default_factory=dict)
    # Domain per pool topology level, closest first, e.g. ("nvl-3", "rack-1", "spine-0").
    topology: tuple[str, ...] = ()
    schedulable: bool = True  # False: tainted unhealthy, cordoned, NotReady or quarantined
    # Every other taint: it keeps off only the requests that do not tolerate it.
    taints: tuple[Taint, ...] = ()
    health: HealthState = "Healthy"
    used_cpu_milli: int = 0
    used_memory_mib: int = 0
    # Other pods using the node's extended resource without a device assignment we know of.
    # They count against whole free devices (the device plugin picks which).
    opaque_gpus: int = 0

    @property
    def model(self) -> str:
        return self.devices[0].model if self.devices else self.labels.get("wanka.io/gpu-model", "")

    @property
    def free_cpu_milli(self) -> int:
        return self.cpu_milli - self.used_cpu_milli

    @property
    def free_memory_mib(self) -> int:
        return self.memory_mib - self.used_memory_mib

    def whole_free_devices(self) -> list[Device]:
        """Healthy devices with nothing on them, minus those taken by opaque pods."""
        idle = [d for d in self.devices if d.healthy and d.idle]
        return idle[self.opaque_gpus :] if self.opaque_gpus else idle

    @property
    def free_whole(self) -> int:
        return len(self.whole_free_devices())

    @property
    def free_milli(self) -> int:
        """Free GPU capacity on healthy devices, in milli-GPU."""
        return sum(d.free_milli for d in self.devices if d.healthy) - self.opaque_gpus * WHOLE

    def domain(self, level_index: int) -> str:
        return self.topology[level_index] if level_index < len(self.topology) else ""


@dataclass(frozen=True, slots=True)
class DeviceShare:
    """A piece of one device held by an allocation."""

    index: int
    milli: int = WHOLE
    memory_mib: int = 0
    mig_start: int | None = None  # a MIG instance: its start memory slice on the device


@dataclass(frozen=True, slots=True)
class Allocation:
    """What one pod (one replica) holds on one node."""

    owner: str  # the gang or pod it belongs to, e.g. "team-a/llama-7b"
    member: str  # the replica within the owner, e.g. "0"
    node: str
    cpu_milli: int = 0
    memory_mib: int = 0
    devices: tuple[DeviceShare, ...] = ()
    opaque_gpus: int = 0  # whole devices taken without a known index (pods we do not place)

    @property
    def key(self) -> tuple[str, str]:
        return (self.owner, self.member)

    @property
    def gpu_milli(self) -> int:
        return sum(s.milli for s in self.devices) + self.opaque_gpus * WHOLE


class Snapshot:
    """The fleet plus every allocation on it. Mutated only through `apply` and `release`."""

    __slots__ = ("_by_owner", "allocations", "candidate_cache", "levels", "nodes")

    def __init__(
        self,
        nodes: Iterable[Node] = (),
        allocations: Iterable[Allocation] = (),
        levels: Sequence[str] = (),
    ) -> None:
        # Topology label keys, closest first; Node.topology holds each node's value per level.
        self.levels: tuple[str, ...] = tuple(levels)
        self.nodes: dict[str, Node] = {n.name: n for n in nodes}
        self.allocations: dict[tuple[str, str], Allocation] = {}
        self._by_owner: dict[str, set[str]] = {}
        # While a scheduling cycle runs: told of every node an apply or release changes.
        self.candidate_cache: CandidateCache | None = None
        for alloc in allocations:
            self.apply(alloc)

    # --- reading -------------------------------------------------------------------------
    def owners(self) -> Iterator[str]:
        return iter(self._by_owner)

    def allocations_of(self, owner: str) -> list[Allocation]:
        return [self.allocations[(owner, m)] for m in sorted(self._by_owner.get(owner, ()))]

    def level_index(self, key: str) -> int:
        """Position of a topology label key in `levels`; ValueError when the pool lacks it."""
        return self.levels.index(key)

    def node(self, name: str) -> Node:
        return self.nodes[name]

    def total_devices(self) -> int:
        return sum(len(n.devices) for n in self.nodes.values())

    def allocated_milli(self) -> int:
        return sum(d.used_milli for n in self.nodes.values() for d in n.devices) + sum(
            n.opaque_gpus * WHOLE for n in self.nodes.values()
        )

    # --- writing -------------------------------------------------------------------------
    def check(self, alloc: Allocation) -> str | None:
        """Why `alloc` cannot be applied, or None when it fits."""
        node = self.nodes.get(alloc.node)
        if node is None:
            return f"node {alloc.node} is not in the snapshot"
        if alloc.key in self.allocations:
            return f"{alloc.owner}/{alloc.member} already holds an allocation"
        if alloc.cpu_milli > node.free_cpu_milli:
            return f"node {node.name} has {node.free_cpu_milli}m CPU free, needs {alloc.cpu_milli}m"
        if alloc.memory_mib > node.free_memory_mib:
            return f"node {node.name} has {node.free_memory_mib}Mi memory free, needs {alloc.memory_mib}Mi"
        seen: set[int] = set()
        for share in alloc.devices:
            if share.index in seen or not 0 <= share.index < len(node.devices):
                return f"device {share.index} on {node.name} is invalid or repeated"
            seen.add(share.index)
            dev = node.devices[share.index]
            if share.mig_start is not None or dev.mig:  # (a plain device skips the MIG rules: hot path)
                mig = _check_mig(node.name, dev, share)
                if mig is not None:
                    return mig
            if not 0 < share.milli <= WHOLE or share.milli > dev.free_milli:
                return f"device {share.index} on {node.name} has {dev.free_milli}m free, needs {share.milli}m"
            if share.memory_mib and dev.memory_mib and share.memory_mib > dev.free_memory_mib:
                return f"device {share.index} on {node.name} has {dev.free_memory_mib}Mi free memory"
        if alloc.opaque_gpus:
            idle = sum(1 for d in node.devices if d.idle and d.index not in seen) - node.opaque_gpus
            if alloc.opaque_gpus > idle:
                return f"node {node.name} has {idle} idle devices, needs {alloc.opaque_gpus}"
        return None

    def apply(self, alloc: Allocation) -> None:
        """Record `alloc`; raises OverAllocation instead of ever over-committing."""
        reason = self.check(alloc)
        if reason is not None:
            raise OverAllocation(reason)
        node = self.nodes[alloc.node]
        node.used_cpu_milli += alloc.cpu_milli
        node.used_memory_mib += alloc.memory_mib
        node.opaque_gpus += alloc.opaque_gpus
        for share in alloc.devices:
            dev = node.devices[share.index]
            dev.used_milli += share.milli
            dev.used_memory_mib += share.memory_mib
            dev.shares += 1
            if share.mig_start is not None:
                dev.mig_held.add(share.mig_start)
        self.allocations[alloc.key] = alloc
        self._by_owner.setdefault(alloc.owner, set()).add(alloc.member)
        if self.candidate_cache is not None:
            self.candidate_cache.touch(alloc.node)

    def release(self, owner: str, member: str | None = None) -> list[Allocation]:
        """Remove one member's allocation, or all of an owner's; returns what was removed."""
        members = [member] if member is not None else sorted(self._by_owner.get(owner, ()))
        removed = []
        for m in members:
            alloc = self.allocations.pop((owner, m), None)
            if alloc is None:
                continue
            node = self.nodes.get(alloc.node)
            if self.candidate_cache is not None:
                self.candidate_cache.touch(alloc.node)
            if node is not None:
                node.used_cpu_milli -= alloc.cpu_milli
                node.used_memory_mib -= alloc.memory_mib
                node.opaque_gpus -= alloc.opaque_gpus
                for share in alloc.devices:
                    dev = node.devices[share.index]
                    dev.used_milli -= share.milli
                    dev.used_memory_mib -= share.memory_mib
                    dev.shares -= 1
                    if share.mig_start is not None:
                        dev.mig_held.discard(share.mig_start)
            self._by_owner[owner].discard(m)
            if not self._by_owner[owner]:
                del self._by_owner[owner]
            removed.append(alloc)
        return removed

    def copy(self) -> Snapshot:
        """A deep, independent copy (prefer `transaction()` for what-if work on big fleets)."""
        clone = Snapshot(levels=self.levels)  # (no candidate cache: that is one cycle's)
        clone.nodes = copy.deepcopy(self.nodes)
        clone.allocations = dict(self.allocations)
        clone._by_owner = {k: set(v) for k, v in self._by_owner.items()}
        return clone

    def transaction(self) -> Transaction:
        return Transaction(self)

    def summary(self) -> Mapping[str, int]:
        devices = [d for n in self.nodes.values() for d in n.devices]
        return {
            "nodes": len(self.nodes),
            "devices": len(devices),
            "allocated_milli": self.allocated_milli(),
            "allocations": len(self.allocations),
        }


def _check_mig(node: str, dev: Device, share: DeviceShare) -> str | None:
    """Why `share` cannot hold its MIG instance (or, not being one, a partitioned device)."""
    where = f"device {share.index} on {node}"
    if share.mig_start is None:
        return f"{where} is MIG-partitioned: only its instances can be held" if dev.mig else None
    profile = dev.mig.get(share.mig_start)
    if profile is None:
        return f"{where} has no MIG instance at memory slice {share.mig_start}"
    if share.mig_start in dev.mig_held:
        return f"{where}: the {profile} instance at slice {share.mig_start} is already held"
    if share.milli != mig_share_milli(profile):
        return f"{where}: a {profile} instance is {mig_share_milli(profile)}m, not {share.milli}m"
    return None


class Transaction:
    """Tentative changes to a snapshot: `commit()` keeps them, `discard()` undoes them all.

    Used as a context manager it discards unless committed, so an exception mid-gang never
    leaves half a gang in the snapshot.
    """

    __slots__ = ("_done", "_log", "snapshot")

    def __init__(self, snapshot: Snapshot) -> None:
        self.snapshot = snapshot
        self._log: list[tuple[str, Allocation]] = []
        self._done = False

    def apply(self, alloc: Allocation) -> None:
        self.snapshot.apply(alloc)
        self._log.append(("apply", alloc))

    def release(self, owner: str, member: str | None = None) -> list[Allocation]:
        removed = self.snapshot.release(owner, member)
        self._log.extend(("release", a) for a in removed)
        return removed

    @property
    def applied(self) -> list[Allocation]:
        return [a for op, a in self._log if op == "apply"]

    def commit(self) -> None:
        self._done = True
        self._log.clear()

    def discard(self) -> None:
        for op, alloc in reversed(self._log):
            if op == "apply":
                self.snapshot.release(alloc.owner, alloc.member)
            else:
                self.snapshot.apply(alloc)
        self._log.clear()
        self._done = True

    def __enter__(self) -> Transaction:
        return self

    def __exit__(self, *exc: object) -> None:
        if not self._done:
            self.discard()
