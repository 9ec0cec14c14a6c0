"""Probe faults described in a JSON file, so the agent runs and is tested without a GPU.

Format (every key optional)::

    {
      "count": 8,
      "devices": {"3": {"reason": "XID79", "message": "fell off the bus"}},
      "node": [{"reason": "NVMLInitFailed", "message": "driver not loaded"}]
    }

`count` is how many devices the node has (compared with the expected count); each entry of
`devices` is a fault on that index unless it says `"healthy": true`; `node` lists node-wide
faults. A missing file means no faults.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from wanka.agent.probes import FAULT_FILE_INVALID, Fault, ProbeResult


class FileProbe:
    """A `Probe` that reads the fault file on every probe."""

    def __init__(
        self,
        path: Path | str,
        *,
        sleep: Callable[[float], None] = time.sleep,
        poll_seconds: float = 1.0,
    ) -> None:
        self._path = Path(path)
        self._sleep = sleep
        self._poll = poll_seconds
        self._stamp = self._mtime()

    def probe(self) -> ProbeResult:
        self._stamp = self._mtime()
        try:
            text = self._path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return ProbeResult(None)
        except OSError as err:
            return ProbeResult(None, (Fault(FAULT_FILE_INVALID, f"{self._path}: {err}"),))
        try:
            return parse_fault_file(text)
        except (ValueError, TypeError, AttributeError) as err:
            return ProbeResult(None, (Fault(FAULT_FILE_INVALID, f"{self._path}: {err}"),))

    def wait(self, timeout: float) -> bool:
        # Polls the file's mtime so an edited fault file is reported within a poll period.
        for _ in range(max(1, math.ceil(timeout / self._poll))):
            self._sleep(min(self._poll, timeout))
            if self._mtime() != self._stamp:
                return True
        return False

    def close(self) -> None:
        return None

    def _mtime(self) -> float | None:
        try:
            return self._path.stat().st_mtime
        except OSError:
            return None


def parse_fault_file(text: str) -> ProbeResult:
    """Parse the fault file format; raises ValueError/TypeError on a malformed file."""
    raw = json.loads(text)
    if not isinstance(raw, dict):
        raise ValueError("the fault file must hold a JSON object")
    count = raw.get("count")
    if count is not None and (not isinstance(count, int) or count < 0):
        raise ValueError(f"count must be a non-negative integer, not {count!r}")
    faults: list[Fault] = []
    devices: dict[str, Any] = raw.get("devices") or {}
    for key in sorted(devices, key=int):
        entry = devices[key]
        if not isinstance(entry, dict) or int(key) < 0:
            raise ValueError(f"devices[{key!r}] must be an object under a device index")
        if entry.get("healthy") is True:
            continue
        faults.append(
            Fault(str(entry.get("reason") or "Unhealthy"), str(entry.get("message", "")), int(key))
        )
    for entry in raw.get("node") or ():
        faults.append(Fault(str(entry.get("reason") or "Unhealthy"), str(entry.get("message", ""))))
    return ProbeResult(count, tuple(faults))
