"""The Kubernetes objects Wanka creates for a TrainingJob: pods, headless Service, progress report
and its RBAC."""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from typing import Any

from wanka.api.common import API_VERSION, GROUP
from wanka.api.gpupool import GPUPoolSpec
from wanka.api.trainingjob import CheckpointAdvice, TrainingJobSpec
from wanka.cluster.translate import (
    DEVICES_ANNOTATION,
    GPU_MEMORY_ANNOTATION,
    JOB_LABEL,
    REPLICA_LABEL,
)

SCHEDULER_NAME = "wanka"
ATTEMPT_LABEL = "wanka.io/attempt"
MANAGED_BY = {"app.kubernetes.io/managed-by": "wanka"}
MASTER_PORT = 29500
CHECKPOINT_VOLUME = "wanka-checkpoint"


def owner_reference(job: Mapping[str, Any]) -> dict[str, Any]:
    meta = job["metadata"]
    return {
        "apiVersion": "wanka.io/v1alpha1",
        "kind": "TrainingJob",
        "name": meta["name"],
        "uid": meta["uid"],
        "controller": True,
        "blockOwnerDeletion": True,
    }


def pod_name(job: str, replica: int, attempt: int) -> str:
    """Unique per attempt, so a restarted gang never waits for old pods' names to free up."""
    return f"{job}-{replica}-a{attempt}"


def progress_name(job: str) -> str:
    """The job's TrainingJobProgress has the job's own name."""
    return job


def checkpoint_role_name(job: str) -> str:
    return f"{job}-checkpoint-writer"


def service_account_name(job: str) -> str:
    return f"{job}-wanka"


def shared_env(
    mode: str, device: int, milli: int, memory_mib: int
) -> list[dict[str, str]]:
    """Device pinning for a replica holding a share of one device."""
    env = [{"name": "NVIDIA_VISIBLE_DEVICES", "value": str(device)}]
    if mode == "MPS":
        env.append({"name": "CUDA_MPS_ACTIVE_THREAD_PERCENTAGE", "value": str(max(1, milli // 10))})
        if memory_mib:
            env.append({"name": "CUDA_MPS_PINNED_DEVICE_MEM_LIMIT", "value": f"{device}={memory_mib}M"})
    return env


PREFLIGHT_CONTAINER = "wanka-preflight"


def preflight_env(pool: GPUPoolSpec) -> dict[str, str]:
    """The pool's preflight thresholds as the preflight program reads them."""
    p = pool.preflight
    return {"WANKA_PREFLIGHT_MIN_BUSBW_GBPS": f"{p.min_bus_bandwidth_g_bps:g}",
            "WANKA_PREFLIGHT_SLOW_FACTOR": f"{p.slow_factor:g}",
            "WANKA_PREFLIGHT_TIMEOUT_SECONDS": str(p.timeout_seconds)}


def preflight_container(first: Mapping[str, Any], settings: Mapping[str, str]) -> dict[str, Any]:
    """The gang preflight: the training container's image, environment, devices and mounts,
    running `python -m wanka.sdk.preflight` last among the init containers (right before
    training). Its termination message is the report the operator reads."""
    env = [e for e in first.get("env") or [] if not str(e.get("name", "")).startswith("WANKA_PREFLIGHT_")]
    out: dict[str, Any] = {
        "name": PREFLIGHT_CONTAINER,
        "image": first["image"],
        "command": ["python", "-m", "wanka.sdk.preflight"],
        "env": [*env, *({"name": k, "value": v} for k, v in sorted(settings.items()))],
        "terminationMessagePolicy": "File",
    }
    for key in ("resources", "volumeMounts", "securityContext", "imagePullPolicy"):
        if key in first:
            out[key] = copy.deepcopy(first[key])
    return out


def pod_manifest(
    job: Mapping[str, Any],
    spec: TrainingJobSpec,
    replica: int,
    attempt: int,
    devices: Sequence[tuple[int, int]],
    resource_name: str,
    sharing_mode: str = "Exclusive",
    memory_mib: int = 0,
    resume: bool = False,
    world_size: int | None = None,
    preflight: Mapping[str, str] | None = None,
    advice: CheckpointAdvice | None = None,
) -> dict[str, Any]:
    """One replica's pod, not yet bound (Wanka binds it through pods/binding).

    `world_size`: replicas in this attempt (an elastic gang may start with fewer than
    `spec.replicas`); defaults to `spec.replicas`. `preflight`: the pool's preflight settings
    (WANKA_PREFLIGHT_* variables) when the job asks for a gang preflight. `advice`: the job's
    checkpoint advice, as WANKA_CHECKPOINT_INTERVAL_SECONDS ("" while there is none)."""
    meta = job["metadata"]
    name, ns = meta["name"], meta["namespace"]
    template = copy.deepcopy(spec.template.wire())
    pod_spec: dict[str, Any] = template.get("spec") or {}
    tmeta: dict[str, Any] = template.get("metadata") or {}
    whole = [d for d, milli in devices if milli >= 1000]
    shared = [(d, milli) for d, milli in devices if milli < 1000]
    world = world_size or spec.replicas
    env = [
        # A gang of one has no headless Service (nothing to rendezvous with): itself.
        {"name": "MASTER_ADDR", "value": f"{name}-0.{name}.{ns}.svc" if world > 1 else "localhost"},
        {"name": "MASTER_PORT", "value": str(MASTER_PORT)},
        {"name": "WORLD_SIZE", "value": str(world)},
        {"name": "RANK", "value": str(replica)},
        {"name": "NODE_RANK", "value": str(replica)},
        {"name": "LOCAL_WORLD_SIZE", "value": str(max(1, len(whole)))},
        {"name": "WANKA_JOB", "value": f"{ns}/{name}"},
        {"name": "WANKA_RESTART_COUNT", "value": str(attempt)},
        {"name": "WANKA_CHECKPOINT_DIR", "value": spec.checkpoint.path},
        {"name": "WANKA_RESUME", "value": "1" if resume and spec.checkpoint.resume == "Auto" else "0"},
        {"name": "WANKA_PROGRESS", "value": progress_name(name) if reports(spec) else ""},
        {"name": "WANKA_NAMESPACE", "value": ns},
        {"name": "WANKA_CHECKPOINT_INTERVAL_SECONDS", "value": str(advice.interval_seconds) if advice else ""},
    ]
    if shared:
        env += shared_env(sharing_mode, shared[0][0], shared[0][1], memory_mib)
    for i, container in enumerate(pod_spec.get("containers") or []):
        ours = {e["name"] for e in env}
        container["env"] = [e for e in container.get("env") or [] if e.get("name") not in ours] + env
        if i == 0 and whole:
            res = container.setdefault("resources", {})
            res.setdefault("limits", {})[resource_name] = str(len(whole))
            res.setdefault("requests", {})[resource_name] = str(len(whole))
        if spec.checkpoint.volume_claim:
            mounts = [m for m in container.get("volumeMounts") or [] if m.get("name") != CHECKPOINT_VOLUME]
            container["volumeMounts"] = [*mounts, {"name": CHECKPOINT_VOLUME, "mountPath": spec.checkpoint.path}]
    if preflight is not None and pod_spec.get("containers"):
        pod_spec["initContainers"] = [
            *(c for c in pod_spec.get("initContainers") or [] if c.get("name") != PREFLIGHT_CONTAINER),
            preflight_container(pod_spec["containers"][0], preflight)]
    if spec.checkpoint.volume_claim:
        vols = [v for v in pod_spec.get("volumes") or [] if v.get("name") != CHECKPOINT_VOLUME]
        pod_spec["volumes"] = [*vols, {"name": CHECKPOINT_VOLUME, "persistentVolumeClaim": {
            "claimName": spec.checkpoint.volume_claim}}]
    pod_spec["schedulerName"] = SCHEDULER_NAME
    pod_spec["hostname"] = f"{name}-{replica}"
    pod_spec["subdomain"] = name
    pod_spec["restartPolicy"] = "Never"  # the gang restarts as a whole, never one pod alone
    if reports(spec):
        pod_spec.setdefault("serviceAccountName", service_account_name(name))
    pod_spec.pop("nodeName", None)
    labels = {**(tmeta.get("labels") or {}), **MANAGED_BY, JOB_LABEL: name,
              REPLICA_LABEL: str(replica), ATTEMPT_LABEL: str(attempt)}
    annotations = {**(tmeta.get("annotations") or {}),
                   DEVICES_ANNOTATION: ",".join(f"{d}:{m}" if m < 1000 else str(d) for d, m in devices)}
    if memory_mib:
        annotations[GPU_MEMORY_ANNOTATION] = str(memory_mib)
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": pod_name(name, replica, attempt), "namespace": ns, "labels": labels,
                     "annotations": annotations, "ownerReferences": [owner_reference(job)]},
        "spec": pod_spec,
    }


def service_manifest(job: Mapping[str, Any]) -> dict[str, Any]:
    name, ns = job["metadata"]["name"], job["metadata"]["namespace"]
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name, "namespace": ns, "labels": {**MANAGED_BY, JOB_LABEL: name},
                     "ownerReferences": [owner_reference(job)]},
        "spec": {
            "clusterIP": "None",
            "selector": {JOB_LABEL: name},
            "publishNotReadyAddresses": True,  # ranks must resolve each other before Ready
            "ports": [{"name": "rendezvous", "port": MASTER_PORT, "targetPort": MASTER_PORT}],
        },
    }


def reports(spec: TrainingJobSpec) -> bool:
    """Whether the job's pods report checkpoints: only a job that resumes from them does (with
    `checkpoint.resume: Never` every restart starts over, so a report would change nothing).
    A job that does not report gets no ServiceAccount, Role, RoleBinding or report object:
    four writes fewer per job, which counts in a sweep of thousands of one-GPU trials."""
    return spec.checkpoint.resume == "Auto"


def checkpoint_objects(job: Mapping[str, Any]) -> list[dict[str, Any]]:
    """ServiceAccount, TrainingJobProgress, and a Role letting only that account update only that
    report: the operator can grant it because it holds update on its own resource type only."""
    name, ns = job["metadata"]["name"], job["metadata"]["namespace"]
    owner = [owner_reference(job)]
    labels = {**MANAGED_BY, JOB_LABEL: name}
    sa, report, role = service_account_name(name), progress_name(name), checkpoint_role_name(name)
    meta = {"namespace": ns, "labels": labels, "ownerReferences": owner}
    return [
        {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": sa, **meta}},
        {"apiVersion": API_VERSION, "kind": "TrainingJobProgress", "metadata": {"name": report, **meta},
         "spec": {}},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
         "metadata": {"name": role, **meta},
         "rules": [{"apiGroups": [GROUP], "resources": ["trainingjobprogresses"], "resourceNames": [report],
                    "verbs": ["get", "update", "patch"]}]},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
         "metadata": {"name": role, **meta},
         "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": role},
         "subjects": [{"kind": "ServiceAccount", "name": sa, "namespace": ns}]},
    ]
