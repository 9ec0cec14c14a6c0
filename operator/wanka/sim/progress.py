"""Progress of long simulations on stderr: a rich bar with an ETA on a terminal, else one line per
finished unit (logs and CI keep a readable record)."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TextIO

Tick = Callable[[str], None]  # called with what just finished


def eta(done: int, total: int, elapsed: float) -> float | None:
    """Seconds left if the remaining units take as long as the finished ones; None before the first."""
    if done <= 0:
        return None
    return max(0.0, elapsed / done * (total - done))


def clock(seconds: float | None) -> str:
    if seconds is None:
        return "-:--"
    s = round(seconds)
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}" if s >= 3600 else f"{s // 60}:{s % 60:02d}"


def _lines(what: str, total: int, out: TextIO, now: Callable[[], float]) -> Tick:
    start, done = now(), [0]

    def tick(label: str) -> None:
        done[0] += 1
        elapsed = now() - start
        out.write(f"{what} [{done[0]}/{total}] {label} · elapsed {clock(elapsed)} · "
                  f"ETA {clock(eta(done[0], total, elapsed))}\n")
        out.flush()

    return tick


@contextmanager
def progress(what: str, total: int, enabled: bool = True, out: TextIO | None = None,
             now: Callable[[], float] = time.monotonic) -> Iterator[Tick]:
    """Yields `tick(label)`, to call once per finished unit of `total`."""
    out = out or sys.stderr
    if not enabled or total <= 0:
        yield lambda label: None
        return
    try:
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )
    except ImportError:  # the sim extra not installed: plain lines still say how far it got
        yield _lines(what, total, out, now)
        return
    console = Console(file=out)
    if not console.is_terminal:
        yield _lines(what, total, out, now)
        return
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
               TextColumn("ETA"), TimeRemainingColumn(), TextColumn("{task.fields[last]}"))
    with Progress(*columns, console=console) as bar:
        task = bar.add_task(what, total=total, last="")
        yield lambda label: bar.update(task, advance=1, last=label)
