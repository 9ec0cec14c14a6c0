"""TrainingJob: a gang of replicas placed all-or-nothing and resumed from checkpoints."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import ConfigDict, Field

from wanka.api.common import (
    LABEL_KEY_PATTERN,
    MAX_LABEL_KEY,
    MAX_NAME,
    Condition,
    WankaModel,
    cel,
)
from wanka.api.gpupool import MIG_PROFILE_PATTERN
from wanka.units import WHOLE, fraction_milli, mig_share_milli

# Pod hostnames are "<job>-<replica>" under a headless Service named "<job>": both are DNS
# labels (63 characters), and the replica index takes up to 5 ("-4095").
MAX_JOB_NAME = 52
MAX_REPLICAS = 4096

Phase = Literal[
    "Queued", "Admitted", "Running", "Restarting", "Suspended", "Succeeded", "Failed"
]


class Resources(WankaModel):
    """What each replica needs: exactly one accelerator form."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                cel(
                    "(has(self.gpus) && self.gpus > 0) || has(self.gpuFraction) || has(self.migProfile)",
                    "each replica must ask for an accelerator: set gpus, gpuFraction or migProfile",
                ),
                cel(
                    "!has(self.gpuFraction) || !has(self.gpus) || self.gpus <= 1",
                    "gpuFraction is a share of ONE device: it cannot be combined with gpus > 1",
                ),
                cel(
                    "!has(self.migProfile) || (!has(self.gpuFraction) && (!has(self.gpus) || self.gpus == 0))",
                    "migProfile cannot be combined with gpus or gpuFraction",
                ),
                cel(
                    "!has(self.gpuMemoryGiB) || has(self.gpuFraction)",
                    "gpuMemoryGiB bounds a shared device: it needs gpuFraction",
                ),
            ]
        }
    )

    gpus: int | None = Field(
        default=None, ge=0, le=64, description="Whole devices per replica, all on one node."
    )
    gpu_fraction: float | None = Field(
        default=None,
        gt=0,
        lt=1,
        description="A share of ONE device, strictly between 0 and 1 (MPS / TimeSlice pools).",
    )
    gpu_memory_gi_b: float | None = Field(
        default=None,
        alias="gpuMemoryGiB",
        gt=0,
        le=4096,
        description="Optional device-memory bound with gpuFraction, in GiB.",
    )
    mig_profile: str | None = Field(
        default=None,
        max_length=16,
        pattern=MIG_PROFILE_PATTERN,
        description="A MIG profile such as 1g.10gb (MIG pools).",
    )

    @property
    def gpu_milli(self) -> int:
        """Per-replica demand in milli-GPU, as `wanka.units` defines it for every layer (whole
        devices count 1000 each; a MIG instance its compute slices out of 7, rounded down, so
        1g.10gb counts 142)."""
        if self.gpu_fraction is not None:
            return fraction_milli(self.gpu_fraction)
        if self.mig_profile:
            return mig_share_milli(self.mig_profile)
        return (self.gpus or 0) * WHOLE


class Container(WankaModel):
    """A container of the pod template; fields Wanka does not read are kept as written."""

    model_config = ConfigDict(
        extra="allow", json_schema_extra={"x-kubernetes-preserve-unknown-fields": True}
    )

    name: str = Field(max_length=63, description="Container name.")
    image: str = Field(min_length=1, max_length=4096, description="Container image.")


class PodSpecTemplate(WankaModel):
    """The pod spec of each replica; Wanka adds scheduling, environment and volumes."""

    model_config = ConfigDict(
        extra="allow", json_schema_extra={"x-kubernetes-preserve-unknown-fields": True}
    )

    containers: list[Container] = Field(
        min_length=1,
        max_length=32,
        description="At least one container; the first runs the training program.",
    )


class PodTemplate(WankaModel):
    """A PodTemplateSpec."""

    metadata: dict[str, Any] = Field(
        default_factory=dict,
        description="Labels and annotations for the replica pods.",
        json_schema_extra={"x-kubernetes-preserve-unknown-fields": True},
    )
    spec: PodSpecTemplate = Field(description="The replica pod spec.")


class Gang(WankaModel):
    """All-or-nothing settings."""

    min_available: int | None = Field(
        default=None,
        ge=1,
        le=MAX_REPLICAS,
        description=(
            "Replicas that must be placed together for the gang to start. Defaults to replicas "
            "(all or nothing). When lower, the gang starts with as many replicas as fit, at least "
            "this many; WORLD_SIZE tells the pods how many, and the gang keeps that size until its "
            "next restart, which asks for all replicas again. MIG gangs always start whole."
        ),
    )
    schedule_timeout_seconds: int = Field(
        default=600,
        ge=1,
        le=86400,
        description="A gang not fully running within this time is released and requeued.",
    )


class TopologyConstraint(WankaModel):
    """Where the gang's replicas may land in the pool's hierarchy."""

    level: str = Field(
        max_length=MAX_LABEL_KEY,
        pattern=LABEL_KEY_PATTERN,
        description="One of the pool's topology level keys, e.g. wanka.io/rack.",
    )
    mode: Literal["Required", "Preferred"] = Field(
        default="Preferred",
        description="Required: all replicas in one domain of that level. Preferred: as few "
        "domains as possible.",
    )


class Checkpoint(WankaModel):
    """Where the workload keeps checkpoints and whether to resume from them."""

    volume_claim: str | None = Field(
        default=None,
        max_length=MAX_NAME,
        description="A PersistentVolumeClaim mounted at path in every replica.",
    )
    path: str = Field(
        default="/ckpt",
        max_length=1024,
        pattern=r"^/",
        description="Absolute checkpoint directory inside the containers.",
    )
    resume: Literal["Auto", "Never"] = Field(
        default="Auto",
        description="Auto: restarted replicas resume from the last checkpoint, which they report "
        "through the job's TrainingJobProgress. Never: every restart starts over; the job gets no "
        "progress report, ServiceAccount or Role.",
    )


class RestartPolicy(WankaModel):
    """How interrupted gangs are retried."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                cel(
                    "self.maxBackoffSeconds >= self.backoffSeconds",
                    "maxBackoffSeconds must be at least backoffSeconds",
                )
            ]
        }
    )

    max_restarts: int = Field(
        default=10, ge=0, le=10000, description="Gang restarts before the job is Failed."
    )
    backoff_seconds: int = Field(
        default=30, ge=0, le=86400, description="Wait before the first restart; doubles each time."
    )
    max_backoff_seconds: int = Field(
        default=600, ge=0, le=86400, description="Cap on the wait between restarts."
    )
    no_retry_exit_codes: list[int] = Field(
        default_factory=list,
        max_length=64,
        description="Exit codes meaning the job itself is wrong: the job fails without retry.",
        json_schema_extra={"items": {"type": "integer", "minimum": 0, "maximum": 255}},
    )


class TrainingJobSpec(WankaModel):
    """Desired state of a TrainingJob."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                cel(
                    "!has(self.gang) || !has(self.gang.minAvailable) || self.gang.minAvailable <= self.replicas",
                    "gang.minAvailable cannot exceed replicas",
                ),
                cel("self.pool == oldSelf.pool", "pool is immutable", fieldPath=".pool"),
                # Usage is charged to the job's queue: moving a job that holds devices would
                # charge the new queue for what the old one admitted.
                cel(
                    "self.queue == oldSelf.queue",
                    "queue is immutable: delete and recreate the job to run it in another queue",
                    fieldPath=".queue",
                ),
                cel(
                    "self.replicas == oldSelf.replicas",
                    "replicas is immutable: delete and recreate the job to resize it",
                    fieldPath=".replicas",
                ),
                cel("self.resources == oldSelf.resources", "resources are immutable",
                    fieldPath=".resources"),
            ]
        }
    )

    pool: str = Field(max_length=MAX_NAME, min_length=1, description="The GPUPool to run in.")
    queue: str = Field(
        max_length=MAX_NAME, min_length=1, description="The TenantQueue that admits the job."
    )
    priority: int = Field(
        default=0, ge=-1_000_000, le=1_000_000, description="Higher runs first and may preempt."
    )
    replicas: int = Field(
        ge=1, le=MAX_REPLICAS, description="Replicas (pods) in the gang, at least 1."
    )
    resources: Resources = Field(description="Per-replica accelerator request.")
    template: PodTemplate = Field(description="Pod template of every replica.")
    gang: Gang = Field(default_factory=Gang, description="All-or-nothing settings.")
    topology: TopologyConstraint | None = Field(
        default=None, description="Topology constraint on placement."
    )
    checkpoint: Checkpoint = Field(default_factory=Checkpoint, description="Checkpoints.")
    restart_policy: RestartPolicy = Field(
        default_factory=RestartPolicy, description="Retry of interrupted gangs."
    )
    suspend: bool = Field(default=False, description="True: release everything and wait.")
    preflight: bool = Field(
        default=False,
        description="Before training starts, every member runs a short collective check (an "
        "init container: `python -m wanka.sdk.preflight` in the first container's image, which "
        "must have PyTorch and Wanka's SDK). A member that fails it or is far slower than its "
        "peers gets its node excluded and the gang is placed again without it.",
    )


class ReplicaPlacement(WankaModel):
    """Where one replica runs."""

    replica: int = Field(ge=0, description="Replica index (RANK of its node).")
    node: str = Field(max_length=MAX_NAME, description="Node name.")
    devices: list[int] = Field(
        default_factory=list,
        max_length=64,
        description="Device indexes on the node.",
        json_schema_extra={"items": {"type": "integer", "minimum": 0}},
    )
    gpu_milli: int | None = Field(
        default=None, ge=1, le=999,
        description="For a share of one device: its size in thousandths of the device.",
    )
    mig_start: int | None = Field(
        default=None, ge=0, le=7,
        description="For a MIG instance: its start memory slice on the device.",
    )


class LastCheckpoint(WankaModel):
    """The newest complete checkpoint the workload reported."""

    step: int = Field(ge=0, description="Training step.")
    path: str = Field(max_length=4096, description="Where it is.")
    time: datetime = Field(description="When it was written.")
    save_seconds: float | None = Field(
        default=None, ge=0, le=86400, description="How long the save blocked training."
    )


class CheckpointAdvice(WankaModel):
    """How often the job should checkpoint (Young/Daly), from its save time and its pool's
    interruption rate; given to each new attempt's pods as WANKA_CHECKPOINT_INTERVAL_SECONDS."""

    interval_seconds: int = Field(ge=1, description="Advised seconds of training between checkpoints.")
    save_seconds: float = Field(ge=0, description="The measured save time the advice used.")
    job_mtbf_seconds: float = Field(
        ge=0, alias="jobMTBFSeconds",
        description="Mean time between the job's interruptions on its nodes, as the advice expects it.",
    )
    interruptions_per_node_day: float = Field(
        ge=0, description="The pool's interruption rate the advice used (observed, blended with a prior).",
    )


class TrainingJobStatus(WankaModel):
    """Observed state of a TrainingJob."""

    observed_generation: int | None = Field(default=None, description="Spec generation seen.")
    phase: Phase | None = Field(default=None, description="Summary for people; logic reads conditions.")
    conditions: list[Condition] = Field(
        default_factory=list,
        max_length=32,
        description="Admitted, PodsReady, Restarting, Preempted, Succeeded, Failed.",
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["type"]},
    )
    placement: list[ReplicaPlacement] = Field(
        default_factory=list, max_length=MAX_REPLICAS, description="Where each replica runs."
    )
    replicas_ready: int = Field(default=0, ge=0, description="Replicas running and ready.")
    restarts: int = Field(default=0, ge=0, description="Gang restarts so far (any cause).")
    preemptions: int = Field(
        default=0, ge=0,
        description="Restarts caused by preemption; they do not count against maxRestarts.",
    )
    excluded_nodes: list[str] = Field(
        default_factory=list,
        max_length=1024,
        description="Nodes that failed this job and are avoided.",
        json_schema_extra={"items": {"type": "string", "maxLength": MAX_NAME}},
    )
    last_checkpoint: LastCheckpoint | None = Field(default=None, description="Newest checkpoint.")
    start_time: datetime | None = Field(default=None, description="First time it ran.")
    completion_time: datetime | None = Field(default=None, description="When it ended.")
    lost_seconds: float = Field(
        default=0, ge=0, description="Work lost to interruptions (since the last checkpoint)."
    )
    retry_after: datetime | None = Field(
        default=None, description="Restart backoff: the gang is not placed again before this."
    )
    admitted_time: datetime | None = Field(
        default=None, description="When the current placement was reserved (gang timeout)."
    )
    gpus: float | None = Field(
        default=None, ge=0, description="GPU-equivalents the whole gang asks for."
    )
    failed_admissions: int = Field(
        default=0, ge=0,
        description="Placements released before the gang ran (gang timeout, pods refused by the "
        "API, a failed bind) since it last ran; the backoff grows with it.",
    )
    checkpoint_advice: CheckpointAdvice | None = Field(
        default=None, description="Advised checkpoint interval (once the workload reports its save time).",
    )
    preflight_failures: int = Field(
        default=0, ge=0,
        description="Restarts after a failed gang preflight that named the members to blame "
        "(their nodes are excluded); like preemptions, they do not count against maxRestarts.",
    )
    nominated_victims: list[str] = Field(
        default_factory=list, max_length=256,
        description="Gangs (namespace/name) being preempted for this job: it waits for them to "
        "stop and picks no other victims meanwhile.",
        json_schema_extra={"items": {"type": "string", "maxLength": 2 * MAX_NAME + 1}},
    )


class TrainingJob(WankaModel):
    """A multi-node training job placed as a gang."""

    api_version: Literal["wanka.io/v1alpha1"] = Field(default="wanka.io/v1alpha1")
    kind: Literal["TrainingJob"] = Field(default="TrainingJob")
    metadata: dict[str, Any] = Field(default_factory=dict)
    spec: TrainingJobSpec
    status: TrainingJobStatus | None = None
