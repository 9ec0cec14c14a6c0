"""Fluent builders for core test inputs: jobs, nodes, fleets and tenant queues."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from wanka.core.constraints import Taint, TaintEffect, Term, Toleration
from wanka.core.queueing import PoolQuota, QueueSpec, WithinQueue
from wanka.core.requests import GangRequest, TopologyMode
from wanka.core.snapshot import Allocation, Device, DeviceShare, Node, Snapshot
from wanka.units import mig_share_milli

LEVELS = ("wanka.io/nvlink-domain", "wanka.io/rack", "wanka.io/spine")
GIB = 1024


class JobBuilder:
    """`make_job("j").replicas(4).gpus(8).obj()` builds a GangRequest."""

    def __init__(self, name: str) -> None:
        owner = name if "/" in name else f"ns/{name}"
        self._fields: dict[str, Any] = {"owner": owner, "queue": "q", "pool": "p"}

    def _set(self, **kw: Any) -> JobBuilder:
        self._fields.update(kw)
        return self

    def replicas(self, n: int) -> JobBuilder:
        return self._set(replicas=n)

    def min_available(self, n: int) -> JobBuilder:
        return self._set(min_available=n)

    def gpus(self, n: int) -> JobBuilder:
        return self._set(gpus=n)

    def milli(self, m: int, memory_mib: int = 0) -> JobBuilder:
        return self._set(gpu_milli=m, gpu_memory_mib=memory_mib)

    def mig(self, profile: str) -> JobBuilder:
        return self._set(mig_profile=profile)

    def cpu(self, milli: int) -> JobBuilder:
        return self._set(cpu_milli=milli)

    def mem(self, mib: int) -> JobBuilder:
        return self._set(memory_mib=mib)

    def models(self, *models: str) -> JobBuilder:
        return self._set(models=frozenset(models))

    def exclude_nodes(self, *names: str) -> JobBuilder:
        return self._set(excluded_nodes=frozenset(names))

    def exclude_devices(self, *devs: tuple[str, int]) -> JobBuilder:
        return self._set(excluded_devices=frozenset(devs))

    def topology(self, level: str, mode: TopologyMode = "Required") -> JobBuilder:
        return self._set(topology_level=level, topology_mode=mode)

    def tolerate(self, *tolerations: Toleration) -> JobBuilder:
        return self._set(tolerations=tolerations)

    def node_selector(self, labels: dict[str, str]) -> JobBuilder:
        return self._set(node_selector=tuple(sorted(labels.items())))

    def affinity(self, *terms: Term) -> JobBuilder:
        return self._set(affinity=terms)

    def queue(self, name: str) -> JobBuilder:
        return self._set(queue=name)

    def pool(self, name: str) -> JobBuilder:
        return self._set(pool=name)

    def priority(self, p: int) -> JobBuilder:
        return self._set(priority=p)

    def created(self, t: float) -> JobBuilder:
        return self._set(created=t)

    def running(self, started: float, checkpoint: float | None = None) -> JobBuilder:
        return self._set(started=started, last_checkpoint=checkpoint)

    def duration(self, seconds: float) -> JobBuilder:
        return self._set(duration_bound=seconds)

    def obj(self) -> GangRequest:
        return GangRequest(**self._fields)


def make_job(name: str) -> JobBuilder:
    return JobBuilder(name)


class NodeBuilder:
    """`make_node("n0").gpus(8, "H100-80GB").topo("nvl-0", "rack-0", "spine-0").obj()`."""

    def __init__(self, name: str) -> None:
        self._name = name
        self._cpu = 128_000
        self._mem = 1024 * GIB
        self._devices: list[Device] = []
        self._topology: tuple[str, ...] = ()
        self._schedulable = True
        self._labels: dict[str, str] = {}
        self._taints: list[Taint] = []

    def gpus(self, n: int, model: str = "H100-80GB", memory_mib: int = 80 * GIB) -> NodeBuilder:
        self._devices = [Device(i, model, memory_mib) for i in range(n)]
        self._labels["wanka.io/gpu-model"] = model
        return self

    def cpu(self, milli: int) -> NodeBuilder:
        self._cpu = milli
        return self

    def mem(self, mib: int) -> NodeBuilder:
        self._mem = mib
        return self

    def topo(self, *domains: str) -> NodeBuilder:
        self._topology = domains
        return self

    def label(self, key: str, value: str) -> NodeBuilder:
        self._labels[key] = value
        return self

    def taint(self, key: str, value: str = "", effect: TaintEffect = "NoSchedule") -> NodeBuilder:
        self._taints.append(Taint(key, value, effect))
        return self

    def unschedulable(self) -> NodeBuilder:
        self._schedulable = False
        return self

    def sick(self, *indices: int) -> NodeBuilder:
        for i in indices:
            self._devices[i].healthy = False
        return self

    def mig(self, index: int, *instances: str) -> NodeBuilder:
        """Partition device `index`: `.mig(0, "3g.40gb@0", "4g.40gb@4")`."""
        self._devices[index].mig = {int(s): p for p, s in (i.split("@") for i in instances)}
        return self

    def mig_all(self, *instances: str) -> NodeBuilder:
        """Partition every device alike: `.mig_all(*ones(7))` gives 7 x 1g.10gb each."""
        for d in self._devices:
            self.mig(d.index, *instances)
        return self

    def settling(self) -> NodeBuilder:
        """A new MIG geometry is still being applied on every device."""
        for d in self._devices:
            d.mig_settling = True
        return self

    def obj(self) -> Node:
        return Node(
            self._name,
            self._cpu,
            self._mem,
            devices=[replace(d, mig=dict(d.mig), mig_held=set(d.mig_held)) for d in self._devices],
            labels=dict(self._labels),
            topology=self._topology,
            schedulable=self._schedulable,
            taints=tuple(self._taints),
        )


def make_node(name: str) -> NodeBuilder:
    return NodeBuilder(name)


def make_fleet(
    racks: int = 2,
    nodes_per_rack: int = 4,
    gpus: int = 8,
    model: str = "H100-80GB",
    nvlink_per_rack: int = 2,
    racks_per_spine: int = 2,
    prefix: str = "",
) -> list[Node]:
    """Nodes n<rack>-<i> in racks, NVLink domains of nodes_per_rack/nvlink_per_rack nodes."""
    nodes = []
    per_nvl = max(1, nodes_per_rack // nvlink_per_rack)
    for r in range(racks):
        for i in range(nodes_per_rack):
            nodes.append(
                make_node(f"{prefix}n{r}-{i}")
                .gpus(gpus, model)
                .topo(
                    f"{prefix}nvl-{r}-{i // per_nvl}",
                    f"{prefix}rack-{r}",
                    f"{prefix}spine-{r // racks_per_spine}",
                )
                .obj()
            )
    return nodes


def make_snapshot(nodes: list[Node], levels: tuple[str, ...] = LEVELS) -> Snapshot:
    return Snapshot(nodes, levels=levels)


def occupy(snap: Snapshot, owner: str, node: str, *indices: int, milli: int = 1000) -> None:
    """Put a running allocation of `owner` on devices of `node` (one member per call)."""
    member = str(len(snap.allocations_of(owner)))
    snap.apply(
        Allocation(owner, member, node, devices=tuple(DeviceShare(i, milli) for i in indices))
    )


def ones(n: int, profile: str = "1g.10gb") -> list[str]:
    """n instances of a one-slice profile at starts 0..n-1, for `NodeBuilder.mig`."""
    return [f"{profile}@{i}" for i in range(n)]


def hold(snap: Snapshot, owner: str, node: str, index: int, start: int) -> None:
    """Put a running member of `owner` on the MIG instance at `start` of device `index`."""
    profile = snap.node(node).devices[index].mig[start]
    member = str(len(snap.allocations_of(owner)))
    share = DeviceShare(index, mig_share_milli(profile), mig_start=start)
    snap.apply(Allocation(owner, member, node, devices=(share,)))


class QueueBuilder:
    """`make_queue("q").quota("p", 8, borrow=4).weight(2).obj()` builds a QueueSpec."""

    def __init__(self, name: str) -> None:
        self._name = name
        self._quotas: list[PoolQuota] = []
        self._weight = 1.0
        self._within: WithinQueue = "LowerPriority"
        self._reclaim = True

    def quota(self, pool: str, gpus: float, borrow: float | None = 0.0) -> QueueBuilder:
        self._quotas.append(PoolQuota(pool, gpus, borrow))
        return self

    def weight(self, w: float) -> QueueBuilder:
        self._weight = w
        return self

    def preemption(self, within: WithinQueue, reclaim: bool) -> QueueBuilder:
        self._within = within
        self._reclaim = reclaim
        return self

    def obj(self) -> QueueSpec:
        return QueueSpec(
            self._name,
            tuple(self._quotas),
            weight=self._weight,
            within_queue=self._within,
            reclaim_borrowed=self._reclaim,
        )


def make_queue(name: str) -> QueueBuilder:
    return QueueBuilder(name)
