"""Property tests: capacity is never exceeded, gangs are whole or absent, constraints hold."""

from __future__ import annotations

from dataclasses import replace

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.unit.builders import LEVELS, make_node, make_queue
from wanka.core.gang import place_gang
from wanka.core.queueing import Admit, Preempt, SchedulerConfig, schedule
from wanka.core.requests import GangRequest
from wanka.core.snapshot import Allocation, DeviceShare, Snapshot
from wanka.units import mig_share_milli

MODELS = ("H100-80GB", "A100-80GB")
# MIG geometries both models accept (device 0 of some nodes is carved into one of them).
GEOMETRIES = (
    tuple(f"1g.10gb@{s}" for s in range(7)),
    ("3g.40gb@0", "3g.40gb@4"),
    ("7g.80gb@0",),
    ("1g.10gb@0", "1g.10gb@1", "1g.10gb@2", "1g.10gb@3", "3g.40gb@4"),
)
PROFILES = ("1g.10gb", "3g.40gb", "7g.80gb")
SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@st.composite
def fleets(draw: st.DrawFn) -> Snapshot:
    nodes = []
    for i in range(draw(st.integers(1, 10))):
        gpus = draw(st.sampled_from((1, 2, 4, 8)))
        b = (
            make_node(f"n{i}")
            .gpus(gpus, draw(st.sampled_from(MODELS)))
            .cpu(draw(st.sampled_from((8_000, 64_000))))
        )
        rack = draw(st.integers(0, 3))
        b = b.topo(f"nvl-{rack}-{draw(st.integers(0, 1))}", f"rack-{rack}", f"spine-{rack // 2}")
        sick = draw(st.lists(st.integers(0, gpus - 1), max_size=2, unique=True))
        if sick:
            b = b.sick(*sick)
        if draw(st.booleans()) and draw(st.booleans()) and draw(st.booleans()):
            b = b.unschedulable()
        if draw(st.booleans()):
            b = b.mig(0, *draw(st.sampled_from(GEOMETRIES)))
        nodes.append(b.obj())
    snap = Snapshot(nodes, levels=LEVELS)
    # background work: whole devices and slices
    for j in range(draw(st.integers(0, 12))):
        node = snap.node(draw(st.sampled_from(sorted(snap.nodes))))
        idx = draw(st.integers(0, len(node.devices) - 1))
        milli = draw(st.sampled_from((250, 500, 1000)))
        share = DeviceShare(idx, milli)
        if node.devices[idx].mig:
            start, profile = draw(st.sampled_from(sorted(node.devices[idx].mig.items())))
            share = DeviceShare(idx, mig_share_milli(profile), mig_start=start)
        alloc = Allocation(f"bg/{j}", "0", node.name, 1000, devices=(share,))
        if snap.check(alloc) is None:
            snap.apply(alloc)
    return snap


@st.composite
def gangs(draw: st.DrawFn, snap: Snapshot, owner: str = "ns/g") -> GangRequest:
    form = draw(st.sampled_from(("whole", "share", "cpu", "mig")))
    replicas = draw(st.integers(1, 6))
    names = sorted(snap.nodes)
    return GangRequest(
        owner,
        replicas=replicas,
        min_available=draw(st.one_of(st.none(), st.integers(1, replicas))),
        gpus=draw(st.sampled_from((1, 2, 4, 8))) if form == "whole" else 0,
        gpu_milli=draw(st.sampled_from((100, 250, 500))) if form == "share" else 0,
        mig_profile=draw(st.sampled_from(PROFILES)) if form == "mig" else "",
        cpu_milli=draw(st.sampled_from((0, 1_000, 16_000))),
        models=frozenset(draw(st.lists(st.sampled_from(MODELS), max_size=1))),
        excluded_nodes=frozenset(draw(st.lists(st.sampled_from(names), max_size=2))),
        excluded_devices=frozenset(
            (n, 0) for n in draw(st.lists(st.sampled_from(names), max_size=2))
        ),
        topology_level=draw(st.sampled_from(("", *LEVELS))),
        topology_mode=draw(st.sampled_from(("Required", "Preferred"))),
        priority=draw(st.integers(0, 2)),
        created=float(draw(st.integers(0, 5))),
    )


def fingerprint(snap: Snapshot) -> object:
    return (
        {
            n.name: (
                n.used_cpu_milli,
                tuple((d.used_milli, d.shares, tuple(sorted(d.mig_held))) for d in n.devices),
            )
            for n in snap.nodes.values()
        },
        dict(snap.allocations),
    )


def assert_within_capacity(snap: Snapshot) -> None:
    for node in snap.nodes.values():
        assert 0 <= node.used_cpu_milli <= node.cpu_milli
        assert 0 <= node.used_memory_mib <= node.memory_mib
        for d in node.devices:
            assert 0 <= d.used_milli <= 1000, (node.name, d)
            assert d.mig_held <= set(d.mig), (node.name, d)
    holders = [
        (a.node, s.index, s.mig_start)
        for a in snap.allocations.values()
        for s in a.devices
        if s.mig_start is not None
    ]
    assert len(holders) == len(set(holders)), "a MIG instance is held twice"


@SETTINGS
@given(st.data())
def test_gang_whole_or_nothing_and_constraints(data: st.DataObject) -> None:
    snap = data.draw(fleets())
    req = data.draw(gangs(snap))
    before = fingerprint(snap)
    pre_healthy = {
        (n.name, d.index): d.healthy and d.idle for n in snap.nodes.values() for d in n.devices
    }
    result = place_gang(snap, req)
    assert_within_capacity(snap)
    if not result.ok:
        assert fingerprint(snap) == before, "a failed gang left allocations behind"
        assert result.reason
        return
    assert result.placement is not None
    allocs = result.placement.allocations
    assert req.needed <= len(allocs) <= req.replicas
    assert sorted(a.member for a in allocs) == sorted(str(i) for i in range(len(allocs)))
    models = set()
    for a in allocs:
        node = snap.node(a.node)
        assert node.schedulable and a.node not in req.excluded_nodes
        assert a.cpu_milli == req.cpu_milli
        assert len(a.devices) == req.whole_gpus or (req.share_milli and len(a.devices) == 1)
        for share in a.devices:
            dev = node.devices[share.index]
            assert dev.healthy
            assert (a.node, share.index) not in req.excluded_devices
            if req.whole_gpus:
                assert pre_healthy[(a.node, share.index)], "whole device was not idle"
                assert not dev.mig, "a whole device was taken from a MIG-partitioned one"
            if req.mig_profile:
                assert share.mig_start is not None and dev.mig[share.mig_start] == req.mig_profile
            else:
                assert share.mig_start is None and not dev.mig
            models.add(dev.model)
    if req.whole_gpus or req.share_milli:
        assert len(models) == 1, "a gang mixes GPU models"
        if req.models:
            assert models <= req.models
    if req.topology_level and req.topology_mode == "Required":
        level = snap.level_index(req.topology_level)
        assert len({snap.node(a.node).topology[level] for a in allocs}) == 1


@SETTINGS
@given(st.data())
def test_same_input_same_placement(data: st.DataObject) -> None:
    snap = data.draw(fleets())
    req = data.draw(gangs(snap))
    twin = snap.copy()
    one = place_gang(snap, req)
    two = place_gang(twin, req)
    assert one == two


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_schedule_decisions_are_consistent(data: st.DataObject) -> None:
    snap = data.draw(fleets())
    running = []
    for i in range(data.draw(st.integers(0, 3))):
        req = data.draw(gangs(snap, f"run/{i}"))
        placed = place_gang(snap, req)
        if placed.ok:
            running.append(replace(req, queue="q" if i % 2 else "r", pool="p", started=0.0))
    pending = [data.draw(gangs(snap, f"pend/{i}")) for i in range(data.draw(st.integers(1, 5)))]
    pending = [replace(p, queue="q", pool="p") for p in pending]
    queues = [
        make_queue("q").quota("p", 20, borrow=None).obj(),
        make_queue("r").quota("p", 4).obj(),
    ]
    config = SchedulerConfig(backfill=data.draw(st.booleans()))
    before = fingerprint(snap)
    result = schedule(snap, queues, pending, running, 100.0, config=config)
    assert fingerprint(snap) == before
    again = schedule(snap, queues, pending, running, 100.0, config=config)
    assert result == again
    # victims released, then every admission applies on top without over-allocation
    for d in result.decisions:
        if isinstance(d, Preempt):
            snap.release(d.owner)
    for d in result.decisions:
        if isinstance(d, Admit):
            for alloc in d.placement.allocations:
                snap.apply(alloc)
    assert_within_capacity(snap)
    decided = sorted(d.owner for d in result.decisions if not isinstance(d, Preempt))
    assert decided == sorted(p.owner for p in pending)


@SETTINGS
@given(st.data())
def test_the_cycle_candidate_cache_decides_exactly_as_a_full_scan(data: st.DataObject) -> None:
    """A scheduling cycle keeps each request shape's candidates and re-reads only the nodes an
    apply or release touched: gang after gang, it must choose exactly what a fresh scan of the
    whole fleet chooses, through placements and releases alike."""
    import copy

    from wanka.core.gang import CandidateCache

    plain = data.draw(fleets())
    cached = copy.deepcopy(plain)
    cached.candidate_cache = CandidateCache()
    placed: list[str] = []
    shapes = [data.draw(gangs(plain, owner="shape")) for _ in range(3)]
    for i in range(data.draw(st.integers(1, 25))):
        if placed and data.draw(st.integers(0, 3)) == 0:
            owner = placed.pop(data.draw(st.integers(0, len(placed) - 1)))
            assert plain.release(owner) == cached.release(owner)
            continue
        req = replace(data.draw(st.sampled_from(shapes)), owner=f"ns/g{i}")
        a, b = place_gang(plain, req), place_gang(cached, req)
        assert (a.placement, a.reason, a.fit) == (b.placement, b.reason, b.fit)
        if a.ok:
            placed.append(req.owner)
        assert fingerprint(plain) == fingerprint(cached)
