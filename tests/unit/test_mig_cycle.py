"""MIG instances placed by the core's one scheduling cycle: the same candidate filtering,
topology, packing, quota, preemption and elastic start as whole GPUs and shares."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from tests.unit.builders import hold, make_job, make_node, make_queue, make_snapshot, ones
from wanka.api.trainingjob import Resources
from wanka.core.gang import place_gang
from wanka.core.mig import MIG_MODELS, maximal_geometries
from wanka.core.queueing import Admit, Preempt, QueueSpec, SchedulerConfig, Wait, schedule
from wanka.core.requests import GangRequest
from wanka.core.snapshot import Allocation, DeviceShare, OverAllocation, Snapshot
from wanka.units import WHOLE, mig_share_milli

NOW = 1_000.0
RACK = "wanka.io/rack"
ONE_G = "1g.10gb"
THREE_G = "3g.40gb"


def queue(gpus: float = 100) -> QueueSpec:
    return make_queue("q").quota("p", gpus).obj()


def mig_snap(*nodes: tuple[str, str], levels: tuple[str, ...] = (RACK,), **kinds: str) -> Snapshot:
    """Nodes (name, rack) of 2 H100s, each device carved into 7 x 1g.10gb."""
    built = [make_node(n).gpus(2).mig_all(*ones(7)).topo(rack).obj() for n, rack in nodes]
    return make_snapshot(built, levels=levels)


def running(snap: Snapshot, name: str, node: str, *instances: tuple[int, int], priority: int = 0,
            started: float = 0.0, profile: str = ONE_G) -> GangRequest:
    """A running MIG gang of `owner`, one member per (device, start) it holds."""
    req = make_job(name).mig(profile).replicas(len(instances)).priority(priority).running(started).obj()
    for dev, start in instances:
        hold(snap, req.owner, node, dev, start)
    return req


@dataclass
class Case:
    name: str
    snap: Snapshot
    pending: list[GangRequest]
    running: list[GangRequest] = field(default_factory=list)
    queues: list[QueueSpec] = field(default_factory=lambda: [queue()])
    want_admitted: dict[str, list[tuple[str, int, int]]] = field(default_factory=dict)  # owner -> instances
    want_preempted: list[str] = field(default_factory=list)
    want_wait: dict[str, str] = field(default_factory=dict)  # owner -> cause
    want_reason: dict[str, str] = field(default_factory=dict)


def case_cordoned() -> Case:
    snap = make_snapshot(
        [
            make_node("a").gpus(1).mig_all(*ones(7)).topo("r0").unschedulable().obj(),
            make_node("b").gpus(1).mig_all(*ones(7)).topo("r0").obj(),
        ],
        levels=(RACK,),
    )
    return Case(
        "a cordoned or tainted node is skipped",
        snap,
        [make_job("j").mig(ONE_G).replicas(2).obj()],
        want_admitted={"ns/j": [("b", 0, 0), ("b", 0, 1)]},
    )


def case_sick_device() -> Case:
    snap = make_snapshot([make_node("a").gpus(2).mig_all(*ones(7)).sick(0).obj()], levels=())
    return Case(
        "a sick device's instances are skipped",
        snap,
        [make_job("j").mig(ONE_G).obj()],
        want_admitted={"ns/j": [("a", 1, 0)]},
    )


def case_only_sick_devices() -> Case:
    snap = make_snapshot([make_node("a").gpus(1).mig_all(*ones(7)).sick(0).obj()], levels=())
    return Case(
        "no healthy instance: a Capacity wait that says what is missing",
        snap,
        [make_job("j").mig(ONE_G).obj()],
        want_wait={"ns/j": "Capacity"},
        want_reason={"ns/j": "a free 1g.10gb MIG instance"},
    )


def case_excluded() -> Case:
    return Case(
        "excluded nodes and devices are skipped",
        mig_snap(("a", "r0"), ("b", "r0")),
        [
            make_job("x").mig(ONE_G).exclude_nodes("a").obj(),
            make_job("y").mig(ONE_G).exclude_nodes("b").exclude_devices(("a", 0)).created(1).obj(),
        ],
        want_admitted={"ns/x": [("b", 0, 0)], "ns/y": [("a", 1, 0)]},
    )


def case_topology_required() -> Case:
    snap = mig_snap(("a", "r0"), ("b", "r1"), ("c", "r1"))
    for dev in (0, 1):
        for start in range(7):
            if (dev, start) != (1, 6):
                hold(snap, "ns/busy-a", "a", dev, start)
    for start in range(7):
        hold(snap, "ns/busy-b", "b", 0, start)
        hold(snap, "ns/busy-c", "c", 0, start)
    for start in range(5):
        hold(snap, "ns/busy-b", "b", 1, start)
        hold(snap, "ns/busy-c", "c", 1, start)
    # free: a 1 (rack r0), b 2 + c 2 (rack r1)
    return Case(
        "Required topology: the gang goes into one rack, or waits",
        snap,
        [
            make_job("fits").mig(ONE_G).replicas(4).topology(RACK).obj(),
            make_job("too-big").mig(ONE_G).replicas(2).topology(RACK).created(1).obj(),
        ],
        want_admitted={"ns/fits": [("b", 1, 5), ("b", 1, 6), ("c", 1, 5), ("c", 1, 6)]},
        want_wait={"ns/too-big": "Capacity"},
        want_reason={"ns/too-big": "the pool has room for 1"},
    )


def case_packing() -> Case:
    snap = mig_snap(("a", "r0"), ("b", "r0"), ("c", "r0"))
    hold(snap, "ns/old", "b", 1, 0)
    return Case(
        "packing: the partly used node and device first, as for shares",
        snap,
        [make_job("j").mig(ONE_G).obj()],
        want_admitted={"ns/j": [("b", 1, 1)]},
    )


def case_settling() -> Case:
    snap = make_snapshot([make_node("a").gpus(1).mig_all(*ones(7)).settling().obj()], levels=())
    return Case(
        "instances still being created are not placeable",
        snap,
        [make_job("j").mig(ONE_G).obj()],
        want_wait={"ns/j": "Capacity"},
    )


def case_quota() -> Case:
    return Case(
        "quota charges a 1g instance 142 milli-GPU: 0.3 GPU runs two, not three",
        mig_snap(("a", "r0")),
        [make_job("two").mig(ONE_G).replicas(2).obj(), make_job("third").mig(ONE_G).created(1).obj()],
        queues=[queue(0.3)],
        want_admitted={"ns/two": [("a", 0, 0), ("a", 0, 1)]},
        want_wait={"ns/third": "Quota"},
        want_reason={"ns/third": "uses 0.284 of its 0.3 GPUs on pool p"},
    )


def case_preempt_the_instances_needed() -> Case:
    snap = make_snapshot(
        [make_node("a").gpus(1).mig(0, *ones(4), "3g.40gb@4").obj()], levels=()
    )
    cheap = running(snap, "cheap", "a", (0, 0), priority=0)
    holder = running(snap, "holder", "a", (0, 4), priority=1, profile=THREE_G)
    return Case(
        "a MIG gang preempts the gang whose instance it needs, not the cheapest one",
        snap,
        [make_job("urgent").mig(THREE_G).priority(10).obj()],
        running=[cheap, holder],
        want_preempted=["ns/holder"],
        want_wait={"ns/urgent": "Preempting"},
        want_reason={"ns/urgent": "ns/holder"},
    )


def case_preempt_no_more_than_needed() -> Case:
    snap = make_snapshot([make_node("a").gpus(1).mig_all(*ones(7)).obj()], levels=())
    gangs = [running(snap, f"low{i}", "a", (0, i), started=float(i)) for i in range(7)]
    return Case(
        "a full pool: two replicas preempt two one-instance gangs, the newest first",
        snap,
        [make_job("urgent").mig(ONE_G).replicas(2).priority(10).obj()],
        running=gangs,
        want_preempted=["ns/low5", "ns/low6"],
        want_wait={"ns/urgent": "Preempting"},
    )


def case_elastic() -> Case:
    snap = make_snapshot([make_node("a").gpus(1).mig(0, *ones(3)).obj()], levels=())
    return Case(
        "elastic start: 3 of 4 replicas on the 3 free instances (minAvailable 2)",
        snap,
        [make_job("j").mig(ONE_G).replicas(4).min_available(2).obj()],
        want_admitted={"ns/j": [("a", 0, 0), ("a", 0, 1), ("a", 0, 2)]},
    )


CASES = [
    case_cordoned(),
    case_sick_device(),
    case_only_sick_devices(),
    case_excluded(),
    case_topology_required(),
    case_packing(),
    case_settling(),
    case_quota(),
    case_preempt_the_instances_needed(),
    case_preempt_no_more_than_needed(),
    case_elastic(),
]


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_mig_through_the_cycle(case: Case) -> None:
    before = dict(case.snap.allocations)
    result = schedule(case.snap, case.queues, case.pending, case.running, NOW,
                      config=SchedulerConfig(backfill=False))
    assert dict(case.snap.allocations) == before
    reasons = {d.owner: d.reason for d in result.decisions if not isinstance(d, Preempt)}
    admitted = {
        d.owner: sorted((a.node, a.devices[0].index, a.devices[0].mig_start or 0)
                        for a in d.placement.allocations)
        for d in result.decisions if isinstance(d, Admit)
    }
    assert admitted == case.want_admitted, reasons
    assert sorted(d.owner for d in result.preempted) == sorted(case.want_preempted), reasons
    assert {d.owner: d.cause for d in result.decisions if isinstance(d, Wait)} == case.want_wait, reasons
    for owner, part in case.want_reason.items():
        assert part in reasons[owner], reasons[owner]
    for d in result.admitted:
        for a in d.placement.allocations:
            (share,) = a.devices
            profile = case.snap.node(a.node).devices[share.index].mig[share.mig_start or 0]
            assert profile == next(p.mig_profile for p in case.pending if p.owner == d.owner)


def test_quota_usage_and_status_share_are_one_definition() -> None:
    """The cycle's quota usage, the API's gpu_milli (queue status) and placement agree."""
    snap = mig_snap(("a", "r0"))
    req = make_job("j").mig(ONE_G).replicas(3).obj()
    result = schedule(snap, [queue()], [req], [], NOW)
    (admit,) = result.admitted
    api = Resources.model_validate({"migProfile": ONE_G}).gpu_milli
    assert api == req.share_milli == mig_share_milli(ONE_G) == 142
    assert sum(a.gpu_milli for a in admit.placement.allocations) == 3 * api
    assert result.usage[("q", "p")] == pytest.approx(3 * api / WHOLE)


@pytest.mark.parametrize("model", sorted(MIG_MODELS))
def test_every_maximal_geometry_fits_in_one_device(model: str) -> None:
    """Rounding a share down keeps any valid geometry within one device's 1000 milli-GPU."""
    for geometry in maximal_geometries(model):
        assert sum(mig_share_milli(i.profile) for i in geometry) <= WHOLE
    for profile in MIG_MODELS[model].profiles:
        api = Resources.model_validate({"migProfile": profile.name}).gpu_milli
        assert api == make_job("j").mig(profile.name).obj().share_milli


def test_a_preemptor_fits_once_its_victims_are_gone() -> None:
    case = case_preempt_the_instances_needed()
    result = schedule(case.snap, case.queues, case.pending, case.running, NOW)
    (wait,) = result.waiting
    assert wait.nominated is not None
    (alloc,) = wait.nominated.allocations
    assert alloc.devices == (DeviceShare(0, mig_share_milli(THREE_G), mig_start=4),)
    case.snap.release("ns/holder")
    later = schedule(case.snap, case.queues, case.pending, [case.running[0]], NOW + 1)
    assert [d.owner for d in later.admitted] == ["ns/urgent"]


@pytest.mark.parametrize(
    ("share", "want"),
    [
        (DeviceShare(0, 142, mig_start=0), "already held"),
        (DeviceShare(0, 142, mig_start=5), "no MIG instance at memory slice 5"),
        (DeviceShare(1, 428, mig_start=4), "is 142m, not 428m"),
        (DeviceShare(0, 250), "MIG-partitioned"),
        (DeviceShare(0), "MIG-partitioned"),
    ],
    ids=["held twice", "no such instance", "wrong profile", "a fraction", "the whole device"],
)
def test_the_snapshot_never_over_allocates_an_instance(share: DeviceShare, want: str) -> None:
    snap = make_snapshot(
        [make_node("a").gpus(2).mig(0, *ones(4), "3g.40gb@4").mig(1, *ones(7)).obj()], levels=()
    )
    hold(snap, "ns/first", "a", 0, 0)
    alloc = Allocation("ns/second", "0", "a", devices=(share,))
    reason = snap.check(alloc)
    assert reason is not None and want in reason
    with pytest.raises(OverAllocation):
        snap.apply(alloc)


def test_release_frees_the_instance_for_the_next_gang() -> None:
    snap = make_snapshot([make_node("a").gpus(1).mig(0, "7g.80gb@0").obj()], levels=())
    req = make_job("j").mig("7g.80gb").obj()
    assert place_gang(snap, req).ok
    assert snap.node("a").devices[0].mig_held == {0}
    assert not place_gang(snap, make_job("k").mig("7g.80gb").obj()).ok
    snap.release(req.owner)
    assert snap.node("a").devices[0].mig_held == set()
    assert place_gang(snap, make_job("k").mig("7g.80gb").obj()).ok
