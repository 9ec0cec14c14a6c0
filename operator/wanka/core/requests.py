"""Plain request types that gang placement and the queueing cycle read: what a gang asks for.

A `GangRequest` is the core's view of one TrainingJob (or one sliced Pod): per-replica
accelerator form (whole devices, a milli-GPU fraction of one device, or a MIG profile), CPU and
memory, placement constraints, queueing attributes and, for running gangs, the facts that
preemption and backfill need (start, last checkpoint, a duration bound).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

from wanka.core.constraints import Term, Toleration, selects, untolerated
from wanka.core.snapshot import Node
from wanka.units import WHOLE, mig_profile_slices, mig_share_milli

TopologyMode = Literal["Required", "Preferred"]


class InvalidRequest(ValueError):
    """Raised when a request contradicts itself (e.g. both whole GPUs and a fraction)."""


def mig_profile_memory_mib(profile: str) -> int:
    """Memory of a MIG profile name such as "1g.10gb", in MiB (GB in the name read as GiB)."""
    tail = profile.split("g.", 1)[1] if "g." in profile else ""
    digits = tail.split("gb", 1)[0]
    if not digits.isdigit():
        raise InvalidRequest(f"MIG profile {profile!r} has no memory size")
    return int(digits) * 1024


@dataclass(frozen=True, slots=True)
class GangRequest:
    """One gang: `replicas` identical members placed all together or not at all.

    Exactly one accelerator form per replica: `gpus` whole devices, or `gpu_milli` in
    1..999 (a share of ONE device, optionally bounded by `gpu_memory_mib`), or a
    `mig_profile`; none of them means a CPU-only member. `min_available` (default: all
    replicas) is the smallest count that may start; placement still tries to place all.
    """

    owner: str  # "namespace/name"; also the owner key of its allocations in the snapshot
    queue: str = ""
    pool: str = ""
    priority: int = 0
    replicas: int = 1
    min_available: int | None = None
    gpus: int = 0
    gpu_milli: int = 0
    gpu_memory_mib: int = 0
    mig_profile: str = ""
    cpu_milli: int = 0
    memory_mib: int = 0
    models: frozenset[str] = frozenset()  # allowed GPU models; empty means any
    excluded_nodes: frozenset[str] = frozenset()
    excluded_devices: frozenset[tuple[str, int]] = frozenset()  # (node, device index)
    # The pod template's node constraints: tolerations, nodeSelector as (key, value) pairs,
    # and required node affinity terms (None: none given; empty: matches no node).
    tolerations: tuple[Toleration, ...] = ()
    node_selector: tuple[tuple[str, str], ...] = ()
    affinity: tuple[Term, ...] | None = None
    topology_level: str = ""  # a topology label key of the pool, e.g. "wanka.io/rack"
    topology_mode: TopologyMode = "Preferred"
    created: float = 0.0  # seconds since the epoch of the injected clock
    # Running gangs only: when they started and last wrote a checkpoint.
    started: float | None = None
    last_checkpoint: float | None = None
    # Upper bound on run time in seconds, if the owner promised one (used by backfill).
    duration_bound: float | None = None

    def __post_init__(self) -> None:
        forms = sum(1 for f in (self.gpus > 0, self.gpu_milli > 0, bool(self.mig_profile)) if f)
        if forms > 1:
            raise InvalidRequest(
                f"{self.owner}: ask for gpus, gpu_milli or mig_profile, not several"
            )
        if self.replicas < 1:
            raise InvalidRequest(f"{self.owner}: replicas must be at least 1")
        if self.min_available is not None and not 1 <= self.min_available <= self.replicas:
            raise InvalidRequest(f"{self.owner}: min_available must be within 1..replicas")
        if self.gpu_milli < 0 or self.gpus < 0 or self.cpu_milli < 0 or self.memory_mib < 0:
            raise InvalidRequest(f"{self.owner}: resource amounts must not be negative")
        if self.gpu_milli >= WHOLE and self.gpu_milli % WHOLE:
            raise InvalidRequest(
                f"{self.owner}: gpu_milli above one device must be whole devices (use gpus)"
            )
        if self.mig_profile:
            try:
                mig_profile_slices(self.mig_profile)
            except ValueError as exc:
                raise InvalidRequest(str(exc)) from None
            mig_profile_memory_mib(self.mig_profile)

    # --- node constraints ----------------------------------------------------------------
    @property
    def selective(self) -> bool:
        """Whether a node selector or required affinity narrows the nodes."""
        return bool(self.node_selector) or self.affinity is not None

    def refusal(self, node: Node) -> str | None:
        """Why `node` is not for this request by its taints or labels ("taint", "affinity")."""
        if node.taints and untolerated(self.tolerations, node.taints) is not None:
            return "taint"
        if self.selective and not selects(self.node_selector, self.affinity, node.name, node.labels):
            return "affinity"
        return None

    # --- derived shape -------------------------------------------------------------------
    @property
    def whole_gpus(self) -> int:
        """Whole devices per replica (a gpu_milli that is a multiple of 1000 counts too)."""
        if self.gpus:
            return self.gpus
        return self.gpu_milli // WHOLE if self.gpu_milli >= WHOLE else 0

    @property
    def share_milli(self) -> int:
        """Milli-GPU of ONE device per replica for fractional and MIG forms, else 0."""
        if self.mig_profile:
            return mig_share_milli(self.mig_profile)
        return self.gpu_milli if 0 < self.gpu_milli < WHOLE else 0

    @property
    def share_memory_mib(self) -> int:
        if self.mig_profile:
            return mig_profile_memory_mib(self.mig_profile)
        return self.gpu_memory_mib if self.share_milli else 0

    @property
    def is_fractional(self) -> bool:
        return self.share_milli > 0

    @property
    def needed(self) -> int:
        """Replicas that must be placed for the gang to start."""
        return self.min_available if self.min_available is not None else self.replicas

    @property
    def milli_per_replica(self) -> int:
        """GPU use of one replica in milli-GPU: whole devices x 1000, or the share."""
        return self.whole_gpus * WHOLE + self.share_milli

    @property
    def total_milli(self) -> int:
        """GPU-equivalents of the whole gang in milli-GPU (a 0.25 slice counts 250)."""
        return self.milli_per_replica * self.replicas

    @property
    def gpu_equivalents(self) -> float:
        return self.total_milli / WHOLE

    def work_lost_seconds(self, now: float) -> float:
        """GPU-seconds lost if stopped now: time since the last checkpoint (or start) x size."""
        since = self.last_checkpoint if self.last_checkpoint is not None else self.started
        if since is None:
            return 0.0
        return max(0.0, now - since) * self.gpu_equivalents

    def expected_end(self) -> float:
        """When a running gang ends at the latest, or +inf when it gave no duration bound."""
        if self.started is None or self.duration_bound is None:
            return math.inf
        return self.started + self.duration_bound

    def describe(self) -> str:
        """A short human shape such as "16 x 8 GPU" or "1 x 250m GPU"."""
        if self.whole_gpus:
            return f"{self.replicas} x {self.whole_gpus} GPU"
        if self.mig_profile:
            return f"{self.replicas} x MIG {self.mig_profile}"
        if self.share_milli:
            return f"{self.replicas} x {self.share_milli}m GPU"
        return f"{self.replicas} x CPU-only"
