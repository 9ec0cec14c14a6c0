"""MIG profile tables, the geometry validator and the repartitioning planner."""

from __future__ import annotations

import pytest

from wanka.cluster.mig import MigNode, pick_instances, plan_repartitions
from wanka.core.mig import (
    MIG_MODELS,
    MigDevice,
    MigInstance,
    maximal_geometries,
    mig_model,
    plan_mig,
    validate_geometry,
)


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


def test_repartitions_skip_a_node_whose_change_is_in_flight_but_count_its_instances() -> None:
    four_and_three = geo("1g.10gb@0", "1g.10gb@1", "1g.10gb@2", "1g.10gb@3", "3g.40gb@4")
    nodes = {
        "a": MigNode("a", H100, 8, {0: four_and_three}, ready=False),
        "b": MigNode("b", H100, 8, {}),
    }
    changes, reasons = plan_repartitions(nodes, {"1g.10gb": 10}, ["1g.10gb", "3g.40gb", "7g.80gb"])
    assert reasons == []
    assert [c.node for c in changes] == ["b"]
    (change,) = changes
    assert list(change.geometry) == [0], "one more device covers the 6 not in flight"
    assert sum(1 for i in change.geometry[0] if i.profile == "1g.10gb") >= 6


def _mig_node(name: str, rack: str, free_1g: int, ready: bool = True) -> MigNode:
    instances = tuple(MigInstance("1g.10gb", i) for i in range(free_1g))
    return MigNode(name, H100, 8, {0: instances}, ready=ready, labels={"wanka.io/rack": rack})


def test_pick_instances_skips_excluded_and_settling_nodes_and_packs_few_nodes() -> None:
    nodes = {"a": _mig_node("a", "r1", 1), "b": _mig_node("b", "r1", 3), "c": _mig_node("c", "r2", 7, ready=False)}
    picks, why = pick_instances(nodes, "1g.10gb", 3)
    assert why == "" and {n for n, _, _ in picks} == {"b"}, "three on one node rather than two"
    picks, why = pick_instances(nodes, "1g.10gb", 3, excluded={"b"})
    assert picks == [] and "1 free 1g.10gb" in why, "the node that failed the job is avoided"
    assert pick_instances(nodes, "3g.40gb", 1)[0] == []


def test_pick_instances_honours_topology() -> None:
    nodes = {"a": _mig_node("a", "r1", 2), "b": _mig_node("b", "r2", 3), "c": _mig_node("c", "r2", 1)}
    rack = "wanka.io/rack"
    picks, _ = pick_instances(nodes, "1g.10gb", 2, level=rack, required=True)
    assert {n for n, _, _ in picks} == {"a"}, "the tightest rack that holds the gang"
    picks, _ = pick_instances(nodes, "1g.10gb", 4, level=rack, required=True)
    assert {n for n, _, _ in picks} == {"b", "c"}
    picks, why = pick_instances(nodes, "1g.10gb", 5, level=rack, required=True)
    assert picks == [] and "the best wanka.io/rack has 4 free" in why and "of 6 free" in why
    picks, _ = pick_instances(nodes, "1g.10gb", 5, level=rack, required=False)
    assert len(picks) == 5, "Preferred spans racks when no single one holds the gang"
