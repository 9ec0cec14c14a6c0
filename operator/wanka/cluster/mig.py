"""Dynamic MIG the way NVIDIA's GPU Operator expects it.

Wanka decides per-device geometries with the core planner, renders them as a named config
into the mig-parted ConfigMap, and labels the node `nvidia.com/mig.config=<name>`. The
GPU Operator's MIG manager applies it and reports `nvidia.com/mig.config.state=success`;
the device plugin then advertises `nvidia.com/mig-<profile>` resources. Only then does Wanka
bind pods that request one instance each. Devices with running work are never changed: a
node is only repartitioned when no pod holds any of its GPUs, and every device that keeps
work keeps its geometry in the new config.

State kept on the Node, so a restarted operator reads it back:
- annotation `wanka.io/mig-geometry`: the geometry Wanka asked for, per device index;
- label `nvidia.com/mig.config`: the config name (`wanka-<hash>`), set with the annotation.
Each MIG pod names its instance in the annotation `wanka.io/mig-instance` ("<device>:<start>").
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import yaml

from wanka.cluster.translate import TERMINAL_PHASES, annotations_of, device_count, labels, quantity
from wanka.core.mig import Geometry, MigDevice, MigInstance, mig_model, plan_mig

GEOMETRY_ANNOTATION = "wanka.io/mig-geometry"
INSTANCE_ANNOTATION = "wanka.io/mig-instance"
CONFIG_LABEL = "nvidia.com/mig.config"
STATE_LABEL = "nvidia.com/mig.config.state"
CONFIGMAP_NAME = "wanka-mig-parted-config"
CONFIGMAP_KEY = "config.yaml"
MIG_RESOURCE_PREFIX = "nvidia.com/mig-"


def resource_for(profile: str) -> str:
    return f"{MIG_RESOURCE_PREFIX}{profile}"


def read_geometry(node: Mapping[str, Any]) -> dict[int, Geometry]:
    """The geometry Wanka last asked for on this node (empty: all devices whole)."""
    raw = annotations_of(node).get(GEOMETRY_ANNOTATION)
    if not raw:
        return {}
    try:
        data = json.loads(raw)
        return {int(dev): tuple(MigInstance(str(p), int(s)) for p, s in insts) for dev, insts in data.items()}
    except (ValueError, TypeError):
        return {}


def encode_geometry(geometry: Mapping[int, Geometry]) -> str:
    return json.dumps({str(d): [[i.profile, i.start] for i in g] for d, g in sorted(geometry.items()) if g},
                      separators=(",", ":"), sort_keys=True)


def config_name(geometry: Mapping[int, Geometry]) -> str:
    return "wanka-" + hashlib.sha256(encode_geometry(geometry).encode()).hexdigest()[:10]


def render_config(geometry: Mapping[int, Geometry], devices: int) -> list[dict[str, Any]]:
    """One mig-parted config: MIG-enabled devices with their instances, the rest whole."""
    entries: list[dict[str, Any]] = []
    whole = [d for d in range(devices) if not geometry.get(d)]
    if whole:
        entries.append({"devices": whole, "mig-enabled": False})
    for dev in sorted(d for d in geometry if geometry[d]):
        counts: dict[str, int] = {}
        for inst in geometry[dev]:
            counts[inst.profile] = counts.get(inst.profile, 0) + 1
        entries.append({"devices": [dev], "mig-enabled": True, "mig-devices": counts})
    return entries


def merge_configmap(current: str | None, name: str, entries: list[dict[str, Any]]) -> str:
    """The mig-parted config document with `name` added (other configs kept)."""
    doc: dict[str, Any] = {}
    if current:
        try:
            loaded = yaml.safe_load(current)
            doc = loaded if isinstance(loaded, dict) else {}
        except yaml.YAMLError:
            doc = {}
    doc.setdefault("version", "v1")
    configs = doc.setdefault("mig-configs", {})
    configs[name] = entries
    return str(yaml.safe_dump(doc, sort_keys=True))


def expected_resources(geometry: Mapping[int, Geometry]) -> dict[str, int]:
    out: dict[str, int] = {}
    for insts in geometry.values():
        for inst in insts:
            out[resource_for(inst.profile)] = out.get(resource_for(inst.profile), 0) + 1
    return out


def applied(node: Mapping[str, Any], geometry: Mapping[int, Geometry]) -> bool:
    """The MIG manager applied our config and the device plugin reports its instances."""
    lab = labels(node)
    if geometry and lab.get(CONFIG_LABEL) != config_name(geometry):
        return False
    if geometry and lab.get(STATE_LABEL) != "success":
        return False
    alloc = (node.get("status") or {}).get("allocatable") or {}
    return all(int(quantity(alloc.get(res))) >= count for res, count in expected_resources(geometry).items())


@dataclass
class MigNode:
    name: str
    model: str
    devices: int
    geometry: dict[int, Geometry]
    used: set[tuple[int, int]] = field(default_factory=set)  # (device, start) held by a pod
    whole_gpu_pods: int = 0  # pods holding whole GPUs: the node is not ours to repartition
    ready: bool = True
    labels: dict[str, str] = field(default_factory=dict)  # the node's labels (topology domains)

    def free_instances(self, profile: str) -> list[tuple[int, int]]:
        """(device, start) of every free instance of `profile`, in device order."""
        return [(dev, inst.start) for dev in sorted(self.geometry) for inst in self.geometry[dev]
                if inst.profile == profile and (dev, inst.start) not in self.used]


def pick_instances(
    nodes: Mapping[str, MigNode], profile: str, count: int, excluded: Collection[str] = (),
    level: str = "", required: bool = False,
) -> tuple[list[tuple[str, int, int]], str]:
    """Free instances of `profile` for a gang of `count` replicas, or why there are none.

    Nodes not ready (a change being applied) and `excluded` ones (nodes that failed the job)
    are skipped. With a topology `level`, the gang goes into one domain of it when one holds
    it (the one with the least room that does, keeping roomier domains for bigger gangs);
    `required` refuses anything else. The gang packs onto the fewest nodes it can.
    """
    free = {name: f for name, node in sorted(nodes.items())
            if node.ready and name not in excluded and (f := node.free_instances(profile))}

    def fill(names: Iterable[str]) -> list[tuple[str, int, int]]:
        picks: list[tuple[str, int, int]] = []
        for name in sorted(names, key=lambda n: (-len(free[n]), n)):
            picks += [(name, dev, start) for dev, start in free[name][:count - len(picks)]]
        return picks

    if level:
        domains: dict[str, list[str]] = {}
        for name in free:
            if nodes[name].labels.get(level):
                domains.setdefault(nodes[name].labels[level], []).append(name)
        room = {d: sum(len(free[n]) for n in names) for d, names in domains.items()}
        fitting = sorted((r, d) for d, r in room.items() if r >= count)
        if fitting:
            return fill(domains[fitting[0][1]]), ""
        if required:
            best = max(room.values(), default=0)
            return [], (f"needs {count} x {profile} in one {level}; the best {level} has {best} free "
                        f"(of {sum(len(f) for f in free.values())} free on usable nodes)")
    picks = fill(free)
    if len(picks) < count:
        return [], f"{len(picks)} free {profile} instance(s) on usable nodes; the gang needs {count}"
    return picks, ""


def mig_nodes(nodes: Iterable[Mapping[str, Any]], pods: Iterable[Mapping[str, Any]],
              reserved: Iterable[tuple[str, int, int]], resource: str, model_of: Any) -> dict[str, MigNode]:
    """Each pool node's MIG view: geometry, instances in use (pods and reservations)."""
    out: dict[str, MigNode] = {}
    for node in nodes:
        name = node["metadata"]["name"]
        geometry = read_geometry(node)
        devices = device_count(node, resource) + sum(1 for g in geometry.values() if g)
        out[name] = MigNode(name, model_of(node), devices, geometry,
                            ready=applied(node, geometry), labels=dict(labels(node)))
    for pod in pods:
        where = str((pod.get("spec") or {}).get("nodeName") or "")
        if where not in out or (pod.get("status") or {}).get("phase") in TERMINAL_PHASES:
            continue
        inst = annotations_of(pod).get(INSTANCE_ANNOTATION)
        if inst:
            dev, _, start = inst.partition(":")
            out[where].used.add((int(dev), int(start)))
            continue
        for c in (pod.get("spec") or {}).get("containers") or []:
            lim = (c.get("resources") or {}).get("limits") or {}
            if int(quantity(lim.get(resource))) > 0:
                out[where].whole_gpu_pods += 1
    for at, index, first in reserved:
        if at in out:
            out[at].used.add((index, first))
    return out


@dataclass(frozen=True)
class Repartition:
    node: str
    geometry: dict[int, Geometry]

    @property
    def name(self) -> str:
        return config_name(self.geometry)


def plan_repartitions(nodes: Mapping[str, MigNode], demand: Mapping[str, int],
                      allowed: Sequence[str]) -> tuple[list[Repartition], list[str]]:
    """New geometries for idle devices of nodes with no whole-GPU work, or why not."""
    devices = []
    for node in nodes.values():
        if mig_model(node.model) is None:
            continue
        if node.whole_gpu_pods > 0:
            # We cannot tell which whole device a GPU pod holds: leave the whole node alone.
            continue
        for dev in range(node.devices):
            geo = tuple(MigInstance(i.profile, i.start, (dev, i.start) in node.used)
                        for i in node.geometry.get(dev, ()))
            # A node whose last change is still being applied must settle before it changes
            # again, but the instances it is about to offer already count against demand.
            devices.append(MigDevice(node.name, dev, node.model, geo, settling=not node.ready))
    plan = plan_mig(devices, demand, allowed)
    changed: dict[str, dict[int, Geometry]] = {}
    for change in plan.changes:
        target = changed.setdefault(change.node, dict(nodes[change.node].geometry))
        target[change.index] = tuple(MigInstance(i.profile, i.start) for i in change.new)
    return [Repartition(n, g) for n, g in sorted(changed.items())], list(plan.reasons)
