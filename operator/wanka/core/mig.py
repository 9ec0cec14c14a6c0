"""MIG profiles and placement rules per GPU model as data, a geometry validator and a planner.

Facts from NVIDIA's MIG user guide ("Supported MIG Profiles" and `nvidia-smi mig -lgipp`):
a GPU of these models has 7 compute slices and 8 memory slices; a GPU instance profile
occupies `memory_slices` consecutive memory slices starting at one of its allowed
`placements`, and `max_count` instances of it fit at most. A geometry (the instances on
one device) is valid when every start is allowed, no memory slices overlap, and compute
slices and counts stay within limits. The planner repartitions only idle devices.

`plan_repartitions` is what the operator calls after a scheduling cycle: from the pool's
snapshot and the MIG gangs the cycle could not place, the new geometries to send to the MIG
manager and, per gang, why it waits (`MIGRepartitioning` or `MIGUnserved`).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from functools import cache
from typing import Literal

from wanka.core.requests import GangRequest
from wanka.core.snapshot import Device, Snapshot
from wanka.units import MIG_COMPUTE_SLICES as COMPUTE_SLICES
from wanka.units import mig_profile_slices

MEMORY_SLICES = 8


@dataclass(frozen=True, slots=True)
class MigProfile:
    """One GPU instance profile of one model."""

    name: str
    compute_slices: int
    memory_slices: int
    memory_gib: int
    placements: tuple[int, ...]  # allowed start memory slices
    max_count: int


@dataclass(frozen=True, slots=True)
class MigModel:
    model: str
    profiles: tuple[MigProfile, ...]

    def profile(self, name: str) -> MigProfile | None:
        for p in self.profiles:
            if p.name == name:
                return p
        return None


def _family(model: str, g1: int, g1x2: int, g3: int, g7: int) -> MigModel:
    """The GA100/GH100 layout all four models share; only the memory sizes differ."""
    return MigModel(
        model,
        (
            MigProfile(f"1g.{g1}gb", 1, 1, g1, (0, 1, 2, 3, 4, 5, 6), 7),
            MigProfile(f"1g.{g1x2}gb", 1, 2, g1x2, (0, 2, 4, 6), 4),
            MigProfile(f"2g.{g1x2}gb", 2, 2, g1x2, (0, 2, 4), 3),
            MigProfile(f"3g.{g3}gb", 3, 4, g3, (0, 4), 2),
            MigProfile(f"4g.{g3}gb", 4, 4, g3, (0,), 1),
            MigProfile(f"7g.{g7}gb", 7, 8, g7, (0,), 1),
        ),
    )


MIG_MODELS: dict[str, MigModel] = {
    m.model: m
    for m in (
        _family("A100-40GB", 5, 10, 20, 40),
        _family("A100-80GB", 10, 20, 40, 80),
        _family("H100-80GB", 10, 20, 40, 80),
        _family("H200-141GB", 18, 35, 71, 141),
    )
}
# Names the node label or NVML may use for the same parts.
ALIASES = {
    "A100-SXM4-40GB": "A100-40GB",
    "A100-PCIE-40GB": "A100-40GB",
    "A100-SXM4-80GB": "A100-80GB",
    "A100-PCIE-80GB": "A100-80GB",
    "H100-SXM5-80GB": "H100-80GB",
    "H100-PCIE-80GB": "H100-80GB",
    "H200-SXM5-141GB": "H200-141GB",
    "H200-NVL-141GB": "H200-141GB",
}


def mig_model(model: str) -> MigModel | None:
    """The MIG table of a GPU model (aliases accepted), or None when it has no MIG."""
    return MIG_MODELS.get(ALIASES.get(model, model))


@dataclass(frozen=True, slots=True)
class MigInstance:
    """One GPU instance on a device: a profile at a start memory slice."""

    profile: str
    start: int
    in_use: bool = False


Geometry = tuple[MigInstance, ...]


def validate_geometry(model: str, geometry: Iterable[MigInstance]) -> list[str]:
    """Every reason the geometry is invalid on `model`; an empty list means valid."""
    table = mig_model(model)
    if table is None:
        return [f"{model} does not support MIG"]
    errors: list[str] = []
    used = [""] * MEMORY_SLICES
    compute = 0
    counts: dict[str, int] = {}
    for inst in geometry:
        prof = table.profile(inst.profile)
        if prof is None:
            names = ", ".join(p.name for p in table.profiles)
            errors.append(f"{inst.profile} is not a {table.model} profile ({names})")
            continue
        if inst.start not in prof.placements:
            errors.append(
                f"{inst.profile} cannot start at memory slice {inst.start} "
                f"(allowed: {', '.join(map(str, prof.placements))})"
            )
            continue
        counts[prof.name] = counts.get(prof.name, 0) + 1
        compute += prof.compute_slices
        for s in range(inst.start, inst.start + prof.memory_slices):
            if used[s]:
                errors.append(f"{inst.profile}@{inst.start} overlaps {used[s]} at slice {s}")
                break
            used[s] = f"{inst.profile}@{inst.start}"
    for name, n in sorted(counts.items()):
        prof = table.profile(name)
        if prof is not None and n > prof.max_count:
            errors.append(f"{n} x {name} exceeds the maximum of {prof.max_count}")
    if compute > COMPUTE_SLICES:
        errors.append(f"{compute} compute slices exceed the {COMPUTE_SLICES} available")
    return errors


@cache
def maximal_geometries(model: str) -> tuple[Geometry, ...]:
    """Every valid geometry of `model` to which no further instance can be added."""
    table = mig_model(model)
    if table is None:
        return ()
    slots = [(p, s) for p in table.profiles for s in p.placements]
    found: set[Geometry] = set()

    def extend(i: int, chosen: list[MigInstance]) -> None:
        # add (profile, start) options in a fixed order so each set is built once
        grew = False
        for j in range(i, len(slots)):
            p, s = slots[j]
            candidate = [*chosen, MigInstance(p.name, s)]
            if not validate_geometry(table.model, candidate):
                grew = True
                extend(j + 1, candidate)
        if not grew:
            geo = tuple(sorted(chosen, key=lambda x: (x.start, x.profile)))
            if geo and not any(
                not validate_geometry(table.model, [*geo, MigInstance(p.name, s)]) for p, s in slots
            ):
                found.add(geo)

    extend(0, [])
    return tuple(sorted(found, key=lambda g: [(x.start, x.profile) for x in g]))


@dataclass(frozen=True, slots=True)
class MigDevice:
    """A MIG-capable device as the planner sees it."""

    node: str
    index: int
    model: str
    geometry: Geometry = ()
    healthy: bool = True
    # A change to this device is still being applied: its planned instances count as supply
    # (so the same demand is not planned twice) but the device is not repartitioned again.
    settling: bool = False

    @property
    def busy(self) -> bool:
        return any(i.in_use for i in self.geometry)


@dataclass(frozen=True, slots=True)
class MigChange:
    """Repartition one idle device from `old` to `new`."""

    node: str
    index: int
    model: str
    old: Geometry
    new: Geometry


@dataclass(frozen=True, slots=True)
class MigPlan:
    """New geometries, what they serve, and why any demand is left unserved."""

    changes: tuple[MigChange, ...]
    from_existing: Mapping[str, int]  # demand served by free instances already there
    from_changes: Mapping[str, int]  # demand served by the new geometries
    unserved: Mapping[str, int]
    reasons: tuple[str, ...]


def _remainder_value(geo: Geometry, used: Mapping[int, bool]) -> int:
    """How useful the instances left over are: bigger free instances are worth more."""
    total = 0
    for inst in geo:
        if not used.get(inst.start):
            slices = mig_profile_slices(inst.profile)
            total += slices * slices
    return total


def _serve(geo: Geometry, demand: Mapping[str, int]) -> tuple[dict[str, int], dict[int, bool]]:
    """Which instances of `geo` serve `demand`: counts per profile and used starts."""
    left = dict(demand)
    served: dict[str, int] = {}
    used: dict[int, bool] = {}
    for inst in geo:
        if left.get(inst.profile, 0) > 0:
            left[inst.profile] -= 1
            served[inst.profile] = served.get(inst.profile, 0) + 1
            used[inst.start] = True
    return served, used


def plan_mig(
    devices: Sequence[MigDevice], demand: Mapping[str, int], allowed: Iterable[str] = ()
) -> MigPlan:
    """Propose geometries for idle devices that serve `demand` (profile -> instances).

    1. Free instances already carved (on any healthy device, including devices whose new
       geometry is still being applied) serve demand first: no churn, no double planning.
    2. Remaining demand is packed onto idle devices, already partitioned ones before whole
       ones, each getting the maximal geometry that serves the most demand (in compute
       slices), then leaves the biggest free instances, then changes least. Devices with
       running work are never touched. `allowed` (the pool's migProfiles) limits what the
       leftover may be carved into; empty allows any profile.
    """
    allow = frozenset(allowed)
    left = {p: n for p, n in demand.items() if n > 0}
    from_existing: dict[str, int] = {}
    idle: list[MigDevice] = []
    for dev in sorted(devices, key=lambda d: (not d.busy, d.node, d.index)):
        if not dev.healthy:
            continue
        free = [i for i in dev.geometry if not i.in_use]
        served, _ = _serve(tuple(free), left)
        for p, n in served.items():
            left[p] -= n
            from_existing[p] = from_existing.get(p, 0) + n
        if not dev.busy and not dev.settling and not served and mig_model(dev.model) is not None:
            idle.append(dev)
    left = {p: n for p, n in left.items() if n > 0}
    changes: list[MigChange] = []
    from_changes: dict[str, int] = {}
    # partitioned idle devices first: keep unpartitioned (whole) devices whole if possible
    idle.sort(key=lambda d: (len(d.geometry) <= 1, d.node, d.index))
    for dev in idle:
        if not left:
            break
        best: tuple[tuple[int, int, int], Geometry, dict[str, int]] | None = None
        table = mig_model(dev.model)
        assert table is not None
        for geo in maximal_geometries(table.model):
            served, used = _serve(geo, left)
            if not served:
                continue
            if allow and any(
                not used.get(i.start) and i.profile not in allow and i.profile not in demand
                for i in geo
            ):
                continue
            slices = sum(mig_profile_slices(p) * n for p, n in served.items())
            same = (
                1
                if tuple((i.profile, i.start) for i in geo)
                == tuple((i.profile, i.start) for i in dev.geometry)
                else 0
            )
            key = (slices, _remainder_value(geo, used), same)
            if best is None or key > best[0]:
                best = (key, geo, served)
        if best is None:
            continue
        _, geo, served = best
        for p, n in served.items():
            left[p] -= n
            from_changes[p] = from_changes.get(p, 0) + n
        left = {p: n for p, n in left.items() if n > 0}
        changes.append(MigChange(dev.node, dev.index, dev.model, dev.geometry, geo))
    reasons = tuple(_why_unserved(devices, left))
    return MigPlan(tuple(changes), from_existing, from_changes, dict(left), reasons)


def _why_unserved(devices: Sequence[MigDevice], left: Mapping[str, int]) -> list[str]:
    out = []
    for profile, n in sorted(left.items()):
        able = [d for d in devices if (t := mig_model(d.model)) and t.profile(profile)]
        if not devices:
            out.append(f"{n} x {profile} unserved: no schedulable node with a MIG-capable GPU")
            continue
        if not able:
            models = sorted({d.model for d in devices}) or ["none"]
            out.append(f"{n} x {profile} unserved: no device model offers it ({', '.join(models)})")
            continue
        busy = sum(1 for d in able if d.busy)
        sick = sum(1 for d in able if not d.healthy)
        out.append(
            f"{n} x {profile} unserved: all {len(able)} capable devices are full or in use "
            f"({busy} with running work, {sick} unhealthy); repartitioning only idle devices"
        )
    return out


def device_geometry(dev: Device) -> Geometry:
    """A snapshot device's instances, the held ones in use."""
    return tuple(MigInstance(p, s, s in dev.mig_held) for s, p in sorted(dev.mig.items()))


MigWaitCause = Literal["MIGRepartitioning", "MIGUnserved"]


@dataclass(frozen=True, slots=True)
class NodeGeometry:
    """A node's whole new geometry (device index -> instances; devices not listed stay whole)."""

    node: str
    geometry: Mapping[int, Geometry]
    devices: int


@dataclass(frozen=True, slots=True)
class MigWait:
    cause: MigWaitCause
    reason: str


@dataclass(frozen=True, slots=True)
class Repartitioning:
    """Geometries to apply, and why each blocked gang waits. A gang not in `waits` has free
    instances of its profile already: what keeps it out (topology, CPU, a reservation) is
    the scheduling cycle's reason, and nothing is repartitioned for it."""

    changes: tuple[NodeGeometry, ...]
    waits: Mapping[str, MigWait]


def plan_repartitions(
    snapshot: Snapshot, blocked: Sequence[GangRequest], allowed: Iterable[str] = ()
) -> Repartitioning:
    """Repartition idle devices for the MIG gangs a cycle left waiting on capacity.

    `snapshot` holds what runs plus what the cycle admitted; `blocked` comes in cycle order
    and asks for all its replicas. Only schedulable nodes count, as in placement. Healthy
    devices with no held instance and no whole-device allocation may change, except on a
    node whose last change is still being applied (settling) or where pods of other
    schedulers hold whole GPUs (which ones is unknown): there the free instances count as
    supply but nothing changes. Free instances on a node a gang excluded (it failed there)
    do not count for that gang's profile.
    """
    demand: dict[str, int] = {}
    not_for: dict[str, set[str]] = {}  # node -> profiles its free instances do not serve
    for req in blocked:
        if req.mig_profile:
            demand[req.mig_profile] = demand.get(req.mig_profile, 0) + req.replicas
            for name in req.excluded_nodes:
                not_for.setdefault(name, set()).add(req.mig_profile)
    devices: list[MigDevice] = []
    for node in snapshot.nodes.values():
        if not node.schedulable or mig_model(node.model) is None:
            continue
        skip = not_for.get(node.name, set())
        for dev in node.devices:
            if not dev.mig and not dev.idle:
                continue  # a whole device in use: neither supply nor ours to carve
            geo = tuple(
                MigInstance(i.profile, i.start, i.in_use or i.profile in skip)
                for i in device_geometry(dev)
            )
            frozen = dev.mig_settling or node.opaque_gpus > 0
            devices.append(MigDevice(node.name, dev.index, dev.model, geo, dev.healthy, frozen))
    plan = plan_mig(devices, demand, allowed)
    changes = _by_node(snapshot, plan.changes)
    free_now = _free(d for d in devices if not d.settling)
    # In cycle order each gang takes free instances, then those being created, then those
    # the changes create; a gang left short is unserved.
    budgets = {
        p: [min(free_now.get(p, 0), n), plan.from_existing.get(p, 0), plan.from_changes.get(p, 0)]
        for p, n in demand.items()
    }
    for b in budgets.values():
        b[1] -= b[0]
    coming = _offering([d for d in devices if d.settling], changes)
    waits: dict[str, MigWait] = {}
    for req in blocked:
        profile = req.mig_profile
        if not profile:
            continue
        left, used = req.replicas, []
        for budget in budgets[profile]:
            used.append(min(budget, left))
            left -= used[-1]
        budgets[profile] = [b - u for b, u in zip(budgets[profile], used, strict=True)]
        if left:
            why = [r for r in plan.reasons if r.split(" unserved", 1)[0].endswith(f" {profile}")]
            waits[req.owner] = MigWait(
                "MIGUnserved", "; ".join(why) or f"no idle device can be partitioned for {profile}"
            )
        elif used[1] or used[2]:
            where = ", ".join(coming.get(profile, ()))
            waits[req.owner] = MigWait(
                "MIGRepartitioning",
                f"waiting for the MIG manager on {where} to create {profile} instances",
            )
    return Repartitioning(changes, waits)


def _free(devices: Iterable[MigDevice]) -> dict[str, int]:
    out: dict[str, int] = {}
    for d in devices:
        if d.healthy:
            for i in d.geometry:
                if not i.in_use:
                    out[i.profile] = out.get(i.profile, 0) + 1
    return out


def _offering(settling: Sequence[MigDevice], changes: Sequence[NodeGeometry]) -> dict[str, list[str]]:
    """profile -> nodes (sorted) where instances of it are being or will be created."""
    out: dict[str, set[str]] = {}
    for d in settling:
        for i in d.geometry:
            out.setdefault(i.profile, set()).add(d.node)
    for c in changes:
        for geo in c.geometry.values():
            for i in geo:
                out.setdefault(i.profile, set()).add(c.node)
    return {p: sorted(nodes) for p, nodes in out.items()}


def _by_node(snapshot: Snapshot, changes: Sequence[MigChange]) -> tuple[NodeGeometry, ...]:
    """Per changed node, its whole new geometry: the changed devices plus every other one."""
    touched: dict[str, dict[int, Geometry]] = {}
    for c in changes:
        geometry = touched.get(c.node)
        if geometry is None:
            node = snapshot.node(c.node)
            geometry = touched[c.node] = {
                d.index: tuple(MigInstance(p, s) for s, p in sorted(d.mig.items()))
                for d in node.devices
                if d.mig
            }
        geometry[c.index] = tuple(MigInstance(i.profile, i.start) for i in c.new)
    return tuple(
        NodeGeometry(name, geo, len(snapshot.node(name).devices))
        for name, geo in sorted(touched.items())
    )
