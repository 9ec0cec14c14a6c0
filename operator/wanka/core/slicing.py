"""Slice packing: place a GPU share, whole devices or a CPU-only task on one node by a policy.

A policy only scores a node that already fits (`fit_reason` is the one feasibility test);
`place` turns the best score into a plain decision, or a reason a person can act on. The
operator, the simulator and the benchmarks all call `evaluate`, so a number measured in the
simulator is a number about the operator. Ties go to the lowest rank in a fixed node order.
"""

from __future__ import annotations

import bisect
import math
import random
from collections import Counter
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field, replace
from typing import Protocol

from wanka.core.fragmentation import (
    NodeState,
    Shape,
    StateCache,
    Workload,
    fgd_fragmentation,
    wanka_fragmentation,
    work_tag,
)
from wanka.core.snapshot import WHOLE, Allocation, DeviceShare, Snapshot

# Normalisers of FGD's baselines (the largest node of the OpenB fleet: 128 cores, 8 GPUs).
MAX_SPEC_CPU = 128_000
MAX_SPEC_GPU = 8_000
MAX_SCORE = 100


@dataclass(frozen=True, slots=True)
class SliceRequest:
    """What one pod asks for on ONE node.

    `gpu_milli` is per device: 1..999 is a share of a single device (`gpus` must be 1), 1000
    means `gpus` whole devices, 0 (with `gpus == 0`) a CPU-only task.
    """

    cpu_milli: int = 0
    memory_mib: int = 0
    gpu_milli: int = 0
    gpus: int = 0
    gpu_memory_mib: int = 0  # optional bound for a share: free memory the device must have
    models: frozenset[str] = frozenset()  # allowed GPU models; empty: any

    @classmethod
    def fraction(
        cls,
        milli: int,
        *,
        cpu_milli: int = 0,
        memory_mib: int = 0,
        gpu_memory_mib: int = 0,
        models: frozenset[str] = frozenset(),
    ) -> SliceRequest:
        return cls(cpu_milli, memory_mib, milli, 1, gpu_memory_mib, models)

    @classmethod
    def whole(
        cls,
        gpus: int,
        *,
        cpu_milli: int = 0,
        memory_mib: int = 0,
        models: frozenset[str] = frozenset(),
    ) -> SliceRequest:
        return cls(cpu_milli, memory_mib, WHOLE, gpus, 0, models)

    @property
    def is_share(self) -> bool:
        return self.gpus == 1 and 0 < self.gpu_milli < WHOLE

    @property
    def total_milli(self) -> int:
        return self.gpu_milli * self.gpus

    @property
    def tag(self) -> str | None:
        return work_tag(self.gpu_milli, self.gpus)

    @property
    def shape(self) -> Shape:
        return Shape(self.cpu_milli, self.gpu_milli, self.gpus, self.models, self.memory_mib)

    def invalid(self) -> str | None:
        """Why the request itself is malformed, or None."""
        if self.cpu_milli < 0 or self.memory_mib < 0 or self.gpu_memory_mib < 0:
            return "requests must not be negative"
        if self.gpus == 0:
            return None if self.gpu_milli == 0 else "a GPU share needs gpus == 1"
        if self.gpus < 0 or not 0 < self.gpu_milli <= WHOLE:
            return f"gpu share must be 1..{WHOLE} milli, got {self.gpu_milli}"
        if self.gpu_milli < WHOLE and self.gpus != 1:
            return "a fraction is a share of ONE device; ask for whole devices to use several"
        return None


Candidate = tuple[float, tuple[int, ...]]  # (score, device indexes); higher scores win


@dataclass(slots=True)
class PolicyContext:
    """What policies may read besides the node: the target workload, randomness, caches.

    The caches are keyed by `NodeState`, which holds no name, so identical nodes share work.
    """

    workload: Workload = field(default_factory=Workload)
    rng: random.Random = field(default_factory=lambda: random.Random(0))
    frag_cache: dict[tuple[str, int, tuple[int, ...]], float] = field(default_factory=dict)
    wanka_cache: dict[tuple[str, int, tuple[int, ...]], float] = field(default_factory=dict)
    results: dict[tuple[str, NodeState, SliceRequest], Candidate | None] = field(
        default_factory=dict
    )
    # Per policy: the nodes of the last `place` grouped by state, reused by the next one.
    indexes: dict[str, _NodeIndex] = field(default_factory=dict)
    # Node states of the last snapshot `place` read, kept up to date across a cycle.
    states: StateCache = field(default_factory=StateCache)

    def fgd_frag(self, state: NodeState) -> float:
        key = (state.model, state.cpu_free, state.free)
        value = self.frag_cache.get(key)
        if value is None:
            value = fgd_fragmentation(state, self.workload)
            if len(self.frag_cache) > 500_000:  # bound memory on long-running operators
                self.frag_cache.clear()
            self.frag_cache[key] = value
        return value

    @property
    def cpu_weight(self) -> float:
        """Weight of CPU-starved GPUs in Wanka's measure (see `wanka_fragmentation`).

        Measured on OpenB: 0.1 helps where tasks may use any GPU model, but with model
        constraints a node's spare CPU is contested only by its own model's tasks and the
        term misleads (gpuspec33 gets worse at any weight), so it is off there.
        """
        if any(shape.models for shape, _ in self.workload.shapes):
            return 0.0
        return 0.1

    def wanka_frag(self, state: NodeState) -> float:
        key = (state.model, state.cpu_free, state.free)
        value = self.wanka_cache.get(key)
        if value is None:
            value = wanka_fragmentation(state, self.workload, self.cpu_weight)
            if len(self.wanka_cache) > 500_000:
                self.wanka_cache.clear()
            self.wanka_cache[key] = value
        return value


class SlicePolicy(Protocol):
    """Scores a node that fits a request; the highest score wins, ties go to the node order."""

    name: str
    # True when the score depends only on (state, request, workload): callers may cache it.
    cacheable: bool
    # True when the score reads `NodeState.tags`; callers that group nodes may drop them if not.
    reads_tags: bool

    def score(self, state: NodeState, req: SliceRequest, ctx: PolicyContext) -> Candidate: ...


# --- feasibility ---------------------------------------------------------------------------
def _share_fits(state: NodeState, i: int, req: SliceRequest) -> bool:
    if state.free[i] < req.gpu_milli:
        return False
    if req.gpu_memory_mib and state.gpu_memory_free:
        return state.gpu_memory_free[i] >= req.gpu_memory_mib
    return True


def share_devices(state: NodeState, req: SliceRequest) -> list[int]:
    """Devices that could take the share `req`."""
    return [i for i in range(len(state.free)) if _share_fits(state, i, req)]


def whole_devices(state: NodeState, gpus: int) -> tuple[int, ...] | None:
    """The first `gpus` fully free devices by index, or None when there are not enough."""
    picked = tuple(i for i, f in enumerate(state.free) if f == WHOLE)[:gpus]
    return picked if len(picked) == gpus else None


def fit_reason(state: NodeState, req: SliceRequest) -> str | None:
    """Why the node cannot take `req` (a short category), or None when it fits."""
    if req.gpus > 0 and req.models and state.model not in req.models:
        return "wrong GPU model"
    if state.cpu_free < req.cpu_milli:
        return "not enough CPU"
    if state.memory_free < req.memory_mib:
        return "not enough memory"
    if req.gpus == 0:
        return None
    if req.is_share:
        if not share_devices(state, req):
            if req.gpu_memory_mib and any(f >= req.gpu_milli for f in state.free):
                return "no device with enough free GPU memory"
            return "no device with enough free share"
        return None
    if whole_devices(state, req.gpus) is None:
        return "not enough whole free devices"
    return None


def after(state: NodeState, req: SliceRequest, devices: tuple[int, ...]) -> NodeState:
    """The node's state once `req` holds `devices`."""
    free = list(state.free)
    for i in devices:
        free[i] -= req.gpu_milli
    memory = state.gpu_memory_free
    if memory and req.is_share and req.gpu_memory_mib:
        mem = list(memory)
        for i in devices:
            mem[i] -= req.gpu_memory_mib
        memory = tuple(mem)
    tag = req.tag
    return replace(
        state,
        cpu_free=state.cpu_free - req.cpu_milli,
        memory_free=state.memory_free - req.memory_mib,
        free=tuple(free),
        gpu_memory_free=memory,
        tags=state.tags | {tag} if tag is not None and tag not in state.tags else state.tags,
    )


def _best_fit_device(state: NodeState, req: SliceRequest) -> tuple[int, ...]:
    """The share device with the least free that fits (first by index among equals)."""
    best = -1
    for i in share_devices(state, req):
        if best < 0 or state.free[i] < state.free[best]:
            best = i
    return (best,)


def default_devices(state: NodeState, req: SliceRequest) -> tuple[int, ...]:
    """Device choice of the baselines: best-fit device for a share, first free ones for whole."""
    if req.gpus == 0:
        return ()
    if req.is_share:
        return _best_fit_device(state, req)
    picked = whole_devices(state, req.gpus)
    assert picked is not None, "callers check fit first"
    return picked


def _sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


# --- baselines, as defined by the FGD paper's simulator ------------------------------------
class FGD:
    """Fragmentation gradient descent: the placement that grows expected fragmentation least.

    Scores are `int(100 * sigmoid(dF / 1000))` with the integer truncation of the original,
    which merges near-equal candidates into ties that the fixed node order then breaks.
    """

    name = "fgd"
    cacheable = True
    reads_tags = False

    def score(self, state: NodeState, req: SliceRequest, ctx: PolicyContext) -> Candidate:
        before = ctx.fgd_frag(state)
        if req.is_share:
            best: Candidate | None = None
            for i in share_devices(state, req):
                delta = before - ctx.fgd_frag(after(state, req, (i,)))
                s = float(int(MAX_SCORE * _sigmoid(delta / 1000)))
                if best is None or s > best[0]:
                    best = (s, (i,))
            assert best is not None, "callers check fit first"
            return best
        devices = default_devices(state, req)
        delta = before - ctx.fgd_frag(after(state, req, devices))
        return float(int(MAX_SCORE * _sigmoid(delta / 1000))), devices


class BestFit:
    """Least leftover CPU and GPU after placement (equal weights, normalised by the max node)."""

    name = "bestfit"
    cacheable = True
    reads_tags = False

    def score(self, state: NodeState, req: SliceRequest, ctx: PolicyContext) -> Candidate:
        left = 0.5 * (state.cpu_free - req.cpu_milli) / MAX_SPEC_CPU
        left += 0.5 * (sum(state.free) - req.total_milli) / MAX_SPEC_GPU
        return float(int((1.0 - left) * MAX_SCORE)), default_devices(state, req)


class DotProduct:
    """Tetris' alignment: the smallest dot product of free and requested (CPU, GPU) vectors."""

    name = "dotprod"
    cacheable = True
    reads_tags = False

    def score(self, state: NodeState, req: SliceRequest, ctx: PolicyContext) -> Candidate:
        dot = (state.cpu_free / MAX_SPEC_CPU) * (req.cpu_milli / MAX_SPEC_CPU)
        dot += (sum(state.free) / MAX_SPEC_GPU) * (req.total_milli / MAX_SPEC_GPU)
        return float(int(MAX_SCORE * (1.0 - dot / 2))), default_devices(state, req)


class GpuPacking:
    """Prefer already-shared devices, then free devices on used nodes, then idle nodes."""

    name = "packing"
    cacheable = True
    reads_tags = False

    def score(self, state: NodeState, req: SliceRequest, ctx: PolicyContext) -> Candidate:
        devices = default_devices(state, req)
        if req.gpus == 0:
            return 0.0, devices
        fully_free = state.whole_free
        if fully_free == len(state.free):
            return float(max(MAX_SCORE // 3 - fully_free, fully_free)), devices
        # Walk devices by least free first, as the original does, to see what it would use.
        order = sorted(range(len(state.free)), key=lambda i: state.free[i])
        need, use_free, used = req.gpus, 0, []
        for i in order:
            if need == 0:
                break
            if state.free[i] >= req.gpu_milli:
                need -= 1
                used.append(i)
                use_free += state.free[i] == WHOLE
        if use_free > 0:
            return float(max(MAX_SCORE // 2 - use_free, MAX_SCORE // 3)), devices
        ratio = sum(state.free[i] * 100 // WHOLE for i in used)
        return float(max(MAX_SCORE - ratio // 10, MAX_SCORE // 2)), devices


class GpuClustering:
    """Put like with like: nodes already running the same kind of GPU work first."""

    name = "clustering"
    cacheable = True
    reads_tags = True

    def score(self, state: NodeState, req: SliceRequest, ctx: PolicyContext) -> Candidate:
        devices = default_devices(state, req)
        tag = req.tag
        if tag is None:
            return 0.0, devices
        used = (MAX_SCORE // 4) * (MAX_SPEC_GPU - sum(state.free)) // MAX_SPEC_GPU
        if tag in state.tags:
            band = 3 if len(state.tags) == 1 else 2
        else:
            band = 1 if not state.tags else 0
        return float(used + MAX_SCORE * band // 4), devices


class RandomFit:
    """A uniformly random fitting node and device: the floor every policy should beat."""

    name = "randomfit"
    cacheable = False
    reads_tags = False

    def score(self, state: NodeState, req: SliceRequest, ctx: PolicyContext) -> Candidate:
        if req.is_share:
            return ctx.rng.random(), (ctx.rng.choice(share_devices(state, req)),)
        return ctx.rng.random(), default_devices(state, req)


# --- Wanka's default -----------------------------------------------------------------------
class Wanka:
    """Least growth of CPU-aware fragmentation, in coarse steps, best-fit device among equals.

    Three changes to FGD, each measured on the OpenB traces (docs/simulator.md):
    - the measure also counts GPUs a typical shape could use but the node's CPU cannot feed;
    - scores are the gain in steps of `STEP` milli-GPU: differences below that are noise of
      the measure, and treating them as ties lets the fixed node order spread work instead of
      piling every task onto whichever node type wins by a hair;
    - among equal devices on a node, the fullest one that fits (best fit), keeping whole
      devices whole for whole-device tasks.
    """

    name = "wanka"
    cacheable = True
    reads_tags = False
    STEP = 60.0

    def score(self, state: NodeState, req: SliceRequest, ctx: PolicyContext) -> Candidate:
        before = ctx.wanka_frag(state)
        if req.is_share:
            best: tuple[float, int] | None = None
            pick = -1
            for i in share_devices(state, req):
                gain = math.floor((before - ctx.wanka_frag(after(state, req, (i,)))) / self.STEP)
                key = (float(gain), -state.free[i])
                if best is None or key > best:
                    best, pick = key, i
            assert best is not None, "callers check fit first"
            return best[0], (pick,)
        devices = default_devices(state, req)
        gain = math.floor((before - ctx.wanka_frag(after(state, req, devices))) / self.STEP)
        return float(gain), devices


POLICIES: dict[str, Callable[[], SlicePolicy]] = {
    "wanka": Wanka,
    "fgd": FGD,
    "bestfit": BestFit,
    "dotprod": DotProduct,
    "packing": GpuPacking,
    "clustering": GpuClustering,
    "randomfit": RandomFit,
}


def get_policy(name: str) -> SlicePolicy:
    """The policy registered as `name`; ValueError listing the known ones otherwise."""
    try:
        return POLICIES[name]()
    except KeyError:
        raise ValueError(f"unknown slice policy {name!r}; known: {', '.join(POLICIES)}") from None


# --- decisions -----------------------------------------------------------------------------
def evaluate(
    state: NodeState, req: SliceRequest, policy: SlicePolicy, ctx: PolicyContext
) -> Candidate | None:
    """The policy's score and devices for one node, or None when the node does not fit."""
    if fit_reason(state, req) is not None:
        return None
    return policy.score(state, req, ctx)


def cached_evaluate(
    state: NodeState, req: SliceRequest, policy: SlicePolicy, ctx: PolicyContext
) -> Candidate | None:
    """`evaluate`, remembered in `ctx` for cacheable policies (identical nodes score once)."""
    if not policy.cacheable:
        return evaluate(state, req, policy, ctx)
    key = (policy.name, state, req)
    if key in ctx.results:
        return ctx.results[key]
    if len(ctx.results) > 200_000:  # bound memory; the working set is far smaller
        ctx.results.clear()
    result = ctx.results[key] = evaluate(state, req, policy, ctx)
    return result


class _Group:
    """Nodes in one state: their (rank, name) tie keys, sorted, and results per request id."""

    __slots__ = ("keys", "results", "state")

    def __init__(self, state: NodeState) -> None:
        self.state = state
        self.keys: list[tuple[int, str]] = []
        self.results: dict[int, Candidate | None] = {}


_MISSING: Candidate = (float("nan"), ())


class _NodeIndex:
    """The nodes of a scheduling cycle grouped by identical `NodeState`.

    Each distinct state is evaluated once per request shape, and groups survive between
    decisions: only nodes whose state changed (by identity; `node_state` interns states)
    move. Results are kept per group, keyed by a small request id, until the group empties.
    """

    __slots__ = ("groups", "names", "order_copy", "req_ids", "state_of", "values")

    def __init__(self) -> None:
        self.groups: dict[NodeState, _Group] = {}
        self.state_of: dict[str, NodeState] = {}
        self.names: list[str] = []
        self.values: list[NodeState] = []
        self.order_copy: dict[str, int] | None = None
        self.req_ids: dict[SliceRequest, int] = {}

    def sync(self, states: Mapping[str, NodeState], order: Mapping[str, int] | None) -> None:
        """Bring the groups up to date with `states` and the tie `order`."""
        same_order = (order is None and self.order_copy is None) or (
            order is not None and self.order_copy is not None and order == self.order_copy
        )
        if not same_order:
            self.groups.clear()
            self.state_of.clear()
            self.names, self.values = [], []
            self.order_copy = dict(order) if order is not None else None
        names = list(states)
        values = list(states.values())
        if names == self.names and values == self.values:
            return  # unchanged (compared by identity first, in C)
        size = len(self.order_copy) if self.order_copy is not None else 0
        seen = set(names) if len(names) != len(self.state_of) or names != self.names else None
        for name, state in zip(names, values, strict=True):
            old = self.state_of.get(name)
            if old is state:
                continue
            if old is not None:
                if old == state:
                    self.state_of[name] = state
                    continue
                self._remove(name, old, size)
            self.state_of[name] = state
            group = self.groups.get(state)
            if group is None:
                group = self.groups[state] = _Group(state)
            rank = self.order_copy.get(name, size) if self.order_copy is not None else 0
            bisect.insort(group.keys, (rank, name))
        if seen is not None:
            for name in [n for n in self.state_of if n not in seen]:
                self._remove(name, self.state_of.pop(name), size)
        self.names, self.values = names, values

    def _remove(self, name: str, state: NodeState, size: int) -> None:
        group = self.groups[state]
        rank = self.order_copy.get(name, size) if self.order_copy is not None else 0
        del group.keys[bisect.bisect_left(group.keys, (rank, name))]
        if not group.keys:
            del self.groups[state]

    def best(
        self, req: SliceRequest, policy: SlicePolicy, ctx: PolicyContext
    ) -> tuple[float, int, str, tuple[int, ...]] | None:
        """The highest score, then the lowest (rank, name): exactly `place`'s rule."""
        rid = self.req_ids.get(req)
        if rid is None:
            if len(self.req_ids) > 10_000:  # ids are only local keys; start afresh
                self.req_ids.clear()
                for group in self.groups.values():
                    group.results.clear()
            rid = self.req_ids[req] = len(self.req_ids)
        best_score = float("-inf")
        best_key: tuple[int, str] | None = None
        best_devices: tuple[int, ...] = ()
        for group in self.groups.values():
            result = group.results.get(rid, _MISSING)
            if result is _MISSING:
                result = group.results[rid] = cached_evaluate(group.state, req, policy, ctx)
            if result is None:
                continue
            score = result[0]
            if score < best_score:
                continue
            key = group.keys[0]
            if score > best_score or (best_key is not None and key < best_key):
                best_score, best_key, best_devices = score, key, result[1]
        if best_key is None:
            return None
        return best_score, best_key[0], best_key[1], best_devices


@dataclass(frozen=True, slots=True)
class SliceDecision:
    """Where a request goes: a node, and a share of each chosen device."""

    node: str
    devices: tuple[DeviceShare, ...]
    score: float

    def allocation(self, owner: str, member: str, req: SliceRequest) -> Allocation:
        return Allocation(
            owner=owner,
            member=member,
            node=self.node,
            cpu_milli=req.cpu_milli,
            memory_mib=req.memory_mib,
            devices=self.devices,
        )


@dataclass(frozen=True, slots=True)
class SliceRejection:
    """Why no node fits, with how many nodes failed for each reason."""

    reason: str
    counts: Mapping[str, int]


def place(
    snapshot: Snapshot,
    req: SliceRequest,
    policy: SlicePolicy,
    ctx: PolicyContext | None = None,
    *,
    max_shares_per_device: int | None = None,
    order: Mapping[str, int] | None = None,
    states: Mapping[str, NodeState] | None = None,
    exclude: Collection[str] = (),
) -> SliceDecision | SliceRejection:
    """The best node for `req` under `policy`, or why there is none.

    `order` ranks nodes for ties (lowest wins); by default node names in sorted order, so the
    same snapshot always gives the same decision. `states` (from `snapshot_states`, kept up
    to date with `after`) lets a scheduling cycle place many requests without rebuilding them;
    without it, `ctx` rebuilds only the nodes the snapshot's new allocations touched (see
    `StateCache`). Identical nodes are scored once, and their scores are kept in `ctx` for
    the next decision, so reuse one `ctx` for the decisions of a cycle. Nodes named in
    `exclude` are left out (and counted as unschedulable in a rejection).
    """
    bad = req.invalid()
    if bad is not None:
        return SliceRejection(f"invalid request: {bad}", {})
    ctx = ctx if ctx is not None else PolicyContext()
    if states is None:
        states = ctx.states.states_of(snapshot, max_shares_per_device)
    if exclude:
        states = {name: state for name, state in states.items() if name not in exclude}
    best: tuple[float, int, str, tuple[int, ...]] | None = None
    if policy.cacheable:
        # Identical nodes score alike: evaluate each distinct state once (see `_NodeIndex`).
        index = ctx.indexes.get(policy.name)
        if index is None:
            index = ctx.indexes[policy.name] = _NodeIndex()
        index.sync(states, order)
        best = index.best(req, policy, ctx)
    else:
        for name, state in states.items():
            result = cached_evaluate(state, req, policy, ctx)
            if result is None:
                continue
            rank = order.get(name, len(order)) if order is not None else 0
            score, devices = result
            if (
                best is None
                or score > best[0]
                or (score == best[0] and (rank, name) < (best[1], best[2]))
            ):
                best = (score, rank, name, devices)
    if best is None:
        why: Counter[str] = Counter(
            r for r in (fit_reason(s, req) for s in states.values()) if r is not None
        )
        unschedulable = len(snapshot.nodes) - len(states)
        if unschedulable > 0:
            why["node unschedulable or unhealthy"] += unschedulable
        return SliceRejection(_explain(req, why, len(snapshot.nodes), max_shares_per_device), why)
    score, _, name, devices = best
    shares = tuple(
        DeviceShare(
            index=i, milli=req.gpu_milli, memory_mib=req.gpu_memory_mib if req.is_share else 0
        )
        for i in devices
    )
    return SliceDecision(node=name, devices=shares, score=score)


def _explain(req: SliceRequest, why: Counter[str], nodes: int, max_shares: int | None) -> str:
    """A one-line reason like kube-scheduler's: what was asked, and why each node said no."""
    if req.is_share:
        asked = f"{req.gpu_milli}m of one GPU"
        if req.gpu_memory_mib:
            asked += f" with {req.gpu_memory_mib}Mi GPU memory"
    elif req.gpus:
        asked = f"{req.gpus} whole GPU(s) on one node"
    else:
        asked = "CPU only"
    if req.models and req.gpus:
        asked += f" of model {'|'.join(sorted(req.models))}"
    asked += f", {req.cpu_milli}m CPU, {req.memory_mib}Mi memory"
    if nodes == 0:
        return f"no nodes in the pool for {asked}"
    parts = ", ".join(f"{n} {r}" for r, n in why.most_common())
    hint = ""
    if why.get("no device with enough free share") and max_shares is not None:
        hint = f" (devices at the share limit of {max_shares} count as full)"
    return f"0/{nodes} nodes fit {asked}: {parts}{hint}"
