"""The fleet snapshot: apply/release bookkeeping, refusal of over-allocation, transactions."""

from __future__ import annotations

import copy

import pytest

from tests.unit.builders import make_node, make_snapshot
from wanka.core.snapshot import Allocation, DeviceShare, OverAllocation, Snapshot


def fresh() -> Snapshot:
    return make_snapshot(
        [make_node("a").gpus(2).cpu(8_000).mem(4096).obj(), make_node("b").gpus(1).obj()],
        levels=(),
    )


def state(snap: Snapshot) -> object:
    """Everything observable about a snapshot, for exact before/after comparisons."""
    nodes = {
        name: (
            n.used_cpu_milli,
            n.used_memory_mib,
            n.opaque_gpus,
            tuple((d.used_milli, d.used_memory_mib, d.shares) for d in n.devices),
        )
        for name, n in snap.nodes.items()
    }
    return nodes, dict(snap.allocations), sorted(snap.owners())


@pytest.mark.parametrize(
    ("name", "alloc", "want_reason"),
    [
        ("cpu", Allocation("o", "0", "a", cpu_milli=9_000), "CPU free"),
        ("memory", Allocation("o", "0", "a", memory_mib=5_000), "memory free"),
        (
            "device twice",
            Allocation("o", "0", "a", devices=(DeviceShare(0), DeviceShare(0))),
            "invalid or repeated",
        ),
        ("no such device", Allocation("o", "0", "a", devices=(DeviceShare(5),)), "invalid"),
        ("unknown node", Allocation("o", "0", "zz"), "not in the snapshot"),
        ("opaque beyond idle", Allocation("o", "0", "b", opaque_gpus=2), "idle devices"),
        ("zero share", Allocation("o", "0", "a", devices=(DeviceShare(0, 0),)), "free"),
    ],
)
def test_over_allocation_refused(name: str, alloc: Allocation, want_reason: str) -> None:
    snap = fresh()
    before = state(snap)
    assert want_reason in (snap.check(alloc) or "")
    with pytest.raises(OverAllocation):
        snap.apply(alloc)
    assert state(snap) == before


def test_share_over_device_refused_after_partial_use() -> None:
    snap = fresh()
    snap.apply(Allocation("o", "0", "a", devices=(DeviceShare(0, 700),)))
    with pytest.raises(OverAllocation, match="300m free"):
        snap.apply(Allocation("o", "1", "a", devices=(DeviceShare(0, 400),)))
    snap.apply(Allocation("o", "1", "a", devices=(DeviceShare(0, 300),)))
    assert snap.node("a").devices[0].free_milli == 0
    assert snap.node("a").devices[0].shares == 2


def test_duplicate_member_refused() -> None:
    snap = fresh()
    snap.apply(Allocation("o", "0", "a"))
    with pytest.raises(OverAllocation, match="already holds"):
        snap.apply(Allocation("o", "0", "b"))


def test_apply_release_roundtrip() -> None:
    snap = fresh()
    before = state(snap)
    snap.apply(Allocation("o", "0", "a", 1000, 100, (DeviceShare(1, 250, 10),)))
    snap.apply(Allocation("o", "1", "b", opaque_gpus=1))
    assert snap.allocated_milli() == 1250
    assert [a.member for a in snap.allocations_of("o")] == ["0", "1"]
    assert snap.node("b").free_whole == 0
    removed = snap.release("o")
    assert len(removed) == 2
    assert state(snap) == before


def test_release_one_member() -> None:
    snap = fresh()
    snap.apply(Allocation("o", "0", "a", devices=(DeviceShare(0),)))
    snap.apply(Allocation("o", "1", "a", devices=(DeviceShare(1),)))
    snap.release("o", "0")
    assert [a.member for a in snap.allocations_of("o")] == ["1"]
    assert snap.node("a").devices[0].idle and not snap.node("a").devices[1].idle


def test_transaction_discard_restores_exactly() -> None:
    snap = fresh()
    snap.apply(Allocation("keep", "0", "a", devices=(DeviceShare(0, 500),)))
    before = state(snap)
    txn = snap.transaction()
    txn.apply(Allocation("new", "0", "a", devices=(DeviceShare(0, 500),)))
    txn.release("keep")
    txn.apply(Allocation("new", "1", "b", devices=(DeviceShare(0),)))
    assert state(snap) != before
    txn.discard()
    assert state(snap) == before


def test_transaction_commit_keeps_and_context_discards_on_error() -> None:
    snap = fresh()
    with snap.transaction() as txn:
        txn.apply(Allocation("x", "0", "a"))
        txn.commit()
    assert snap.allocations_of("x")
    before = state(snap)
    with pytest.raises(OverAllocation), snap.transaction() as txn:
        txn.apply(Allocation("y", "0", "a", devices=(DeviceShare(1),)))
        txn.apply(Allocation("y", "1", "a", devices=(DeviceShare(1),)))  # over-allocates
    assert state(snap) == before


def test_copy_is_independent() -> None:
    snap = fresh()
    clone = snap.copy()
    clone.apply(Allocation("o", "0", "a", devices=(DeviceShare(0),)))
    assert snap.allocated_milli() == 0 and clone.allocated_milli() == 1000
    assert copy.copy(snap.levels) == clone.levels


def test_unhealthy_devices_excluded_from_free() -> None:
    node = make_node("n").gpus(4).sick(1).obj()
    node.opaque_gpus = 1
    assert node.free_whole == 2
    assert node.free_milli == 2000
