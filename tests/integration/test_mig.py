"""Dynamic MIG on the real control plane, with a test helper playing NVIDIA's MIG manager."""

from __future__ import annotations

import json
import threading
import time
from collections import Counter

import pytest
import yaml
from kubernetes.client.exceptions import ApiException

from tests.integration.conftest import Cluster, OperatorProcess, wait_for
from tests.integration.jobkit import Fleet, condition, make_fleet, make_job, phase

pytestmark = pytest.mark.integration


class FakeMigManager(threading.Thread):
    """What the GPU Operator's MIG manager and device plugin do, for nodes of one pool:
    apply the config named by nvidia.com/mig.config and advertise its MIG resources."""

    def __init__(self, cluster: Cluster, nodes: list[str], gpus: int = 8) -> None:
        super().__init__(daemon=True)
        self.cluster, self.nodes, self.gpus = cluster, nodes, gpus
        self.applied: dict[str, str] = {}
        self.stop = False

    def __enter__(self) -> FakeMigManager:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop = True

    def run(self) -> None:
        while not self.stop:
            for name in self.nodes:
                try:
                    self.step(name)
                except ApiException:
                    pass
            time.sleep(0.2)

    def step(self, name: str) -> None:
        node = self.cluster.core.read_node(name)
        config = (node.metadata.labels or {}).get("nvidia.com/mig.config")
        if not config or self.applied.get(name) == config:
            return
        cm = self.cluster.core.read_namespaced_config_map("wanka-mig-parted-config", "default")
        entries = yaml.safe_load(cm.data["config.yaml"])["mig-configs"][config]
        resources: Counter[str] = Counter()
        whole = 0
        for entry in entries:
            if entry["mig-enabled"]:
                for profile, count in entry["mig-devices"].items():
                    resources[f"nvidia.com/mig-{profile}"] += count * len(entry["devices"])
            else:
                whole += len(entry["devices"])
        alloc = {"cpu": "128", "memory": "1Ti", "pods": "110", "nvidia.com/gpu": str(whole),
                 **{k: str(v) for k, v in resources.items()}}
        self.cluster.core.patch_node_status(name, {"status": {"capacity": alloc, "allocatable": alloc}})
        self.cluster.core.patch_node(name, {"metadata": {"labels": {"nvidia.com/mig.config.state": "success"}}})
        self.applied[name] = config


def mig_fleet(cluster: Cluster, namespace: str, nodes: int = 2, quota: float = 10_000, gpus: int = 8) -> Fleet:
    return make_fleet(cluster, namespace, nodes=nodes, gpus=gpus, racks=1, quota=quota,
                      sharing={"mode": "MIG", "migProfiles": ["1g.10gb", "3g.40gb", "7g.80gb"]})


def test_ten_small_instances_on_idle_h100s(cluster: Cluster, operator: OperatorProcess, namespace: str) -> None:
    fleet = mig_fleet(cluster, namespace)
    with FakeMigManager(cluster, fleet.nodes):
        names = [f"mig{i}" for i in range(10)]
        for name in names:
            make_job(cluster, namespace, fleet, name, replicas=1, resources={"migProfile": "1g.10gb"})
        wait_for(lambda: all(phase(cluster, namespace, n) == "Running" for n in names), 45,
                 what="ten 1g.10gb jobs running")
        labelled = {n: (cluster.core.read_node(n).metadata.labels or {}).get("nvidia.com/mig.config")
                    for n in fleet.nodes}
        assert any(labelled.values()), labelled
        cm = yaml.safe_load(cluster.core.read_namespaced_config_map(
            "wanka-mig-parted-config", "default").data["config.yaml"])
        for config in labelled.values():
            if not config:
                continue
            entries = cm["mig-configs"][config]
            for entry in entries:
                if entry["mig-enabled"]:
                    assert set(entry["mig-devices"]) <= {"1g.10gb", "3g.40gb", "7g.80gb", "2g.20gb",
                                                         "1g.20gb", "4g.40gb"}
                    assert sum(int(p[0]) * c for p, c in entry["mig-devices"].items()) <= 7
        pods = cluster.core.list_namespaced_pod(namespace, label_selector="wanka.io/job").items
        assert len(pods) == 10
        instances = set()
        for pod in pods:
            assert pod.spec.containers[0].resources.limits["nvidia.com/mig-1g.10gb"] == "1"
            instances.add((pod.spec.node_name, pod.metadata.annotations["wanka.io/mig-instance"]))
        assert len(instances) == 10, "every pod has its own instance"
        # Only as many devices as needed were partitioned: 10 x 1g.10gb fit in 2 devices.
        geometry_devices = sum(
            len([e for e in cm["mig-configs"][c] if e["mig-enabled"]]) for c in labelled.values() if c)
        assert geometry_devices == 2, cm
        wait_for(lambda: ((cluster.get("gpupools", fleet.pool).get("status") or {}).get("devices") or {})
                 .get("migPartitioned") == 2, 10, what="pool reports 2 MIG-partitioned devices")

        # More demand while those instances run: a whole-GPU profile goes to an idle device,
        # and the devices holding the running pods keep their geometry.
        before = {n: cluster.core.read_node(n).metadata.annotations.get("wanka.io/mig-geometry")
                  for n in fleet.nodes}
        busy = {(p.spec.node_name, p.metadata.annotations["wanka.io/mig-instance"].split(":")[0])
                for p in pods}
        make_job(cluster, namespace, fleet, "big", replicas=1, resources={"migProfile": "7g.80gb"})
        wait_for(lambda: phase(cluster, namespace, "big") == "Running", 30, what="7g.80gb running")
        for n in fleet.nodes:
            old = json.loads(before[n] or "{}")
            new = json.loads(cluster.core.read_node(n).metadata.annotations.get("wanka.io/mig-geometry") or "{}")
            for node, dev in busy:
                if node == n:
                    assert new[dev] == old[dev], f"busy device {n}/{dev} was repartitioned"
        assert all(phase(cluster, namespace, x) == "Running" for x in names), "nothing was disturbed"


def test_busy_devices_are_never_repartitioned_and_impossible_mixes_are_explained(
    cluster: Cluster, operator: OperatorProcess, namespace: str
) -> None:
    fleet = mig_fleet(cluster, namespace, nodes=1)
    node = fleet.nodes[0]
    # A pod holding whole GPUs on the only node (someone else's work): hands off.
    cluster.core.create_namespaced_pod(namespace, {
        "metadata": {"name": "holder"},
        "spec": {"schedulerName": "other", "nodeName": node, "containers": [{
            "name": "c", "image": "x", "resources": {"limits": {"nvidia.com/gpu": "1"}}}]},
    })
    make_job(cluster, namespace, fleet, "wants-mig", replicas=1, resources={"migProfile": "3g.40gb"})
    cond = wait_for(lambda: (c := condition(cluster, namespace, "wants-mig", "Admitted"))
                    and c["reason"] == "MIGUnserved" and c, 15, what="MIGUnserved")
    assert "repartition" in cond["message"] or "unserved" in cond["message"], cond
    assert not (cluster.core.read_node(node).metadata.labels or {}).get("nvidia.com/mig.config")

    # A profile the pool does not offer is refused with the list it does offer.
    make_job(cluster, namespace, fleet, "odd", replicas=1, resources={"migProfile": "2g.20gb"})
    cond = wait_for(lambda: (c := condition(cluster, namespace, "odd", "Admitted"))
                    and c["reason"] == "SharingMismatch" and c, 15, what="SharingMismatch")
    assert "1g.10gb" in cond["message"] and "2g.20gb" in cond["message"]


def test_mig_gangs_are_charged_against_the_queues_quota(
    cluster: Cluster, operator: OperatorProcess, namespace: str
) -> None:
    """A 1g.10gb instance is 1/7 of a GPU rounded down, 0.142: a 0.3-GPU quota runs two and not a
    third. The queue's borrowing limit is unset (no limit), so only the cohort's unused quota
    bounds it."""
    fleet = mig_fleet(cluster, namespace, nodes=1, quota=0.3)
    with FakeMigManager(cluster, fleet.nodes):
        for name in ("m0", "m1"):
            make_job(cluster, namespace, fleet, name, replicas=1, resources={"migProfile": "1g.10gb"})
        wait_for(lambda: all(phase(cluster, namespace, n) == "Running" for n in ("m0", "m1")), 30,
                 what="two 1g.10gb jobs running")
        make_job(cluster, namespace, fleet, "m2", replicas=1, resources={"migProfile": "1g.10gb"})
        cond = wait_for(lambda: (c := condition(cluster, namespace, "m2", "Admitted"))
                        and c["reason"] == "Quota" and c, 15, what="the third waits on quota")
        assert "0.016 GPUs of unused quota" in cond["message"] and "needs 0.142" in cond["message"], cond
        assert phase(cluster, namespace, "m2") == "Queued"
        # The queue's status shows the same charge: two instances of 0.142 GPU.
        wait_for(lambda: (cluster.get("tenantqueues", fleet.queue).get("status") or {}).get("usage")
                 == [{"pool": fleet.pool, "gpus": 0.284}], 10, what="queue usage 0.284 GPU")


def test_a_restarted_mig_gang_avoids_the_node_that_failed_it(
    cluster: Cluster, operator: OperatorProcess, namespace: str
) -> None:
    fleet = mig_fleet(cluster, namespace, nodes=2)
    with FakeMigManager(cluster, fleet.nodes):
        make_job(cluster, namespace, fleet, "flaky", replicas=1, resources={"migProfile": "1g.10gb"},
                 labels={"wanka.io/sim": "fail"}, annotations={"wanka.io/sim-delay": "2s"},
                 restartPolicy={"maxRestarts": 3, "backoffSeconds": 1})

        def placed_on() -> str | None:
            placement = (cluster.get("trainingjobs", "flaky", namespace).get("status") or {}).get("placement")
            return placement[0]["node"] if placement else None

        first = wait_for(placed_on, 30, what="first placement")
        wait_for(lambda: (cluster.get("trainingjobs", "flaky", namespace).get("status") or {})
                 .get("restarts", 0) >= 1, 30, what="the member failed and the gang restarted")
        second = wait_for(placed_on, 30, what="placed again")
        assert second != first, f"placed on {first} again, the node that failed it"
        status = cluster.get("trainingjobs", "flaky", namespace)["status"]
        assert first in status["excludedNodes"]


def test_a_freed_mig_instance_goes_to_the_queue_furthest_below_its_fair_share(
    cluster: Cluster, operator: OperatorProcess, namespace: str
) -> None:
    fleet = mig_fleet(cluster, namespace, nodes=1, gpus=2)
    other = Fleet(fleet.pool, f"{fleet.queue}-b", fleet.nodes)
    cluster.create("tenantqueues", {"apiVersion": "wanka.io/v1alpha1", "kind": "TenantQueue",
                                    "metadata": {"name": other.queue},
                                    "spec": {"namespaces": [namespace], "quotas": [{"pool": fleet.pool, "gpus": 100}]}})
    with FakeMigManager(cluster, fleet.nodes, gpus=2):
        whole = {"migProfile": "7g.80gb"}
        for name in ("a0", "a1"):  # queue a takes both devices
            make_job(cluster, namespace, fleet, name, replicas=1, resources=whole)
        wait_for(lambda: all(phase(cluster, namespace, n) == "Running" for n in ("a0", "a1")), 30,
                 what="a0 and a1 running")
        make_job(cluster, namespace, fleet, "a2", replicas=1, resources=whole)
        time.sleep(1.1)  # creation timestamps have one-second resolution: a2 is the older
        make_job(cluster, namespace, other, "b1", replicas=1, resources=whole)
        for name in ("a2", "b1"):
            wait_for(lambda name=name: (c := condition(cluster, namespace, name, "Admitted"))
                     and c["reason"] not in ("Queued",), 15, what=f"{name} waits for a device")
        cluster.delete("trainingjobs", "a0", namespace)
        winner = wait_for(lambda: next((n for n in ("a2", "b1") if phase(cluster, namespace, n) == "Running"),
                                       None), 30, what="one of a2, b1 runs on the freed device")
        assert winner == "b1", "queue a already runs a GPU; b runs none, so b is further below its share"
        assert phase(cluster, namespace, "a2") == "Queued"


def test_plain_mig_pods_get_an_instance_each(cluster: Cluster, operator: OperatorProcess, namespace: str) -> None:
    fleet = mig_fleet(cluster, namespace, nodes=1)

    def pod(name: str, limit: bool = True) -> dict[str, object]:
        container: dict[str, object] = {"name": "app", "image": "app:1"}
        if limit:
            container["resources"] = {"limits": {"nvidia.com/mig-1g.10gb": "1"}}
        return {"apiVersion": "v1", "kind": "Pod",
                "metadata": {"name": name, "labels": {"wanka.io/queue": fleet.queue, "wanka.io/pool": fleet.pool},
                             "annotations": {"wanka.io/mig-profile": "1g.10gb"}},
                "spec": {"schedulerName": "wanka", "containers": [container]}}

    with FakeMigManager(cluster, fleet.nodes):
        for name in ("nb-0", "nb-1"):
            cluster.core.create_namespaced_pod(namespace, pod(name))
        cluster.core.create_namespaced_pod(namespace, pod("nolimit", limit=False))
        wait_for(lambda: all(cluster.core.read_namespaced_pod(n, namespace).spec.node_name for n in ("nb-0", "nb-1")),
                 45, what="both MIG pods bound")
        instances = {(cluster.core.read_namespaced_pod(n, namespace).metadata.annotations or {})
                     .get("wanka.io/mig-instance") for n in ("nb-0", "nb-1")}
        assert len(instances) == 2 and None not in instances
        node = cluster.core.read_node(fleet.nodes[0])
        assert int(node.status.allocatable.get("nvidia.com/mig-1g.10gb", "0")) >= 2

        def refused() -> bool:
            pod_now = cluster.core.read_namespaced_pod("nolimit", namespace)
            return any(c.type == "PodScheduled" and c.reason == "Unschedulable" and "NotPinnable" in (c.message or "")
                       for c in pod_now.status.conditions or [])

        wait_for(refused, 20, what="the MIG pod without the MIG limit refused with its reason")
