"""TenantQueue: a tenant's quotas per pool, fair-share weight and preemption policy."""

from __future__ import annotations

from typing import Literal

from pydantic import ConfigDict, Field

from wanka.api.common import DNS_LABEL_PATTERN, MAX_NAME, Condition, LabelSelector, WankaModel, cel


class Quota(WankaModel):
    """GPU-equivalents a queue may use in one pool."""

    pool: str = Field(max_length=MAX_NAME, description="The GPUPool this quota is for.")
    gpus: float = Field(
        ge=0, le=1_000_000, description="Nominal quota in GPU-equivalents (a 0.25 slice counts 0.25)."
    )
    borrowing_limit: float | None = Field(
        default=None,
        ge=0,
        le=1_000_000,
        description="How much more it may borrow from other queues' unused quota. Unset: "
        "no limit; 0: no borrowing.",
    )


class Preemption(WankaModel):
    """What a queue's jobs may preempt."""

    within_queue: Literal["Never", "LowerPriority"] = Field(
        default="LowerPriority",
        description="LowerPriority: a job may preempt lower-priority jobs of the same queue.",
    )
    reclaim_borrowed: bool = Field(
        default=True,
        description="Preempt other queues' jobs that run on capacity borrowed from this queue.",
    )


class TenantQueueSpec(WankaModel):
    """Desired state of a TenantQueue."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                cel(
                    "(has(self.namespaces) && self.namespaces.size() > 0) || has(self.namespaceSelector)",
                    "a TenantQueue needs namespaces or a namespaceSelector to say whose jobs it takes",
                ),
            ]
        }
    )

    namespaces: list[str] = Field(
        default_factory=list,
        max_length=256,
        description="Namespaces whose TrainingJobs may use this queue.",
        json_schema_extra={
            "items": {"type": "string", "maxLength": 63, "pattern": DNS_LABEL_PATTERN}
        },
    )
    namespace_selector: LabelSelector | None = Field(
        default=None, description="Or: namespaces selected by label."
    )
    quotas: list[Quota] = Field(
        default_factory=list,
        max_length=64,
        description="Per-pool quotas. No quota for a pool: the queue may not use it.",
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["pool"]},
    )
    weight: float = Field(
        default=1, gt=0, le=1000, description="Fair-share weight: usage is compared per unit weight."
    )
    preemption: Preemption = Field(default_factory=Preemption, description="Preemption policy.")


class PoolUsage(WankaModel):
    """What a queue uses in one pool."""

    pool: str = Field(max_length=MAX_NAME, description="The pool.")
    gpus: float = Field(ge=0, description="GPU-equivalents held by the queue's admitted jobs.")


class TenantQueueStatus(WankaModel):
    """Observed state of a TenantQueue."""

    observed_generation: int | None = Field(default=None, description="Spec generation seen.")
    usage: list[PoolUsage] = Field(default_factory=list, max_length=64, description="Usage per pool.")
    running: int = Field(default=0, ge=0, description="Admitted jobs.")
    pending: int = Field(default=0, ge=0, description="Jobs waiting for admission.")
    conditions: list[Condition] = Field(
        default_factory=list,
        max_length=32,
        description="Ready: False (PoolNotFound) while a quota names a pool that does not exist.",
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["type"]},
    )


class TenantQueue(WankaModel):
    """A tenant's queue: quotas, fair-share weight and preemption policy."""

    api_version: Literal["wanka.io/v1alpha1"] = Field(default="wanka.io/v1alpha1")
    kind: Literal["TenantQueue"] = Field(default="TenantQueue")
    metadata: dict[str, object] = Field(default_factory=dict)
    spec: TenantQueueSpec
    status: TenantQueueStatus | None = None
