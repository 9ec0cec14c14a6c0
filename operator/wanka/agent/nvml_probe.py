"""Probe NVIDIA GPUs through NVML: XID events, ECC, memory repair, thermals, power, NVLink."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from typing import Any

from wanka.agent.probes import (
    APPLICATION_XIDS,
    ECC_UNCORRECTABLE,
    FATAL_XIDS,
    GPU_LOST,
    NVLINK_DOWN,
    NVML_INIT_FAILED,
    POWER_OVER_LIMIT,
    RETIRED_PAGES_PENDING,
    ROW_REMAP_FAILURE,
    TEMPERATURE_HIGH,
    Fault,
    ProbeResult,
    xid_reason,
)

log = logging.getLogger(__name__)

# nvidia-ml-py's `pynvml` module, or a fake with the same names in tests. Typed Any because the
# real module ships no type hints.
Nvml = Any

_WAIT_SLICE_MS = 1000  # longest single nvmlEventSetWait, so the agent can stop within a second


def load_nvml() -> Nvml:
    """Import `pynvml` (from the `nvidia-ml-py` package) only when the NVML probe is chosen."""
    import pynvml  # type: ignore[import-not-found,unused-ignore]

    return pynvml


class _Lost(Exception):
    """NVML said the GPU is lost (fallen off the bus)."""


class NvmlProbe:
    """A `Probe` over NVML; the module is injected so tests can pass a fake."""

    def __init__(
        self,
        nvml: Nvml,
        *,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], None] = time.sleep,
        xid_hold_seconds: float = 900.0,
        ignored_xids: Iterable[int] = APPLICATION_XIDS,
        max_temperature: int | None = None,
        power_margin: float = 0.05,
        expected_nvlinks: int | None = None,
    ) -> None:
        self._nvml = nvml
        self._clock = clock
        self._sleep = sleep
        self._xid_hold = xid_hold_seconds
        self._ignored = frozenset(ignored_xids)
        self._max_temperature = max_temperature
        self._power_margin = power_margin
        self._expected_nvlinks = expected_nvlinks
        self._initialized = False
        self._events: Any = None
        # (device index or None if unknown, xid) -> time last seen
        self._xids: dict[tuple[int | None, int], float] = {}
        # device index -> NVLink indexes ever seen up; a link that was up and is not is down
        self._links_seen: dict[int, set[int]] = {}

    # -- Probe -----------------------------------------------------------------------------

    def probe(self) -> ProbeResult:
        nvml = self._nvml
        if not self._initialized:
            try:
                nvml.nvmlInit()
            except nvml.NVMLError as err:
                return ProbeResult(None, (Fault(NVML_INIT_FAILED, f"nvmlInit: {err}"),))
            self._initialized = True
            self._register_events()
        try:
            count = int(nvml.nvmlDeviceGetCount())
        except nvml.NVMLError as err:
            # The driver went away under us; start over on the next probe.
            self.close()
            return ProbeResult(None, (Fault(NVML_INIT_FAILED, f"nvmlDeviceGetCount: {err}"),))
        self._drain(0)
        faults: list[Fault] = []
        for index in range(count):
            faults.extend(self._probe_device(index))
        faults.extend(self._xid_faults())
        return ProbeResult(count, tuple(faults))

    def wait(self, timeout: float) -> bool:
        if self._events is None:
            self._sleep(max(0.0, timeout))
            return False
        return self._drain(max(0, min(_WAIT_SLICE_MS, int(timeout * 1000))))

    def close(self) -> None:
        nvml = self._nvml
        if self._events is not None:
            try:
                nvml.nvmlEventSetFree(self._events)
            except nvml.NVMLError as err:
                log.debug("nvmlEventSetFree: %s", err)
            self._events = None
        if self._initialized:
            try:
                nvml.nvmlShutdown()
            except nvml.NVMLError as err:
                log.debug("nvmlShutdown: %s", err)
            self._initialized = False

    # -- device checks ---------------------------------------------------------------------

    def _probe_device(self, index: int) -> list[Fault]:
        nvml = self._nvml
        try:
            handle = self._query(nvml.nvmlDeviceGetHandleByIndex, index)
            if handle is None:
                return []
            faults: list[Fault] = []
            for check in (self._ecc, self._memory_repair, self._thermal, self._power):
                faults.extend(check(handle, index))
            faults.extend(self._nvlink(handle, index))
            return faults
        except _Lost:
            return [
                Fault(
                    GPU_LOST,
                    "NVML_ERROR_GPU_IS_LOST: the GPU has fallen off the bus",
                    index,
                )
            ]

    def _ecc(self, handle: Any, index: int) -> list[Fault]:
        nvml = self._nvml
        errors = self._query(
            nvml.nvmlDeviceGetTotalEccErrors,
            handle,
            nvml.NVML_MEMORY_ERROR_TYPE_UNCORRECTED,
            nvml.NVML_VOLATILE_ECC,
        )
        if errors:
            return [
                Fault(
                    ECC_UNCORRECTABLE,
                    f"{int(errors)} uncorrectable ECC errors since the last driver load",
                    index,
                )
            ]
        return []

    def _memory_repair(self, handle: Any, index: int) -> list[Fault]:
        nvml = self._nvml
        faults: list[Fault] = []
        # Pre-Ampere: a page waiting for retirement may still be handed out until a reset.
        pending = self._query(nvml.nvmlDeviceGetRetiredPagesPendingStatus, handle)
        if pending == nvml.NVML_FEATURE_ENABLED:
            faults.append(
                Fault(RETIRED_PAGES_PENDING, "retired pages pending; reset the GPU", index)
            )
        # Ampere and later: a pending remap is harmless (error containment covers it), so only
        # a failed remap is a fault.
        rows = self._query(nvml.nvmlDeviceGetRemappedRows, handle)
        if rows is not None and len(rows) >= 4 and rows[3]:
            faults.append(
                Fault(ROW_REMAP_FAILURE, "a row remapping failed; the GPU needs service", index)
            )
        return faults

    def _thermal(self, handle: Any, index: int) -> list[Fault]:
        nvml = self._nvml
        temp = self._query(nvml.nvmlDeviceGetTemperature, handle, nvml.NVML_TEMPERATURE_GPU)
        if temp is None:
            return []
        limit = self._max_temperature
        if limit is None:
            limit = self._query(
                nvml.nvmlDeviceGetTemperatureThreshold,
                handle,
                nvml.NVML_TEMPERATURE_THRESHOLD_SLOWDOWN,
            )
        if limit and int(temp) >= int(limit):
            return [Fault(TEMPERATURE_HIGH, f"{int(temp)} C, limit {int(limit)} C", index)]
        return []

    def _power(self, handle: Any, index: int) -> list[Fault]:
        nvml = self._nvml
        usage = self._query(nvml.nvmlDeviceGetPowerUsage, handle)
        limit = self._query(nvml.nvmlDeviceGetEnforcedPowerLimit, handle)
        # The limit is enforced, so drawing clearly above it means the regulation failed.
        if usage is not None and limit and int(usage) > int(limit) * (1 + self._power_margin):
            return [
                Fault(
                    POWER_OVER_LIMIT,
                    f"{int(usage) // 1000} W, enforced limit {int(limit) // 1000} W",
                    index,
                )
            ]
        return []

    def _nvlink(self, handle: Any, index: int) -> list[Fault]:
        nvml = self._nvml
        up: set[int] = set()
        for link in range(int(nvml.NVML_NVLINK_MAX_LINKS)):
            state = self._query(nvml.nvmlDeviceGetNvLinkState, handle, link)
            if state == nvml.NVML_FEATURE_ENABLED:
                up.add(link)
        seen = self._links_seen.setdefault(index, set())
        seen |= up
        expected = set(seen)
        if self._expected_nvlinks is not None:
            expected |= set(range(self._expected_nvlinks))
        down = sorted(expected - up)
        if down:
            links = ",".join(str(x) for x in down)
            return [Fault(NVLINK_DOWN, f"NVLink {links} down ({len(up)} up)", index)]
        return []

    def _query(self, fn: Callable[..., Any], *args: Any) -> Any:
        """Call NVML; None where the device does not support the query, `_Lost` if gone."""
        nvml = self._nvml
        try:
            return fn(*args)
        except nvml.NVMLError as err:
            code = getattr(err, "value", None)
            if code == nvml.NVML_ERROR_GPU_IS_LOST:
                raise _Lost from err
            if code not in (nvml.NVML_ERROR_NOT_SUPPORTED, nvml.NVML_ERROR_INVALID_ARGUMENT):
                # One failed query is not evidence of a fault; say so and check the rest.
                log.warning("%s%r: %s", getattr(fn, "__name__", "nvml"), args[1:], err)
            return None

    # -- XID events ------------------------------------------------------------------------

    def _register_events(self) -> None:
        nvml = self._nvml
        try:
            events = nvml.nvmlEventSetCreate()
        except nvml.NVMLError as err:
            log.warning("no XID events: nvmlEventSetCreate: %s", err)
            return
        registered = 0
        for index in range(int(nvml.nvmlDeviceGetCount())):
            try:
                handle = nvml.nvmlDeviceGetHandleByIndex(index)
                nvml.nvmlDeviceRegisterEvents(handle, nvml.nvmlEventTypeXidCriticalError, events)
                registered += 1
            except nvml.NVMLError as err:
                log.warning("no XID events for device %d: %s", index, err)
        if registered:
            self._events = events
        else:
            nvml.nvmlEventSetFree(events)

    def _drain(self, timeout_ms: int) -> bool:
        """Collect pending XID events, waiting at most `timeout_ms` for the first one."""
        nvml = self._nvml
        got = False
        while self._events is not None:
            try:
                data = nvml.nvmlEventSetWait(self._events, timeout_ms)
            except nvml.NVMLError as err:
                if getattr(err, "value", None) != nvml.NVML_ERROR_TIMEOUT:
                    log.warning("nvmlEventSetWait: %s", err)
                return got
            timeout_ms = 0  # the rest are already queued
            if not int(data.eventType) & int(nvml.nvmlEventTypeXidCriticalError):
                continue
            xid = int(data.eventData)
            if xid in self._ignored:
                log.info("ignoring XID %d (application error)", xid)
                continue
            self._xids[(self._index_of(data.device), xid)] = self._clock()
            got = True
        return got

    def _index_of(self, handle: Any) -> int | None:
        nvml = self._nvml
        try:
            return int(nvml.nvmlDeviceGetIndex(handle))
        except nvml.NVMLError:
            return None

    def _xid_faults(self) -> list[Fault]:
        # Fatal XIDs hold until the agent restarts (a reset or reboot restarts it); others
        # expire `xid_hold_seconds` after their last occurrence.
        now = self._clock()
        faults: list[Fault] = []
        for (index, xid), seen in sorted(self._xids.items(), key=_xid_order):
            fatal = xid in FATAL_XIDS
            if not fatal and now - seen >= self._xid_hold:
                del self._xids[(index, xid)]
                continue
            kind = "fatal" if fatal else "recoverable"
            where = "" if index is not None else " on an unknown device"
            faults.append(Fault(xid_reason(xid), f"{kind} XID {xid}{where}", index))
        return faults


def _xid_order(item: tuple[tuple[int | None, int], float]) -> tuple[int, int]:
    (index, xid), _ = item
    return (-1 if index is None else index, xid)
