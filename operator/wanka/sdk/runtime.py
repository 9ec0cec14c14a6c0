"""What a training process needs from Wanka at run time: its settings, progress reports,
and a SIGTERM handler that saves once before the grace period ends."""

from __future__ import annotations

import json
import os
import signal
import ssl
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType

SA_DIR = Path("/var/run/secrets/kubernetes.io/serviceaccount")


@dataclass(frozen=True)
class Settings:
    """The environment Wanka gives every replica (all optional outside a cluster)."""

    job: str = ""
    namespace: str = ""
    rank: int = 0
    world_size: int = 1
    restart_count: int = 0
    resume: bool = False
    checkpoint_dir: str = "/ckpt"
    progress: str = ""  # the job's TrainingJobProgress
    # The operator's advice (Young/Daly, from the reported save time and the pool's interruption
    # rate): seconds of training between checkpoints; None until there is advice.
    checkpoint_interval_seconds: float | None = None

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> Settings:
        e = dict(os.environ if env is None else env)
        return cls(
            job=e.get("WANKA_JOB", ""),
            namespace=e.get("WANKA_NAMESPACE", ""),
            rank=int(e.get("RANK", "0")),
            world_size=int(e.get("WORLD_SIZE", "1")),
            restart_count=int(e.get("WANKA_RESTART_COUNT", "0")),
            resume=e.get("WANKA_RESUME", "0") == "1",
            checkpoint_dir=e.get("WANKA_CHECKPOINT_DIR", "/ckpt"),
            progress=e.get("WANKA_PROGRESS", ""),
            checkpoint_interval_seconds=_positive(e.get("WANKA_CHECKPOINT_INTERVAL_SECONDS")),
        )


def _positive(value: str | None) -> float | None:
    try:
        out = float(value or "")
    except ValueError:
        return None
    return out if out > 0 else None


class CheckpointTimer:
    """When to save next: every `interval` seconds of wall time (the operator's advice, or a
    fallback); `due()` is checked at step boundaries, `saved()` called after each save, which
    also measures the save for the report."""

    def __init__(self, interval: float | None, clock: Callable[[], float] = time.monotonic) -> None:
        self.interval = interval
        self.clock = clock
        self.last = clock()

    def due(self) -> bool:
        return self.interval is not None and self.clock() - self.last >= self.interval

    def saved(self) -> None:
        self.last = self.clock()


class Reporter:
    """Writes the newest checkpoint into the job's TrainingJobProgress, which the operator checks
    and mirrors into `status.lastCheckpoint`. Only rank 0 reports. Outside a cluster it does nothing."""

    def __init__(self, settings: Settings, sa_dir: Path = SA_DIR,
                 server: str | None = None) -> None:
        self.settings = settings
        self.sa_dir = sa_dir
        host, port = os.environ.get("KUBERNETES_SERVICE_HOST"), os.environ.get("KUBERNETES_SERVICE_PORT")
        self.server = server or (f"https://{host}:{port}" if host and port else None)

    @property
    def enabled(self) -> bool:
        return bool(self.server and self.settings.progress and self.settings.rank == 0
                     and (self.sa_dir / "token").exists())

    def report(self, step: int, path: str, when: float, save_seconds: float | None = None) -> bool:
        """True when the report reached the API server; never raises (training goes on).
        `save_seconds`: how long the save blocked training; the operator advises the
        checkpoint interval from it (WANKA_CHECKPOINT_INTERVAL_SECONDS on the next attempt)."""
        if not self.enabled:
            return False
        spec: dict[str, object] = {
            "step": step, "path": path,
            "time": datetime.fromtimestamp(when, UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        }
        if save_seconds is not None:
            spec["saveSeconds"] = round(max(0.0, save_seconds), 3)
        body = json.dumps({"spec": spec}).encode()
        ns = self.settings.namespace or (self.sa_dir / "namespace").read_text().strip()
        url = f"{self.server}/apis/wanka.io/v1alpha1/namespaces/{ns}/trainingjobprogresses/{self.settings.progress}"
        req = urllib.request.Request(url, data=body, method="PATCH")
        req.add_header("Content-Type", "application/merge-patch+json")
        req.add_header("Authorization", f"Bearer {(self.sa_dir / 'token').read_text().strip()}")
        ctx = ssl.create_default_context(cafile=str(self.sa_dir / "ca.crt"))
        try:
            with urllib.request.urlopen(req, timeout=5, context=ctx) as resp:
                return bool(200 <= resp.status < 300)
        except (urllib.error.URLError, OSError):
            return False


class GracefulStop:
    """SIGTERM (the gang being stopped with its grace period) asks the loop to stop.

    The handler only sets a flag: saving from inside a signal handler could capture a step
    half applied. The loop checks `requested` at each step boundary, calls `save_once()`,
    and exits 0, well within a grace period longer than one step.
    """

    def __init__(self, save: Callable[[], None]) -> None:
        self._save = save
        self.requested = False
        self.saved = False
        self._previous = signal.getsignal(signal.SIGTERM)
        signal.signal(signal.SIGTERM, self._handle)

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        self.requested = True

    def save_once(self) -> None:
        if not self.saved:
            self.saved = True
            self._save()

    def restore(self) -> None:
        signal.signal(signal.SIGTERM, self._previous)
