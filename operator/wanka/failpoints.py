"""Crash injection for tests: WANKA_FAILPOINT=NAME:N makes the process die at the N-th hit.

Off unless the variable is set; a hit costs one dict lookup.
"""

from __future__ import annotations

import os

_SPEC = os.environ.get("WANKA_FAILPOINT", "")
_counts: dict[str, int] = {}


def hit(name: str) -> None:
    if not _SPEC:
        return
    want, _, n = _SPEC.partition(":")
    if want != name:
        return
    _counts[name] = _counts.get(name, 0) + 1
    if _counts[name] >= int(n or 1):
        os._exit(137)  # like SIGKILL: no cleanup, no flush, mid-operation
