"""All-or-nothing gang placement on a fleet snapshot, topology-aware and packing-aware.

One scan of the fleet computes, per eligible node, how many replicas of the gang fit there
(`k`). Per-domain sums of `k` at each topology level then answer "does the gang fit inside
one NVLink domain / rack / spine?" without per-replica scans. The chosen nodes are
allocated member by member inside a transaction (Volcano's Statement): committed only when
every member applied, rolled back otherwise, so a gang is never half placed.

Selection order, as DESIGN.md asks:
1. the lowest topology level at which ONE domain holds the whole gang (best-fit: the domain
   with the least room that still fits, so bigger domains stay whole for bigger gangs);
2. Required topology stops at its level; Preferred falls back to spanning as few top-level
   domains as possible (largest first, the last one best-fit), recursively below;
3. inside a domain, nodes already partly used first (best-fit), so whole nodes stay whole.

Whole devices, shares of one device and MIG instances (a `mig_profile` request takes one free
instance of that profile per member) go through the same steps: the same eligible nodes, the
same topology choice and the same packing key (free GPU on the node's usable devices).
"""

from __future__ import annotations

import heapq
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from wanka.core.constraints import selects, untolerated
from wanka.core.requests import GangRequest
from wanka.core.snapshot import WHOLE, Allocation, DeviceShare, Node, OverAllocation, Snapshot


class Writer(Protocol):
    """Where tentative allocations go: a `Snapshot` or an outer `Transaction`."""

    def apply(self, alloc: Allocation) -> None: ...

    def release(self, owner: str, member: str | None = None) -> list[Allocation]: ...


class SlicePolicy(Protocol):
    """Chooses the device for one fractional replica on a chosen node (see core/slicing.py)."""

    def choose_device(
        self, node: Node, milli: int, memory_mib: int, excluded: frozenset[int]
    ) -> int | None: ...


class BestFitSlices:
    """Default slice policy: the device left with the least free milli, shared devices first.

    Keeps idle devices idle (they are what whole-GPU work needs) and never takes an idle
    device that an opaque pod may be holding.
    """

    def choose_device(
        self, node: Node, milli: int, memory_mib: int, excluded: frozenset[int]
    ) -> int | None:
        idle_spare = sum(1 for d in node.devices if d.healthy and d.idle) - node.opaque_gpus
        best: tuple[int, int, int] | None = None
        for dev in node.devices:
            if not dev.healthy or dev.index in excluded or dev.free_milli < milli or dev.mig:
                continue
            if memory_mib and dev.memory_mib and dev.free_memory_mib < memory_mib:
                continue
            if dev.idle and idle_spare <= 0:
                continue
            key = (dev.free_milli - milli, 1 if dev.idle else 0, dev.index)
            if best is None or key < best:
                best = key
        return None if best is None else best[2]


BEST_FIT_SLICES = BestFitSlices()


@runtime_checkable
class SharePlacer(Protocol):
    """A slice policy that places whole fractional gangs itself, choosing nodes and devices
    across the pool (see core/sharing.py). Used unless a Required topology binds the gang."""

    def place_shares(
        self, snapshot: Snapshot, req: GangRequest, writer: Writer | None, dry_run: bool
    ) -> GangResult: ...


@dataclass(frozen=True, slots=True)
class GangPlacement:
    """Where every member of a gang went."""

    owner: str
    allocations: tuple[Allocation, ...]
    level: str  # label key of the smallest single domain holding the gang; "" if it spans
    domains: tuple[str, ...]  # the domains spanned at the pool's top level (or `level`)

    @property
    def nodes(self) -> tuple[str, ...]:
        return tuple(sorted({a.node for a in self.allocations}))


@dataclass(frozen=True, slots=True)
class GangResult:
    """A placement, or a reason a person can act on."""

    placement: GangPlacement | None
    reason: str = ""
    fit: int = 0  # most replicas that fit under the constraints (for messages and backfill)

    @property
    def ok(self) -> bool:
        return self.placement is not None


# How a skipped node reads in a reason, by `GangRequest.refusal`'s answer.
REFUSALS = {"taint": "untolerated taint", "affinity": "not matching nodeSelector/affinity"}

# A candidate node: (k replicas fit, packing key, name, topology path, node).
_Cand = tuple[int, int, str, tuple[str, ...], Node]


@dataclass(slots=True)
class _Skips:
    unschedulable: int = 0
    excluded: int = 0
    taint: int = 0
    affinity: int = 0
    model: int = 0
    cpu_memory: int = 0
    gpu: int = 0

    def describe(self) -> str:
        parts = [
            f"{n} {what}"
            for n, what in (
                (self.unschedulable, "unschedulable"),
                (self.excluded, "excluded"),
                (self.taint, REFUSALS["taint"]),
                (self.affinity, REFUSALS["affinity"]),
                (self.model, "other model"),
                (self.cpu_memory, "short of CPU/memory"),
                (self.gpu, "short of GPU"),
            )
            if n
        ]
        return "nodes skipped: " + ", ".join(parts) if parts else "no nodes in the pool"


class _Ctx:
    """What one request asks of a node, read once per request (the node loop is hot)."""

    __slots__ = ("cpu", "depth", "ex_devs", "ex_nodes", "g", "mem", "mig", "models", "off", "share",
                 "share_mem", "tolerations")

    def __init__(self, snapshot: Snapshot, req: GangRequest) -> None:
        self.models = req.models
        self.ex_devs: dict[str, set[int]] = {}
        for node_name, idx in req.excluded_devices:
            self.ex_devs.setdefault(node_name, set()).add(idx)
        self.g = req.whole_gpus
        self.share = req.share_milli
        self.share_mem = req.share_memory_mib
        self.mig = req.mig_profile
        self.cpu = req.cpu_milli
        self.mem = req.memory_mib
        self.depth = len(snapshot.levels)
        self.tolerations = req.tolerations
        # Nodes the request's labels rule out join the excluded ones: one set test per node.
        self.off: frozenset[str] = frozenset()
        if req.selective:
            self.off = frozenset(
                n.name
                for n in snapshot.nodes.values()
                if not selects(req.node_selector, req.affinity, n.name, n.labels)
            )
        self.ex_nodes = req.excluded_nodes | self.off


def _one(node: Node, c: _Ctx) -> _Cand | str:
    """How many replicas fit on `node`, or which `_Skips` field it counts under."""
    if not node.schedulable:
        return "unschedulable"
    if node.name in c.ex_nodes:
        return "affinity" if node.name in c.off else "excluded"
    if node.taints and untolerated(c.tolerations, node.taints) is not None:
        return "taint"
    devices = node.devices
    g = c.g
    share = c.share
    if (g or share) and c.models and (not devices or devices[0].model not in c.models):
        return "model"
    if len(devices) < g:
        return "gpu"
    k = 1 << 30
    if c.cpu:
        k = (node.cpu_milli - node.used_cpu_milli) // c.cpu
    if c.mem:
        m = (node.memory_mib - node.used_memory_mib) // c.mem
        if m < k:
            k = m
    if k <= 0:
        return "cpu_memory"
    bad = c.ex_devs.get(node.name)
    if g:
        idle_all = 0
        idle_ok = 0
        for d in devices:
            if d.used_milli == 0 and d.shares == 0 and d.healthy and not d.mig:
                idle_all += 1
                if bad is None or d.index not in bad:
                    idle_ok += 1
        free = idle_all - node.opaque_gpus
        if idle_ok < free:
            free = idle_ok
        if free // g < k:
            k = free // g
        pack = free
    elif c.mig:
        fits = 0
        pack = 0
        for d in devices:
            if d.healthy and (bad is None or d.index not in bad):
                fits += len(d.free_instances(c.mig))
                pack += WHOLE - d.used_milli
        if fits < k:
            k = fits
    elif share:
        share_mem = c.share_mem
        idle_spare = -node.opaque_gpus
        fits = 0
        idle_fits = -1
        pack = 0
        for d in devices:
            if not d.healthy or d.mig or (bad is not None and d.index in bad):
                continue
            n = (WHOLE - d.used_milli) // share
            if share_mem and d.memory_mib:
                n = min(n, (d.memory_mib - d.used_memory_mib) // share_mem)
            if d.used_milli == 0 and d.shares == 0:
                idle_spare += 1
                # which idle devices opaque pods hold is unknown: count the smallest
                idle_fits = n if idle_fits < 0 else min(idle_fits, n)
                pack += WHOLE
                continue
            fits += n
            pack += WHOLE - d.used_milli
        # idle devices behind opaque pods are not ours to slice
        if idle_spare > 0 and idle_fits > 0:
            fits += idle_spare * idle_fits
        k = min(k, fits)
    else:
        pack = node.cpu_milli - node.used_cpu_milli
    if k <= 0:
        return "gpu"
    path = node.topology
    depth = c.depth
    if len(path) != depth or not all(path):
        # a node without a label at a level is a domain of its own, never lumped
        path = tuple(path[i] if i < len(path) and path[i] else "\0" + node.name for i in range(depth))
    return (k, pack, node.name, path, node)


class CandidateCache:
    """Candidates of the request shapes one scheduling cycle has seen, kept current.

    A cycle places gang after gang on one snapshot; most of a burst asks the same shape
    (a sweep of one-GPU jobs), and each placement changes a node or two. So each shape's
    per-node verdicts are kept, and only nodes an `apply` or `release` touched since are
    read again: a decision costs the nodes that changed, not the whole fleet. The snapshot
    reports its changes here (`touch`) while the cache is attached to it; nothing else in
    a node may change meanwhile (a cycle only applies and releases)."""

    LIMIT = 64  # shapes kept; the least recently used goes

    def __init__(self) -> None:
        self._shapes: dict[Any, tuple[dict[str, _Cand | str], set[str], dict[str, int]]] = {}
        # Per shape, a best-fit heap of (packing key, node) over its candidates; stale entries
        # are dropped as they surface (a node's current verdict is the truth).
        self._heaps: dict[Any, list[tuple[int, str]]] = {}

    def touch(self, node: str) -> None:
        for _, dirty, _ in self._shapes.values():
            dirty.add(node)

    def best_one(self, snapshot: Snapshot, req: GangRequest) -> _Cand | None:
        """The node a one-member gang goes to (least free that fits, then by name, as
        `_choose` picks it), without reading every candidate; None when none fits."""
        key = self._key(req)
        if key is None:
            return None
        verdicts, _ = self._current(snapshot, req, key)
        heap = self._heaps.get(key)
        if heap is None or len(heap) > 4 * len(verdicts) + 64:
            heap = self._heaps[key] = [(v[1], v[2]) for v in verdicts.values() if not isinstance(v, str)]
            heapq.heapify(heap)
        while heap:
            pack, name = heap[0]
            v = verdicts.get(name)
            if v is not None and not isinstance(v, str) and v[1] == pack and v[0] >= 1:
                return v
            heapq.heappop(heap)
        return None

    @staticmethod
    def _key(req: GangRequest) -> Any:
        key = (req.models, req.excluded_nodes, req.excluded_devices, req.whole_gpus, req.share_milli,
               req.share_memory_mib, req.mig_profile, req.cpu_milli, req.memory_mib, req.tolerations,
               req.node_selector, req.affinity)
        try:
            hash(key)
        except TypeError:  # an unhashable constraint: no caching, same answer
            return None
        return key

    def candidates(self, snapshot: Snapshot, req: GangRequest) -> tuple[list[_Cand], _Skips]:
        key = self._key(req)
        if key is None:
            return _scan(snapshot, req)
        verdicts, counts = self._current(snapshot, req, key)
        skips = _Skips(**{k: v for k, v in counts.items() if v})
        return [v for v in verdicts.values() if not isinstance(v, str)], skips

    def _current(self, snapshot: Snapshot, req: GangRequest,
                 key: Any) -> tuple[dict[str, _Cand | str], dict[str, int]]:
        """The shape's per-node verdicts and skip counts, with the touched nodes read again."""
        entry = self._shapes.pop(key, None)
        ctx = None
        if entry is None:
            ctx = _Ctx(snapshot, req)
            verdicts = {name: _one(node, ctx) for name, node in snapshot.nodes.items()}
            counts: dict[str, int] = {}
            for v in verdicts.values():
                if isinstance(v, str):
                    counts[v] = counts.get(v, 0) + 1
            entry = (verdicts, set(), counts)
        verdicts, dirty, counts = entry
        if dirty:
            ctx = ctx or _Ctx(snapshot, req)
            for name in dirty:
                node = snapshot.nodes.get(name)
                if node is None or name not in verdicts:
                    continue
                old = verdicts[name]
                new = verdicts[name] = _one(node, ctx)
                if isinstance(old, str):
                    counts[old] -= 1
                if isinstance(new, str):
                    counts[new] = counts.get(new, 0) + 1
                elif (heap := self._heaps.get(key)) is not None:
                    heapq.heappush(heap, (new[1], new[2]))
            dirty.clear()
        self._shapes[key] = entry
        while len(self._shapes) > self.LIMIT:
            oldest = next(iter(self._shapes))
            del self._shapes[oldest]
            self._heaps.pop(oldest, None)
        return verdicts, counts


def _scan(snapshot: Snapshot, req: GangRequest) -> tuple[list[_Cand], _Skips]:
    skips = _Skips()
    cands: list[_Cand] = []
    ctx = _Ctx(snapshot, req)
    for node in snapshot.nodes.values():
        v = _one(node, ctx)
        if isinstance(v, str):
            setattr(skips, v, getattr(skips, v) + 1)
        else:
            cands.append(v)
    return cands, skips


def _candidates(snapshot: Snapshot, req: GangRequest) -> tuple[list[_Cand], _Skips]:
    """How many replicas fit on each eligible node: from the cycle's cache when one is
    attached to the snapshot, else one pass over the fleet."""
    cache = snapshot.candidate_cache
    if cache is not None:
        return cache.candidates(snapshot, req)
    return _scan(snapshot, req)


def _aggregate(cands: Sequence[_Cand], level: int) -> dict[str, int]:
    agg: dict[str, int] = {}
    for c in cands:
        dom = c[3][level]
        agg[dom] = agg.get(dom, 0) + c[0]
    return agg


def _best_fit(agg: dict[str, int], target: int) -> str | None:
    best: tuple[int, str] | None = None
    for dom, cap in agg.items():
        if cap >= target and (best is None or (cap, dom) < best):
            best = (cap, dom)
    return None if best is None else best[1]


def _fill_nodes(cands: Sequence[_Cand], target: int) -> list[tuple[_Cand, int]]:
    """Best-fit on nodes: least free first, so untouched nodes stay whole."""
    out: list[tuple[_Cand, int]] = []
    left = target
    for cand in sorted(cands, key=lambda c: (c[1], c[2])):
        if left <= 0:
            break
        take = min(cand[0], left)
        out.append((cand, take))
        left -= take
    return out


def _span(cands: Sequence[_Cand], target: int, top: int) -> list[tuple[_Cand, int]]:
    """Place `target` replicas in as few domains of level `top` as possible, recursively."""
    if top < 0:
        return _fill_nodes(cands, target)
    single = _single(cands, target, top)
    if single is not None:
        return single
    agg = _aggregate(cands, top)
    chosen: list[tuple[str, int]] = []
    left = target
    remaining = dict(agg)
    while left > 0 and remaining:
        # the last domain needed is the best-fit one; before that, the largest
        dom = _best_fit(remaining, left)
        if dom is None:
            dom = min(remaining, key=lambda d: (-remaining[d], d))
        take = min(remaining.pop(dom), left)
        chosen.append((dom, take))
        left -= take
    out: list[tuple[_Cand, int]] = []
    for dom, take in chosen:
        inside = [c for c in cands if c[3][top] == dom]
        out.extend(_span(inside, take, top - 1))
    return out


def _single(cands: Sequence[_Cand], target: int, top: int) -> list[tuple[_Cand, int]] | None:
    """Fit `target` replicas inside ONE domain at the lowest level <= `top` that allows it."""
    for level in range(top + 1):
        dom = _best_fit(_aggregate(cands, level), target)
        if dom is not None:
            inside = [c for c in cands if c[3][level] == dom]
            return _span(inside, target, level - 1)
    return None


def _short(level_key: str) -> str:
    return level_key.rsplit("/", 1)[-1] or "domain"


def _unplaceable(
    snapshot: Snapshot, req: GangRequest, cands: Sequence[_Cand], skips: _Skips, level: int
) -> GangResult:
    """Explain why a gang does not fit, with the number that is missing."""
    models = "/".join(sorted(req.models)) if req.models else ""
    if req.whole_gpus:
        what = f"{req.whole_gpus} free {models + ' ' if models else ''}GPU"
    elif req.mig_profile:
        what = f"a free {req.mig_profile} MIG instance"
    elif req.share_milli:
        what = f"{req.share_milli}m of one {models + ' ' if models else ''}GPU"
    else:
        what = "CPU/memory"
    total = sum(c[0] for c in cands)
    if level >= 0 and total >= req.needed:
        key = snapshot.levels[level]
        agg = _aggregate(cands, level)
        best_dom, best = max(agg.items(), key=lambda kv: (kv[1], kv[0]))
        return GangResult(
            None,
            f"needs {req.needed} replicas with {what} each in one {key}; "
            f"the best {_short(key)} ({best_dom.lstrip(chr(0))}) has room for {best}",
            best,
        )
    return GangResult(
        None,
        f"needs {req.needed} replicas with {what} each; the pool has room for {total} "
        f"({skips.describe()})",
        total,
    )


def _allocate(
    writer: Writer,
    req: GangRequest,
    chosen: Sequence[tuple[_Cand, int]],
    policy: SlicePolicy,
    done: list[Allocation],
) -> str | None:
    """Apply one allocation per member through `writer`; a reason when one does not fit."""
    ex_devs: dict[str, set[int]] = {}
    for node_name, idx in req.excluded_devices:
        ex_devs.setdefault(node_name, set()).add(idx)
    member = 0
    g = req.whole_gpus
    for (_, _, _, _, node), count in chosen:
        bad = ex_devs.get(node.name, set())
        if g:
            free = [
                d.index
                for d in node.devices
                if d.healthy and d.used_milli == 0 and d.shares == 0 and not d.mig and d.index not in bad
            ]
            for r in range(count):
                picks = free[r * g : (r + 1) * g]
                if len(picks) < g:
                    return f"{node.name} ran out of idle devices for {req.owner}"
                alloc = Allocation(
                    owner=req.owner,
                    member=str(member),
                    node=node.name,
                    cpu_milli=req.cpu_milli,
                    memory_mib=req.memory_mib,
                    devices=tuple(DeviceShare(i) for i in picks),
                )
                writer.apply(alloc)
                done.append(alloc)
                member += 1
        else:
            frozen_bad = frozenset(bad)
            for _ in range(count):
                shares: tuple[DeviceShare, ...] = ()
                if req.mig_profile:
                    inst = _pick_instance(node, req.mig_profile, frozen_bad)
                    if inst is None:
                        return f"{node.name} ran out of free {req.mig_profile} instances"
                    shares = (DeviceShare(inst[0], req.share_milli, mig_start=inst[1]),)
                elif req.share_milli:
                    pick = policy.choose_device(
                        node, req.share_milli, req.share_memory_mib, frozen_bad
                    )
                    if pick is None:
                        return f"slice policy found no device for {req.owner} on {node.name}"
                    shares = (DeviceShare(pick, req.share_milli, req.share_memory_mib),)
                alloc = Allocation(
                    owner=req.owner,
                    member=str(member),
                    node=node.name,
                    cpu_milli=req.cpu_milli,
                    memory_mib=req.memory_mib,
                    devices=shares,
                )
                writer.apply(alloc)
                done.append(alloc)
                member += 1
    return None


def _pick_instance(node: Node, profile: str, excluded: frozenset[int]) -> tuple[int, int] | None:
    """(device, start) of a free instance of `profile`: on the usable device with the least
    free GPU (best-fit, as shares), then the lowest index and start."""
    best: tuple[int, int, int] | None = None
    for dev in node.devices:
        if not dev.healthy or dev.index in excluded:
            continue
        starts = dev.free_instances(profile)
        if starts and (best is None or (dev.free_milli, dev.index) < best[:2]):
            best = (dev.free_milli, dev.index, starts[0])
    return None if best is None else (best[1], best[2])


def plan_gang(snapshot: Snapshot, req: GangRequest) -> tuple[list[tuple[Node, int]], str, int]:
    """Which nodes get how many replicas (no writes): (choice, reason, replicas that fit).

    An empty choice comes with the reason. Exposed for what-if callers such as backfill.
    """
    result = _choose(snapshot, req)
    if isinstance(result, GangResult):
        return [], result.reason, result.fit
    chosen, _, _ = result
    return [(c[4], n) for c, n in chosen], "", sum(n for _, n in chosen)


def _choose(
    snapshot: Snapshot, req: GangRequest
) -> tuple[list[tuple[_Cand, int]], str, tuple[str, ...]] | GangResult:
    """Pick nodes and replica counts for the gang, or explain why it does not fit.

    All members of one gang get the same GPU model (mixed generations would make the
    whole gang run at the speed of its slowest member), so each model is tried on its own
    and the tightest fit wins.
    """
    levels = len(snapshot.levels)
    level = -1
    if req.topology_level:
        if req.topology_level not in snapshot.levels:
            return GangResult(
                None,
                f"topology level {req.topology_level} is not one of the pool's levels "
                f"({', '.join(snapshot.levels) or 'none'})",
            )
        level = snapshot.level_index(req.topology_level)
    if req.replicas == 1 and req.needed == 1 and snapshot.candidate_cache is not None:
        # The common small job: the cycle's best-fit heap answers without a fleet-wide read.
        one = snapshot.candidate_cache.best_one(snapshot, req)
        if one is not None:
            return [(one, 1)], snapshot.levels[0] if levels else "", one[3][:1]
    cands, skips = _candidates(snapshot, req)
    total = sum(c[0] for c in cands)
    if total < req.needed:
        return _unplaceable(snapshot, req, cands, skips, -1)
    if req.replicas == 1:
        # one member: every domain holds it whole, so only node best-fit is left to decide
        one = min(cands, key=lambda c: (c[1], c[2]))
        return [(one, 1)], snapshot.levels[0] if levels else "", one[3][:1]
    groups: dict[str, list[_Cand]] = {}
    if req.whole_gpus or req.share_milli:
        for c in cands:
            groups.setdefault(c[4].devices[0].model, []).append(c)
    else:
        groups[""] = cands
    best: tuple[tuple[int, int, int, str], list[tuple[_Cand, int]]] | None = None
    best_group: tuple[int, str] = (-1, "")
    for model, group in sorted(groups.items()):
        room = sum(c[0] for c in group)
        best_group = max(best_group, (room, model))
        if room < req.needed:
            continue
        chosen = _choose_in(group, req, min(req.replicas, room), level, levels)
        if chosen is None:
            continue
        single, span = _spread(chosen, levels)
        # lowest single-domain level first, then fewest domains, then most replicas placed
        key = (single, span, -sum(n for _, n in chosen), model)
        if best is None or key < best[0]:
            best = (key, chosen)
    if best is None:
        if len(groups) > 1 and best_group[0] < req.needed:
            return GangResult(
                None,
                f"needs {req.needed} replicas ({req.describe()}) on one GPU model; the best "
                f"model ({best_group[1]}) has room for {best_group[0]} ({skips.describe()})",
                best_group[0],
            )
        return _unplaceable(snapshot, req, cands, skips, level)
    chosen = best[1]
    single = best[0][0]
    single_level = snapshot.levels[single] if single < levels else ""
    span_level = single if single < levels else levels - 1
    domains: tuple[str, ...] = ()
    if levels:
        domains = tuple(sorted({c[3][span_level] for c, _ in chosen}))
    return chosen, single_level, domains


def _spread(chosen: Sequence[tuple[_Cand, int]], levels: int) -> tuple[int, int]:
    """(lowest level holding all of `chosen` in one domain, or `levels`; domains at the top)."""
    for lvl in range(levels):
        if len({c[3][lvl] for c, _ in chosen}) == 1:
            return lvl, 1
    top = len({c[3][levels - 1] for c, _ in chosen}) if levels else 1
    return levels, top


def _choose_in(
    cands: list[_Cand], req: GangRequest, target: int, level: int, levels: int
) -> list[tuple[_Cand, int]] | None:
    required = req.topology_mode == "Required" and level >= 0
    top = level if required else levels - 1
    chosen = _single(cands, target, top)
    if chosen is None and required and target > req.needed:
        # an elastic gang may start smaller inside one domain rather than not at all
        most = max(_aggregate(cands, level).values())
        if most >= req.needed:
            chosen = _single(cands, most, top)
    if chosen is None and not required:
        chosen = _span(cands, target, top)
    return chosen


def place_gang(
    snapshot: Snapshot,
    req: GangRequest,
    *,
    writer: Writer | None = None,
    slice_policy: SlicePolicy = BEST_FIT_SLICES,
    dry_run: bool = False,
) -> GangResult:
    """Place every member of `req` or none; commits into the snapshot unless `dry_run`.

    With `writer` (an outer Transaction) the members are applied through it, so the caller's
    own discard undoes them; on failure they are released again through the same writer.
    """
    if snapshot.allocations_of(req.owner):
        return GangResult(None, f"{req.owner} already holds allocations")
    if (
        req.is_fractional
        and not req.mig_profile
        and isinstance(slice_policy, SharePlacer)
        and not (req.topology_mode == "Required" and req.topology_level)
    ):
        return slice_policy.place_shares(snapshot, req, writer, dry_run)
    result = _choose(snapshot, req)
    if isinstance(result, GangResult):
        return result
    chosen, single_level, domains = result
    done: list[Allocation] = []
    if dry_run or writer is None:
        with snapshot.transaction() as stmt:
            reason = _safe_allocate(stmt, req, chosen, slice_policy, done)
            if reason is None and not dry_run:
                stmt.commit()
    else:
        reason = _safe_allocate(writer, req, chosen, slice_policy, done)
        if reason is not None:
            writer.release(req.owner)
    if reason is not None:
        return GangResult(None, reason)
    placement = GangPlacement(req.owner, tuple(done), single_level, domains)
    return GangResult(placement, "", len(done))


def _safe_allocate(
    writer: Writer,
    req: GangRequest,
    chosen: Sequence[tuple[_Cand, int]],
    policy: SlicePolicy,
    done: list[Allocation],
) -> str | None:
    try:
        return _allocate(writer, req, chosen, policy, done)
    except OverAllocation as err:
        return f"member of {req.owner} did not fit after all: {err}"
