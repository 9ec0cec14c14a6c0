"""`wanka agent burn-in`: the verdict from the file probe, DCGM through fake `dcgmi` scripts,
the run's timeout, the 4096-byte report and the exit codes."""

from __future__ import annotations

import json
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.unit.test_nvml_probe import FakeGpu, FakeNvml, FakeNVMLError
from wanka import cli as wanka_cli
from wanka.agent.burnin import (
    MAX_MESSAGE_CHARS,
    MAX_REPORT_BYTES,
    BurnInResult,
    DcgmResult,
    DcgmRunner,
    NvmlBurnInProbe,
    burn_in,
    judge,
    parse_dcgm,
)
from wanka.agent.file_probe import FileProbe
from wanka.agent.nvml_probe import NvmlProbe
from wanka.agent.probes import Fault, ProbeResult

NO_DCGM = DcgmRunner(which=lambda _: None)


def report(result: BurnInResult) -> dict[str, Any]:
    text = result.to_json()
    assert len(text.encode()) <= MAX_REPORT_BYTES
    doc: dict[str, Any] = json.loads(text)
    assert set(doc) == {"wankaBurnIn", "ok", "reason", "message", "devices", "faults", "dcgm"}
    assert doc["wankaBurnIn"] == 1 and len(doc["message"]) <= MAX_MESSAGE_CHARS
    return doc


# ---------------------------------------------------------------------------------------------
# The verdict, through the file probe
# ---------------------------------------------------------------------------------------------


@dataclass
class Case:
    name: str
    fault_file: Any  # JSON-able content, a raw string, or None for no file
    want_reason: str
    expected: int | None = None
    want_faults: list[tuple[int | None, str]] = field(default_factory=list)
    want_devices: int = 8
    want_in_message: str = ""


CASES = [
    Case("healthy", {"count": 8}, "Passed", expected=8, want_in_message="8 devices healthy"),
    Case("healthy without a device count to check", {"count": 8}, "Passed"),
    Case(
        "a faulty device",
        {"count": 8, "devices": {"3": {"reason": "XID79", "message": "fell off the bus"}}},
        "DeviceFault",
        expected=8,
        want_faults=[(3, "XID79")],
        want_in_message="1 of 8 devices faulty: 3 (XID79: fell off the bus)",
    ),
    Case(
        "fatal faults sort before recoverable ones",
        {"count": 8, "devices": {"1": {"reason": "XID94"}, "6": {"reason": "XID48"}}},
        "DeviceFault",
        want_faults=[(6, "XID48"), (1, "XID94")],
    ),
    Case(
        "fewer devices than expected",
        {"count": 7},
        "DeviceMissing",
        expected=8,
        want_faults=[(None, "DeviceMissing")],
        want_devices=7,
        want_in_message="7 of 8 expected devices present",
    ),
    Case(
        "more devices than expected",
        {"count": 9},
        "DeviceCountMismatch",
        expected=8,
        want_faults=[(None, "DeviceCountMismatch")],
        want_devices=9,
    ),
    Case(
        "no fault file and a count to check: nothing is present",
        None,
        "DeviceMissing",
        expected=8,
        want_faults=[(None, "DeviceMissing")],
        want_devices=0,
    ),
    Case(
        "a node-wide fault outranks a faulty device",
        {"count": 8, "devices": {"2": {"reason": "XID79"}},
         "node": [{"reason": "NVMLInitFailed", "message": "driver not loaded"}]},
        "NodeFault",
        want_faults=[(None, "NVMLInitFailed"), (2, "XID79")],
    ),
    Case("a broken fault file", "{oops", "ProbeFailed", want_faults=[(None, "FaultFileInvalid")], want_devices=0),
]


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_burn_in_with_the_file_probe(case: Case, tmp_path: Path) -> None:
    path = tmp_path / "faults.json"
    if case.fault_file is not None:
        content = case.fault_file
        path.write_text(content if isinstance(content, str) else json.dumps(content))
    result = burn_in(FileProbe(path), expected=case.expected, dcgm=NO_DCGM, timeout=10)
    doc = report(result)
    assert (doc["ok"], doc["reason"]) == (case.want_reason == "Passed", case.want_reason)
    assert [(f["index"], f["reason"]) for f in doc["faults"]] == case.want_faults
    assert doc["devices"] == case.want_devices
    assert doc["dcgm"] == "skipped" and "dcgmi is not on PATH" in doc["message"]
    assert case.want_in_message in doc["message"]


def test_a_fault_seen_by_both_probes_is_listed_once() -> None:
    seen = ProbeResult(8, (Fault("XID79", "fatal XID 79", 3),))
    result = judge([seen, seen], 8, DcgmResult("passed"))
    assert [(f.device, f.reason) for f in result.faults] == [(3, "XID79")]


def test_a_device_lost_during_the_diagnostic_is_missing() -> None:
    result = judge([ProbeResult(8), ProbeResult(7)], None, DcgmResult("passed"))
    assert (result.ok, result.reason, result.devices) == (False, "DeviceMissing", 7)
    assert "devices went from 8 to 7" in result.message


def test_the_report_fits_4096_bytes_with_many_faults(tmp_path: Path) -> None:
    devices = {str(i): {"reason": f"XID{i % 200}", "message": "x" * 300} for i in range(400)}
    path = tmp_path / "faults.json"
    path.write_text(json.dumps({"count": 400, "devices": devices}))
    doc = report(burn_in(FileProbe(path), dcgm=NO_DCGM, timeout=10))
    assert (doc["ok"], doc["reason"], doc["devices"]) == (False, "DeviceFault", 400)
    assert 0 < len(doc["faults"]) < 400
    assert f"+{400 - len(doc['faults'])} more faults not listed" in doc["message"]


def test_a_message_of_non_ascii_text_still_fits() -> None:
    faults = tuple(Fault("XID79", "\u2603" * 200, i) for i in range(64))
    doc = report(judge([ProbeResult(64, faults)], 64, DcgmResult("skipped", "\u2603" * 600)))
    assert doc["reason"] == "DeviceFault"


# ---------------------------------------------------------------------------------------------
# The run's own timeout and errors
# ---------------------------------------------------------------------------------------------


class StuckProbe:
    """An NVML call that never returns: the run must still report in time."""

    def __init__(self) -> None:
        self.release = threading.Event()

    def probe(self) -> ProbeResult:
        self.release.wait(30)
        return ProbeResult(8)

    def wait(self, timeout: float) -> bool:
        return False

    def close(self) -> None:
        self.release.set()


class CrashingProbe(StuckProbe):
    def probe(self) -> ProbeResult:
        raise RuntimeError("probe bug")


def test_a_hung_probe_times_out_the_run() -> None:
    probe = StuckProbe()
    started = time.monotonic()
    doc = report(burn_in(probe, dcgm=NO_DCGM, timeout=0.5))
    probe.release.set()
    assert time.monotonic() - started < 5
    assert (doc["ok"], doc["reason"]) == (False, "Timeout")
    assert "stuck in the first device probe" in doc["message"]


def test_a_crashing_probe_is_probe_failed() -> None:
    doc = report(burn_in(CrashingProbe(), dcgm=NO_DCGM, timeout=5))
    assert (doc["ok"], doc["reason"]) == (False, "ProbeFailed")
    assert doc["faults"][0]["message"] == "RuntimeError: probe bug"


# ---------------------------------------------------------------------------------------------
# DCGM through a fake dcgmi on PATH
# ---------------------------------------------------------------------------------------------


DCGM3_PASS = {
    "DCGM GPU Diagnostic": {
        "test_categories": [
            {"category": "Deployment", "tests": [{"name": "Denylist", "results": [{"status": "Pass"}]}]},
            {
                "category": "Hardware",
                "tests": [{"name": "GPU Memory", "results": [{"gpu_ids": "0", "status": "Pass"},
                                                             {"gpu_ids": "1", "status": "Skip"}]}],
            },
        ],
        "version": "3.3.0",
    }
}
DCGM3_FAIL = {
    "DCGM GPU Diagnostic": {
        "test_categories": [
            {
                "category": "Hardware",
                "tests": [
                    {
                        "name": "GPU Memory",
                        "results": [
                            {"gpu_ids": "0", "status": "Pass"},
                            {"gpu_ids": "1", "status": "Fail",
                             "warnings": [{"warning": "DBE errors detected", "error_id": 42}]},
                        ],
                    }
                ],
            }
        ]
    }
}
DCGM4_FAIL = {
    "DCGM Diagnostic": {
        "test_categories": [
            {
                "category": "Integration",
                "tests": [
                    {
                        "name": "pcie",
                        "results": [
                            {"entity_group": "GPU", "entity_id": 2, "status": "Fail",
                             "warnings": ["PCIe replay rate too high"]},
                        ],
                        "test_summary": {"status": "Fail"},
                    }
                ],
            }
        ]
    }
}


def fake_dcgmi(bin_dir: Path, body: str) -> Path:
    """A `dcgmi` that runs `body` as Python (no PATH lookups inside), recording its argv."""
    bin_dir.mkdir(exist_ok=True)
    script = bin_dir / "dcgmi"
    script.write_text(
        f"#!{sys.executable}\nimport json, sys, time\n"
        f"open({str(bin_dir / 'argv')!r}, 'w').write(' '.join(sys.argv[1:]))\n{body}\n"
    )
    script.chmod(0o755)
    return script


def printing(doc: Any, code: int = 0) -> str:
    return f"print(json.dumps({doc!r}))\nsys.exit({code})"


@dataclass
class DcgmCase:
    name: str
    body: str
    want_dcgm: str
    want_reason: str
    want_faults: list[tuple[int | None, str]] = field(default_factory=list)
    want_in_message: str = ""


DCGM_CASES = [
    DcgmCase("dcgmi passes", printing(DCGM3_PASS), "passed", "Passed", want_in_message="DCGM passed"),
    DcgmCase(
        "dcgmi fails a GPU",
        printing(DCGM3_FAIL, 226),
        "failed",
        "DCGMFailed",
        [(1, "DCGMFailed")],
        "GPU Memory on GPU 1",
    ),
    DcgmCase("DCGM 4's layout", printing(DCGM4_FAIL, 226), "failed", "DCGMFailed", [(2, "DCGMFailed")], "pcie"),
    DcgmCase(
        "dcgmi exits non-zero with no JSON",
        "print('Error: unable to connect to host engine', file=sys.stderr); sys.exit(255)",
        "failed",
        "DCGMFailed",
        want_in_message="dcgmi exited 255: Error: unable to connect to host engine",
    ),
    DcgmCase("dcgmi prints no JSON", "print('hello')", "failed", "DCGMFailed", want_in_message="not JSON"),
    DcgmCase("dcgmi hangs", "time.sleep(60)", "timeout", "DCGMFailed", want_in_message="did not finish"),
]


@pytest.mark.parametrize("case", DCGM_CASES, ids=[c.name for c in DCGM_CASES])
def test_dcgm_through_a_fake_dcgmi_on_path(
    case: DcgmCase, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    bin_dir = tmp_path / "bin"
    fake_dcgmi(bin_dir, case.body)
    monkeypatch.setenv("PATH", str(bin_dir))
    path = tmp_path / "faults.json"
    path.write_text(json.dumps({"count": 4}))
    started = time.monotonic()
    doc = report(burn_in(FileProbe(path), expected=4, dcgm_level=2, timeout=3))
    assert time.monotonic() - started < 10
    assert (bin_dir / "argv").read_text() == "diag -r 2 -j"
    assert (doc["ok"], doc["reason"], doc["dcgm"]) == (
        case.want_reason == "Passed", case.want_reason, case.want_dcgm,
    )
    assert [(f["index"], f["reason"]) for f in doc["faults"]] == case.want_faults
    assert case.want_in_message in doc["message"]


def test_a_device_fault_outranks_a_dcgm_failure(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake_dcgmi(tmp_path / "bin", printing(DCGM3_FAIL, 226))
    monkeypatch.setenv("PATH", str(tmp_path / "bin"))
    path = tmp_path / "faults.json"
    path.write_text(json.dumps({"count": 4, "devices": {"1": {"reason": "EccUncorrectable"}}}))
    doc = report(burn_in(FileProbe(path), timeout=10))
    assert (doc["reason"], doc["dcgm"]) == ("DeviceFault", "failed")
    assert [(f["index"], f["reason"]) for f in doc["faults"]] == [(1, "EccUncorrectable"), (1, "DCGMFailed")]


def test_dcgm_where_no_test_ran_is_skipped() -> None:
    doc = {"DCGM GPU Diagnostic": {"test_categories": [{"tests": [{"name": "x", "results": [{"status": "Skip"}]}]}]}}
    assert parse_dcgm(json.dumps(doc), 0) == DcgmResult("skipped", "dcgmi diag ran no test")


def test_dcgm_json_after_a_banner_is_read() -> None:
    assert parse_dcgm("Successfully ran diagnostic.\n" + json.dumps(DCGM3_PASS), 0).status == "passed"


# ---------------------------------------------------------------------------------------------
# The NVML checks only the burn-in makes
# ---------------------------------------------------------------------------------------------


class BurnInNvml(FakeNvml):
    """FakeNvml plus the UUID query the burn-in adds."""

    def __init__(self, count: int = 4) -> None:
        super().__init__(count)
        self.uuid_error: dict[int, int] = {}

    def nvmlDeviceGetUUID(self, gpu: FakeGpu) -> str:
        if gpu.index in self.uuid_error:
            raise FakeNVMLError(self.uuid_error[gpu.index])
        return f"GPU-{gpu.index:08d}"


def test_nvml_burn_in_checks_pending_remaps_and_unresponsive_devices() -> None:
    nvml = BurnInNvml(4)
    nvml.gpus[1].remapped = (1, 0, 1, 0)  # pending: fine for the agent, not for a burn-in
    nvml.uuid_error[2] = nvml.NVML_ERROR_UNKNOWN
    nvml.gpus[3].lost = True
    result = burn_in(NvmlBurnInProbe(NvmlProbe(nvml, sleep=lambda s: None), nvml), dcgm=NO_DCGM, timeout=10)
    assert [(f.device, f.reason) for f in result.faults] == [
        (3, "GPULost"),
        (1, "RowRemapPending"),
        (2, "DeviceUnresponsive"),
    ]
    assert result.reason == "DeviceFault" and nvml.shutdowns >= 1


def test_nvml_that_fails_to_start_is_a_node_fault() -> None:
    nvml = BurnInNvml(4)
    nvml.init_error = nvml.NVML_ERROR_DRIVER_NOT_LOADED
    result = burn_in(NvmlBurnInProbe(NvmlProbe(nvml), nvml), expected=4, dcgm=NO_DCGM, timeout=10)
    assert (result.reason, result.devices) == ("NodeFault", 0)


# ---------------------------------------------------------------------------------------------
# The CLI: exit codes, stdout and the result file agree
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fault_file", "extra", "want_code", "want_reason"),
    [
        ({"count": 2}, ["--expect-devices", "2"], 0, "Passed"),
        ({"count": 2, "devices": {"0": {"reason": "XID48"}}}, [], 1, "DeviceFault"),
        ({"count": 1}, ["--expected-devices", "2"], 1, "DeviceMissing"),
    ],
)
def test_cli_exit_codes(
    fault_file: Any,
    extra: list[str],
    want_code: int,
    want_reason: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # no dcgmi, whatever the machine has
    faults, result = tmp_path / "faults.json", tmp_path / "result"
    faults.write_text(json.dumps(fault_file))
    argv = ["agent", "burn-in", "--probe", "file", "--fault-file", str(faults), "--result-file", str(result)]
    code = wanka_cli.main(argv + extra)
    out = capsys.readouterr().out.strip().splitlines()
    assert code == want_code
    assert out == [result.read_text()]
    assert json.loads(out[0])["reason"] == want_reason


def test_cli_reports_a_probe_it_cannot_build(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def no_pynvml() -> None:
        raise ImportError("No module named 'pynvml'")

    monkeypatch.setattr("wanka.agent.nvml_probe.load_nvml", no_pynvml)
    result = tmp_path / "result"
    assert wanka_cli.main(["agent", "burn-in", "--result-file", str(result)]) == 1
    doc = json.loads(result.read_text())
    assert (doc["ok"], doc["reason"]) == (False, "ProbeFailed")
    assert "nvidia-ml-py" in doc["message"]
    assert json.loads(capsys.readouterr().out) == doc


def test_cli_turns_an_unexpected_error_into_probe_failed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def explode(*_: Any, **__: Any) -> None:
        raise KeyError("surprise")

    monkeypatch.setattr("wanka.agent.burnin.burn_in", explode)
    result = tmp_path / "result"
    argv = ["agent", "burn-in", "--probe", "file", "--fault-file", str(tmp_path / "f"), "--result-file", str(result)]
    assert wanka_cli.main(argv) == 1
    doc = json.loads(result.read_text())
    assert (doc["reason"], doc["message"]) == ("ProbeFailed", "burn-in failed unexpectedly: KeyError: 'surprise'")
    assert "Traceback" not in capsys.readouterr().out


def test_an_unwritable_result_file_still_prints_the_verdict(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    argv = ["agent", "burn-in", "--probe", "file", "--fault-file", str(tmp_path / "none"),
            "--result-file", str(tmp_path / "missing-dir" / "result")]
    assert wanka_cli.main(argv) == 0
    captured = capsys.readouterr()
    assert json.loads(captured.out)["ok"] is True
    assert "cannot write" in captured.err
