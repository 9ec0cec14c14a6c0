"""Trace-driven simulators that run the same core as the operator."""

from __future__ import annotations

import os
from pathlib import Path


def data_dir() -> Path:
    """Where the shared traces live: $WANKA_DATA, else `shared/data` beside the repository."""
    env = os.environ.get("WANKA_DATA")
    if env:
        return Path(env)
    return Path(__file__).resolve().parents[3].parent / "shared" / "data"
