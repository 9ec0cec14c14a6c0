"""GPUPool: a set of GPU nodes with one accelerator kind, topology, sharing mode and health policy."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import ConfigDict, Field

from wanka.api.common import (
    LABEL_KEY_PATTERN,
    MAX_LABEL_KEY,
    POD_POLICY_RULES,
    Condition,
    LabelSelector,
    WankaModel,
    cel,
)

SharingMode = Literal["Exclusive", "MPS", "TimeSlice", "MIG"]
MIG_PROFILE_PATTERN = r"^[1-7]g\.[0-9]+gb(\+me)?$"


class Accelerator(WankaModel):
    """Which extended resource the pool's devices are exposed as, and what they are."""

    resource_name: str = Field(
        default="nvidia.com/gpu",
        max_length=MAX_LABEL_KEY,
        pattern=r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?/[a-z0-9]([-a-z0-9_.]*[a-z0-9])?$",
        description="Extended resource name of one device (any vendor), e.g. nvidia.com/gpu.",
    )
    model: str | None = Field(
        default=None,
        max_length=63,
        description="Device model, e.g. H100-80GB. Unset: read from each node's "
        "wanka.io/gpu-model label.",
    )
    memory_gi_b: int | None = Field(
        default=None,
        alias="memoryGiB",
        ge=1,
        le=4096,
        description="Memory of one device in GiB; bounds gpuMemoryGiB requests on shared devices.",
    )


class Topology(WankaModel):
    """The network hierarchy of the pool as node label keys."""

    levels: list[str] = Field(
        default_factory=list,
        max_length=8,
        description="Node label keys naming each node's domain, closest first, e.g. "
        "[wanka.io/nvlink-domain, wanka.io/rack, wanka.io/spine].",
        json_schema_extra={
            "items": {"type": "string", "maxLength": MAX_LABEL_KEY, "pattern": LABEL_KEY_PATTERN},
            "x-kubernetes-validations": [
                cel("self.all(x, self.exists_one(y, y == x))", "topology levels must be distinct")
            ],
        },
    )


class Sharing(WankaModel):
    """How one device may be shared between tenants."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                cel(
                    "!has(self.maxSharesPerDevice) || self.mode in ['MPS', 'TimeSlice']",
                    "maxSharesPerDevice applies only to the MPS and TimeSlice sharing modes",
                ),
                cel(
                    "self.mode == 'MIG' || !has(self.migProfiles) || self.migProfiles.size() == 0",
                    "migProfiles applies only to the MIG sharing mode",
                ),
                cel(
                    "self.mode != 'MIG' || (has(self.migProfiles) && self.migProfiles.size() > 0)",
                    "a MIG pool must list the migProfiles tenants may ask for",
                ),
            ]
        }
    )

    mode: SharingMode = Field(
        default="Exclusive",
        description="Exclusive: whole devices only. MPS / TimeSlice: replicas may ask for a "
        "fraction of one device. MIG: replicas ask for a MIG profile.",
    )
    max_shares_per_device: int | None = Field(
        default=None,
        ge=1,
        le=64,
        description="MPS / TimeSlice: most tenants on one device.",
    )
    mig_profiles: list[str] = Field(
        default_factory=list,
        max_length=16,
        description="MIG: the profiles tenants may ask for, e.g. 1g.10gb.",
        json_schema_extra={
            "items": {"type": "string", "maxLength": 16, "pattern": MIG_PROFILE_PATTERN}
        },
    )


class ConditionMatch(WankaModel):
    """A node condition that means the node is sick."""

    type: str = Field(max_length=316, description="Node condition type, e.g. GPUHealthy.")
    status: Literal["True", "False", "Unknown"] = Field(description="The status that means sick.")


def _default_unhealthy() -> list[ConditionMatch]:
    return [ConditionMatch(type="GPUHealthy", status="False")]


class HealthPolicy(WankaModel):
    """When nodes and devices count as sick, and how they come back."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                cel(
                    "self.flapWindowSeconds >= self.recoveryStableSeconds",
                    "flapWindowSeconds must be at least recoveryStableSeconds",
                )
            ]
        }
    )

    unhealthy_conditions: list[ConditionMatch] = Field(
        default_factory=_default_unhealthy,
        max_length=32,
        description="Node conditions that mean sick (Ready=False/Unknown always does).",
    )
    fatal_reasons: list[str] = Field(
        default_factory=list,
        max_length=64,
        description="Condition reasons that taint NoExecute instead of NoSchedule, e.g. XID79.",
        json_schema_extra={"items": {"type": "string", "maxLength": 128}},
    )
    recovery_stable_seconds: int = Field(
        default=300, ge=0, le=86400, description="How long a node must stay healthy before "
        "its taint is removed."
    )
    flap_limit: int = Field(
        default=3, ge=1, le=100, description="Sick transitions within the window that quarantine "
        "a node until a person clears it."
    )
    flap_window_seconds: int = Field(
        default=3600, ge=1, le=604800, description="The window flaps are counted in."
    )
    max_unhealthy_percent: int = Field(
        default=20,
        ge=0,
        le=100,
        description="If more than this share of the pool turns sick, stop tainting new nodes "
        "(a broken probe must not take the fleet down).",
    )


class Onboarding(WankaModel):
    """Burn-in of nodes before they take work: new nodes, nodes back from quarantine or a long
    NotReady, and (optionally) nodes idle past a revalidation interval."""

    template: dict[str, Any] | None = Field(
        default=None,
        description="Pod template (metadata and spec) of the burn-in pod. Unset: the operator's "
        "agent image runs `wanka agent burn-in` (NVML health, ECC, row remapping, XIDs, and DCGM "
        "diagnostics when dcgmi is present). Wanka pins it to the node, tolerates the onboarding "
        "taint, sets restartPolicy Never and the deadline, and gives the first container all the "
        "node's devices unless it asks for some.",
        json_schema_extra={"x-kubernetes-preserve-unknown-fields": True},
    )
    timeout_seconds: int = Field(
        default=900, ge=30, le=86400,
        description="A burn-in not finished this long after its pod was created has failed.",
    )
    retries: int = Field(
        default=1, ge=0, le=10,
        description="Further attempts after a failed burn-in before the node is quarantined "
        "(reason PreflightFailed).",
    )
    revalidate_idle_after_seconds: int = Field(
        default=0, ge=0, le=31_536_000,
        description="Re-check a node idle this long after its last burn-in (0: never).",
    )
    return_after_not_ready_seconds: int = Field(
        default=600, ge=0, le=31_536_000,
        description="A node NotReady at least this long is checked again when it returns.",
    )


class PreflightPolicy(WankaModel):
    """Thresholds of the gang preflight (TrainingJob spec.preflight) in this pool: the platform
    team's, since a tenant must not lower the bar for the nodes its gang gets."""

    min_bus_bandwidth_g_bps: float = Field(
        default=0, ge=0, le=10_000, alias="minBusBandwidthGBps",
        description="All-reduce bus bandwidth (GB/s, nccl-tests' definition) below which the "
        "gang fails its preflight (0: no floor; members far slower than their peers still fail).",
    )
    slow_factor: float = Field(
        default=0.5, gt=0, le=1,
        description="A member whose own throughput, or both of whose ring links, are below this "
        "share of the gang's median is blamed, and its node excluded.",
    )
    timeout_seconds: int = Field(
        default=120, ge=10, le=3600,
        description="Limit for the preflight's rendezvous and for each of its collectives.",
    )


RemediationAction = Literal["reset", "reboot", "replace"]


class RemediationObject(WankaModel):
    """The object a remediation controller acts on, created per node (named after it)."""

    api_version: str = Field(
        max_length=253, pattern=r"^([a-z0-9.-]+/)?v[0-9a-z]+$",
        description="e.g. self-node-remediation.medik8s.io/v1alpha1.",
    )
    kind: str = Field(max_length=63, pattern=r"^[A-Z][A-Za-z0-9]*$",
                      description="e.g. SelfNodeRemediation.")
    namespace: str | None = Field(
        default=None, max_length=63,
        description="Namespace of the object; unset for a cluster-scoped kind.",
    )
    spec: dict[str, Any] = Field(
        default_factory=dict,
        description="The object's spec, as the remediation controller expects it.",
        json_schema_extra={"x-kubernetes-preserve-unknown-fields": True},
    )


def _default_create_for() -> list[RemediationAction]:
    return ["reboot", "replace"]


class Remediation(WankaModel):
    """What Wanka does for a node it recommends an action for (quarantine, fatal fault)."""

    create_for: list[RemediationAction] = Field(
        default_factory=_default_create_for,
        max_length=3,
        description="Recommended actions for which the object is created.",
    )
    object: RemediationObject | None = Field(
        default=None,
        description="Create this object for the node (unset: only the wanka.io/remediation "
        "annotation is written). It is deleted once the node is healthy again.",
    )


# A pool may relax these; ServiceAccount is relaxed per name by a TenantQueue instead.
POOL_RELAXABLE = POD_POLICY_RULES[:-1]
PoolRule = Literal[
    "Privileged", "HostPath", "HostNamespaces", "Capabilities", "NodeName",
    "AcceleratorEnv", "AcceleratorResources",
]


class PodPolicy(WankaModel):
    """Which pod-template rules this pool relaxes, for tenants trusted with more."""

    allow: list[PoolRule] = Field(
        default_factory=list,
        max_length=len(POOL_RELAXABLE),
        description="Rules not enforced for jobs in this pool: "
        + ", ".join(POOL_RELAXABLE)
        + ". Empty: every rule holds (see docs/operations.md, Security model).",
    )


class GPUPoolSpec(WankaModel):
    """Desired state of a GPUPool."""

    node_selector: LabelSelector = Field(description="Selects the pool's nodes by label.")
    accelerator: Accelerator = Field(
        default_factory=Accelerator, description="The devices the pool offers."
    )
    topology: Topology = Field(default_factory=Topology, description="Network hierarchy.")
    sharing: Sharing = Field(default_factory=Sharing, description="Device sharing.")
    health: HealthPolicy = Field(default_factory=HealthPolicy, description="Health policy.")
    pod_policy: PodPolicy = Field(
        default_factory=PodPolicy, description="Pod-template rules relaxed for this pool's jobs."
    )
    onboarding: Onboarding | None = Field(
        default=None,
        description="Burn-in before nodes take work (unset: nodes take work at once).",
    )
    remediation: Remediation = Field(
        default_factory=Remediation, description="Remediation hooks for nodes that need service."
    )
    preflight: PreflightPolicy = Field(
        default_factory=PreflightPolicy,
        description="Thresholds of the gang preflight jobs ask for with spec.preflight.",
    )


class NodeCounts(WankaModel):
    """Nodes of the pool by health."""

    total: int = Field(default=0, ge=0, description="Nodes selected.")
    healthy: int = Field(default=0, ge=0, description="Ready and not tainted unhealthy.")
    sick: int = Field(default=0, ge=0, description="Failing a health signal now.")
    recovering: int = Field(default=0, ge=0, description="Healthy again, waiting out the window.")
    quarantined: int = Field(
        default=0, ge=0, description="Flapped too often or failed its burn-in; needs a person."
    )
    onboarding: int = Field(
        default=0, ge=0, description="Waiting for or running their burn-in (spec.onboarding)."
    )


class GPUCounts(WankaModel):
    """Devices of the pool, in GPU-equivalents (a 0.25 slice counts 0.25)."""

    total: int = Field(default=0, ge=0, description="Devices on the selected nodes.")
    allocatable: int = Field(default=0, ge=0, description="Devices on healthy, schedulable nodes.")
    allocated: float = Field(
        default=0, ge=0,
        description="Held by bound pods of any scheduler and by gangs Wanka has reserved but not yet bound.",
    )
    free: float = Field(default=0, ge=0, description="Allocatable minus allocated.")
    stranded: float = Field(
        default=0, ge=0, description="Free but in pieces too small for any pending request."
    )


class DeviceCounts(WankaModel):
    """Devices of the pool by how they are used."""

    idle: int = Field(default=0, description="Healthy devices with nothing on them (whole).")
    shared: int = Field(default=0, description="Healthy devices partly allocated to shares.")
    full: int = Field(default=0, description="Healthy devices fully allocated.")
    unhealthy: int = Field(default=0, description="Devices excluded as sick.")
    mig_partitioned: int = Field(default=0, description="Devices split into MIG instances by Wanka.")


class ModelCount(WankaModel):
    """Devices of one model."""

    model: str = Field(max_length=63, description="Device model.")
    total: int = Field(ge=0, description="Devices of this model.")
    free: float = Field(ge=0, description="Free devices of this model.")


class GPUPoolStatus(WankaModel):
    """Observed state of a GPUPool."""

    observed_generation: int | None = Field(default=None, description="Spec generation seen.")
    nodes: NodeCounts = Field(default_factory=NodeCounts, description="Nodes by health.")
    gpus: GPUCounts = Field(default_factory=GPUCounts, description="Device accounting.")
    devices: DeviceCounts = Field(default_factory=DeviceCounts, description="Devices by use.")
    models: list[ModelCount] = Field(
        default_factory=list, max_length=64, description="Per-model breakdown."
    )
    conditions: list[Condition] = Field(
        default_factory=list,
        max_length=32,
        description="Ready, Degraded, HealthGuardTripped, ...",
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["type"]},
    )


class GPUPool(WankaModel):
    """A pool of GPU nodes that Wanka schedules as one."""

    api_version: Literal["wanka.io/v1alpha1"] = Field(default="wanka.io/v1alpha1")
    kind: Literal["GPUPool"] = Field(default="GPUPool")
    metadata: dict[str, object] = Field(default_factory=dict)
    spec: GPUPoolSpec
    status: GPUPoolStatus | None = None
