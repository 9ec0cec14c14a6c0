"""The agent loop with the file probe and a fake writer, and the agent -> core round trip."""

from __future__ import annotations

import argparse
import json
import os
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from wanka.agent import cli
from wanka.agent.agent import Agent, Report, summarize
from wanka.agent.file_probe import FileProbe, parse_fault_file
from wanka.agent.probes import Fault, ProbeResult
from wanka.core.health import (
    GPU_CONDITION,
    GPU_HEALTH_ANNOTATION,
    DeviceHealth,
    HealthPolicy,
    Taint,
    decode_device_health,
    format_time,
    observe_node,
    step,
)

T0 = 1_800_000_000.0


class FakeWriter:
    """Applies writes to a raw Node dict the way the API server merges them."""

    def __init__(self) -> None:
        self.writes: list[tuple[Report, float]] = []
        self.fail_next = 0
        self.node: dict[str, Any] = {
            "metadata": {"name": "gpu-1", "annotations": {"other": "kept"}},
            "status": {"conditions": [{"type": "Ready", "status": "True"}]},
        }

    def write(self, report: Report, now: float) -> None:
        if self.fail_next:
            self.fail_next -= 1
            raise ConnectionError("apiserver away")
        self.writes.append((report, now))
        self.node["metadata"]["annotations"][GPU_HEALTH_ANNOTATION] = report.annotation
        conditions = [c for c in self.node["status"]["conditions"] if c["type"] != GPU_CONDITION]
        conditions.append(
            {
                "type": GPU_CONDITION,
                "status": report.status,
                "reason": report.reason,
                "message": report.message,
                "lastHeartbeatTime": format_time(now),
            }
        )
        self.node["status"]["conditions"] = conditions

    @property
    def condition(self) -> dict[str, Any]:
        found: list[dict[str, Any]] = [
            c for c in self.node["status"]["conditions"] if c["type"] == GPU_CONDITION
        ]
        assert len(found) == 1
        return found[0]

    @property
    def devices(self) -> dict[int, DeviceHealth]:
        return decode_device_health(self.node["metadata"]["annotations"][GPU_HEALTH_ANNOTATION])


@dataclass
class Clocks:
    wall: float = T0
    mono: float = 100.0

    def advance(self, seconds: float) -> None:
        self.wall += seconds
        self.mono += seconds


def make_agent(
    path: Path, writer: FakeWriter, clocks: Clocks, expected: int | None = None
) -> Agent:
    return Agent(
        FileProbe(path, sleep=lambda s: None),
        writer,
        interval=30,
        expected_devices=expected,
        clock=lambda: clocks.wall,
        monotonic=lambda: clocks.mono,
    )


def write_faults(path: Path, content: Any) -> None:
    path.write_text(content if isinstance(content, str) else json.dumps(content))


@dataclass
class Case:
    name: str
    fault_file: Any  # JSON-able content, a raw string, or None for no file
    want_status: str
    want_reason: str
    want_unhealthy: dict[int, str] = field(default_factory=dict)
    want_devices: int = 8
    expected: int | None = None
    want_in_message: str = ""


CASES = [
    Case("all healthy", {"count": 8}, "True", "GPUsHealthy", want_in_message="8 devices healthy"),
    Case(
        "one device fatal: condition stays True, the device is named",
        {"count": 8, "devices": {"3": {"reason": "XID79", "message": "fell off the bus"}}},
        "True",
        "XID79",
        {3: "XID79"},
        want_in_message="unhealthy devices: 3 (XID79); 7 of 8 devices healthy",
    ),
    Case(
        "the worst device fault names the condition",
        {"count": 8, "devices": {"1": {"reason": "EccUncorrectable"}, "6": {"reason": "XID48"}}},
        "True",
        "XID48",
        {1: "EccUncorrectable", 6: "XID48"},
    ),
    Case(
        "a device entry marked healthy is no fault",
        {"count": 8, "devices": {"2": {"healthy": True, "reason": "XID79"}}},
        "True",
        "GPUsHealthy",
    ),
    Case(
        "a lost GPU is node-wide",
        {"count": 8, "devices": {"5": {"reason": "GPULost"}}},
        "False",
        "GPULost",
        {5: "GPULost"},
    ),
    Case(
        "a node-wide fault",
        {"count": 0, "node": [{"reason": "NVMLInitFailed", "message": "driver not loaded"}]},
        "False",
        "NVMLInitFailed",
        want_devices=0,
        want_in_message="NVMLInitFailed (driver not loaded)",
    ),
    Case(
        "fewer devices than expected",
        {"count": 7},
        "False",
        "DeviceMissing",
        want_devices=7,
        expected=8,
        want_in_message="7 of 8",
    ),
    Case(
        "no fault file: nothing known, nothing wrong", None, "True", "GPUsHealthy", want_devices=0
    ),
    Case("a broken fault file is reported", "{oops", "False", "FaultFileInvalid", want_devices=0),
    Case(
        "a fault file with a bad count is reported",
        {"count": "eight"},
        "False",
        "FaultFileInvalid",
        want_devices=0,
    ),
]


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_agent_writes_condition_and_annotation(case: Case, tmp_path: Path) -> None:
    path = tmp_path / "faults.json"
    if case.fault_file is not None:
        write_faults(path, case.fault_file)
    writer, clocks = FakeWriter(), Clocks()
    make_agent(path, writer, clocks, case.expected).run_once()

    assert writer.condition["status"] == case.want_status
    assert writer.condition["reason"] == case.want_reason
    assert case.want_in_message in writer.condition["message"]
    assert writer.condition["lastHeartbeatTime"] == format_time(T0)
    devices = writer.devices
    assert len(devices) == case.want_devices
    assert {i: d.reason for i, d in devices.items() if not d.healthy} == case.want_unhealthy
    assert writer.node["metadata"]["annotations"]["other"] == "kept"
    assert [c["type"] for c in writer.node["status"]["conditions"]] == ["Ready", GPU_CONDITION]


def test_heartbeat_is_refreshed_every_interval_but_not_more(tmp_path: Path) -> None:
    path = tmp_path / "faults.json"
    write_faults(path, {"count": 8})
    writer, clocks = FakeWriter(), Clocks()
    agent = make_agent(path, writer, clocks)
    agent.run_once()
    clocks.advance(10)
    agent.run_once()  # same report, heartbeat not due: no write
    assert len(writer.writes) == 1
    clocks.advance(20)
    agent.run_once()
    assert [now for _, now in writer.writes] == [T0, T0 + 30]
    assert writer.condition["lastHeartbeatTime"] == format_time(T0 + 30)


def test_a_change_is_written_at_once(tmp_path: Path) -> None:
    path = tmp_path / "faults.json"
    write_faults(path, {"count": 8})
    writer, clocks = FakeWriter(), Clocks()
    agent = make_agent(path, writer, clocks)
    agent.run_once()
    write_faults(path, {"count": 8, "devices": {"0": {"reason": "XID79"}}})
    clocks.advance(1)
    agent.run_once()
    assert len(writer.writes) == 2
    assert writer.devices[0] == DeviceHealth(False, "XID79")


def test_a_failed_write_is_retried_next_round(tmp_path: Path) -> None:
    path = tmp_path / "faults.json"
    write_faults(path, {"count": 8})
    writer, clocks = FakeWriter(), Clocks()
    writer.fail_next = 1
    agent = make_agent(path, writer, clocks)
    agent.run_once()
    assert writer.writes == []
    clocks.advance(1)
    agent.run_once()
    assert len(writer.writes) == 1


def test_a_device_that_vanishes_is_missing_without_the_flag(tmp_path: Path) -> None:
    path = tmp_path / "faults.json"
    write_faults(path, {"count": 8})
    writer, clocks = FakeWriter(), Clocks()
    agent = make_agent(path, writer, clocks)
    agent.run_once()
    write_faults(path, {"count": 7})
    agent.run_once()
    assert (writer.condition["status"], writer.condition["reason"]) == ("False", "DeviceMissing")
    assert agent.expected_devices == 8


class ExplodingProbe:
    def probe(self) -> ProbeResult:
        raise RuntimeError("bug in the probe")

    def wait(self, timeout: float) -> bool:
        return False

    def close(self) -> None:
        return None


def test_a_crashing_probe_is_reported_not_fatal_to_the_agent() -> None:
    writer = FakeWriter()
    report = Agent(ExplodingProbe(), writer, clock=lambda: T0).run_once()
    assert (report.status, report.reason) == ("False", "ProbeFailed")
    assert "RuntimeError: bug in the probe" in writer.condition["message"]


class ScriptedProbe:
    """Reports from a list; `wait` advances the fake clock and stops the loop at the end."""

    def __init__(self, results: list[ProbeResult], clocks: Clocks, stop: threading.Event):
        self.results = results
        self.clocks = clocks
        self.stop = stop
        self.probes = 0
        self.waits: list[float] = []
        self.closed = False

    def probe(self) -> ProbeResult:
        self.probes += 1
        return self.results[min(self.probes, len(self.results)) - 1]

    def wait(self, timeout: float) -> bool:
        self.waits.append(timeout)
        self.clocks.advance(timeout)
        if self.probes >= len(self.results):
            self.stop.set()
        return False

    def close(self) -> None:
        self.closed = True


def test_run_loops_every_interval_in_short_waits_and_closes_the_probe() -> None:
    clocks, stop, writer = Clocks(), threading.Event(), FakeWriter()
    results = [ProbeResult(2), ProbeResult(2, (Fault("XID79", "", 1),))]
    probe = ScriptedProbe(results, clocks, stop)
    Agent(probe, writer, interval=3, clock=lambda: clocks.wall, monotonic=lambda: clocks.mono).run(
        stop
    )
    assert probe.probes == 2
    assert probe.waits[:3] == [1.0, 1.0, 1.0]  # one interval, sliced so stop is seen quickly
    assert probe.closed
    assert writer.devices[1] == DeviceHealth(False, "XID79")


def test_summarize_clips_a_huge_message() -> None:
    faults = tuple(Fault("EccUncorrectable", "x" * 200, i) for i in range(64))
    report = summarize(ProbeResult(64, faults))
    assert len(report.message) <= 1024


def test_fault_file_rejects_bad_device_keys() -> None:
    with pytest.raises(ValueError):
        parse_fault_file('{"devices": {"-1": {"reason": "XID79"}}}')
    with pytest.raises(ValueError):
        parse_fault_file('{"devices": {"zero": {"reason": "XID79"}}}')


def test_file_probe_wait_wakes_when_the_file_changes(tmp_path: Path) -> None:
    path = tmp_path / "faults.json"
    write_faults(path, {"count": 1})
    sleeps: list[float] = []

    def sleep(seconds: float) -> None:
        sleeps.append(seconds)
        if len(sleeps) == 2:
            write_faults(path, {"count": 1, "devices": {"0": {"reason": "XID79"}}})
            stat = path.stat()
            os.utime(path, (stat.st_atime, stat.st_mtime + 5))

    probe = FileProbe(path, sleep=sleep, poll_seconds=0.5)
    probe.probe()
    assert probe.wait(10) is True
    assert sleeps == [0.5, 0.5]
    assert probe.wait(1) is True  # still news until the agent probes it
    probe.probe()
    assert probe.wait(1) is False


def test_agent_output_drives_the_core_state_machine(tmp_path: Path) -> None:
    """The annotation and condition the agent writes are exactly what the core reads."""
    path = tmp_path / "faults.json"
    policy = HealthPolicy(fatal_reasons=frozenset({"XID79"}), recovery_stable_seconds=60)
    writer, clocks = FakeWriter(), Clocks()
    agent = make_agent(path, writer, clocks)

    write_faults(path, {"count": 8, "devices": {"2": {"reason": "EccUncorrectable"}}})
    agent.run_once()
    d = step(None, observe_node(writer.node), policy, clocks.wall)
    assert (d.state, d.taint, d.excluded_devices) == ("Healthy", None, frozenset({2}))

    write_faults(path, {"count": 8, "devices": {"2": {"reason": "XID79"}}})
    clocks.advance(5)
    agent.run_once()
    d = step(d.record, observe_node(writer.node), policy, clocks.wall)
    assert (d.state, d.taint, d.excluded_devices) == (
        "Sick",
        Taint("XID79", "NoExecute"),
        frozenset({2}),
    )

    write_faults(path, {"count": 8, "node": [{"reason": "NVMLInitFailed"}]})
    clocks.advance(5)
    agent.run_once()
    d = step(d.record, observe_node(writer.node), policy, clocks.wall)
    assert d.taint == Taint("NVMLInitFailed", "NoSchedule")

    # The agent dies: no heartbeat for longer than the policy allows.
    write_faults(path, {"count": 8})
    clocks.advance(5)
    agent.run_once()
    clocks.advance(policy.agent_silent_seconds + 1)
    d = step(d.record, observe_node(writer.node), policy, clocks.wall)
    assert d.taint == Taint("AgentSilent", "NoSchedule")


def parse_cli(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="wanka")
    cli.register(parser.add_subparsers(dest="command"))
    return parser.parse_args(argv)


def test_cli_defaults_and_node_name_from_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NODE_NAME", "gpu-9")
    args = parse_cli(["agent"])
    assert args.node_name == "gpu-9"
    assert (args.probe, args.interval, args.expected_devices) == ("nvml", 30.0, None)
    assert args.func is cli.run_agent


def test_cli_dry_run_once_with_the_file_probe(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "faults.json"
    write_faults(path, {"count": 2, "devices": {"1": {"reason": "XID94"}}})
    args = parse_cli(["agent", "--probe", "file", "--fault-file", str(path), "--dry-run", "--once"])
    assert args.func(args) == 0
    line = json.loads(capsys.readouterr().out)
    assert line["condition"]["type"] == "GPUHealthy"
    assert line["condition"]["reason"] == "XID94"
    assert json.loads(line["annotations"][GPU_HEALTH_ANNOTATION])["1"]["healthy"] is False


def test_cli_refuses_missing_inputs(capsys: pytest.CaptureFixture[str]) -> None:
    args = parse_cli(["agent", "--probe", "file", "--dry-run"])
    assert args.func(args) == 2
    assert "--fault-file" in capsys.readouterr().err
    args = parse_cli(
        ["agent", "--probe", "file", "--fault-file", "/nonexistent", "--node-name", ""]
    )
    assert args.func(args) == 2
    assert "--node-name" in capsys.readouterr().err


def test_cli_explains_a_missing_nvml_package(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def no_pynvml() -> None:
        raise ImportError("No module named 'pynvml'")

    monkeypatch.setattr("wanka.agent.nvml_probe.load_nvml", no_pynvml)
    args = parse_cli(["agent", "--probe", "nvml", "--dry-run", "--once"])
    assert args.func(args) == 2
    assert "nvidia-ml-py" in capsys.readouterr().err
