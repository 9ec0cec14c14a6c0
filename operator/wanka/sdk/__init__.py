"""Training-side helpers: atomic checkpoints, validated resume, progress reports, SIGTERM."""

from wanka.sdk.checkpoint import Checkpoint, CheckpointDir, CorruptCheckpoint, IncompleteCheckpoint
from wanka.sdk.runtime import CheckpointTimer, GracefulStop, Reporter, Settings

__all__ = [
    "Checkpoint",
    "CheckpointDir",
    "CheckpointTimer",
    "CorruptCheckpoint",
    "GracefulStop",
    "IncompleteCheckpoint",
    "Reporter",
    "Settings",
]
