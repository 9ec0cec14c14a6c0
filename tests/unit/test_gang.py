"""Gang placement: all-or-nothing, topology levels, packing, constraints and reasons."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from tests.unit.builders import LEVELS, make_fleet, make_job, make_node, make_snapshot, occupy
from wanka.core.gang import BestFitSlices, place_gang
from wanka.core.requests import GangRequest, InvalidRequest
from wanka.core.snapshot import Node, Snapshot, Transaction

RACK = "wanka.io/rack"
NVL = "wanka.io/nvlink-domain"
SPINE = "wanka.io/spine"


def fleet_with_busy(busy: dict[str, list[int]], **kw: int) -> Snapshot:
    snap = make_snapshot(make_fleet(**kw))
    for node, devs in busy.items():
        occupy(snap, f"bg/{node}", node, *devs)
    return snap


@dataclass
class Case:
    name: str
    snap: Snapshot
    job: GangRequest
    want_ok: bool
    want_nodes: set[str] | None = None
    want_level: str | None = None
    want_reason: list[str] = field(default_factory=list)


# fleet: 2 spines x 2 racks x 4 nodes, NVLink domains of 2 nodes; names n<rack>-<i>
CASES = [
    Case(
        "one nvlink domain before a rack",
        fleet_with_busy({}, racks=2),
        make_job("a").replicas(2).gpus(8).topology(RACK).obj(),
        True,
        want_nodes={"n0-0", "n0-1"},
        want_level=NVL,
    ),
    Case(
        "best-fit nvlink domain: the partly used one is kept for the gang that fits it",
        fleet_with_busy({"n0-0": [0, 1, 2, 3]}, racks=2),
        make_job("a").replicas(3).gpus(4).topology(RACK).obj(),
        True,
        want_nodes={"n0-0", "n0-1"},
        want_level=NVL,
    ),
    Case(
        "required rack: spans nvlink domains inside one rack",
        fleet_with_busy({}, racks=2),
        make_job("a").replicas(4).gpus(8).topology(RACK).obj(),
        True,
        want_nodes={"n0-0", "n0-1", "n0-2", "n0-3"},
        want_level=RACK,
    ),
    Case(
        "required rack: no rack has room, reason names the best rack",
        fleet_with_busy({"n0-0": [0], "n1-1": [3]}, racks=2),
        make_job("a").replicas(4).gpus(8).topology(RACK).models("H100-80GB").obj(),
        False,
        want_reason=["needs 4 replicas", "H100-80GB", f"in one {RACK}", "has room for 3"],
    ),
    Case(
        "preferred rack: spans two racks of one spine rather than failing",
        fleet_with_busy({"n0-0": [0], "n1-1": [3]}, racks=2),
        make_job("a").replicas(4).gpus(8).topology(RACK, "Preferred").obj(),
        True,
        want_level=SPINE,
    ),
    Case(
        "preferred: fewest spines, the largest first",
        fleet_with_busy({}, racks=4),
        make_job("a").replicas(10).gpus(8).topology(RACK, "Preferred").obj(),
        True,
        want_level="",
    ),
    Case(
        "whole nodes stay whole: a 1-GPU job goes to the partly used node",
        fleet_with_busy({"n1-2": [0, 1, 2]}, racks=2),
        make_job("a").gpus(1).obj(),
        True,
        want_nodes={"n1-2"},
    ),
    Case(
        "model constraint excludes the only free nodes",
        make_snapshot(
            [
                make_node("a100").gpus(8, "A100-80GB").topo("x", "r", "s").obj(),
                make_node("h100").gpus(8, "H100-80GB").topo("y", "r", "s").obj(),
            ]
        ),
        make_job("a").replicas(2).gpus(8).models("H100-80GB").obj(),
        False,
        want_reason=["room for 1", "1 other model"],
    ),
    Case(
        "one model per gang even when no model is named",
        make_snapshot(
            [
                make_node("a100").gpus(8, "A100-80GB").topo("x", "r", "s").obj(),
                make_node("h100").gpus(8, "H100-80GB").topo("y", "r", "s").obj(),
            ]
        ),
        make_job("a").replicas(2).gpus(8).obj(),
        False,
        want_reason=["on one GPU model", "has room for 1"],
    ),
    Case(
        "excluded node and unschedulable node are skipped",
        make_snapshot(
            [
                make_node("bad").gpus(8).topo("x", "r", "s").obj(),
                make_node("cordoned").gpus(8).topo("x", "r", "s").unschedulable().obj(),
                make_node("good").gpus(8).topo("y", "r", "s").obj(),
            ]
        ),
        make_job("a").gpus(8).exclude_nodes("bad").obj(),
        True,
        want_nodes={"good"},
    ),
    Case(
        "excluded and sick devices are not counted",
        make_snapshot(
            [
                make_node("n").gpus(8).sick(7).obj(),
            ],
            levels=(),
        ),
        make_job("a").gpus(4).replicas(2).exclude_devices(("n", 0)).obj(),
        False,
        want_reason=["room for 1"],
    ),
    Case(
        "cpu is a limit too",
        make_snapshot([make_node("n").gpus(8).cpu(16_000).obj()], levels=()),
        make_job("a").replicas(2).gpus(1).cpu(10_000).obj(),
        False,
        want_reason=["room for 1"],
    ),
    Case(
        "fractional replicas share one device before opening another",
        make_snapshot([make_node("n").gpus(2).obj()], levels=()),
        make_job("a").replicas(4).milli(250).obj(),
        True,
        want_nodes={"n"},
    ),
    Case(
        "unknown topology level",
        make_snapshot([make_node("n").gpus(8).obj()], levels=()),
        make_job("a").gpus(8).topology(RACK).obj(),
        False,
        want_reason=["not one of the pool's levels"],
    ),
    Case(
        "elastic gang starts with min_available inside one rack",
        fleet_with_busy({"n0-0": [0], "n1-0": [0]}, racks=2, racks_per_spine=1),
        make_job("a").replicas(4).min_available(3).gpus(8).topology(RACK).obj(),
        True,
        want_level=RACK,
    ),
]


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_place_gang(case: Case) -> None:
    before = case.snap.allocated_milli()
    result = place_gang(case.snap, case.job)
    assert result.ok == case.want_ok, result.reason
    if not case.want_ok:
        assert case.snap.allocated_milli() == before, "a failed gang must leave nothing behind"
        for part in case.want_reason:
            assert part in result.reason, result.reason
        return
    assert result.placement is not None
    allocs = result.placement.allocations
    assert len(allocs) >= case.job.needed
    assert len(case.snap.allocations_of(case.job.owner)) == len(allocs)
    if case.want_nodes is not None:
        assert set(result.placement.nodes) == case.want_nodes
    if case.want_level is not None:
        assert result.placement.level == case.want_level


def test_fractional_replicas_pack_one_device() -> None:
    snap = make_snapshot([make_node("n").gpus(2).obj()], levels=())
    result = place_gang(snap, make_job("a").replicas(4).milli(250).obj())
    assert result.placement is not None
    assert {a.devices[0].index for a in result.placement.allocations} == {0}
    assert snap.node("n").devices[1].idle


def test_fraction_prefers_already_shared_device() -> None:
    snap = make_snapshot([make_node("n").gpus(4).obj()], levels=())
    occupy(snap, "bg/x", "n", 2, milli=500)
    result = place_gang(snap, make_job("a").milli(250).obj())
    assert result.placement is not None
    assert result.placement.allocations[0].devices[0].index == 2


def test_preferred_spans_fewest_spines() -> None:
    # 4 racks of 4 nodes; spine-0 = racks 0,1 (8 nodes), spine-1 = racks 2,3
    snap = make_snapshot(make_fleet(racks=4))
    occupy(snap, "bg/x", "n2-0", 0)
    result = place_gang(snap, make_job("a").replicas(10).gpus(8).topology(RACK, "Preferred").obj())
    assert result.placement is not None
    assert result.placement.domains == ("spine-0", "spine-1")
    nodes = result.placement.nodes
    # the full spine is used whole, the remainder stays inside one rack of the other spine
    assert sum(1 for n in nodes if n[1] in "01") == 8
    racks_rest = {n.split("-")[0] for n in nodes if n[1] in "23"}
    assert len(racks_rest) == 1


def test_writer_transaction_discard_undoes_the_gang() -> None:
    snap = make_snapshot(make_fleet())
    txn = Transaction(snap)
    result = place_gang(snap, make_job("a").replicas(3).gpus(8).obj(), writer=txn)
    assert result.ok and len(snap.allocations_of("ns/a")) == 3
    txn.discard()
    assert snap.allocations_of("ns/a") == []
    assert snap.allocated_milli() == 0


def test_dry_run_leaves_snapshot_unchanged() -> None:
    snap = make_snapshot(make_fleet())
    result = place_gang(snap, make_job("a").replicas(3).gpus(8).obj(), dry_run=True)
    assert result.ok and len(result.placement.allocations) == 3  # type: ignore[union-attr]
    assert snap.allocated_milli() == 0


def test_owner_already_placed_is_refused() -> None:
    snap = make_snapshot(make_fleet())
    assert place_gang(snap, make_job("a").gpus(8).obj()).ok
    again = place_gang(snap, make_job("a").gpus(8).obj())
    assert not again.ok and "already holds" in again.reason


class NoDevice:
    """A slice policy that refuses everything: the gang must roll back whole."""

    def choose_device(
        self, node: Node, milli: int, memory_mib: int, excluded: frozenset[int]
    ) -> int | None:
        return None


def test_slice_policy_refusal_rolls_back() -> None:
    snap = make_snapshot([make_node("n").gpus(2).obj()], levels=())
    result = place_gang(snap, make_job("a").replicas(2).milli(500).obj(), slice_policy=NoDevice())
    assert not result.ok and "slice policy" in result.reason
    assert snap.allocated_milli() == 0


def test_best_fit_slices_respects_memory() -> None:
    node = make_node("n").gpus(2, memory_mib=10_000).obj()
    snap = make_snapshot([node], levels=())
    occupy(snap, "bg/x", "n", 0, milli=100)
    node.devices[0].used_memory_mib = 9_000  # device 0 has compute room but no memory
    pick = BestFitSlices().choose_device(node, 250, 2_000, frozenset())
    assert pick == 1


def test_opaque_pods_hold_idle_devices() -> None:
    node = make_node("n").gpus(2).obj()
    node.opaque_gpus = 1
    snap = make_snapshot([node], levels=())
    assert not place_gang(snap, make_job("a").gpus(2).obj()).ok
    assert place_gang(snap, make_job("b").gpus(1).obj()).ok


@pytest.mark.parametrize(
    ("kwargs", "want"),
    [
        ({"gpus": 1, "gpu_milli": 500}, "not several"),
        ({"replicas": 0}, "at least 1"),
        ({"replicas": 2, "min_available": 3}, "min_available"),
        ({"gpu_milli": 1500}, "whole devices"),
        ({"mig_profile": "big"}, "MIG profile"),
    ],
    ids=["two forms", "no replicas", "min above replicas", "fraction above one", "bad mig"],
)
def test_invalid_requests(kwargs: dict[str, object], want: str) -> None:
    with pytest.raises(InvalidRequest, match=want):
        GangRequest("ns/x", **kwargs)  # type: ignore[arg-type]


def test_request_units() -> None:
    assert make_job("a").replicas(4).milli(250).obj().gpu_equivalents == 1.0
    assert make_job("a").replicas(2).gpus(8).obj().total_milli == 16_000
    mig = make_job("a").mig("3g.40gb").obj()
    assert (mig.share_milli, mig.share_memory_mib) == (428, 40 * 1024)
    running = make_job("a").gpus(2).running(100.0, checkpoint=160.0).obj()
    assert running.work_lost_seconds(200.0) == 80.0
    assert make_job("a").running(0).duration(50).obj().expected_end() == 50


def test_levels_constant_matches_fleet() -> None:
    snap = make_snapshot(make_fleet())
    assert snap.levels == LEVELS
    assert snap.node("n1-3").topology == ("nvl-1-1", "rack-1", "spine-0")
