"""TrainingJobProgress: a job's own progress report, the one object its workload may write."""

from __future__ import annotations

from datetime import datetime

from pydantic import Field

from wanka.api.common import WankaModel


class TrainingJobProgressSpec(WankaModel):
    """The newest checkpoint the workload reports (rank 0, through the SDK's Reporter), written by
    the workload as a Lease's holder writes its spec; the operator checks it before mirroring it
    into the TrainingJob's status.lastCheckpoint."""

    step: int | None = Field(default=None, ge=0, le=2**53, description="Training step of the checkpoint.")
    path: str | None = Field(default=None, max_length=4096,
                             description="Where the checkpoint is; must be inside spec.checkpoint.path.")
    time: datetime | None = Field(default=None, description="When the checkpoint was written.")
    save_seconds: float | None = Field(
        default=None, ge=0, le=86400,
        description="How long the save blocked training (the SDK measures it); the operator's "
        "checkpoint-interval advice is computed from it.",
    )
