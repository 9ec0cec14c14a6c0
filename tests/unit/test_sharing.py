"""Fractional gangs through the scheduler: packed, never over a device, bounds honoured."""

from __future__ import annotations

from collections import Counter

from wanka.core.queueing import PoolQuota, QueueSpec, SchedulerConfig, schedule
from wanka.core.requests import GangRequest
from wanka.core.sharing import FragmentationAwareShares, workload_of
from wanka.core.snapshot import Device, Node, Snapshot


def fleet(nodes: int = 4, gpus: int = 8, memory_mib: int = 81920) -> Snapshot:
    return Snapshot([Node(f"n{i}", 128_000, 1 << 20, [Device(d, "H100", memory_mib) for d in range(gpus)],
                          topology=("r0",)) for i in range(nodes)], levels=["wanka.io/rack"])


def admit_all(snap: Snapshot, reqs: list[GangRequest], shares: FragmentationAwareShares,
              quota: float = 1000) -> list[str]:
    """Admit one at a time as the operator does, applying each placement; returns admitted owners."""
    admitted: list[str] = []
    running: list[GangRequest] = []
    queue = QueueSpec("q", (PoolQuota("p", quota, 0),))
    for req in reqs:
        result = schedule(snap, [queue], [req], running, 0.0,
                          config=SchedulerConfig(slice_policy=shares))
        for d in result.admitted:
            for alloc in d.placement.allocations:
                snap.apply(alloc)
            admitted.append(d.owner)
            running.append(req)
    return admitted


def share(name: str, milli: int, memory_mib: int = 0) -> GangRequest:
    return GangRequest(owner=f"ns/{name}", queue="q", pool="p", gpu_milli=milli,
                       gpu_memory_mib=memory_mib, cpu_milli=1000, memory_mib=1024)


def used_devices(snap: Snapshot) -> Counter[tuple[str, int]]:
    return Counter({(n.name, d.index): d.used_milli for n in snap.nodes.values() for d in n.devices
                    if d.used_milli})


def test_forty_quarter_gpus_fill_exactly_ten_devices() -> None:
    snap = fleet()
    reqs = [share(f"q{i}", 250) for i in range(40)]
    assert len(admit_all(snap, reqs, FragmentationAwareShares(workload=workload_of(reqs)))) == 40
    used = used_devices(snap)
    assert len(used) == 10 and set(used.values()) == {1000}


def test_mixed_fractions_never_exceed_a_device_and_whole_devices_stay_whole() -> None:
    snap = fleet()
    sizes = [700, 300, 500, 250, 250, 600, 400, 100, 900, 100, 333, 333, 333] * 3
    reqs = [share(f"m{i}", s) for i, s in enumerate(sizes)]
    assert len(admit_all(snap, reqs, FragmentationAwareShares(workload=workload_of(reqs)))) == len(reqs)
    assert max(d.used_milli for n in snap.nodes.values() for d in n.devices) <= 1000
    used = used_devices(snap)
    assert sum(used.values()) == sum(sizes)
    # Packed: no more devices touched than a first-fit-decreasing bound plus one.
    assert len(used) <= -(-sum(sizes) // 1000) + 2, used
    whole = GangRequest(owner="ns/w", queue="q", pool="p", gpus=1)
    assert admit_all(snap, [whole], FragmentationAwareShares()) == ["ns/w"]


def test_max_shares_per_device_bounds_tenants_per_device() -> None:
    snap = fleet(nodes=1, gpus=2)
    reqs = [share(f"s{i}", 100) for i in range(10)]
    admitted = admit_all(snap, reqs, FragmentationAwareShares(max_shares_per_device=4))
    assert len(admitted) == 8
    assert max(d.shares for d in snap.nodes["n0"].devices) == 4


def test_gpu_memory_bound_holds() -> None:
    snap = fleet(nodes=1, gpus=1, memory_mib=10_000)
    reqs = [share(f"g{i}", 100, memory_mib=4_000) for i in range(3)]
    assert len(admit_all(snap, reqs, FragmentationAwareShares())) == 2
    dev = snap.nodes["n0"].devices[0]
    assert dev.used_memory_mib == 8_000 and dev.used_milli == 200


def test_quota_counts_slices_as_fractions() -> None:
    snap = fleet()
    reqs = [share(f"t{i}", 250) for i in range(9)]
    assert len(admit_all(snap, reqs, FragmentationAwareShares(), quota=2)) == 8


def test_a_gang_of_shares_is_all_or_nothing() -> None:
    snap = fleet(nodes=1, gpus=1)
    big = GangRequest(owner="ns/g", queue="q", pool="p", replicas=5, gpu_milli=250)
    queue = QueueSpec("q", (PoolQuota("p", 100, 0),))
    result = schedule(snap, [queue], [big], [], 0.0,
                      config=SchedulerConfig(slice_policy=FragmentationAwareShares()))
    assert not result.admitted and result.waiting
    assert snap.allocated_milli() == 0
