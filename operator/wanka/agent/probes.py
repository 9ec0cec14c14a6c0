"""The probe interface the agent reads device faults through, and the fault vocabulary."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Protocol

# Fault reasons: PascalCase, so they read well as condition reasons, taint values and in a
# pool's `fatalReasons`.
NVML_INIT_FAILED = "NVMLInitFailed"
DEVICE_MISSING = "DeviceMissing"
GPU_LOST = "GPULost"
ECC_UNCORRECTABLE = "EccUncorrectable"
RETIRED_PAGES_PENDING = "RetiredPagesPending"
ROW_REMAP_FAILURE = "RowRemapFailure"
TEMPERATURE_HIGH = "TemperatureHigh"
POWER_OVER_LIMIT = "PowerOverLimit"
NVLINK_DOWN = "NVLinkDown"
PROBE_FAILED = "ProbeFailed"
FAULT_FILE_INVALID = "FaultFileInvalid"

# Faults that say the node as a whole cannot be trusted for GPU work; only these turn the
# GPUHealthy condition False. Other device faults exclude just their device.
NODE_LEVEL_REASONS: frozenset[str] = frozenset(
    {NVML_INIT_FAILED, DEVICE_MISSING, GPU_LOST, PROBE_FAILED, FAULT_FILE_INVALID}
)

# XID classification, from NVIDIA's XID catalog (docs.nvidia.com/deploy/xid-errors) and its
# GPU memory error management guide (docs.nvidia.com/deploy/a100-gpu-mem-error-mgmt):
# fatal: work on the device is lost or corrupt and the GPU needs a reset, reboot or service.
FATAL_XIDS: frozenset[int] = frozenset(
    {
        48,  # double-bit (uncorrectable) ECC error
        64,  # page retirement / row remap could not be recorded
        74,  # NVLink error
        79,  # GPU has fallen off the bus
        95,  # uncontained ECC error: every context on the GPU is affected
    }
)
# recoverable: the device keeps working, but should take no new work until reset or checked.
RECOVERABLE_XIDS: frozenset[int] = frozenset(
    {
        63,  # page retirement / row remap recorded; applied at the next reset
        92,  # high single-bit ECC error rate
        94,  # contained ECC error: only the offending context was killed
    }
)
# Caused by the application, not the hardware (NVIDIA's own device plugin skips these too).
APPLICATION_XIDS: frozenset[int] = frozenset({13, 31, 43, 45, 68, 109})

_XID_REASON = re.compile(r"^XID(\d+)$")


def xid_reason(xid: int) -> str:
    """The fault reason for an XID, e.g. `XID79`."""
    return f"XID{xid}"


def is_fatal_reason(reason: str) -> bool:
    """The agent's own severity view, used only to order faults; the pool's `fatalReasons`
    decides the taint."""
    match = _XID_REASON.match(reason)
    if match:
        return int(match.group(1)) in FATAL_XIDS
    return reason == GPU_LOST


@dataclass(frozen=True, slots=True)
class Fault:
    """One fault: on a device (its NVML index) or, with `device=None`, on the whole node."""

    reason: str
    message: str = ""
    device: int | None = None


@dataclass(frozen=True, slots=True)
class ProbeResult:
    """What one probe saw: how many devices (None if it could not tell) and the faults."""

    count: int | None
    faults: tuple[Fault, ...] = ()


class Probe(Protocol):
    """A source of device health; the agent loop knows nothing else about it."""

    def probe(self) -> ProbeResult:
        """Check every device now."""
        ...

    def wait(self, timeout: float) -> bool:
        """Block at most `timeout` seconds; True if something new arrived (probe again now)."""
        ...

    def close(self) -> None:
        """Release what the probe holds (NVML handles, event sets)."""
        ...
