"""One pure scheduling cycle: queue order, quotas with borrowing, preemption and backfill.

`schedule(snapshot, queues, pending, running, now)` reads a snapshot (one GPUPool) and
returns plain decisions with a reason for every pending gang, like Kueue's scheduling cycle.
It never changes the snapshot: everything it tries happens in a transaction it discards.
The caller assumes each `Admit` in its cache, stops each `Preempt`ed gang (which resumes from
its checkpoint later), and runs the next cycle when something changes.

Semantics, chosen to be easy to explain to a tenant:

* Order. Each queue offers its head (priority desc, then age, then name). Among heads: higher
  priority first, then the queue with the larger fair-share deficit (its weighted share of
  the pool minus what it uses, in GPU-equivalents where a 0.25 slice counts 0.25), then the
  older gang, then the name, so the order is total and deterministic.
* Quota and cohort. All queues with a quota in a pool form that pool's cohort. A queue may
  use its nominal `gpus`; beyond it, it borrows up to `borrowing_limit` (None: no limit)
  from the cohort's unused quota, i.e. only while the cohort's total usage stays within
  the sum of nominal quotas. Capacity above that sum is not handed out.
* Preemption (whole gangs only). Candidates are, when the preemptor's queue says
  `withinQueue: LowerPriority`, lower-priority gangs of the same queue; and, when it says
  `reclaimBorrowed: true` and the preemptor stays within its own nominal quota, gangs of
  other queues that currently borrow (any priority: a lender gets its quota back). Victims
  are taken lowest priority first, then least work lost since their last checkpoint, then
  newest; the shortest prefix that lets the preemptor fit is found, then every victim that
  turns out unnecessary is spared. The preemptor is reserved its placement this cycle and
  admitted in a later cycle once its victims are gone.
* Backfill. The first gang blocked by capacity (not by quota) gets a reservation: the nodes
  it would take once running gangs end, found by releasing running gangs in order of their
  promised end (`started + duration_bound`, unknown last). Later gangs may start only
  outside those nodes, or on them when their own duration bound ends before the reservation
  is needed. So small work never delays the head gang, and the head cannot starve. With
  backfill off, every gang behind a capacity-blocked head waits (strict order).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Literal

from wanka.core.gang import BEST_FIT_SLICES, CandidateCache, GangPlacement, GangResult, SlicePolicy, place_gang
from wanka.core.requests import GangRequest
from wanka.core.snapshot import WHOLE, Allocation, Snapshot, Transaction

WithinQueue = Literal["Never", "LowerPriority"]
WaitCause = Literal[
    "NoQueue",
    "Quota",
    "Capacity",
    "Reserved",
    "Preempting",
    "Blocked",
    "Skipped",
    "MIGRepartitioning",  # set by core.mig.plan_repartitions for capacity-blocked MIG gangs
    "MIGUnserved",
]


@dataclass(frozen=True, slots=True)
class PoolQuota:
    """A queue's share of one pool in GPU-equivalents (TenantQueue `spec.quotas[]`)."""

    pool: str
    gpus: float
    borrowing_limit: float | None = 0.0  # None: may borrow all the cohort's unused quota

    @property
    def nominal_milli(self) -> int:
        return round(self.gpus * WHOLE)

    @property
    def limit_milli(self) -> float:
        if self.borrowing_limit is None:
            return math.inf
        return self.nominal_milli + round(self.borrowing_limit * WHOLE)


@dataclass(frozen=True, slots=True)
class QueueSpec:
    """A tenant queue: quotas per pool, fair-share weight and preemption policy."""

    name: str
    quotas: tuple[PoolQuota, ...] = ()
    weight: float = 1.0
    within_queue: WithinQueue = "LowerPriority"
    reclaim_borrowed: bool = True

    def quota(self, pool: str) -> PoolQuota | None:
        for q in self.quotas:
            if q.pool == pool:
                return q
        return None


@dataclass(frozen=True, slots=True)
class SchedulerConfig:
    """Policy switches, mostly so the simulator can compare them."""

    backfill: bool = True
    preemption: bool = True
    # Bound on placement attempts per cycle; gangs past it wait for the next cycle.
    max_attempts: int | None = None
    # Bound on placement checks spent sparing unnecessary victims of one preemptor.
    max_spare_checks: int = 32
    slice_policy: SlicePolicy = BEST_FIT_SLICES


@dataclass(frozen=True, slots=True)
class Admit:
    """Start the gang now on `placement` (assume it in the cache, then bind)."""

    owner: str
    queue: str
    placement: GangPlacement
    borrowed_gpus: float
    reason: str


@dataclass(frozen=True, slots=True)
class Preempt:
    """Stop this running gang (with a grace period) so `preemptor` can run; it resumes later."""

    owner: str
    queue: str
    preemptor: str
    reason: str
    work_lost_gpu_seconds: float


@dataclass(frozen=True, slots=True)
class Wait:
    """Keep the gang queued; `reason` is what a person reads in `kubectl describe`."""

    owner: str
    queue: str
    cause: WaitCause
    reason: str
    nominated: GangPlacement | None = None  # for Preempting: where it will go
    # For Preempting on GPUs that gangs preempted earlier in the same cycle are giving back:
    # those gangs (its own Preempt decisions name its other victims).
    victims: tuple[str, ...] = ()


Decision = Admit | Preempt | Wait


@dataclass(frozen=True, slots=True)
class Reservation:
    """Nodes held for the head-of-line gang; `until` is when they should be free."""

    owner: str
    nodes: frozenset[str]
    until: float


@dataclass(frozen=True, slots=True)
class ScheduleResult:
    decisions: tuple[Decision, ...]
    reservation: Reservation | None = None
    usage: Mapping[tuple[str, str], float] = field(default_factory=dict)  # (queue, pool)

    @property
    def admitted(self) -> list[Admit]:
        return [d for d in self.decisions if isinstance(d, Admit)]

    @property
    def preempted(self) -> list[Preempt]:
        return [d for d in self.decisions if isinstance(d, Preempt)]

    @property
    def waiting(self) -> list[Wait]:
        return [d for d in self.decisions if isinstance(d, Wait)]

    def for_owner(self, owner: str) -> Decision | None:
        for d in self.decisions:
            if d.owner == owner:
                return d
        return None


def _shape(req: GangRequest) -> tuple[object, ...]:
    """Everything about a gang that decides where it fits, except its replica count."""
    return (
        req.whole_gpus,
        req.share_milli,
        req.share_memory_mib,
        req.mig_profile,
        req.cpu_milli,
        req.memory_mib,
        req.models,
        req.excluded_nodes,
        req.excluded_devices,
        req.tolerations,
        req.node_selector,
        req.affinity,
        req.topology_level,
        req.topology_mode,
        req.replicas,
    )


def _gpus(milli: float) -> str:
    return f"{milli / WHOLE:g}"


class QuotaBook:
    """Quota usage per (queue, pool) in milli-GPU, and whether a gang may add more.

    A queue may use its nominal quota; beyond it, it borrows up to its borrowing limit, and
    only from the cohort's unused quota (the cohort: every queue with a quota in the pool).
    The scheduling cycle keeps one per cycle.
    """

    def __init__(self, queues: Mapping[str, QueueSpec]) -> None:
        self.queues = queues
        self.usage: dict[tuple[str, str], int] = {}

    def charge(self, queue: str, pool: str, milli: int) -> None:
        key = (queue, pool)
        self.usage[key] = self.usage.get(key, 0) + milli

    def cohort(self, pool: str) -> list[tuple[QueueSpec, PoolQuota]]:
        out = []
        for q in self.queues.values():
            quota = q.quota(pool)
            if quota is not None:
                out.append((q, quota))
        return out

    def cohort_nominal(self, pool: str) -> int:
        return sum(quota.nominal_milli for _, quota in self.cohort(pool))

    def cohort_usage(self, pool: str) -> int:
        return sum(self.usage.get((q.name, pool), 0) for q, _ in self.cohort(pool))

    def reason(self, queue: str, pool: str, add: int) -> str | None:
        """Why `queue` may not add `add` milli-GPU in `pool` now, or None when it may."""
        spec = self.queues.get(queue)
        quota = spec.quota(pool) if spec is not None else None
        if quota is None:
            return f"queue {queue} has no quota on pool {pool}"
        used = self.usage.get((queue, pool), 0)
        if used + add > quota.limit_milli:
            borrow = "unlimited" if quota.borrowing_limit is None else f"{quota.borrowing_limit:g}"
            return (
                f"queue {queue} uses {_gpus(used)} of its {quota.gpus:g} GPUs on pool "
                f"{pool} (+{borrow} borrowable); this gang needs {_gpus(add)} more"
            )
        free = self.cohort_nominal(pool) - self.cohort_usage(pool)
        if add > free:
            if used + add <= quota.nominal_milli:
                lenders = sorted(
                    q.name
                    for q, qq in self.cohort(pool)
                    if self.usage.get((q.name, pool), 0) > qq.nominal_milli
                )
                return (
                    f"queue {queue}'s unused quota on pool {pool} is borrowed by "
                    f"{', '.join(lenders) or 'other queues'}; this gang needs {_gpus(add)} GPUs"
                )
            return (
                f"the cohort of pool {pool} has {_gpus(max(free, 0))} GPUs of unused quota "
                f"to lend; this gang needs {_gpus(add)}"
            )
        return None

    def deficit(self, queue: str, pool: str, capacity: int, total_weight: float) -> float:
        """How far `queue` is below its fair share of `pool`, in milli-GPU (negative: above).

        Its share is its weight over `total_weight` (the weights of the queues with work in
        the pool) of the pool's `capacity`, or of the cohort's nominal quota when smaller.
        """
        spec = self.queues.get(queue)
        weight = spec.weight if spec is not None else 0.0
        nominal = self.cohort_nominal(pool)
        base = min(capacity, nominal) if nominal else capacity
        entitled = base * weight / total_weight if total_weight else 0.0
        return entitled - self.usage.get((queue, pool), 0)

    def borrowed(self, queue: str, pool: str, add: int) -> float:
        """GPUs of `add` that would be borrowed from the cohort (beyond the nominal quota)."""
        quota = self.queues[queue].quota(pool)
        assert quota is not None
        used = self.usage.get((queue, pool), 0)
        return max(0, used + add - max(used, quota.nominal_milli)) / WHOLE


class _Cycle:
    """Mutable state of one cycle; everything it writes goes through `txn`."""

    def __init__(
        self,
        snapshot: Snapshot,
        queues: Mapping[str, QueueSpec],
        pending: Sequence[GangRequest],
        running: Sequence[GangRequest],
        now: float,
        config: SchedulerConfig,
        txn: Transaction,
    ) -> None:
        self.snapshot = snapshot
        self.queues = queues
        self.now = now
        self.config = config
        self.txn = txn
        self.running = {r.owner: r for r in running}
        self.book = QuotaBook(queues)
        for r in running:
            self.book.charge(r.queue, r.pool, sum(a.gpu_milli for a in snapshot.allocations_of(r.owner)))
        self.usage = self.book.usage  # the same dict: what this cycle charges, fair share sees
        self._capacity: int | None = None
        active = {r.queue for r in running} | {p.queue for p in pending}
        self.total_weight: dict[str, float] = {}
        for q in queues.values():
            if q.name in active:
                for quota in q.quotas:
                    self.total_weight[quota.pool] = self.total_weight.get(quota.pool, 0) + q.weight
        self.protected: set[str] = set()  # admitted or nominated this cycle: never victims
        # What victims chosen this cycle still hold while they stop and no preemptor took yet:
        # a later preemptor that fits there waits for it instead of preempting more gangs.
        self.freeing: list[Allocation] = []
        self.gone: set[str] = set()  # preempted this cycle
        self.reservation: Reservation | None = None
        self.blocker: str | None = None
        self.decisions: list[Decision] = []
        self.unfit: dict[tuple[object, ...], tuple[int, str]] = {}
        self.no_victims: dict[tuple[object, ...], int] = {}

    # --- quota (the book) and fair share --------------------------------------------------
    def cohort_nominal(self, pool: str) -> int:
        return self.book.cohort_nominal(pool)

    def quota_reason(self, req: GangRequest, add: int) -> str | None:
        return self.book.reason(req.queue, req.pool, add)

    def borrowed(self, req: GangRequest, add: int) -> float:
        return self.book.borrowed(req.queue, req.pool, add)

    def charge(self, queue: str, pool: str, milli: int) -> None:
        self.book.charge(queue, pool, milli)

    @property
    def capacity(self) -> int:
        """Healthy devices on schedulable nodes, in milli-GPU (computed once, when needed)."""
        if self._capacity is None:
            self._capacity = WHOLE * sum(
                sum([d.healthy for d in n.devices])
                for n in self.snapshot.nodes.values()
                if n.schedulable
            )
        return self._capacity

    def deficit(self, queue: str, pool: str) -> float:
        return self.book.deficit(queue, pool, self.capacity, self.total_weight.get(pool, 0.0))

    # --- placement -----------------------------------------------------------------------
    def constrained(self, req: GangRequest) -> GangRequest:
        """`req` kept off the reserved nodes, unless it ends before they are needed."""
        res = self.reservation
        if res is None or res.owner == req.owner:
            return req
        if req.duration_bound is not None and self.now + req.duration_bound <= res.until:
            return req
        return replace(req, excluded_nodes=req.excluded_nodes | res.nodes)

    def fits(self, req: GangRequest) -> bool:
        if self.quota_reason(req, req.total_milli) is not None:
            return False
        return place_gang(
            self.snapshot,
            self.constrained(req),
            slice_policy=self.config.slice_policy,
            dry_run=True,
        ).ok

    # --- preemption ----------------------------------------------------------------------
    def candidates(self, req: GangRequest) -> list[GangRequest]:
        spec = self.queues[req.queue]
        quota = spec.quota(req.pool)
        if quota is None:
            return []  # no quota on the pool: nothing to reclaim, and it waits on "Quota"
        own = self.usage.get((req.queue, req.pool), 0)
        may_reclaim = spec.reclaim_borrowed and own + req.total_milli <= quota.nominal_milli
        out = []
        for r in self.running.values():
            if r.owner in self.gone or r.owner in self.protected or r.pool != req.pool:
                continue
            if r.queue == req.queue:
                if spec.within_queue == "LowerPriority" and r.priority < req.priority:
                    out.append(r)
            elif may_reclaim:
                other = self.queues.get(r.queue)
                oq = other.quota(req.pool) if other is not None else None
                if oq is None or self.usage.get((r.queue, r.pool), 0) > oq.nominal_milli:
                    out.append(r)
        out.sort(
            key=lambda r: (
                r.priority,
                r.work_lost_seconds(self.now),
                -(r.started or 0.0),
                r.owner,
            )
        )
        return out

    def release(self, trial: Transaction, victims: Iterable[GangRequest]) -> list[int]:
        """Release whole gangs through `trial`, uncharging their queues; milli freed each."""
        freed = []
        for v in victims:
            milli = sum(a.gpu_milli for a in trial.release(v.owner))
            self.charge(v.queue, v.pool, -milli)
            freed.append(milli)
        return freed

    def fits_without(self, req: GangRequest, victims: Sequence[GangRequest]) -> bool:
        trial = self.snapshot.transaction()
        freed: list[int] = []
        try:
            freed = self.release(trial, victims)
            return self.fits(req)
        finally:
            trial.discard()
            for v, milli in zip(victims, freed, strict=False):
                self.charge(v.queue, v.pool, milli)

    def find_victims(self, req: GangRequest) -> list[GangRequest] | None:
        cands = self.candidates(req)
        if not cands or not self.fits_without(req, cands):
            return None
        # shortest prefix of the ordered candidates that makes room (more released, more room)
        lo, hi = 1, len(cands)
        while lo < hi:
            mid = (lo + hi) // 2
            if self.fits_without(req, cands[:mid]):
                hi = mid
            else:
                lo = mid + 1
        victims = cands[:lo]
        # spare victims that are not needed after all, most valuable (last taken) first
        checks = self.config.max_spare_checks
        for v in reversed(victims[:-1]):
            if checks <= 0:
                break
            checks -= 1
            rest = [x for x in victims if x.owner != v.owner]
            if self.fits_without(req, rest):
                victims = rest
        return victims

    # --- backfill reservation ------------------------------------------------------------
    def reserve(self, req: GangRequest) -> Reservation | None:
        """Nodes `req` would take once running gangs end, in order of their promised end."""
        order = sorted(
            (r for r in self.running.values() if r.owner not in self.gone and r.pool == req.pool),
            key=lambda r: (r.expected_end(), r.owner),
        )

        def placement_after(k: int) -> GangPlacement | None:
            trial = self.snapshot.transaction()
            try:
                for r in order[:k]:
                    trial.release(r.owner)
                return place_gang(
                    self.snapshot, req, slice_policy=self.config.slice_policy, dry_run=True
                ).placement
            finally:
                trial.discard()

        if placement_after(len(order)) is None:
            return None
        lo, hi = 0, len(order)
        while lo < hi:
            mid = (lo + hi) // 2
            if placement_after(mid) is not None:
                hi = mid
            else:
                lo = mid + 1
        placement = placement_after(lo)
        assert placement is not None
        until = max((r.expected_end() for r in order[:lo]), default=self.now)
        return Reservation(req.owner, frozenset(placement.nodes), until)

    # --- one gang ------------------------------------------------------------------------
    def decide(self, req: GangRequest) -> None:
        queue = req.queue
        if queue not in self.queues:
            self.decisions.append(
                Wait(req.owner, queue, "NoQueue", f"queue {queue} does not exist")
            )
            return
        if self.blocker is not None:
            self.decisions.append(
                Wait(req.owner, queue, "Blocked", f"waiting behind {self.blocker} (no backfill)")
            )
            return
        add = req.total_milli
        quota_reason = self.quota_reason(req, add)
        place_reason = ""
        if quota_reason is None:
            borrowed = self.borrowed(req, add)
            result = self.place(self.constrained(req))
            if result.placement is not None:
                used = sum(a.gpu_milli for a in result.placement.allocations)
                self.charge(queue, req.pool, used)
                self.protected.add(req.owner)
                why = "fits"
                if self.reservation is not None and self.constrained(req) is not req:
                    why = f"backfilled outside the nodes reserved for {self.reservation.owner}"
                elif self.reservation is not None:
                    why = f"backfilled: ends before {self.reservation.owner} needs the nodes"
                if borrowed:
                    why += f"; borrows {borrowed:g} GPUs from the cohort"
                self.decisions.append(Admit(req.owner, queue, result.placement, borrowed, why))
                return
            place_reason = result.reason
        if self.config.preemption and self.try_preempt(req):
            return
        if quota_reason is not None:
            self.decisions.append(Wait(req.owner, queue, "Quota", quota_reason))
            return
        if self.reservation is not None:
            self.decisions.append(
                Wait(
                    req.owner,
                    queue,
                    "Reserved",
                    f"{place_reason}; nodes are reserved for {self.reservation.owner}",
                )
            )
            return
        if not self.config.backfill:
            self.blocker = req.owner
            self.decisions.append(Wait(req.owner, queue, "Capacity", place_reason))
            return
        self.reservation = self.reserve(req)
        if self.reservation is None:
            self.decisions.append(
                Wait(
                    req.owner,
                    queue,
                    "Capacity",
                    f"{place_reason}; it does not fit even when all running work ends",
                )
            )
            return
        when = (
            "when running work without a duration bound ends"
            if math.isinf(self.reservation.until)
            else f"by t={self.reservation.until:g}"
        )
        self.decisions.append(
            Wait(
                req.owner,
                queue,
                "Capacity",
                f"{place_reason}; reserved {len(self.reservation.nodes)} nodes, free {when}",
            )
        )

    def place(self, req: GangRequest) -> GangResult:
        """Place through the cycle's transaction, skipping shapes already known not to fit.

        Within a cycle free capacity only shrinks (admissions take it; preemption hands
        what it frees to its preemptor), so a shape that failed fails again for as many or
        more replicas; remembering that keeps a cycle over a long queue cheap.
        """
        key = _shape(req)
        known = self.unfit.get(key)
        if known is not None and req.needed >= known[0]:
            return GangResult(None, known[1])
        result = place_gang(
            self.snapshot, req, writer=self.txn, slice_policy=self.config.slice_policy
        )
        if result.placement is None:
            self.unfit[key] = (min(req.needed, known[0]) if known else req.needed, result.reason)
        return result

    def still_held(self, held: Sequence[Allocation]) -> None:
        """Victims keep what the preemptor does not take until they have stopped (they take
        their grace period): nothing else may be placed there in this cycle, but another
        preemptor may claim it (`take_freeing`)."""
        for alloc in held:
            node = self.snapshot.nodes.get(alloc.node)
            if node is None:
                continue
            if self.snapshot.check(alloc) is None:
                self.txn.apply(alloc)
                self.freeing.append(alloc)
                continue
            # Part of it went to the preemptor: the devices it did not take stay held.
            rest = tuple(s for s in alloc.devices if self.snapshot.check(
                replace(alloc, cpu_milli=0, memory_mib=0, devices=(s,), opaque_gpus=0)) is None)
            if rest:
                kept = replace(alloc, cpu_milli=0, memory_mib=0, devices=rest, opaque_gpus=0)
                self.txn.apply(kept)
                self.freeing.append(kept)

    def take_freeing(self, req: GangRequest) -> bool:
        """Place `req` on what this cycle's victims are giving back and no preemptor claimed,
        if it fits there: it waits for those victims instead of preempting more (a Deployment
        scaled up by ten pods preempts the gangs ten GPUs need, not a gang per pod)."""
        if not self.freeing or self.quota_reason(req, req.total_milli) is not None:
            return False
        trial = self.snapshot.transaction()
        try:
            for a in self.freeing:
                trial.release(a.owner, a.member)
            fits = place_gang(self.snapshot, self.constrained(req), writer=trial,
                              slice_policy=self.config.slice_policy).placement is not None
        finally:
            trial.discard()
        if not fits:
            return False
        released, self.freeing = self.freeing, []
        for a in released:
            self.txn.release(a.owner, a.member)
        result = place_gang(self.snapshot, self.constrained(req), writer=self.txn,
                            slice_policy=self.config.slice_policy)
        assert result.placement is not None, "checked to fit"
        self.charge(req.queue, req.pool, sum(a.gpu_milli for a in result.placement.allocations))
        self.protected.add(req.owner)
        self.still_held(released)
        nodes = {a.node for a in result.placement.allocations}
        victims = tuple(sorted({a.owner for a in released if a.node in nodes}))
        self.decisions.append(
            Wait(req.owner, req.queue, "Preempting",
                 f"waiting for GPUs that preempted gang(s) give back: {', '.join(victims)}",
                 result.placement, victims)
        )
        return True

    def try_preempt(self, req: GangRequest) -> bool:
        if self.take_freeing(req):
            return True
        key = (_shape(self.constrained(req)), req.queue, req.priority)
        known = self.no_victims.get(key)
        if known is not None and req.needed >= known:
            return False  # same shape found no victims earlier; candidates only shrink
        victims = self.find_victims(req)
        if not victims:
            self.no_victims[key] = min(req.needed, known) if known is not None else req.needed
            return False
        held = [a for v in victims for a in self.snapshot.allocations_of(v.owner)]
        self.release(self.txn, victims)
        result = place_gang(
            self.snapshot,
            self.constrained(req),
            writer=self.txn,
            slice_policy=self.config.slice_policy,
        )
        assert result.placement is not None, "victims were checked to make room"
        self.charge(req.queue, req.pool, sum(a.gpu_milli for a in result.placement.allocations))
        self.protected.add(req.owner)
        self.still_held(held)
        for v in victims:
            self.gone.add(v.owner)
            if v.queue == req.queue:
                why = f"preempted by {req.owner} (priority {req.priority} > {v.priority})"
            else:
                why = (
                    f"quota reclaimed: queue {v.queue} borrows beyond its quota and "
                    f"{req.queue} needs its own quota for {req.owner}"
                )
            self.decisions.append(
                Preempt(v.owner, v.queue, req.owner, why, v.work_lost_seconds(self.now))
            )
        names = ", ".join(v.owner for v in victims)
        self.decisions.append(
            Wait(
                req.owner,
                req.queue,
                "Preempting",
                f"preempting {len(victims)} gang(s): {names}",
                result.placement,
            )
        )
        return True


def fair_order(
    pending: Iterable[GangRequest], deficit: Callable[[str, str], float]
) -> Iterator[GangRequest]:
    """Pending gangs in the order they are offered admission.

    Each queue offers its head (higher priority, then older, then name). Among the heads:
    higher priority, then the larger fair-share `deficit(queue, pool)`, then older, then name.
    `deficit` is asked again before every pick, so whatever the caller charged for the gangs
    it admitted so far moves their queue back.
    """
    by_queue: dict[str, list[GangRequest]] = {}
    for req in sorted(pending, key=lambda r: (-r.priority, r.created, r.owner), reverse=True):
        by_queue.setdefault(req.queue, []).append(req)  # reversed: pop() takes the head
    while by_queue:
        name = min(
            by_queue,
            key=lambda q: (
                -by_queue[q][-1].priority,
                -deficit(q, by_queue[q][-1].pool),
                by_queue[q][-1].created,
                by_queue[q][-1].owner,
            ),
        )
        req = by_queue[name].pop()
        if not by_queue[name]:
            del by_queue[name]
        yield req


def schedule(
    snapshot: Snapshot,
    queues: Iterable[QueueSpec],
    pending: Sequence[GangRequest],
    running: Sequence[GangRequest],
    now: float,
    *,
    config: SchedulerConfig = SchedulerConfig(),
) -> ScheduleResult:
    """One scheduling cycle over one pool's snapshot; the snapshot is left unchanged.

    `running` are the gangs whose allocations are in the snapshot (owner keys match).
    Returns one decision per pending gang, plus `Preempt` for each victim, in cycle order.
    """
    qmap = {q.name: q for q in queues}
    outer = snapshot.candidate_cache
    snapshot.candidate_cache = outer or CandidateCache()
    try:
        return _schedule(snapshot, qmap, pending, running, now, config)
    finally:
        snapshot.candidate_cache = outer


def _schedule(
    snapshot: Snapshot, qmap: Mapping[str, QueueSpec], pending: Sequence[GangRequest],
    running: Sequence[GangRequest], now: float, config: SchedulerConfig,
) -> ScheduleResult:
    with snapshot.transaction() as txn:
        cycle = _Cycle(snapshot, qmap, pending, running, now, config, txn)
        attempts = 0
        for req in fair_order(pending, cycle.deficit):
            if config.max_attempts is not None and attempts >= config.max_attempts:
                cycle.decisions.append(
                    Wait(req.owner, req.queue, "Skipped", "not reached in this cycle")
                )
                continue
            attempts += 1
            cycle.decide(req)
        usage = {k: v / WHOLE for k, v in cycle.usage.items()}
        result = ScheduleResult(tuple(cycle.decisions), cycle.reservation, usage)
        txn.discard()
    return result
