"""GPU slicing for small tenants on the real control plane: MPS / time-slice shares."""

from __future__ import annotations

from collections import Counter
from typing import Any

import pytest

from tests.integration.conftest import Cluster, OperatorProcess, wait_for
from tests.integration.jobkit import Fleet, env_of, make_fleet, make_job, phase, wait_running

pytestmark = pytest.mark.integration


def slice_job(cluster: Cluster, ns: str, fleet: Fleet, name: str, fraction: float, **extra: Any) -> None:
    resources = {"gpuFraction": fraction, **extra.pop("resources", {})}
    make_job(cluster, ns, fleet, name, replicas=1, resources=resources, **extra)


def shares(cluster: Cluster, ns: str) -> dict[str, tuple[str, int, int]]:
    """pod -> (node, device, milli) from the device annotation of each live Wanka pod."""
    out = {}
    for pod in cluster.core.list_namespaced_pod(ns, label_selector="wanka.io/job").items:
        if pod.metadata.deletion_timestamp or pod.status.phase in ("Succeeded", "Failed"):
            continue
        raw = pod.metadata.annotations["wanka.io/devices"]
        dev, _, milli = raw.partition(":")
        out[pod.metadata.name] = (pod.spec.node_name, int(dev), int(milli or 1000))
    return out


def per_device(cluster: Cluster, ns: str) -> Counter[tuple[str, int]]:
    load: Counter[tuple[str, int]] = Counter()
    for node, dev, milli in shares(cluster, ns).values():
        load[(node, dev)] += milli
    return load


def pool_gpus(cluster: Cluster, pool: str) -> dict[str, Any]:
    return dict(cluster.get("gpupools", pool).get("status") or {})


def running_count(cluster: Cluster, ns: str, names: list[str]) -> int:
    return sum(1 for n in names if phase(cluster, ns, n) == "Running")


def test_forty_quarter_slices_fill_exactly_ten_devices(
    cluster: Cluster, operator: OperatorProcess, namespace: str
) -> None:
    fleet = make_fleet(cluster, namespace, nodes=4, racks=1, sharing={"mode": "MPS", "maxSharesPerDevice": 4})
    names = [f"q{i}" for i in range(40)]
    for name in names:
        slice_job(cluster, namespace, fleet, name, 0.25,
                  labels={"wanka.io/sim": "succeed"}, annotations={"wanka.io/sim-delay": "600s"})
    wait_for(lambda: running_count(cluster, namespace, names) == 40, 90, what="40 slices running")
    load = per_device(cluster, namespace)
    assert len(load) == 10 and set(load.values()) == {1000}, load
    for pod in cluster.core.list_namespaced_pod(namespace, label_selector="wanka.io/job").items:
        env = env_of(pod)
        dev = pod.metadata.annotations["wanka.io/devices"]
        assert dev.endswith(":250") and "," not in dev, "one device, a quarter of it"
        assert env["NVIDIA_VISIBLE_DEVICES"] == dev.split(":")[0]
        assert env["CUDA_MPS_ACTIVE_THREAD_PERCENTAGE"] == "25"
        assert "nvidia.com/gpu" not in (pod.spec.containers[0].resources.limits or {})
    # Pool status follows the jobs' phases in the pool pass; wait for it to catch up, then check it.
    status = wait_for(lambda: (s := pool_gpus(cluster, fleet.pool)).get("devices", {}).get("full") == 10 and s,
                      10, what="pool status: 10 full devices")
    assert status["devices"]["full"] == 10 and status["devices"]["idle"] == 22
    assert status["gpus"]["allocated"] == 10

    # A whole-device job still finds a whole free device.
    make_job(cluster, namespace, fleet, "whole", replicas=1, gpus=1)
    wait_running(cluster, namespace, "whole")
    node, dev, milli = next(v for k, v in shares(cluster, namespace).items() if k.startswith("whole-"))
    assert milli == 1000 and per_device(cluster, namespace)[(node, dev)] == 1000


def test_mixed_fractions_pack_and_return_devices_when_done(
    cluster: Cluster, operator: OperatorProcess, namespace: str
) -> None:
    fleet = make_fleet(cluster, namespace, nodes=2, racks=1, sharing={"mode": "TimeSlice"})
    sizes = [0.7, 0.3, 0.5, 0.25, 0.25, 0.6, 0.4, 0.1, 0.9, 0.1, 0.5, 0.5]
    names = [f"m{i}" for i in range(len(sizes))]
    for name, frac in zip(names, sizes, strict=True):
        slice_job(cluster, namespace, fleet, name, frac,
                  labels={"wanka.io/sim": "succeed"}, annotations={"wanka.io/sim-delay": "8s"})
    wait_for(lambda: running_count(cluster, namespace, names) == len(names), 60, what="all slices running")
    load = per_device(cluster, namespace)
    assert max(load.values()) <= 1000, load
    assert sum(load.values()) == round(sum(sizes) * 1000)
    assert len(load) <= 6, f"{sum(sizes):.1f} GPUs of slices spread over {len(load)} devices"
    status = pool_gpus(cluster, fleet.pool)
    print("stranded after the mixed run:", status["gpus"]["stranded"], "devices", status["devices"])
    # The slices finish: every device is whole again.
    wait_for(lambda: all(phase(cluster, namespace, n) == "Succeeded" for n in names), 40, what="done")
    wait_for(lambda: pool_gpus(cluster, fleet.pool)["devices"]["idle"] == 16, 15, what="16 idle devices")


def test_share_limit_and_memory_bound_hold(
    cluster: Cluster, operator: OperatorProcess, namespace: str
) -> None:
    fleet = make_fleet(cluster, namespace, nodes=1, gpus=2, racks=1,
                       sharing={"mode": "MPS", "maxSharesPerDevice": 3})
    cluster.custom.patch_cluster_custom_object(
        "wanka.io", "v1alpha1", "gpupools", fleet.pool, {"spec": {"accelerator": {"memoryGiB": 16}}})
    names = [f"s{i}" for i in range(8)]
    for name in names:
        slice_job(cluster, namespace, fleet, name, 0.1)
    wait_for(lambda: running_count(cluster, namespace, names) == 6, 30, what="6 running (2 devices x 3)")
    waiting = [n for n in names if phase(cluster, namespace, n) == "Queued"]
    assert len(waiting) == 2
    assert max(Counter(d for _, d, _ in shares(cluster, namespace).values()).values()) == 3
    env = env_of(next(p for p in cluster.core.list_namespaced_pod(namespace, label_selector="wanka.io/job").items
                      if p.metadata.name.startswith("s0-")))
    assert env["CUDA_MPS_ACTIVE_THREAD_PERCENTAGE"] == "10"


def test_gpu_memory_bound_holds(cluster: Cluster, operator: OperatorProcess, namespace: str) -> None:
    fleet = make_fleet(cluster, namespace, nodes=1, gpus=2, racks=1, sharing={"mode": "MPS"})
    cluster.custom.patch_cluster_custom_object(
        "wanka.io", "v1alpha1", "gpupools", fleet.pool, {"spec": {"accelerator": {"memoryGiB": 16}}})
    names = ["big-a", "big-b", "big-c"]
    for name in names:
        # 5% of the compute but 10 GiB of a 16 GiB device: two never share one.
        slice_job(cluster, namespace, fleet, name, 0.05, resources={"gpuMemoryGiB": 10})
    wait_for(lambda: running_count(cluster, namespace, names) == 2, 30, what="two running")
    wait_for(lambda: phase(cluster, namespace, next(n for n in names
                                                if phase(cluster, namespace, n) != "Running")) == "Queued",
             10, what="the third queued")
    placed = shares(cluster, namespace)
    assert len({(node, dev) for node, dev, _ in placed.values()}) == 2, placed
    pod = next(p for p in cluster.core.list_namespaced_pod(namespace, label_selector="wanka.io/job").items
               if p.status.phase == "Running")
    dev = pod.metadata.annotations["wanka.io/devices"].split(":")[0]
    assert env_of(pod)["CUDA_MPS_PINNED_DEVICE_MEM_LIMIT"] == f"{dev}=10240M"
    assert pod.metadata.annotations["wanka.io/gpu-memory-mib"] == "10240"


def test_quota_of_two_gpus_runs_eight_quarter_slices_and_no_ninth(
    cluster: Cluster, operator: OperatorProcess, namespace: str
) -> None:
    fleet = make_fleet(cluster, namespace, nodes=2, racks=1, quota=2, sharing={"mode": "MPS"})
    names = [f"t{i}" for i in range(9)]
    for name in names:
        slice_job(cluster, namespace, fleet, name, 0.25)
    wait_for(lambda: running_count(cluster, namespace, names) == 8, 30, what="8 running")
    ninth = next(n for n in names if phase(cluster, namespace, n) != "Running")
    cond = wait_for(lambda: next((c for c in (cluster.get("trainingjobs", ninth, namespace).get("status") or {})
                                  .get("conditions", []) if c["type"] == "Admitted" and c["reason"] == "Quota"),
                                 None), 10, what="the ninth waits on quota")
    assert "quota" in cond["message"].lower()
    usage = wait_for(lambda: (cluster.get("tenantqueues", fleet.queue).get("status") or {}).get("usage"), 10,
                     what="queue usage")
    assert usage == [{"pool": fleet.pool, "gpus": 2.0}]
