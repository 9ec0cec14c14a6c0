"""The agent loop: probe the node's devices, summarise, and write the result onto the Node."""

from __future__ import annotations

import json
import logging
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal, Protocol, TextIO

from wanka.agent.probes import (
    DEVICE_MISSING,
    NODE_LEVEL_REASONS,
    PROBE_FAILED,
    Fault,
    Probe,
    ProbeResult,
    is_fatal_reason,
)
from wanka.core.health import (
    GPU_CONDITION,
    GPU_HEALTH_ANNOTATION,
    DeviceHealth,
    encode_device_health,
    format_time,
)

log = logging.getLogger(__name__)

HEALTHY_REASON = "GPUsHealthy"
MAX_CONDITION_MESSAGE = 1024


@dataclass(frozen=True, slots=True)
class Report:
    """What the agent writes: the GPUHealthy condition's fields and per-device health."""

    status: Literal["True", "False"]
    reason: str
    message: str
    devices: dict[int, DeviceHealth] = field(default_factory=dict)

    @property
    def annotation(self) -> str:
        return encode_device_health(self.devices)


class NodeWriter(Protocol):
    """Writes a report onto the agent's own Node."""

    def write(self, report: Report, now: float) -> None:
        """Set the GPUHealthy condition (heartbeat = `now`) and the per-device annotation."""
        ...


def summarize(result: ProbeResult, expected: int | None = None) -> Report:
    """Turn a probe's faults into the condition and the per-device annotation.

    The condition is False only for node-wide faults (NVML down, a device missing or lost):
    a single sick device is excluded on its own through the annotation, and the pool's
    `fatalReasons` still taint the node for it where the platform team wants that.
    """
    faults = list(result.faults)
    if result.count is not None and expected is not None and result.count < expected:
        faults.append(
            Fault(DEVICE_MISSING, f"NVML sees {result.count} of {expected} expected devices")
        )
    faults.sort(key=_severity)

    indexes = set(range(result.count or 0)) | {f.device for f in faults if f.device is not None}
    by_device: dict[int, list[Fault]] = {}
    for f in faults:
        if f.device is not None:
            by_device.setdefault(f.device, []).append(f)
    devices: dict[int, DeviceHealth] = {}
    for index in sorted(indexes):
        found = by_device.get(index)
        if not found:
            devices[index] = DeviceHealth(healthy=True)
            continue
        # The entry names its device already; list every fault only when there are several.
        message = found[0].message if len(found) == 1 else "; ".join(_describe(f) for f in found)
        devices[index] = DeviceHealth(healthy=False, reason=found[0].reason, message=message)

    if not faults:
        return Report("True", HEALTHY_REASON, f"{len(devices)} devices healthy", devices)
    node_wide = [f for f in faults if f.device is None or f.reason in NODE_LEVEL_REASONS]
    parts = [_describe(f) for f in faults if f.device is None]
    sick = [i for i, d in devices.items() if not d.healthy]
    if sick:
        listed = ", ".join(f"{i} ({devices[i].reason})" for i in sick)
        parts.append(f"unhealthy devices: {listed}")
    if devices:
        parts.append(f"{len(devices) - len(sick)} of {len(devices)} devices healthy")
    message = "; ".join(parts)
    if len(message) > MAX_CONDITION_MESSAGE:
        message = message[: MAX_CONDITION_MESSAGE - 3] + "..."
    return Report("False" if node_wide else "True", faults[0].reason, message, devices)


def _severity(f: Fault) -> tuple[int, int, int]:
    # Node-wide first, then fatal, then by device, so the condition's reason is the worst.
    node_wide = f.device is None or f.reason in NODE_LEVEL_REASONS
    return (0 if node_wide else 1, 0 if is_fatal_reason(f.reason) else 1, f.device or 0)


def _describe(f: Fault) -> str:
    return f.reason + (f" ({f.message})" if f.message else "")


class Agent:
    """Probe every `interval` seconds (or sooner on an XID event) and write the report."""

    def __init__(
        self,
        probe: Probe,
        writer: NodeWriter,
        *,
        interval: float = 30.0,
        expected_devices: int | None = None,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._probe = probe
        self._writer = writer
        self._interval = interval
        self._expected_flag = expected_devices
        self._most_seen: int | None = None
        self._clock = clock
        self._monotonic = monotonic
        self._last: Report | None = None
        self._last_write: float | None = None

    @property
    def expected_devices(self) -> int | None:
        """The flag if given, else the most devices seen, so a device that vanishes counts."""
        return self._expected_flag if self._expected_flag is not None else self._most_seen

    def run_once(self) -> Report:
        """Probe, summarise and write (unless nothing changed and no heartbeat is due)."""
        try:
            result = self._probe.probe()
        except Exception as err:  # a probe bug must show on the node, not kill the agent
            log.exception("probe failed")
            result = ProbeResult(None, (Fault(PROBE_FAILED, f"{type(err).__name__}: {err}"),))
        if result.count is not None:
            self._most_seen = max(self._most_seen or 0, result.count)
        report = summarize(result, self.expected_devices)
        started = self._monotonic()
        due = self._last_write is None or started - self._last_write >= self._interval
        if report != self._last or due:
            try:
                self._writer.write(report, self._clock())
            except Exception:  # the API may be briefly away; the next round retries
                log.exception("writing node health failed")
                self._last_write = None
                return report
            if report != self._last:
                log.info("GPUHealthy=%s %s: %s", report.status, report.reason, report.message)
            self._last, self._last_write = report, started
        return report

    def run(self, stop: threading.Event) -> None:
        """Loop until `stop` is set; the probe's wait keeps the loop responsive to events."""
        try:
            while not stop.is_set():
                self.run_once()
                deadline = self._monotonic() + self._interval
                while not stop.is_set():
                    left = deadline - self._monotonic()
                    if left <= 0 or self._probe.wait(min(left, 1.0)):
                        break
        finally:
            self._probe.close()


class PrintWriter:
    """A `NodeWriter` for --dry-run: one JSON line per write on stdout."""

    def __init__(self, out: TextIO | None = None) -> None:
        self._out = out

    def write(self, report: Report, now: float) -> None:
        line = {
            "condition": {
                "type": GPU_CONDITION,
                "status": report.status,
                "reason": report.reason,
                "message": report.message,
                "lastHeartbeatTime": format_time(now),
            },
            "annotations": {GPU_HEALTH_ANNOTATION: report.annotation},
        }
        out = self._out or sys.stdout  # looked up late so redirected stdout is honoured
        out.write(json.dumps(line, sort_keys=True) + "\n")
        out.flush()
