"""Fragmentation measures: how much free GPU capacity a node strands for a workload of shapes.

Two measures over the same hashable `NodeState`:

- `fgd_fragmentation`: the measure of the FGD paper (Weng et al., ATC'23). For each typical
  task shape, a node that can host one copy strands only its GPU slivers smaller than the
  shape's per-GPU share; a node that cannot host it (too little GPU or CPU, wrong model, or a
  CPU-only shape) strands all of its free GPU. Weighted by shape frequency.
- `wanka_fragmentation`: FGD's measure plus, for shapes that fit, the free GPU capacity the
  node's CPU cannot feed: a node with eight free GPUs and CPU for only two more tasks strands
  six GPUs for that shape, which FGD's one-copy test does not see.
- `stranded_milli`: what the operator reports: free capacity no pending shape could use.

Units: milli-GPU (1000 = one device), millicores, MiB.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from wanka.core.snapshot import WHOLE, Allocation, Node, Snapshot

_NO_LIMIT = 1 << 30  # stands for "unbounded" in copy counts; far above any real count


@dataclass(frozen=True, slots=True)
class NodeState:
    """What a node has free, and nothing else: the key of every score and fragmentation cache.

    `free` holds the milli-GPU a NEW allocation could use on each device, by device index:
    0 for unhealthy devices, devices held by pods we do not place, and devices that reached
    the pool's share limit, so every policy and measure sees the same usable capacity.

    The hash is computed once: states are dictionary keys on every placement decision.
    """

    model: str
    cpu_free: int
    memory_free: int
    free: tuple[int, ...]
    # Free GPU memory per device in MiB; empty when devices do not report memory.
    gpu_memory_free: tuple[int, ...] = ()
    # Kinds of GPU work on the node ("share", "1-gpu", "8-gpu"): GPU clustering reads them.
    tags: frozenset[str] = frozenset()
    _hash: int = field(init=False, repr=False, compare=False, default=0)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_hash", hash(self._key()))

    def _key(self) -> tuple[Any, ...]:
        return (
            self.model,
            self.cpu_free,
            self.memory_free,
            self.free,
            self.gpu_memory_free,
            self.tags,
        )

    def __hash__(self) -> int:
        return self._hash

    def __eq__(self, other: object) -> bool:
        if self is other:
            return True
        if not isinstance(other, NodeState):
            return NotImplemented
        return (
            self._hash == other._hash
            and self.free == other.free
            and self.cpu_free == other.cpu_free
            and self.memory_free == other.memory_free
            and self.model == other.model
            and self.gpu_memory_free == other.gpu_memory_free
            and self.tags == other.tags
        )

    def __reduce__(self) -> tuple[Any, ...]:
        # Rebuild through the constructor: string hashes differ between processes.
        return (NodeState, self._key())

    @property
    def free_total(self) -> int:
        return sum(self.free)

    @property
    def whole_free(self) -> int:
        return sum(1 for f in self.free if f == WHOLE)


@dataclass(frozen=True, slots=True)
class Shape:
    """A task shape of the target workload: per-GPU milli, GPU count, CPU and allowed models."""

    cpu_milli: int
    gpu_milli: int  # per device: < 1000 a share of one device, 1000 whole devices, 0 CPU-only
    gpus: int
    models: frozenset[str] = frozenset()  # empty: any model
    memory_mib: int = 0  # not part of FGD's key; Wanka's fill measure may use a typical value

    def allows(self, model: str) -> bool:
        return not self.models or model in self.models


@dataclass(frozen=True, slots=True)
class Workload:
    """A distribution of task shapes (frequencies sum to 1), e.g. the pending or typical tasks."""

    shapes: tuple[tuple[Shape, float], ...] = ()

    @classmethod
    def from_shapes(cls, shapes: Iterable[Shape], coverage: float = 0.95) -> Workload:
        """The most frequent shapes that together cover `coverage` of all, renormalised.

        Ties in frequency keep a stable order (by CPU, GPU share, count, models), as FGD's
        simulator does, so the cut is reproducible.
        """
        counts = Counter(shapes)
        total = sum(counts.values())
        if total == 0:
            return cls()
        ordered = sorted(
            counts.items(),
            key=lambda kv: (
                -kv[1],
                -kv[0].cpu_milli,
                -kv[0].gpu_milli,
                -kv[0].gpus,
                sorted(kv[0].models),
            ),
        )
        kept: list[tuple[Shape, int]] = []
        covered = 0
        for shape, n in ordered:
            if covered >= coverage * total:
                break
            kept.append((shape, n))
            covered += n
        return cls(tuple((s, n / covered) for s, n in kept))

    def __len__(self) -> int:
        return len(self.shapes)


def _hosts(state: NodeState, shape: Shape) -> bool:
    """Whether one copy of `shape` fits on the node's GPUs and CPU (FGD's test; memory ignored)."""
    if state.cpu_free < shape.cpu_milli or not shape.allows(state.model):
        return False
    need = shape.gpus
    for f in state.free:
        if f >= shape.gpu_milli:
            need -= 1
            if need <= 0:
                return True
    return False


def fgd_fragmentation(state: NodeState, workload: Workload) -> float:
    """FGD's expected fragmented milli-GPU of one node under `workload`."""
    total = sum(state.free)
    if total == 0:
        return 0.0
    frag = 0.0
    for shape, p in workload.shapes:
        if shape.gpus == 0 or not _hosts(state, shape):
            frag += p * total
        else:
            frag += p * sum(f for f in state.free if f < shape.gpu_milli)
    return frag


def fill_copies(state: NodeState, shape: Shape) -> int:
    """How many copies of `shape` the node could still take, all constraints together."""
    if shape.gpus == 0 or not shape.allows(state.model):
        return 0
    by_cpu = state.cpu_free // shape.cpu_milli if shape.cpu_milli > 0 else _NO_LIMIT
    by_mem = state.memory_free // shape.memory_mib if shape.memory_mib > 0 else _NO_LIMIT
    return min(by_cpu, by_mem, _gpu_copies(state, shape))


def _gpu_copies(state: NodeState, shape: Shape) -> int:
    if shape.gpu_milli >= WHOLE:
        return sum(1 for f in state.free if f >= WHOLE) // shape.gpus
    return sum(f // shape.gpu_milli for f in state.free)


def shape_stranded(state: NodeState, shape: Shape) -> int:
    """Free milli-GPU left over after filling the node with copies of `shape`."""
    return sum(state.free) - fill_copies(state, shape) * shape.gpu_milli * shape.gpus


def wanka_fragmentation(state: NodeState, workload: Workload, cpu_weight: float = 0.1) -> float:
    """FGD's measure plus the GPU capacity a shape could use but the node's CPU cannot feed.

    FGD's one-copy test calls a node with eight free GPUs and CPU for two more tasks "fine";
    here the six GPUs the CPU cannot serve count, weighted by `cpu_weight` because other
    shapes with less CPU per GPU may still use them.
    """
    total = sum(state.free)
    if total == 0:
        return 0.0
    frag = 0.0
    for shape, p in workload.shapes:
        if shape.gpus == 0 or not _hosts(state, shape):
            frag += p * total
            continue
        slivers = sum(f for f in state.free if f < shape.gpu_milli)
        by_gpu = _gpu_copies(state, shape)
        by_cpu = state.cpu_free // shape.cpu_milli if shape.cpu_milli > 0 else by_gpu
        if by_gpu > by_cpu:
            starved = total - slivers - by_cpu * shape.gpu_milli * shape.gpus
            frag += p * (slivers + cpu_weight * max(starved, 0))
        else:
            frag += p * slivers
    return frag


def stranded_milli(states: Iterable[NodeState], shapes: Sequence[Shape]) -> int:
    """Free milli-GPU that no single one of `shapes` could use, summed over nodes.

    This is the number the operator reports as `status.gpus.stranded`: capacity that is free
    but, given the pending request shapes, unusable until something departs.
    """
    gpu_shapes = [s for s in shapes if s.gpus > 0]
    stranded = 0
    for state in states:
        total = sum(state.free)
        if total == 0:
            continue
        if not gpu_shapes:
            stranded += total
            continue
        stranded += min(shape_stranded(state, s) for s in gpu_shapes)
    return stranded


def node_state(
    node: Node,
    max_shares_per_device: int | None = None,
    tags: frozenset[str] = frozenset(),
) -> NodeState:
    """The free-capacity view of a snapshot node that placement and measures read.

    Equal states are the same object (interned), so callers can spot unchanged nodes by
    identity, which is how `place` reuses its work across the decisions of a cycle.
    """
    devices = node.devices
    opaque_left = node.opaque_gpus
    if opaque_left == 0 and max_shares_per_device is None:  # the common case, quickly
        free = [WHOLE - dev.used_milli if dev.healthy else 0 for dev in devices]
    else:
        free = []
        for dev in devices:
            used = dev.used_milli
            usable = WHOLE - used if dev.healthy else 0
            if used == 0 and dev.shares == 0 and opaque_left > 0 and usable == WHOLE:
                # Pods we do not place hold some idle devices; the device plugin picks which.
                opaque_left -= 1
                usable = 0
            if max_shares_per_device is not None and dev.shares >= max_shares_per_device:
                usable = 0
            free.append(usable)
    memory: tuple[int, ...] = ()
    if any(dev.memory_mib > 0 for dev in devices):
        memory = tuple(
            dev.memory_mib - dev.used_memory_mib if dev.memory_mib > 0 else 0 for dev in devices
        )
    key = (
        node.model,
        node.cpu_milli - node.used_cpu_milli,
        node.memory_mib - node.used_memory_mib,
        tuple(free),
        memory,
        tags,
    )
    state = _INTERNED.get(key)
    if state is None:
        if len(_INTERNED) > 200_000:  # bound memory on long-running operators
            _INTERNED.clear()
        state = _INTERNED[key] = NodeState(*key)
    return state


_INTERNED: dict[tuple[Any, ...], NodeState] = {}


def work_tag(gpu_milli: int, gpus: int) -> str | None:
    """The kind of GPU work an allocation is, as GPU clustering groups it; None for CPU-only."""
    if gpus <= 0 or gpu_milli <= 0:
        return None
    if gpus == 1 and gpu_milli < WHOLE:
        return "share"
    return f"{gpus}-gpu"


def allocation_tag(alloc: Allocation) -> str | None:
    """The kind of GPU work one allocation is (see `work_tag`)."""
    if alloc.devices:
        return work_tag(max(s.milli for s in alloc.devices), len(alloc.devices))
    return work_tag(WHOLE, alloc.opaque_gpus)


def node_tags(snapshot: Snapshot) -> Mapping[str, frozenset[str]]:
    """The kinds of GPU work on each node, from the snapshot's allocations."""
    tags: dict[str, set[str]] = {}
    for alloc in snapshot.allocations.values():
        tag = allocation_tag(alloc)
        if tag is not None:
            tags.setdefault(alloc.node, set()).add(tag)
    return {name: frozenset(t) for name, t in tags.items()}


def snapshot_states(
    snapshot: Snapshot, max_shares_per_device: int | None = None
) -> dict[str, NodeState]:
    """A `NodeState` per schedulable node of the snapshot."""
    tags = node_tags(snapshot)
    return {
        name: node_state(node, max_shares_per_device, tags.get(name, frozenset()))
        for name, node in snapshot.nodes.items()
        if node.schedulable
    }


class StateCache:
    """`snapshot_states` for the decisions of one scheduling cycle, rebuilt only where needed.

    A `Snapshot` changes only through `apply` and `release` (its contract). When the same
    snapshot comes back with the same node objects and its allocations only grew, only the
    nodes of the new allocations are read again; anything else rebuilds every state. A node
    edited in place behind the snapshot's back needs a new cache (or a fresh
    `snapshot_states`). Returns a new mapping whenever a state changed; never mutate it.
    """

    __slots__ = ("allocs", "flags", "max_shares", "nodes", "snapshot", "states")

    def __init__(self) -> None:
        self.snapshot: Snapshot | None = None
        self.max_shares: int | None = None
        self.nodes: list[Node] = []
        self.flags: list[bool] = []
        self.allocs: list[Allocation] = []
        self.states: dict[str, NodeState] = {}

    def states_of(
        self, snapshot: Snapshot, max_shares_per_device: int | None = None
    ) -> dict[str, NodeState]:
        nodes = list(snapshot.nodes.values())
        flags = [n.schedulable for n in nodes]
        allocs = list(snapshot.allocations.values())
        if (
            snapshot is self.snapshot
            and max_shares_per_device == self.max_shares
            and nodes == self.nodes
            and flags == self.flags
        ):
            known = len(self.allocs)
            if allocs == self.allocs:
                return self.states
            if len(allocs) > known and allocs[:known] == self.allocs:
                states = dict(self.states)
                added: dict[str, set[str]] = {}
                for alloc in allocs[known:]:
                    tag = allocation_tag(alloc)
                    added.setdefault(alloc.node, set())
                    if tag is not None:
                        added[alloc.node].add(tag)
                for name, tags in added.items():
                    old = states.get(name)
                    if old is not None:
                        node = snapshot.nodes[name]
                        states[name] = node_state(node, max_shares_per_device, old.tags | tags)
                self.allocs, self.states = allocs, states
                return states
        self.snapshot, self.max_shares = snapshot, max_shares_per_device
        self.nodes, self.flags, self.allocs = nodes, flags, allocs
        self.states = snapshot_states(snapshot, max_shares_per_device)
        return self.states


def snapshot_stranded(
    snapshot: Snapshot, pending: Sequence[Shape], max_shares_per_device: int | None = None
) -> int:
    """Stranded milli-GPU of a whole snapshot for the pending shapes (see `stranded_milli`).

    Capacity locked by the share limit counts as stranded too: it is free but unusable.
    """
    states = snapshot_states(snapshot, max_shares_per_device)
    locked = 0
    for name in states:
        node = snapshot.nodes[name]
        healthy_free = sum(d.free_milli for d in node.devices if d.healthy)
        locked += healthy_free - node.opaque_gpus * WHOLE - sum(states[name].free)
    return stranded_milli(states.values(), pending) + max(locked, 0)
