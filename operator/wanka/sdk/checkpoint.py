"""Atomic, verifiable checkpoints: a reader never sees half a checkpoint, and a torn one is skipped.

Layout under the checkpoint directory (WANKA_CHECKPOINT_DIR):

    step-00001200/            one complete checkpoint
        <files written by the trainer>
        MANIFEST.json         written last: step, time, and sha256 + size of every file

A checkpoint is first written to `.tmp-step-…`, every file fsynced, the manifest written and
fsynced, then the directory is renamed into place and the parent fsynced. `latest()` returns
the newest directory whose manifest exists and whose files match it.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

MANIFEST = "MANIFEST.json"
PREFIX = "step-"
TMP_PREFIX = ".tmp-"


class CorruptCheckpoint(Exception):
    """A checkpoint directory whose files do not match its manifest."""


@dataclass(frozen=True)
class Checkpoint:
    step: int
    path: Path
    time: float

    def file(self, name: str) -> Path:
        return self.path / name


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def step_dir(root: Path, step: int) -> Path:
    return root / f"{PREFIX}{step:08d}"


def step_of(path: Path) -> int | None:
    """The step a checkpoint directory's name says, or None for a name that is not one."""
    digits = path.name.removeprefix(PREFIX)
    return int(digits) if path.name.startswith(PREFIX) and digits.isascii() and digits.isdigit() else None


class CheckpointDir:
    """Saves and finds checkpoints under one directory; keeps the newest `keep`."""

    def __init__(self, root: str | os.PathLike[str], keep: int = 3,
                 clock: Callable[[], float] = time.time) -> None:
        if keep < 1:
            raise ValueError("keep must be at least 1")
        self.root = Path(root)
        self.keep = keep
        self.clock = clock

    @contextmanager
    def save(self, step: int) -> Iterator[Path]:
        """Yield a fresh directory to write the checkpoint's files into; on a clean exit the
        checkpoint becomes visible atomically, on an exception nothing does."""
        if step < 0:
            raise ValueError("step must not be negative")
        self.root.mkdir(parents=True, exist_ok=True)
        tmp = self.root / f"{TMP_PREFIX}{PREFIX}{step:08d}-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        try:
            yield tmp
            files = {}
            for path in sorted(p for p in tmp.rglob("*") if p.is_file()):
                with open(path, "rb+") as fh:
                    os.fsync(fh.fileno())
                files[str(path.relative_to(tmp))] = {"sha256": _sha256(path), "size": path.stat().st_size}
            manifest = {"step": step, "time": self.clock(), "files": files}
            with open(tmp / MANIFEST, "w") as fh:
                json.dump(manifest, fh, sort_keys=True)
                fh.flush()
                os.fsync(fh.fileno())
            _fsync_dir(tmp)
            final = step_dir(self.root, step)
            if final.exists():
                shutil.rmtree(final)  # the same step saved again: the new one wins
            os.rename(tmp, final)
            _fsync_dir(self.root)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        self.prune()

    def verify(self, path: Path) -> Checkpoint:
        """The checkpoint at `path`, or CorruptCheckpoint if anything does not match.

        The manifest is data from a shared volume: any shape it has, and any file name in it
        that would lead outside the checkpoint's directory, makes the checkpoint corrupt."""
        try:
            manifest = json.loads((path / MANIFEST).read_text())
            step, when, files = int(manifest["step"]), float(manifest["time"]), manifest["files"]
            entries = [(str(name), int(meta["size"]), str(meta["sha256"])) for name, meta in files.items()]
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            raise CorruptCheckpoint(f"{path}: unreadable manifest ({exc})") from exc
        if step != step_of(path):
            raise CorruptCheckpoint(f"{path}: the manifest says step {step}")
        for name, size, digest in entries:
            rel = Path(name)
            if rel.is_absolute() or ".." in rel.parts or not rel.parts:
                raise CorruptCheckpoint(f"{path}: {name!r} is outside the checkpoint directory")
            f = path / rel
            if f.is_symlink() or not f.is_file() or f.stat().st_size != size or _sha256(f) != digest:
                raise CorruptCheckpoint(f"{path}: {name} does not match the manifest")
        return Checkpoint(step, path, when)

    def candidates(self) -> list[Path]:
        """Checkpoint directories, newest step first (by number: step 100000000 sorts after
        step 99999999 although its name is longer)."""
        if not self.root.is_dir():
            return []
        found = [(step_of(p), p) for p in self.root.iterdir() if p.is_dir() and p.name.startswith(PREFIX)]
        return [p for step, p in sorted((x for x in found if x[0] is not None),
                                        key=lambda x: (x[0], x[1].name), reverse=True)]

    def latest(self) -> Checkpoint | None:
        """The newest complete checkpoint; torn or corrupt ones are skipped."""
        for path in self.candidates():
            try:
                return self.verify(path)
            except CorruptCheckpoint:
                continue
        return None

    def prune(self) -> None:
        """Keep the newest `keep` complete checkpoints; drop older ones and stale temp dirs."""
        complete = 0
        for path in self.candidates():
            try:
                self.verify(path)
            except CorruptCheckpoint:
                continue
            complete += 1
            if complete > self.keep:
                shutil.rmtree(path, ignore_errors=True)
        for tmp in self.root.glob(f"{TMP_PREFIX}*"):
            if not tmp.name.endswith(f"-{os.getpid()}"):
                shutil.rmtree(tmp, ignore_errors=True)
