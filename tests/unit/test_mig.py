"""MIG profile tables, the geometry validator and the repartitioning planner."""

from __future__ import annotations

import pytest

from tests.unit.builders import hold, make_job, make_node, make_snapshot, ones
from wanka.core.mig import (
    MIG_MODELS,
    MigDevice,
    MigInstance,
    MigWait,
    maximal_geometries,
    mig_model,
    plan_mig,
    plan_repartitions,
    validate_geometry,
)
from wanka.core.snapshot import Allocation, Node, Snapshot


def geo(*items: str, busy: bool = False) -> tuple[MigInstance, ...]:
    """geo("3g.40gb@0", "4g.40gb@4") -> instances."""
    out = []
    for item in items:
        profile, start = item.split("@")
        out.append(MigInstance(profile, int(start), busy))
    return tuple(out)


def test_profile_tables() -> None:
    assert sorted(MIG_MODELS) == ["A100-40GB", "A100-80GB", "H100-80GB", "H200-141GB"]
    names = {m: [p.name for p in t.profiles] for m, t in MIG_MODELS.items()}
    assert names["A100-40GB"] == ["1g.5gb", "1g.10gb", "2g.10gb", "3g.20gb", "4g.20gb", "7g.40gb"]
    assert names["H200-141GB"] == [
        "1g.18gb",
        "1g.35gb",
        "2g.35gb",
        "3g.71gb",
        "4g.71gb",
        "7g.141gb",
    ]
    h100 = MIG_MODELS["H100-80GB"]
    assert h100.profile("1g.10gb").max_count == 7  # type: ignore[union-attr]
    assert h100.profile("3g.40gb").placements == (0, 4)  # type: ignore[union-attr]
    assert mig_model("A100-SXM4-80GB") is MIG_MODELS["A100-80GB"]
    assert mig_model("A10") is None


@pytest.mark.parametrize(
    ("model", "instances", "want_errors"),
    [
        ("A100-40GB", ["4g.20gb@0", "3g.20gb@4"], []),
        ("A100-40GB", ["3g.20gb@0", "3g.20gb@4"], []),
        ("A100-40GB", ["2g.10gb@0", "2g.10gb@2", "2g.10gb@4", "1g.5gb@6"], []),
        ("A100-40GB", [f"1g.5gb@{i}" for i in range(7)], []),
        ("H100-80GB", ["1g.20gb@0", "1g.20gb@2", "1g.20gb@4", "1g.20gb@6"], []),
        ("H200-141GB", ["7g.141gb@0"], []),
        ("A100-40GB", ["3g.20gb@2"], ["cannot start at memory slice 2"]),
        ("A100-40GB", ["4g.20gb@0", "3g.20gb@0"], ["overlaps"]),
        ("A100-40GB", ["7g.40gb@0", "1g.5gb@6"], ["overlaps"]),
        ("H100-80GB", ["1g.5gb@0"], ["not a H100-80GB profile"]),
        ("A10", ["1g.5gb@0"], ["does not support MIG"]),
        ("A100-80GB", ["2g.20gb@0", "2g.20gb@2", "3g.40gb@4"], []),
        ("A100-80GB", ["2g.20gb@4", "3g.40gb@4"], ["overlaps"]),
        (
            "A100-40GB",
            ["1g.10gb@0", "1g.10gb@2", "1g.10gb@4", "1g.10gb@6", "1g.5gb@1"],
            ["overlaps"],
        ),
    ],
    ids=[
        "4g+3g",
        "3g+3g",
        "2g x3 + 1g",
        "1g x7",
        "1g.20gb x4",
        "7g whole",
        "bad start",
        "overlap",
        "7g plus more",
        "wrong model profile",
        "no mig",
        "2g x2 + 3g",
        "2g over 3g",
        "1g.10gb x4 full",
    ],
)
def test_validate_geometry(model: str, instances: list[str], want_errors: list[str]) -> None:
    errors = validate_geometry(model, geo(*instances))
    assert bool(errors) == bool(want_errors), errors
    for want in want_errors:
        assert any(want in err for err in errors), errors


def test_maximal_geometries_are_valid_and_maximal() -> None:
    all_geo = maximal_geometries("A100-40GB")
    assert geo("4g.20gb@0", "3g.20gb@4") in all_geo
    assert geo("7g.40gb@0") in all_geo
    table = MIG_MODELS["A100-40GB"]
    for g in all_geo:
        assert validate_geometry("A100-40GB", g) == []
        for p in table.profiles:
            for s in p.placements:
                assert validate_geometry("A100-40GB", (*g, MigInstance(p.name, s))), g


H100 = "H100-80GB"


def test_plan_uses_existing_free_instances_first() -> None:
    devs = [
        MigDevice("n", 0, H100, geo("3g.40gb@0", "3g.40gb@4")[:1] + geo("3g.40gb@4", busy=True)),
        MigDevice("n", 1, H100),
    ]
    plan = plan_mig(devs, {"3g.40gb": 1})
    assert plan.changes == ()
    assert plan.from_existing == {"3g.40gb": 1}


def test_plan_never_touches_busy_devices_and_says_why() -> None:
    devs = [MigDevice("n", 0, H100, geo("7g.80gb@0", busy=True))]
    plan = plan_mig(devs, {"1g.10gb": 2})
    assert plan.changes == ()
    assert plan.unserved == {"1g.10gb": 2}
    assert "1 with running work" in plan.reasons[0]


def test_plan_packs_demand_onto_few_devices() -> None:
    devs = [MigDevice("n", i, H100) for i in range(4)]
    plan = plan_mig(devs, {"3g.40gb": 2, "1g.10gb": 1})
    assert plan.unserved == {}
    assert plan.from_changes == {"3g.40gb": 2, "1g.10gb": 1}
    assert len(plan.changes) <= 2
    for change in plan.changes:
        assert validate_geometry(H100, change.new) == []
        assert change.old == ()


def test_plan_prefers_partitioned_idle_devices_keeping_whole_ones() -> None:
    devs = [
        MigDevice("n", 0, H100),
        MigDevice("n", 1, H100, geo("4g.40gb@0", "3g.40gb@4")),
    ]
    plan = plan_mig(devs, {"1g.10gb": 2})
    assert [c.index for c in plan.changes] == [1]


def test_plan_leaves_the_biggest_remainder() -> None:
    plan = plan_mig([MigDevice("n", 0, H100)], {"3g.40gb": 1})
    (change,) = plan.changes
    leftover = [i.profile for i in change.new if i.profile != "3g.40gb"]
    assert leftover == ["4g.40gb"]


def test_plan_unknown_profile_reason() -> None:
    plan = plan_mig([MigDevice("n", 0, "A100-40GB")], {"1g.10gb": 1, "2g.35gb": 1})
    assert plan.from_changes == {"1g.10gb": 1}
    assert plan.unserved == {"2g.35gb": 1}
    assert "no device model offers it" in plan.reasons[0]


def test_plan_skips_unhealthy_devices() -> None:
    plan = plan_mig([MigDevice("n", 0, H100, healthy=False)], {"7g.80gb": 1})
    assert plan.changes == () and plan.unserved == {"7g.80gb": 1}
    assert "1 unhealthy" in plan.reasons[0]


def test_plan_is_deterministic() -> None:
    devs = [MigDevice(f"n{i % 3}", i, H100) for i in range(6)]
    demand = {"1g.10gb": 5, "2g.20gb": 3, "3g.40gb": 2}
    assert plan_mig(devs, demand) == plan_mig(list(reversed(devs)), demand)


def test_plan_counts_instances_still_being_applied_and_leaves_that_device_alone() -> None:
    """Demand already covered by a change in flight is not planned a second time."""
    devs = [
        MigDevice("a", 0, H100, geo("1g.10gb@0", "1g.10gb@1", "1g.10gb@2", "1g.10gb@3", "3g.40gb@4"),
                  settling=True),
        MigDevice("b", 0, H100),
        MigDevice("b", 1, H100),
    ]
    plan = plan_mig(devs, {"1g.10gb": 10})
    assert plan.from_existing == {"1g.10gb": 4}
    assert [(c.node, c.index) for c in plan.changes] == [("b", 0)]
    assert plan.unserved == {}
    # A settling device is never the one repartitioned, even when nothing else could serve.
    alone = plan_mig(devs[:1], {"7g.80gb": 1})
    assert alone.changes == () and alone.unserved == {"7g.80gb": 1}


# --- the planner over a pool's snapshot (what the operator calls after a cycle) ------------


def _pool(*nodes: Node) -> Snapshot:
    return make_snapshot(list(nodes), levels=())


def test_repartitions_idle_devices_for_blocked_gangs_and_says_where() -> None:
    snap = _pool(make_node("a").gpus(2).obj())
    plan = plan_repartitions(snap, [make_job("j").mig("1g.10gb").replicas(3).obj()], ["1g.10gb"])
    (change,) = plan.changes
    assert change.node == "a" and change.devices == 2 and list(change.geometry) == [0]
    assert sum(i.profile == "1g.10gb" for i in change.geometry[0]) >= 3
    assert plan.waits["ns/j"] == MigWait(
        "MIGRepartitioning", "waiting for the MIG manager on a to create 1g.10gb instances"
    )


def test_a_changed_node_keeps_the_geometry_of_its_busy_devices() -> None:
    snap = _pool(make_node("a").gpus(2).mig(0, *ones(7)).obj())
    for start in range(7):
        hold(snap, "ns/busy", "a", 0, start)
    plan = plan_repartitions(snap, [make_job("j").mig("7g.80gb").obj()])
    (change,) = plan.changes
    assert change.geometry[0] == geo(*ones(7)), "the busy device keeps its instances"
    assert change.geometry[1] == geo("7g.80gb@0")


@pytest.mark.parametrize(
    ("node", "want_reason"),
    [
        (make_node("a").gpus(1).unschedulable().obj(), "no schedulable node with a MIG-capable GPU"),
        (make_node("a").gpus(1).sick(0).obj(), "1 unhealthy"),
        (make_node("a").gpus(1).mig(0, "7g.80gb@0").obj(), "1 with running work"),
        (make_node("a").gpus(1, model="A10").obj(), "no schedulable node with a MIG-capable GPU"),
    ],
    ids=["cordoned", "sick device", "busy device", "no MIG model"],
)
def test_nothing_is_repartitioned_where_nothing_may_be_placed(node: Node, want_reason: str) -> None:
    snap = _pool(node)
    if snap.node("a").devices[0].mig:
        hold(snap, "ns/busy", "a", 0, 0)
    plan = plan_repartitions(snap, [make_job("j").mig("1g.10gb").obj()])
    assert plan.changes == ()
    assert plan.waits["ns/j"].cause == "MIGUnserved"
    assert want_reason in plan.waits["ns/j"].reason


def test_free_instances_on_an_excluded_node_do_not_count_for_that_gang() -> None:
    snap = _pool(make_node("a").gpus(1).mig(0, *ones(7)).obj(), make_node("b").gpus(1).obj())
    plan = plan_repartitions(snap, [make_job("j").mig("1g.10gb").exclude_nodes("a").obj()])
    assert [c.node for c in plan.changes] == ["b"]
    assert plan.waits["ns/j"].cause == "MIGRepartitioning"


def test_a_gang_with_free_instances_keeps_the_cycles_reason() -> None:
    """Free instances exist (the gang waits on topology, CPU or a reservation): no change."""
    snap = _pool(make_node("a").gpus(1).mig(0, *ones(7)).obj(), make_node("b").gpus(1).obj())
    plan = plan_repartitions(snap, [make_job("j").mig("1g.10gb").replicas(2).obj()])
    assert plan.changes == () and plan.waits == {}


def test_settling_and_whole_gpu_nodes_are_left_alone_but_count_as_supply() -> None:
    snap = _pool(
        make_node("a").gpus(1).mig(0, *ones(7)).settling().obj(),
        make_node("b").gpus(2).obj(),
    )
    snap.apply(Allocation("pod:ns/other", "0", "b", opaque_gpus=1))  # another scheduler's GPU pod
    first, second = make_job("j").mig("1g.10gb").replicas(7).obj(), make_job("k").mig("1g.10gb").obj()
    plan = plan_repartitions(snap, [first, second])
    assert plan.changes == ()
    assert plan.waits["ns/j"] == MigWait(
        "MIGRepartitioning", "waiting for the MIG manager on a to create 1g.10gb instances"
    )
    assert plan.waits["ns/k"].cause == "MIGUnserved", "the 8th instance has nowhere to come from"
