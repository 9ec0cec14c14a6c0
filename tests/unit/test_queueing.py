"""The scheduling cycle: order, quotas and borrowing, preemption, backfill, determinism."""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import pytest

from tests.unit.builders import make_job, make_node, make_queue, make_snapshot
from wanka.core.gang import place_gang
from wanka.core.queueing import (
    Admit,
    Preempt,
    QueueSpec,
    SchedulerConfig,
    Wait,
    schedule,
)
from wanka.core.requests import GangRequest
from wanka.core.snapshot import Snapshot

NOW = 1_000.0


def pool(nodes: int = 2, gpus: int = 8) -> Snapshot:
    return make_snapshot([make_node(f"n{i}").gpus(gpus).obj() for i in range(nodes)], levels=())


def run(snap: Snapshot, req: GangRequest, node: str | None = None) -> GangRequest:
    """Place a running gang (optionally pinned to one node) and return its request."""
    others = frozenset(n for n in snap.nodes if node is not None and n != node)
    result = place_gang(snap, replace(req, excluded_nodes=others))
    assert result.ok, result.reason
    return req


def big_queue(name: str = "q", gpus: float = 1000) -> QueueSpec:
    return make_queue(name).quota("p", gpus).obj()


@dataclass
class Case:
    name: str
    snap: Snapshot
    queues: list[QueueSpec]
    pending: list[GangRequest]
    running: list[GangRequest] = field(default_factory=list)
    config: SchedulerConfig = field(default_factory=SchedulerConfig)
    want_admitted: list[str] = field(default_factory=list)
    want_preempted: list[str] = field(default_factory=list)
    want_wait: dict[str, str] = field(default_factory=dict)  # owner -> cause
    want_reason: dict[str, str] = field(default_factory=dict)  # owner -> substring


def case_priority() -> Case:
    return Case(
        "priority beats age",
        pool(1),
        [big_queue()],
        [
            make_job("old").gpus(8).created(1).obj(),
            make_job("urgent").gpus(8).priority(10).created(5).obj(),
        ],
        config=SchedulerConfig(preemption=False),
        want_admitted=["ns/urgent"],
        want_wait={"ns/old": "Capacity"},
    )


def case_age_then_name() -> Case:
    return Case(
        "age then name",
        pool(1),
        [big_queue()],
        [
            make_job("b").gpus(4).created(1).obj(),
            make_job("a").gpus(4).created(1).obj(),
            make_job("c").gpus(4).created(0).obj(),
        ],
        want_admitted=["ns/c", "ns/a"],
        want_wait={"ns/b": "Capacity"},
    )


def case_fair_share() -> Case:
    snap = pool(2)
    rich = run(snap, make_job("rich").queue("a").gpus(8).running(0).obj(), "n0")
    return Case(
        "fair share: the queue using less goes first",
        snap,
        [make_queue("a").quota("p", 16).obj(), make_queue("b").quota("p", 16).obj()],
        [
            make_job("a2").queue("a").gpus(8).created(1).obj(),
            make_job("b1").queue("b").gpus(8).created(2).obj(),
        ],
        running=[rich],
        config=SchedulerConfig(preemption=False),
        want_admitted=["ns/b1"],
        want_wait={"ns/a2": "Capacity"},
    )


def case_weights() -> Case:
    return Case(
        "fair share weights: the heavier queue is entitled to more",
        pool(1),
        [
            make_queue("a").quota("p", 8).weight(1).obj(),
            make_queue("b").quota("p", 8).weight(3).obj(),
        ],
        [
            make_job("a1").queue("a").gpus(8).created(1).obj(),
            make_job("b1").queue("b").gpus(8).created(2).obj(),
        ],
        want_admitted=["ns/b1"],
        want_wait={"ns/a1": "Capacity"},
    )


def case_quota_no_borrow() -> Case:
    return Case(
        "over nominal quota without borrowing waits on quota",
        pool(2),
        [make_queue("q").quota("p", 8).obj(), make_queue("other").quota("p", 8).obj()],
        [make_job("j").replicas(3).gpus(4).obj()],
        want_wait={"ns/j": "Quota"},
        want_reason={"ns/j": "uses 0 of its 8 GPUs"},
    )


def case_borrow() -> Case:
    return Case(
        "borrows the cohort's unused quota within its limit",
        pool(2),
        [make_queue("q").quota("p", 8, borrow=4).obj(), make_queue("other").quota("p", 8).obj()],
        [make_job("j").replicas(3).gpus(4).obj()],
        want_admitted=["ns/j"],
        want_reason={"ns/j": "borrows 4 GPUs"},
    )


def case_borrow_limit() -> Case:
    return Case(
        "borrowing limit",
        pool(2),
        [make_queue("q").quota("p", 8, borrow=4).obj(), make_queue("other").quota("p", 8).obj()],
        [make_job("j").replicas(2).gpus(8).obj()],
        want_wait={"ns/j": "Quota"},
    )


def case_no_queue() -> Case:
    return Case(
        "unknown queue and a queue without quota on the pool",
        pool(1),
        [make_queue("q").quota("elsewhere", 8).obj()],
        [make_job("j").gpus(1).obj(), make_job("k").queue("zz").gpus(1).obj()],
        config=SchedulerConfig(preemption=False),
        want_wait={"ns/j": "Quota", "ns/k": "NoQueue"},
        want_reason={"ns/j": "no quota on pool p", "ns/k": "does not exist"},
    )


def case_no_quota_with_preemption() -> Case:
    """A queue without quota on the pool waits on Quota; it never stops the cycle."""
    snap = pool(1)
    low = run(snap, make_job("low").queue("other").gpus(4).running(0).obj())
    return Case(
        "no quota on the pool, preemption on: a Quota wait, the rest still decided",
        snap,
        [make_queue("q").quota("elsewhere", 8).obj(), big_queue("other")],
        [
            make_job("typo").priority(100).gpus(4).created(0).obj(),
            make_job("fine").queue("other").gpus(4).created(1).obj(),
        ],
        running=[low],
        want_admitted=["ns/fine"],
        want_wait={"ns/typo": "Quota"},
        want_reason={"ns/typo": "queue q has no quota on pool p"},
    )


def case_fraction_usage() -> Case:
    snap = pool(1, gpus=2)
    slices = run(snap, make_job("s").replicas(4).milli(250).running(0).obj())
    return Case(
        "fractions count as fractions of quota",
        snap,
        [make_queue("q").quota("p", 2).obj()],
        [make_job("one").gpus(1).obj(), make_job("two").gpus(1).created(1).obj()],
        running=[slices],
        want_admitted=["ns/one"],
        want_wait={"ns/two": "Quota"},
    )


def case_preempt_least_lost() -> Case:
    snap = pool(2)
    l1 = run(snap, make_job("l1").gpus(8).running(0, checkpoint=100).obj(), "n0")
    l2 = run(snap, make_job("l2").gpus(4).running(0, checkpoint=990).obj(), "n1")
    l3 = run(snap, make_job("l3").gpus(4).running(0, checkpoint=900).obj(), "n1")
    return Case(
        "preempts lowest priority, least work lost first",
        snap,
        [big_queue()],
        [make_job("p").gpus(8).priority(10).obj()],
        running=[l1, l2, l3],
        want_preempted=["ns/l2", "ns/l3"],
        want_wait={"ns/p": "Preempting"},
    )


def case_preempt_no_more_than_needed() -> Case:
    snap = pool(2)
    keep = run(snap, make_job("keep").gpus(4).priority(20).running(0).obj(), "n0")
    a = run(snap, make_job("a").gpus(4).running(0, checkpoint=999).obj(), "n0")
    b = run(snap, make_job("b").gpus(8).running(0, checkpoint=900).obj(), "n1")
    return Case(
        "spares a victim that does not help",
        snap,
        [big_queue()],
        [make_job("p").gpus(8).priority(10).obj()],
        running=[keep, a, b],
        want_preempted=["ns/b"],
        want_wait={"ns/p": "Preempting"},
    )


def case_within_queue_never() -> Case:
    snap = pool(1)
    low = run(snap, make_job("low").gpus(8).running(0).obj())
    return Case(
        "withinQueue Never: no preemption",
        snap,
        [make_queue("q").quota("p", 100).preemption("Never", True).obj()],
        [make_job("p").gpus(8).priority(10).obj()],
        running=[low],
        want_wait={"ns/p": "Capacity"},
    )


def case_equal_priority_not_preempted() -> Case:
    snap = pool(1)
    same = run(snap, make_job("same").gpus(8).priority(10).running(0).obj())
    return Case(
        "equal priority is never preempted",
        snap,
        [big_queue()],
        [make_job("p").gpus(8).priority(10).obj()],
        running=[same],
        want_wait={"ns/p": "Capacity"},
    )


def reclaim_case(reclaim: bool) -> Case:
    snap = pool(2)
    b1 = run(snap, make_job("b1").queue("b").gpus(8).priority(5).running(0, 500).obj(), "n0")
    b2 = run(snap, make_job("b2").queue("b").gpus(8).priority(5).running(0, 900).obj(), "n1")
    queues = [
        make_queue("a").quota("p", 8).preemption("LowerPriority", reclaim).obj(),
        make_queue("b").quota("p", 8, borrow=8).obj(),
    ]
    pending = [make_job("a1").queue("a").gpus(8).obj()]
    if reclaim:
        return Case(
            "reclaims borrowed quota, even from higher priority",
            snap,
            queues,
            pending,
            running=[b1, b2],
            want_preempted=["ns/b2"],
            want_wait={"ns/a1": "Preempting"},
        )
    return Case(
        "without reclaim the lender waits and is told who borrows",
        snap,
        queues,
        pending,
        running=[b1, b2],
        want_wait={"ns/a1": "Quota"},
        want_reason={"ns/a1": "borrowed by b"},
    )


def backfill_case(backfill: bool) -> Case:
    snap = pool(4)
    r1 = run(snap, make_job("r1").gpus(8).running(0).duration(1_100).obj(), "n0")
    r2 = run(snap, make_job("r2").gpus(8).running(0).duration(2_000).obj(), "n1")
    r3 = run(snap, make_job("r3").gpus(4).running(0).obj(), "n3")
    pending = [
        make_job("head").replicas(3).gpus(8).created(1).obj(),
        make_job("short").gpus(8).duration(500).created(2).obj(),
        make_job("small").gpus(4).created(3).obj(),
        make_job("wide").gpus(6).created(4).obj(),
    ]
    if backfill:
        return Case(
            "backfill only outside the head's reservation or before it is needed",
            snap,
            [big_queue()],
            pending,
            running=[r1, r2, r3],
            config=SchedulerConfig(preemption=False),
            want_admitted=["ns/short", "ns/small"],
            want_wait={"ns/head": "Capacity", "ns/wide": "Reserved"},
            want_reason={
                "ns/head": "reserved 3 nodes, free by t=2000",
                "ns/short": "ends before ns/head needs",
                "ns/small": "outside the nodes reserved",
            },
        )
    return Case(
        "no backfill: strict order behind the blocked head",
        snap,
        [big_queue()],
        pending,
        running=[r1, r2, r3],
        config=SchedulerConfig(preemption=False, backfill=False),
        want_wait={
            "ns/head": "Capacity",
            "ns/short": "Blocked",
            "ns/small": "Blocked",
            "ns/wide": "Blocked",
        },
    )


CASES = [
    case_priority(),
    case_age_then_name(),
    case_fair_share(),
    case_weights(),
    case_quota_no_borrow(),
    case_borrow(),
    case_borrow_limit(),
    case_no_queue(),
    case_no_quota_with_preemption(),
    case_fraction_usage(),
    case_preempt_least_lost(),
    case_preempt_no_more_than_needed(),
    case_within_queue_never(),
    case_equal_priority_not_preempted(),
    reclaim_case(True),
    reclaim_case(False),
    backfill_case(True),
    backfill_case(False),
]


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_schedule(case: Case) -> None:
    before = (case.snap.allocated_milli(), dict(case.snap.allocations))
    result = schedule(case.snap, case.queues, case.pending, case.running, NOW, config=case.config)
    assert (case.snap.allocated_milli(), dict(case.snap.allocations)) == before
    admitted = [d.owner for d in result.decisions if isinstance(d, Admit)]
    preempted = sorted(d.owner for d in result.decisions if isinstance(d, Preempt))
    waits = {d.owner: d.cause for d in result.decisions if isinstance(d, Wait)}
    reasons = {d.owner: d.reason for d in result.decisions if not isinstance(d, Preempt)}
    assert admitted == case.want_admitted, reasons
    assert preempted == sorted(case.want_preempted), reasons
    assert waits == case.want_wait, reasons
    for owner, part in case.want_reason.items():
        assert part in reasons[owner], reasons[owner]
    # every pending gang gets exactly one decision
    assert sorted(d.owner for d in result.decisions if not isinstance(d, Preempt)) == sorted(
        p.owner for p in case.pending
    )


def test_admitted_placements_apply_cleanly_together() -> None:
    snap = pool(3)
    pending = [make_job(f"j{i}").replicas(2).gpus(4).created(i).obj() for i in range(5)]
    result = schedule(snap, [big_queue()], pending, [], NOW)
    assert len(result.admitted) == 3
    for d in result.admitted:
        for alloc in d.placement.allocations:
            snap.apply(alloc)  # raises if two admissions overlapped
    assert snap.allocated_milli() == 24_000


def test_preemptor_is_admitted_next_cycle_after_victims_stop() -> None:
    snap = pool(1)
    low = run(snap, make_job("low").gpus(8).running(0).obj())
    p = make_job("p").gpus(8).priority(10).obj()
    first = schedule(snap, [big_queue()], [p], [low], NOW)
    wait = first.for_owner("ns/p")
    assert isinstance(wait, Wait) and wait.nominated is not None
    assert [v.owner for v in first.preempted] == ["ns/low"]
    assert first.preempted[0].work_lost_gpu_seconds == 8 * NOW
    snap.release("ns/low")
    second = schedule(snap, [big_queue()], [p], [], NOW + 1)
    assert [a.owner for a in second.admitted] == ["ns/p"]


def test_what_a_victim_still_holds_is_given_to_no_one_else_in_the_same_cycle() -> None:
    # The victim's 8 GPUs are freed only once it has stopped (its grace period): the
    # preemptor takes 4 of them later; the other 4 must not go to a (smaller) gang behind it.
    snap = pool(1)
    low = run(snap, make_job("low").gpus(8).running(0).obj())
    high = make_job("high").gpus(4).priority(10).created(1).obj()
    behind = make_job("behind").gpus(2).priority(5).created(2).obj()
    result = schedule(snap, [big_queue()], [high, behind], [low], NOW)
    assert [v.owner for v in result.preempted] == ["ns/low"]
    assert result.admitted == []
    assert isinstance(result.for_owner("ns/behind"), Wait)


def test_reservation_blocks_lower_priority_but_not_its_owner() -> None:
    snap = pool(2)
    r1 = run(snap, make_job("r1").gpus(8).running(0).duration(100).obj(), "n0")
    pending = [
        make_job("head").replicas(2).gpus(8).priority(5).obj(),
        make_job("low").gpus(2).obj(),
    ]
    result = schedule(
        snap, [big_queue()], pending, [r1], NOW, config=SchedulerConfig(preemption=False)
    )
    assert result.reservation is not None
    assert result.reservation.nodes == {"n0", "n1"}
    assert result.reservation.owner == "ns/head"
    assert isinstance(result.for_owner("ns/low"), Wait)


def test_usage_reported_in_gpu_equivalents() -> None:
    snap = pool(1, gpus=2)
    slices = run(snap, make_job("s").replicas(3).milli(250).running(0).obj())
    result = schedule(snap, [big_queue()], [], [slices], NOW)
    assert result.usage[("q", "p")] == 0.75


def test_deterministic() -> None:
    def once() -> list[str]:
        snap = pool(3)
        running = [run(snap, make_job(f"r{i}").gpus(4).running(0).obj()) for i in range(3)]
        pending = [
            make_job(f"j{i}").replicas(1 + i % 3).gpus(2 + 2 * (i % 2)).priority(i % 2).obj()
            for i in range(8)
        ]
        result = schedule(snap, [big_queue()], pending, running, NOW)
        return [repr(d) for d in result.decisions]

    assert once() == once()


def small_sim(**overrides: object) -> dict[str, object]:
    from dataclasses import replace as dc_replace

    from wanka.sim.gangs import SimConfig, SizeClass, simulate, uniform_fleet

    mix = (
        SizeClass("slice", 0.3, (1,), milli=250, mean_hours=0.5),
        SizeClass("1gpu", 0.3, (1,), gpus=1, mean_hours=1.0, models=frozenset({"H100-80GB"})),
        SizeClass(
            "gang",
            0.4,
            (2, 4),
            gpus=8,
            mean_hours=2.0,
            priority=10,
            models=frozenset({"H100-80GB"}),
        ),
    )
    cfg = dc_replace(SimConfig(jobs=60, seed=3, load=1.5, mix=mix), **overrides)
    return simulate(cfg, uniform_fleet(16, 8)).as_dict()


def test_simulator_finishes_every_job_deterministically() -> None:
    one = small_sim()
    assert one == small_sim()
    assert one["finished"] == 60
    assert 0 < one["utilisation"] <= 1  # type: ignore[operator]
    assert 0 < one["goodput"] <= 1  # type: ignore[operator]


def test_simulator_failures_cost_goodput() -> None:
    clean = small_sim(failure_per_node_day=0.0)
    faulty = small_sim(failure_per_node_day=20.0)
    assert clean["failures"] == 0 and faulty["failures"] > 0  # type: ignore[operator]
    assert faulty["goodput"] < clean["goodput"]  # type: ignore[operator]


def test_many_small_preemptors_share_what_victims_give_back() -> None:
    # A Deployment scaled up by ten one-GPU pods: they need 10 GPUs, 4 of 16 are free, and
    # three 4-GPU gangs run. Two gangs are preempted, never the third: pods that fit in what a
    # victim gives back wait for it (naming it) instead of preempting a gang each.
    snap = pool(2)
    gangs = [run(snap, make_job(f"g{i}").gpus(4).running(0).obj()) for i in range(3)]
    pods = [make_job(f"pod{i}").gpus(1).priority(1000).created(i).obj() for i in range(10)]
    result = schedule(snap, [big_queue()], pods, gangs, NOW)
    victims = sorted(v.owner for v in result.preempted)
    assert len(victims) == 2
    assert len(result.admitted) == 4  # the four free GPUs
    waits = [d for d in result.waiting if d.cause == "Preempting"]
    assert len(waits) == 6
    claimed = {v for w in waits for v in w.victims} | {p.owner for p in result.preempted}
    assert claimed == set(victims)
    # Every claim fits: the admissions' and the waits' placements never overlap.
    taken = [a for d in result.admitted for a in d.placement.allocations]
    taken += [a for w in waits if w.nominated is not None for a in w.nominated.allocations]
    assert len({(a.node, s.index) for a in taken for s in a.devices}) == 10
