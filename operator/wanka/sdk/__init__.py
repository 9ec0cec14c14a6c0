"""Training-side helpers: atomic checkpoints, validated resume, progress reports, SIGTERM."""

from wanka.sdk.checkpoint import Checkpoint, CheckpointDir, CorruptCheckpoint, IncompleteCheckpoint
from wanka.sdk.runtime import GracefulStop, Reporter, Settings

__all__ = [
    "Checkpoint",
    "CheckpointDir",
    "CorruptCheckpoint",
    "GracefulStop",
    "IncompleteCheckpoint",
    "Reporter",
    "Settings",
]
