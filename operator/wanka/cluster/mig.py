"""Dynamic MIG the way NVIDIA's GPU Operator expects it.

The core places MIG instances and plans geometries (`wanka.core.mig.plan_repartitions`); this
module is the Kubernetes side: it reads each node's geometry into the snapshot's devices and
each MIG pod's instance into its allocation, renders a planned geometry as a named config in
the mig-parted ConfigMap, and labels the node `nvidia.com/mig.config=<name>`. The GPU
Operator's MIG manager applies it and reports `nvidia.com/mig.config.state=success`; the device
plugin then advertises `nvidia.com/mig-<profile>` resources. Only then are the node's instances
placeable. Devices with running work keep their geometry in every new config.

State kept on the Node, so a restarted operator reads it back:
- annotation `wanka.io/mig-geometry`: the geometry Wanka asked for, per device index;
- label `nvidia.com/mig.config`: the config name (`wanka-<hash>`), set with the annotation.
Each MIG pod names its instance in the annotation `wanka.io/mig-instance` ("<device>:<start>").
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import yaml

from wanka.core.mig import Geometry, MigInstance, NodeGeometry
from wanka.core.snapshot import Device, DeviceShare
from wanka.units import MAX_DEVICES_PER_NODE, mig_share_milli

if TYPE_CHECKING:  # a type only: this module stays free of the API client
    from wanka.cluster.writer import Recorder

GEOMETRY_ANNOTATION = "wanka.io/mig-geometry"
INSTANCE_ANNOTATION = "wanka.io/mig-instance"
CONFIG_LABEL = "nvidia.com/mig.config"
STATE_LABEL = "nvidia.com/mig.config.state"
GPU_COUNT_LABEL = "nvidia.com/gpu.count"  # physical GPUs, from GPU feature discovery
CONFIGMAP_NAME = "wanka-mig-parted-config"
CONFIGMAP_KEY = "config.yaml"
MIG_RESOURCE_PREFIX = "nvidia.com/mig-"


def resource_for(profile: str) -> str:
    return f"{MIG_RESOURCE_PREFIX}{profile}"


def _meta(obj: Mapping[str, Any], key: str) -> Mapping[str, str]:
    """An object's labels or annotations (this module reads no other metadata)."""
    return (obj.get("metadata") or {}).get(key) or {}


def _count(value: Any) -> int:
    """A device plugin's count of a MIG resource (always a plain integer); 0 when unreadable."""
    try:
        return int(str(value))
    except ValueError:
        return 0


def read_geometry(node: Mapping[str, Any]) -> dict[int, Geometry]:
    """The geometry Wanka last asked for on this node (empty: all devices whole, also when
    the annotation cannot be read)."""
    raw = _meta(node, "annotations").get(GEOMETRY_ANNOTATION)
    if not raw:
        return {}
    try:
        data = json.loads(raw)
        return {int(dev): tuple(MigInstance(str(p), int(s)) for p, s in insts) for dev, insts in data.items()}
    except (ValueError, TypeError, AttributeError):
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
    lab = _meta(node, "labels")
    if geometry and lab.get(CONFIG_LABEL) != config_name(geometry):
        return False
    if geometry and lab.get(STATE_LABEL) != "success":
        return False
    alloc = (node.get("status") or {}).get("allocatable") or {}
    return all(_count(alloc.get(res)) >= count for res, count in expected_resources(geometry).items())


@dataclass(frozen=True, slots=True)
class MigLayout:
    """How many devices a node of a MIG pool has and how they are partitioned."""

    devices: int
    geometry: Mapping[int, Geometry]
    settling: bool  # the MIG manager has not applied `geometry` yet

    def carve(self, devices: Sequence[Device]) -> None:
        """Give snapshot devices their instances (being built, they are not shared yet)."""
        for dev in devices:
            dev.mig = {i.start: i.profile for i in self.geometry.get(dev.index, ())}
            dev.mig_settling = self.settling


def layout(node: Mapping[str, Any], whole: int) -> MigLayout:
    """The node's MIG layout. Its devices: GPU feature discovery's count when labelled, else
    `whole` (the accelerator resource, which the device plugin reports for unpartitioned
    devices only) plus the partitioned ones; while a change is applied those counts lag, so
    then its partitioned devices are not added on top."""
    geometry = read_geometry(node)
    settling = not applied(node, geometry)
    partitioned = sum(1 for g in geometry.values() if g)
    devices = _count(_meta(node, "labels").get(GPU_COUNT_LABEL)) or whole + (0 if settling else partitioned)
    geometry = {d: g for d, g in geometry.items() if 0 <= d < MAX_DEVICES_PER_NODE}
    devices = max(devices, max(geometry, default=-1) + 1)
    return MigLayout(min(devices, MAX_DEVICES_PER_NODE), geometry, settling)


def pod_instance(pod: Mapping[str, Any]) -> DeviceShare | None:
    """The MIG instance a pod holds (from its annotation and its MIG resource), if any."""
    raw = _meta(pod, "annotations").get(INSTANCE_ANNOTATION)
    if not raw:
        return None
    profiles = [
        key[len(MIG_RESOURCE_PREFIX):]
        for c in (pod.get("spec") or {}).get("containers") or []
        for key in ((c.get("resources") or {}).get("limits") or {})
        if key.startswith(MIG_RESOURCE_PREFIX)
    ]
    dev, _, start = raw.partition(":")
    try:
        return DeviceShare(int(dev), mig_share_milli(profiles[0]), mig_start=int(start))
    except (ValueError, IndexError):
        return None


class ConfigIO(Protocol):
    def read_configmap(self, ns: str, name: str) -> dict[str, Any] | None: ...

    def put_configmap(self, ns: str, name: str, data: Mapping[str, str]) -> None: ...

    def patch_node(self, name: str, body: Mapping[str, Any]) -> None: ...


def send_repartition(io: ConfigIO, events: Recorder, namespace: str, node: Mapping[str, Any],
                     change: NodeGeometry) -> dict[str, Any]:
    """Render the config into the mig-parted ConfigMap, then point the node at it.

    Returns the node as it is now meant to look (our config named, its state pending): the
    caller assumes it in the cache until the watch shows the node again, so the change counts
    as being applied and nothing is planned twice."""
    geometry = dict(change.geometry)
    name = config_name(geometry)
    cm = io.read_configmap(namespace, CONFIGMAP_NAME)
    current = ((cm or {}).get("data") or {}).get(CONFIGMAP_KEY)
    text = merge_configmap(current, name, render_config(geometry, change.devices))
    io.put_configmap(namespace, CONFIGMAP_NAME, {CONFIGMAP_KEY: text})
    meta = node.get("metadata") or {}
    io.patch_node(change.node, {"metadata": {
        "resourceVersion": meta.get("resourceVersion"),
        "labels": {CONFIG_LABEL: name},
        "annotations": {GEOMETRY_ANNOTATION: encode_geometry(geometry)},
    }})
    events.record({**node, "apiVersion": "v1", "kind": "Node"}, "Normal", "MIGRepartition",
                  f"MIG config {name}: " + "; ".join(
                      f"GPU {d}: {'+'.join(i.profile for i in g)}" for d, g in sorted(geometry.items()) if g))
    return {**node, "metadata": {
        **meta,
        "labels": {**(meta.get("labels") or {}), CONFIG_LABEL: name, STATE_LABEL: "pending"},
        "annotations": {**(meta.get("annotations") or {}), GEOMETRY_ANNOTATION: encode_geometry(geometry)},
    }}


