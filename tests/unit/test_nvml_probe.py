"""NVML probe error paths against a fake `pynvml` module (no GPU, no nvidia-ml-py needed)."""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import pytest

from wanka.agent.agent import summarize
from wanka.agent.nvml_probe import NvmlProbe
from wanka.agent.probes import ProbeResult


class FakeNVMLError(Exception):
    """Like pynvml.NVMLError: carries the NVML return code in `value`."""

    def __init__(self, value: int) -> None:
        super().__init__(value)
        self.value = value

    def __str__(self) -> str:
        return f"NVML error {self.value}"


@dataclass
class FakeGpu:
    index: int
    lost: bool = False
    lost_on: str = ""  # lose the GPU only when this query runs
    ecc_uncorrected: int | None = 0  # None: ECC not supported
    pages_pending: bool = False
    remapped: tuple[int, int, int, int] = (0, 0, 0, 0)
    temperature: int = 55
    slowdown: int = 90
    power_mw: int = 400_000
    power_limit_mw: int = 700_000
    links: int = 4
    links_down: set[int] = field(default_factory=set)
    fail_with: dict[str, int] = field(default_factory=dict)  # query name -> error code


class FakeNvml:
    """The subset of pynvml the probe uses, with faults set per device."""

    NVMLError = FakeNVMLError
    NVML_SUCCESS = 0
    NVML_ERROR_INVALID_ARGUMENT = 2
    NVML_ERROR_NOT_SUPPORTED = 3
    NVML_ERROR_DRIVER_NOT_LOADED = 9
    NVML_ERROR_TIMEOUT = 10
    NVML_ERROR_GPU_IS_LOST = 15
    NVML_ERROR_UNKNOWN = 999
    NVML_FEATURE_DISABLED = 0
    NVML_FEATURE_ENABLED = 1
    NVML_MEMORY_ERROR_TYPE_UNCORRECTED = 1
    NVML_VOLATILE_ECC = 0
    NVML_TEMPERATURE_GPU = 0
    NVML_TEMPERATURE_THRESHOLD_SLOWDOWN = 1
    NVML_NVLINK_MAX_LINKS = 18
    nvmlEventTypeXidCriticalError = 0x8

    def __init__(self, count: int = 8) -> None:
        self.gpus = [FakeGpu(i) for i in range(count)]
        self.init_error: int | None = None
        self.count_error: int | None = None
        self.initialized = False
        self.shutdowns = 0
        self.events: deque[tuple[int | None, int]] = deque()  # (device index, xid)
        self.waits: list[int] = []
        self.registered: list[int] = []
        self.freed = False

    # lifecycle
    def nvmlInit(self) -> None:
        if self.init_error is not None:
            raise FakeNVMLError(self.init_error)
        self.initialized = True

    def nvmlShutdown(self) -> None:
        self.initialized = False
        self.shutdowns += 1

    def nvmlDeviceGetCount(self) -> int:
        assert self.initialized
        if self.count_error is not None:
            raise FakeNVMLError(self.count_error)
        return len(self.gpus)

    def nvmlDeviceGetHandleByIndex(self, index: int) -> FakeGpu:
        gpu = self.gpus[index]
        if gpu.lost:
            raise FakeNVMLError(self.NVML_ERROR_GPU_IS_LOST)
        return gpu

    def nvmlDeviceGetIndex(self, gpu: FakeGpu | None) -> int:
        if gpu is None:
            raise FakeNVMLError(self.NVML_ERROR_INVALID_ARGUMENT)
        return gpu.index

    # queries
    def _check(self, gpu: FakeGpu, name: str) -> None:
        if gpu.lost or gpu.lost_on == name:
            raise FakeNVMLError(self.NVML_ERROR_GPU_IS_LOST)
        if name in gpu.fail_with:
            raise FakeNVMLError(gpu.fail_with[name])

    def nvmlDeviceGetTotalEccErrors(self, gpu: FakeGpu, kind: int, counter: int) -> int:
        self._check(gpu, "ecc")
        assert (kind, counter) == (1, 0)  # uncorrected, volatile
        if gpu.ecc_uncorrected is None:
            raise FakeNVMLError(self.NVML_ERROR_NOT_SUPPORTED)
        return gpu.ecc_uncorrected

    def nvmlDeviceGetRetiredPagesPendingStatus(self, gpu: FakeGpu) -> int:
        self._check(gpu, "pages")
        return int(gpu.pages_pending)

    def nvmlDeviceGetRemappedRows(self, gpu: FakeGpu) -> tuple[int, int, int, int]:
        self._check(gpu, "remap")
        return gpu.remapped

    def nvmlDeviceGetTemperature(self, gpu: FakeGpu, sensor: int) -> int:
        self._check(gpu, "temperature")
        return gpu.temperature

    def nvmlDeviceGetTemperatureThreshold(self, gpu: FakeGpu, kind: int) -> int:
        self._check(gpu, "threshold")
        assert kind == self.NVML_TEMPERATURE_THRESHOLD_SLOWDOWN
        return gpu.slowdown

    def nvmlDeviceGetPowerUsage(self, gpu: FakeGpu) -> int:
        self._check(gpu, "power")
        return gpu.power_mw

    def nvmlDeviceGetEnforcedPowerLimit(self, gpu: FakeGpu) -> int:
        self._check(gpu, "power")
        return gpu.power_limit_mw

    def nvmlDeviceGetNvLinkState(self, gpu: FakeGpu, link: int) -> int:
        self._check(gpu, "nvlink")
        if link >= gpu.links:
            raise FakeNVMLError(self.NVML_ERROR_INVALID_ARGUMENT)
        return self.NVML_FEATURE_DISABLED if link in gpu.links_down else self.NVML_FEATURE_ENABLED

    # events
    def nvmlEventSetCreate(self) -> str:
        return "event-set"

    def nvmlDeviceRegisterEvents(self, gpu: FakeGpu, types: int, events: str) -> None:
        assert types == self.nvmlEventTypeXidCriticalError and events == "event-set"
        self.registered.append(gpu.index)

    def nvmlEventSetWait(self, events: str, timeout_ms: int) -> Any:
        self.waits.append(timeout_ms)
        if not self.events:
            raise FakeNVMLError(self.NVML_ERROR_TIMEOUT)
        index, xid = self.events.popleft()
        device = self.gpus[index] if index is not None else None
        return SimpleNamespace(
            eventType=self.nvmlEventTypeXidCriticalError, eventData=xid, device=device
        )

    def nvmlEventSetFree(self, events: str) -> None:
        self.freed = True


class Clock:
    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


def reasons(result: ProbeResult) -> list[tuple[str, int | None]]:
    return [(f.reason, f.device) for f in result.faults]


@dataclass
class Case:
    name: str
    setup: Callable[[FakeNvml], None]
    want: list[tuple[str, int | None]]
    want_count: int | None = 8
    options: dict[str, Any] = field(default_factory=dict)


def gpu(i: int, **changes: Any) -> Callable[[FakeNvml], None]:
    def apply(nvml: FakeNvml) -> None:
        for k, v in changes.items():
            setattr(nvml.gpus[i], k, v)

    return apply


def xid(index: int | None, code: int) -> Callable[[FakeNvml], None]:
    def apply(nvml: FakeNvml) -> None:
        nvml.events.append((index, code))

    return apply


def both(*setups: Callable[[FakeNvml], None]) -> Callable[[FakeNvml], None]:
    def apply(nvml: FakeNvml) -> None:
        for setup in setups:
            setup(nvml)

    return apply


def init_fails(nvml: FakeNvml) -> None:
    nvml.init_error = nvml.NVML_ERROR_DRIVER_NOT_LOADED


CASES = [
    Case("all healthy", lambda n: None, []),
    Case("NVML fails to init", init_fails, [("NVMLInitFailed", None)], want_count=None),
    Case("GPU lost when taking its handle", gpu(5, lost=True), [("GPULost", 5)]),
    Case("GPU lost in the middle of the checks", gpu(2, lost_on="temperature"), [("GPULost", 2)]),
    Case("fatal XID", xid(3, 79), [("XID79", 3)]),
    Case("recoverable XID", xid(1, 94), [("XID94", 1)]),
    Case("application XID is ignored", xid(1, 13), []),
    Case("XID ignored by configuration", xid(1, 31), [], options={"ignored_xids": [31]}),
    Case("unlisted XID counts as recoverable", xid(0, 119), [("XID119", 0)]),
    Case("XID on a device NVML cannot name is node-wide", xid(None, 48), [("XID48", None)]),
    Case("uncorrectable ECC", gpu(4, ecc_uncorrected=2), [("EccUncorrectable", 4)]),
    Case("ECC not supported is not a fault", gpu(4, ecc_uncorrected=None), []),
    Case("retired pages pending", gpu(6, pages_pending=True), [("RetiredPagesPending", 6)]),
    Case("row remap failure", gpu(7, remapped=(1, 1, 0, 1)), [("RowRemapFailure", 7)]),
    Case("a pending row remap alone is not a fault", gpu(7, remapped=(1, 0, 1, 0)), []),
    Case("temperature at the slowdown threshold", gpu(0, temperature=90), [("TemperatureHigh", 0)]),
    Case(
        "temperature limit from the flag",
        gpu(0, temperature=80),
        [("TemperatureHigh", 0)],
        options={"max_temperature": 80},
    ),
    Case("power over the enforced limit", gpu(1, power_mw=800_000), [("PowerOverLimit", 1)]),
    Case("power within the margin", gpu(1, power_mw=730_000), []),
    Case(
        "fewer NVLinks up than expected",
        gpu(2, links=2),
        [("NVLinkDown", 2)],
        options={"expected_nvlinks": 4},
    ),
    Case("a failing query is logged, not a fault", gpu(3, fail_with={"ecc": 999}), []),
    Case(
        "several faults on several devices",
        both(gpu(1, ecc_uncorrected=1), gpu(1, temperature=95), xid(6, 79)),
        [("EccUncorrectable", 1), ("TemperatureHigh", 1), ("XID79", 6)],
    ),
]


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_probe(case: Case) -> None:
    nvml = FakeNvml()
    case.setup(nvml)
    probe = NvmlProbe(nvml, clock=Clock(), **case.options)
    got = probe.probe()
    assert reasons(got) == case.want
    assert got.count == case.want_count


def test_init_failure_turns_the_condition_false_and_init_is_retried() -> None:
    nvml = FakeNvml()
    nvml.init_error = nvml.NVML_ERROR_DRIVER_NOT_LOADED
    probe = NvmlProbe(nvml, clock=Clock())
    report = summarize(probe.probe(), expected=8)
    assert (report.status, report.reason) == ("False", "NVMLInitFailed")
    assert "nvmlInit" in report.message
    nvml.init_error = None
    assert reasons(probe.probe()) == []
    assert nvml.registered == list(range(8))


def test_lost_gpu_turns_the_condition_false() -> None:
    nvml = FakeNvml()
    nvml.gpus[5].lost = True
    report = summarize(NvmlProbe(nvml, clock=Clock()).probe(), expected=8)
    assert (report.status, report.reason) == ("False", "GPULost")
    assert not report.devices[5].healthy
    assert report.devices[4].healthy


def test_driver_vanishing_after_init_reinitialises() -> None:
    nvml = FakeNvml()
    probe = NvmlProbe(nvml, clock=Clock())
    probe.probe()
    nvml.count_error = nvml.NVML_ERROR_UNKNOWN
    got = probe.probe()
    assert reasons(got) == [("NVMLInitFailed", None)] and got.count is None
    assert nvml.shutdowns == 1 and nvml.freed
    nvml.count_error = None
    assert probe.probe().count == 8


def test_fatal_xid_holds_and_recoverable_xid_expires() -> None:
    nvml = FakeNvml()
    clock = Clock()
    probe = NvmlProbe(nvml, clock=clock, xid_hold_seconds=600)
    nvml.events.extend([(3, 79), (1, 94)])
    assert reasons(probe.probe()) == [("XID94", 1), ("XID79", 3)]
    clock.now += 599
    assert reasons(probe.probe()) == [("XID94", 1), ("XID79", 3)]
    clock.now += 1
    assert reasons(probe.probe()) == [("XID79", 3)]
    clock.now += 100_000
    assert reasons(probe.probe()) == [("XID79", 3)]


def test_a_repeated_recoverable_xid_restarts_its_hold() -> None:
    nvml = FakeNvml()
    clock = Clock()
    probe = NvmlProbe(nvml, clock=clock, xid_hold_seconds=600)
    nvml.events.append((1, 94))
    probe.probe()
    clock.now += 500
    nvml.events.append((1, 94))
    probe.probe()
    clock.now += 500
    assert reasons(probe.probe()) == [("XID94", 1)]


def test_nvlink_that_was_up_and_went_down() -> None:
    nvml = FakeNvml()
    probe = NvmlProbe(nvml, clock=Clock())
    assert reasons(probe.probe()) == []
    nvml.gpus[2].links_down = {1, 3}
    got = probe.probe()
    assert reasons(got) == [("NVLinkDown", 2)]
    assert "NVLink 1,3 down" in got.faults[0].message


def test_wait_wakes_on_an_xid_and_keeps_its_timeout_short() -> None:
    nvml = FakeNvml()
    probe = NvmlProbe(nvml, clock=Clock())
    probe.probe()
    assert probe.wait(30.0) is False
    assert nvml.waits[-1] == 1000  # never blocks longer than a second
    nvml.events.append((4, 79))
    assert probe.wait(0.25) is True
    assert nvml.waits[-2:] == [250, 0]  # the first wait may block, the rest only drain
    assert reasons(probe.probe()) == [("XID79", 4)]


def test_wait_without_events_sleeps_the_timeout() -> None:
    nvml = FakeNvml()
    nvml.init_error = nvml.NVML_ERROR_DRIVER_NOT_LOADED
    slept: list[float] = []
    probe = NvmlProbe(nvml, clock=Clock(), sleep=slept.append)
    probe.probe()
    assert probe.wait(2.0) is False
    assert slept == [2.0]


def test_close_frees_the_event_set_and_shuts_nvml_down() -> None:
    nvml = FakeNvml()
    probe = NvmlProbe(nvml, clock=Clock())
    probe.probe()
    probe.close()
    assert nvml.freed and nvml.shutdowns == 1 and not nvml.initialized
    probe.close()  # closing twice is harmless
    assert nvml.shutdowns == 1


def test_a_missing_device_turns_the_condition_false() -> None:
    nvml = FakeNvml(count=7)
    report = summarize(NvmlProbe(nvml, clock=Clock()).probe(), expected=8)
    assert (report.status, report.reason) == ("False", "DeviceMissing")
    assert "7 of 8" in report.message
