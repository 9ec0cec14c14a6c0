"""`wanka agent burn-in`: check a node once before it takes work and say so in one JSON object.

The run probes every device with the agent's probe, runs DCGM's diagnostic when `dcgmi` is
installed, probes again (XIDs and lost devices the diagnostic's load brought out), and writes
one compact JSON object, at most 4096 bytes (kubelet's termination-message limit)::

    {"wankaBurnIn": 1, "ok": false, "reason": "DeviceFault",
     "message": "1 of 8 devices faulty: 3 (XID79: fatal XID 79); DCGM passed",
     "devices": 8, "faults": [{"index": 3, "reason": "XID79", "message": "fatal XID 79"}],
     "dcgm": "passed"}

`reason`, worst first: Timeout, ProbeFailed (the devices could not be read), NodeFault (a
node-wide fault such as NVMLInitFailed), DeviceMissing, DeviceCountMismatch (more devices than
expected), DeviceFault, DCGMFailed, or Passed. `dcgm` is passed, failed, skipped (no dcgmi on
PATH) or timeout. A fault's `index` is null for a node-wide fault. The process exits 0 only
when `ok` is true.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from wanka.agent.nvml_probe import Nvml
from wanka.agent.probes import (
    DEVICE_MISSING,
    FAULT_FILE_INVALID,
    GPU_LOST,
    PROBE_FAILED,
    Fault,
    Probe,
    ProbeResult,
    is_fatal_reason,
)
from wanka.core.preflight import MAX_REPORT_BYTES, clip  # the same termination-message limits

REPORT_KEY = "wankaBurnIn"
REPORT_VERSION = 1
MAX_MESSAGE_CHARS = 512
MAX_FAULT_MESSAGE_CHARS = 200

# The run's verdicts (`reason`), worst first.
TIMEOUT = "Timeout"
NODE_FAULT = "NodeFault"  # a node-wide fault the probe saw, e.g. NVML failed to initialise
DEVICE_COUNT_MISMATCH = "DeviceCountMismatch"  # more devices than --expect-devices
DEVICE_FAULT = "DeviceFault"
DCGM_FAILED = "DCGMFailed"
PASSED = "Passed"
# DeviceMissing and ProbeFailed are the probe vocabulary's own words.
REASONS: tuple[str, ...] = (
    TIMEOUT, PROBE_FAILED, NODE_FAULT, DEVICE_MISSING, DEVICE_COUNT_MISMATCH, DEVICE_FAULT, DCGM_FAILED, PASSED,
)

# Burn-in only: faults the running agent tolerates but a node about to take work should not have.
ROW_REMAP_PENDING = "RowRemapPending"
DEVICE_UNRESPONSIVE = "DeviceUnresponsive"

DcgmStatus = Literal["passed", "failed", "skipped", "timeout"]


@dataclass(frozen=True, slots=True)
class DcgmResult:
    """What `dcgmi diag` said; `faults` are its failures it could pin on a GPU."""

    status: DcgmStatus
    message: str = ""
    faults: tuple[Fault, ...] = ()


@dataclass(frozen=True, slots=True)
class BurnInResult:
    ok: bool
    reason: str
    message: str
    devices: int = 0
    faults: tuple[Fault, ...] = ()
    dcgm: DcgmStatus = "skipped"

    def to_json(self) -> str:
        """Compact JSON within `MAX_REPORT_BYTES`: fault messages are shortened, then faults
        dropped from the end (least severe first), the message saying how many."""
        for chars in (MAX_FAULT_MESSAGE_CHARS, 60, 0):
            text = self._dump(self.message, self.faults, chars)
            if len(text) <= MAX_REPORT_BYTES:
                return text
        kept = len(self.faults)
        while kept > 0:
            kept -= 1
            note = f" (+{len(self.faults) - kept} more faults not listed)"
            message = clip(self.message, MAX_MESSAGE_CHARS - len(note)) + note
            text = self._dump(message, self.faults[:kept], 0)
            if len(text) <= MAX_REPORT_BYTES:
                return text
        return self._dump(clip(self.message, 200), (), 0)

    def _dump(self, message: str, faults: Iterable[Fault], chars: int) -> str:
        doc = {
            REPORT_KEY: REPORT_VERSION,
            "ok": self.ok,
            "reason": self.reason,
            "message": clip(message, MAX_MESSAGE_CHARS),
            "devices": self.devices,
            "faults": [
                {"index": f.device, "reason": f.reason, "message": clip(f.message, chars)} for f in faults
            ],
            "dcgm": self.dcgm,
        }
        # ensure_ascii: one character is one byte, so the length checks above are byte counts.
        return json.dumps(doc, separators=(",", ":"), ensure_ascii=True)


# ---------------------------------------------------------------------------------------------
# The verdict
# ---------------------------------------------------------------------------------------------


def judge(probes: Sequence[ProbeResult], expected: int | None, dcgm: DcgmResult) -> BurnInResult:
    """The verdict from the probes (in order) and DCGM's result."""
    counts = [p.count for p in probes if p.count is not None]
    devices = min(counts) if counts else 0
    faults = _unique(f for p in probes for f in p.faults)
    if counts and max(counts) != min(counts):
        faults.append(Fault(DEVICE_MISSING, f"devices went from {counts[0]} to {counts[-1]} during the burn-in"))
    if expected is not None and devices < expected:
        faults.append(Fault(DEVICE_MISSING, f"{devices} of {expected} expected devices present"))
    elif expected is not None and devices > expected:
        faults.append(Fault(DEVICE_COUNT_MISMATCH, f"{devices} devices present, {expected} expected"))
    faults = _unique([*faults, *dcgm.faults])
    faults.sort(key=_severity)

    dcgm_text = _dcgm_text(dcgm)
    node_wide = [f for f in faults if f.device is None and f.reason != DCGM_FAILED]
    sick = sorted({f.device for f in faults if f.device is not None and f.reason != DCGM_FAILED})
    if not faults and dcgm.status in ("passed", "skipped"):
        return BurnInResult(True, PASSED, f"{devices} devices healthy; {dcgm_text}", devices, (), dcgm.status)

    if any(f.reason in (PROBE_FAILED, FAULT_FILE_INVALID) for f in node_wide):
        reason = PROBE_FAILED
    elif any(f.reason not in (DEVICE_MISSING, DEVICE_COUNT_MISMATCH) for f in node_wide):
        reason = NODE_FAULT
    elif any(f.reason == DEVICE_MISSING for f in node_wide):
        reason = DEVICE_MISSING
    elif node_wide:
        reason = DEVICE_COUNT_MISMATCH
    elif sick:
        reason = DEVICE_FAULT
    else:
        reason = DCGM_FAILED
    parts = [_describe(f) for f in node_wide]
    if sick:
        by_device: dict[int, list[Fault]] = {}
        for f in faults:
            if f.device is not None and f.reason != DCGM_FAILED:
                by_device.setdefault(f.device, []).append(f)
        listed = ", ".join(f"{i} ({'; '.join(_describe(f) for f in fs)})" for i, fs in sorted(by_device.items()))
        parts.append(f"{len(sick)} of {max(devices, len(sick))} devices faulty: {listed}")
    parts.append(dcgm_text)
    message = clip("; ".join(parts), MAX_MESSAGE_CHARS)
    return BurnInResult(False, reason, message, devices, tuple(faults), dcgm.status)


def _dcgm_text(dcgm: DcgmResult) -> str:
    text = f"DCGM {dcgm.status}"
    return f"{text}: {dcgm.message}" if dcgm.message else text


def _key(f: Fault) -> tuple[int | None, str, str]:
    return (f.device, f.reason, f.message)


def _unique(faults: Iterable[Fault]) -> list[Fault]:
    # Both probes report a fault that lasted; it is one fault.
    seen: set[tuple[int | None, str, str]] = set()
    out: list[Fault] = []
    for f in faults:
        if _key(f) not in seen:
            seen.add(_key(f))
            out.append(f)
    return out


def _severity(f: Fault) -> tuple[int, int, int]:
    # Node-wide first, then fatal ones, then by device; DCGM's own findings last.
    return (
        2 if f.reason == DCGM_FAILED else 0 if f.device is None else 1,
        0 if is_fatal_reason(f.reason) else 1,
        -1 if f.device is None else f.device,
    )


def _describe(f: Fault) -> str:
    return f.reason + (f": {f.message}" if f.message else "")


# ---------------------------------------------------------------------------------------------
# DCGM
# ---------------------------------------------------------------------------------------------


class DcgmRunner:
    """Runs `dcgmi diag -r LEVEL -j` in its own process group, so a timeout kills it whole."""

    def __init__(self, which: Callable[[str], str | None] = shutil.which) -> None:
        self._which = which
        self._proc: subprocess.Popen[str] | None = None
        self._lock = threading.Lock()

    def run(self, level: int, timeout: float) -> DcgmResult:
        exe = self._which("dcgmi")
        if exe is None:
            return DcgmResult("skipped", "dcgmi is not on PATH")
        if timeout <= 0:
            return DcgmResult("timeout", "no time left to run dcgmi diag")
        argv = [exe, "diag", "-r", str(level), "-j"]
        try:
            with self._lock:
                self._proc = subprocess.Popen(
                    argv,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE,
                    stdin=subprocess.DEVNULL,
                    text=True,
                    start_new_session=True,
                )
        except OSError as err:
            return DcgmResult("failed", f"cannot run dcgmi: {err}")
        proc = self._proc
        try:
            out, err_text = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            proc.communicate()
            return DcgmResult("timeout", f"dcgmi diag -r {level} did not finish within {timeout:.0f}s")
        return parse_dcgm(out, proc.returncode, err_text)

    def kill(self) -> None:
        """Kill a diagnostic still running (and whatever it started)."""
        with self._lock:
            proc = self._proc
        if proc is not None and proc.poll() is None:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except OSError:
                proc.kill()


def parse_dcgm(text: str, returncode: int, stderr: str = "") -> DcgmResult:
    """Pass or fail from `dcgmi diag -j`'s JSON, whichever DCGM version's layout it has: every
    object with a string `status` is one result; any `Fail` fails the run, and a failure that
    names GPUs (`gpu_ids`, `entity_id`, `gpu_id`) becomes a fault on each of them."""
    doc: Any = None
    start, end = text.find("{"), text.rfind("}")
    if start >= 0 and end > start:
        try:
            doc = json.loads(text[start : end + 1])
        except ValueError:
            doc = None
    statuses: list[str] = []
    failures: list[tuple[str, list[int], str]] = []  # test, gpus, why

    def walk(node: Any, test: str) -> None:
        if isinstance(node, dict):
            name = node.get("name") or node.get("test_name")
            test = name if isinstance(name, str) else test
            status = node.get("status")
            if isinstance(status, str):
                statuses.append(status.lower())
                if status.lower().startswith("fail"):
                    failures.append((test, _gpu_ids(node), _warnings(node)))
            for value in node.values():
                walk(value, test)
        elif isinstance(node, list):
            for value in node:
                walk(value, test)

    walk(doc, "diagnostic")
    if failures:
        faults: list[Fault] = []
        for test, gpus, why in failures:
            faults.extend(Fault(DCGM_FAILED, clip(f"{test}: {why}", MAX_FAULT_MESSAGE_CHARS), g) for g in gpus)
        named = ", ".join(f"{t}" + (f" on GPU {','.join(map(str, g))}" if g else "") for t, g, _ in failures[:4])
        more = f" and {len(failures) - 4} more" if len(failures) > 4 else ""
        return DcgmResult("failed", f"{named}{more}", tuple(_unique(faults)))
    if returncode != 0:
        detail = (stderr.strip().splitlines() or [text.strip()[:120]])[0] if (stderr or text).strip() else ""
        return DcgmResult("failed", clip(f"dcgmi exited {returncode}" + (f": {detail}" if detail else ""), 200))
    if doc is None:
        return DcgmResult("failed", "dcgmi's output is not JSON")
    if not any(s.startswith("pass") for s in statuses):
        return DcgmResult("skipped", "dcgmi diag ran no test")
    return DcgmResult("passed")


def _gpu_ids(node: dict[str, Any]) -> list[int]:
    ids: list[int] = []
    for key in ("gpu_ids", "gpu_id", "entity_id"):
        value = node.get(key)
        if isinstance(value, int) and not isinstance(value, bool):
            ids.append(value)
        elif isinstance(value, str):
            ids.extend(int(x) for x in value.replace(" ", "").split(",") if x.isdigit())
        elif isinstance(value, list):
            ids.extend(int(x) for x in value if isinstance(x, int) or (isinstance(x, str) and x.isdigit()))
    return sorted(set(ids))


def _warnings(node: dict[str, Any]) -> str:
    found: list[str] = []
    for key in ("warnings", "warning", "errors", "error", "info"):
        value = node.get(key)
        for item in value if isinstance(value, list) else [value]:
            if isinstance(item, str) and item.strip():
                found.append(item.strip())
            elif isinstance(item, dict):
                text = item.get("warning") or item.get("error") or item.get("msg")
                if isinstance(text, str) and text.strip():
                    found.append(text.strip())
        if found:
            break
    return "; ".join(found) or "failed"


# ---------------------------------------------------------------------------------------------
# NVML checks only the burn-in makes
# ---------------------------------------------------------------------------------------------


class NvmlBurnInProbe:
    """The agent's NVML probe plus what a node about to take work must also pass: every device
    answers (its handle and UUID), and no row remapping waits for a reset."""

    def __init__(self, inner: Probe, nvml: Nvml) -> None:
        self._inner = inner
        self._nvml = nvml

    def probe(self) -> ProbeResult:
        result = self._inner.probe()
        if not result.count:
            return result
        lost = {f.device for f in result.faults if f.reason == GPU_LOST}
        extra = [f for f in readiness_faults(self._nvml, result.count) if f.device not in lost]
        return ProbeResult(result.count, result.faults + tuple(extra))

    def wait(self, timeout: float) -> bool:
        return self._inner.wait(timeout)

    def close(self) -> None:
        self._inner.close()


def readiness_faults(nvml: Nvml, count: int) -> list[Fault]:
    """Faults the running agent tolerates but a burn-in does not (call with NVML initialised)."""
    faults: list[Fault] = []
    unsupported = (nvml.NVML_ERROR_NOT_SUPPORTED, nvml.NVML_ERROR_INVALID_ARGUMENT)
    for index in range(count):
        try:
            handle = nvml.nvmlDeviceGetHandleByIndex(index)
            nvml.nvmlDeviceGetUUID(handle)
        except nvml.NVMLError as err:
            if getattr(err, "value", None) == nvml.NVML_ERROR_GPU_IS_LOST:
                faults.append(Fault(GPU_LOST, "NVML_ERROR_GPU_IS_LOST: the GPU has fallen off the bus", index))
            else:
                faults.append(Fault(DEVICE_UNRESPONSIVE, f"NVML cannot read the device: {err}", index))
            continue
        try:
            rows = nvml.nvmlDeviceGetRemappedRows(handle)
        except nvml.NVMLError as err:
            if getattr(err, "value", None) not in unsupported:
                faults.append(Fault(DEVICE_UNRESPONSIVE, f"nvmlDeviceGetRemappedRows: {err}", index))
            continue
        # (corrected, uncorrected, pending, failed): a remap is applied at the next GPU reset.
        if rows is not None and len(rows) >= 3 and rows[2]:
            faults.append(Fault(ROW_REMAP_PENDING, "a row remapping is pending; reset the GPU", index))
    return faults


# ---------------------------------------------------------------------------------------------
# The run
# ---------------------------------------------------------------------------------------------


@dataclass
class _Progress:
    """What the run has done so far, for a report written when it runs out of time."""

    stage: str = "starting"
    probes: list[ProbeResult] = field(default_factory=list)
    dcgm: DcgmResult | None = None


def burn_in(
    probe: Probe,
    *,
    expected: int | None = None,
    dcgm_level: int = 1,
    timeout: float = 600.0,
    dcgm: DcgmRunner | None = None,
    monotonic: Callable[[], float] = time.monotonic,
) -> BurnInResult:
    """Run the whole burn-in within `timeout` seconds; never raises.

    The checks run in a daemon thread: a device that wedges an NVML call cannot be
    interrupted, but the report still goes out on time."""
    runner = dcgm or DcgmRunner()
    progress = _Progress()
    outcome: list[BurnInResult] = []
    deadline = monotonic() + timeout
    # Leaves time after the diagnostic for the second probe.
    reserve = min(30.0, timeout * 0.1)

    def checks() -> None:
        try:
            progress.stage = "the first device probe"
            progress.probes.append(_safe_probe(probe))
            progress.stage = f"dcgmi diag -r {dcgm_level}"
            progress.dcgm = runner.run(dcgm_level, deadline - monotonic() - reserve)
            progress.stage = "the second device probe"
            progress.probes.append(_safe_probe(probe))
            outcome.append(judge(progress.probes, expected, progress.dcgm))
        except Exception as err:  # a bug here must still produce a report
            outcome.append(failed(f"burn-in failed unexpectedly: {type(err).__name__}: {err}"))
        finally:
            try:
                probe.close()
            except Exception:
                pass

    worker = threading.Thread(target=checks, name="burn-in", daemon=True)
    worker.start()
    worker.join(max(0.0, deadline - monotonic()))
    if outcome:
        return outcome[0]
    runner.kill()
    seen = [p.count for p in progress.probes if p.count is not None]
    dcgm_status: DcgmStatus = "skipped"
    if progress.dcgm is not None:
        dcgm_status = progress.dcgm.status
    elif progress.stage.startswith("dcgmi"):
        dcgm_status = "timeout"
    return BurnInResult(
        False,
        TIMEOUT,
        f"the burn-in did not finish within {timeout:g}s (stuck in {progress.stage})",
        min(seen) if seen else 0,
        tuple(_unique(f for p in progress.probes for f in p.faults)),
        dcgm_status,
    )


def _safe_probe(probe: Probe) -> ProbeResult:
    try:
        return probe.probe()
    except Exception as err:
        return ProbeResult(None, (Fault(PROBE_FAILED, f"{type(err).__name__}: {err}"),))


def failed(message: str) -> BurnInResult:
    """A ProbeFailed report: the burn-in could not check the node (no probe, a bug)."""
    return BurnInResult(False, PROBE_FAILED, clip(message, MAX_MESSAGE_CHARS))


def emit(result: BurnInResult, path: str, *, echo: Callable[[str], None] = print) -> None:
    """Write the report to the result file (a missing one is said on stderr) and stdout."""
    text = result.to_json()
    try:
        with open(path, "w", encoding="utf-8") as out:
            out.write(text)
    except OSError as err:
        print(f"wanka agent burn-in: cannot write {path}: {err}", file=sys.stderr)
    echo(text)
