"""Atomic, verifiable checkpoints for one process or a whole gang: a reader never sees half a
checkpoint, and a torn one is skipped.

Layout under the checkpoint directory (WANKA_CHECKPOINT_DIR, shared by every rank):

    step-00001200/            one complete checkpoint
        <files>               world_size 1: the trainer's files
        rank-00000/ ...       world_size > 1: one shard per rank
        MANIFEST.json         written last, by rank 0: step, time, world size, and sha256 +
                              size of every file of every shard

One process (world_size 1) writes into `.tmp-step-…-<host>-<pid>-<random>`, fsyncs every file,
writes the manifest, renames the directory into place and fsyncs the parent.

A gang (world_size > 1) saves collectively: every rank calls `save(step)` for the same steps in
the same order. The ranks of one save share a staging directory whose name every rank can compute
(`.tmp-step-00001200.<attempt>-<n>`: the attempt, then how many saves this process has made, so a
step saved twice, or again after a restart, never mixes shards). A rank writes its shard into a
directory whose name is unique across hosts, fsyncs it, renames it to `rank-<r>`, then publishes a
done-marker listing its files with checksums. Rank 0 waits (with a timeout) for every rank's
marker, writes the manifest from them, and renames the staging directory into place. A rank that
dies mid-save leaves no marker: rank 0 times out and the step is never published.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import shutil
import socket
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

MANIFEST = "MANIFEST.json"
PREFIX = "step-"
TMP_PREFIX = ".tmp-"
SHARD_PREFIX = "rank-"
DONE_SUFFIX = ".done"


class CorruptCheckpoint(Exception):
    """A checkpoint directory whose files do not match its manifest."""


class IncompleteCheckpoint(TimeoutError):
    """Rank 0 gave up waiting for the other ranks' shards: the step was not published."""


@dataclass(frozen=True)
class Checkpoint:
    step: int
    path: Path
    time: float
    world_size: int = 1

    def file(self, name: str) -> Path:
        return self.path / name

    def shard(self, rank: int) -> Path:
        """The directory rank `rank` wrote (the checkpoint itself for a single process)."""
        return self.path if self.world_size == 1 else self.path / shard_name(rank)


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


def _unique() -> str:
    """A name part no other process on any host picks: hostname, pid, random."""
    return f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(4)}"


def _write_json(path: Path, data: Mapping[str, Any]) -> None:
    """Write through a uniquely named temp file and rename: readers see all of it or nothing."""
    tmp = path.with_name(f"{TMP_PREFIX}{path.name}.{_unique()}")
    with open(tmp, "w") as fh:
        json.dump(data, fh, sort_keys=True)
        fh.flush()
        os.fsync(fh.fileno())
    os.rename(tmp, path)
    _fsync_dir(path.parent)


def _seal(directory: Path) -> dict[str, dict[str, Any]]:
    """fsync every file under `directory`; their sha256 and size by relative path."""
    files = {}
    for path in sorted(p for p in directory.rglob("*") if p.is_file()):
        with open(path, "rb+") as fh:
            os.fsync(fh.fileno())
        files[str(path.relative_to(directory))] = {"sha256": _sha256(path), "size": path.stat().st_size}
    for sub in sorted((p for p in directory.rglob("*") if p.is_dir()), reverse=True):
        _fsync_dir(sub)
    _fsync_dir(directory)
    return files


def step_dir(root: Path, step: int) -> Path:
    return root / f"{PREFIX}{step:08d}"


def shard_name(rank: int) -> str:
    return f"{SHARD_PREFIX}{rank:05d}"


def step_of(path: Path) -> int | None:
    """The step a checkpoint directory's name says, or None for a name that is not one."""
    digits = path.name.removeprefix(PREFIX)
    return int(digits) if path.name.startswith(PREFIX) and digits.isascii() and digits.isdigit() else None


def temp_step_of(path: Path) -> int | None:
    """The step a staging directory is for (`.tmp-step-00001200…`), or None."""
    rest = path.name.removeprefix(TMP_PREFIX + PREFIX)
    if not path.name.startswith(TMP_PREFIX + PREFIX):
        return None
    digits = rest[:len(rest) - len(rest.lstrip("0123456789"))]
    return int(digits) if digits else None


def _newest_mtime(path: Path) -> float:
    """The latest modification under `path`: a directory's own mtime does not change when a
    file deep inside it is written to, so a long save looks idle by the top directory alone."""
    newest = 0.0
    try:
        newest = path.lstat().st_mtime
        for dirpath, dirnames, filenames in os.walk(path):
            for name in dirnames + filenames:
                try:
                    newest = max(newest, os.lstat(os.path.join(dirpath, name)).st_mtime)
                except FileNotFoundError:
                    continue
    except FileNotFoundError:
        pass
    return newest


class CheckpointDir:
    """Saves and finds checkpoints under one directory; keeps the newest `keep`.

    For a gang, give every rank its `rank`, the `world_size` and the `attempt` (Wanka's
    WANKA_RESTART_COUNT: `Settings.restart_count`); rank 0 waits up to `barrier_timeout`
    seconds for the other shards. Temp directories untouched for `stale_after` seconds are
    left by dead processes and removed by `prune()`."""

    def __init__(self, root: str | os.PathLike[str], keep: int = 3,
                 clock: Callable[[], float] = time.time, *, rank: int = 0, world_size: int = 1,
                 attempt: int | str = 0, barrier_timeout: float = 600.0,
                 stale_after: float = 3600.0, poll_seconds: float = 0.05) -> None:
        if keep < 1:
            raise ValueError("keep must be at least 1")
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is not one of world_size {world_size}")
        self.root = Path(root)
        self.keep = keep
        self.clock = clock
        self.rank = rank
        self.world_size = world_size
        self.attempt = str(attempt)
        self.barrier_timeout = barrier_timeout
        self.stale_after = stale_after
        self.poll_seconds = poll_seconds
        self._saves = 0

    @contextmanager
    def save(self, step: int) -> Iterator[Path]:
        """Yield a fresh directory to write this rank's files into; on a clean exit the
        checkpoint becomes visible atomically (once every rank's shard is complete), on an
        exception nothing does."""
        if step < 0:
            raise ValueError("step must not be negative")
        self.root.mkdir(parents=True, exist_ok=True)
        self._saves += 1
        if self.world_size == 1:
            tmp = self.root / f"{TMP_PREFIX}{PREFIX}{step:08d}-{_unique()}"
            tmp.mkdir()
            try:
                yield tmp
                files = _seal(tmp)
                _write_json(tmp / MANIFEST, {"step": step, "time": self.clock(), "files": files})
                self._publish(tmp, step)
            except BaseException:
                shutil.rmtree(tmp, ignore_errors=True)
                raise
            self.prune(current_step=step)
            return
        staging = self.root / f"{TMP_PREFIX}{PREFIX}{step:08d}.{self.attempt}-{self._saves}"
        staging.mkdir(exist_ok=True)
        mine = staging / f"{TMP_PREFIX}{shard_name(self.rank)}.{_unique()}"
        mine.mkdir()
        try:
            yield mine
            files = _seal(mine)
            os.rename(mine, staging / shard_name(self.rank))
            _fsync_dir(staging)
        except BaseException:
            shutil.rmtree(mine, ignore_errors=True)
            raise
        # The marker is the rank's last word: it exists only once the shard is complete.
        _write_json(staging / f"{shard_name(self.rank)}{DONE_SUFFIX}", {"rank": self.rank, "files": files})
        if self.rank != 0:
            return
        shards = self._await_shards(staging)
        manifest = {"step": step, "time": self.clock(), "world_size": self.world_size,
                    "shards": sorted(shards),
                    "files": {f"{shard_name(r)}/{name}": meta
                              for r, files in sorted(shards.items()) for name, meta in files.items()}}
        for r in shards:
            (staging / f"{shard_name(r)}{DONE_SUFFIX}").unlink()
        _write_json(staging / MANIFEST, manifest)
        self._publish(staging, step)
        self.prune(current_step=step)

    def _await_shards(self, staging: Path) -> dict[int, dict[str, Any]]:
        """Every rank's file list from its done-marker, once all of them are there."""
        deadline = time.monotonic() + self.barrier_timeout
        shards: dict[int, dict[str, Any]] = {}
        while True:
            for r in range(self.world_size):
                marker = staging / f"{shard_name(r)}{DONE_SUFFIX}"
                if r in shards or not marker.exists():
                    continue
                try:
                    data = json.loads(marker.read_text())
                    files = data["files"]
                    if int(data["rank"]) != r or not isinstance(files, dict):
                        raise ValueError("marker of another rank")
                except (OSError, ValueError, KeyError, TypeError) as exc:
                    raise IncompleteCheckpoint(f"{marker}: unreadable done-marker ({exc})") from exc
                shards[r] = files
            if len(shards) == self.world_size:
                return shards
            if time.monotonic() >= deadline:
                missing = sorted(set(range(self.world_size)) - set(shards))
                raise IncompleteCheckpoint(
                    f"{staging.name}: no shard from rank(s) {missing} within {self.barrier_timeout:g}s; "
                    "the step is not published")
            time.sleep(self.poll_seconds)

    def _publish(self, staging: Path, step: int) -> None:
        final = step_dir(self.root, step)
        if final.exists():
            shutil.rmtree(final)  # the same step saved again: the new one wins
        os.rename(staging, final)
        _fsync_dir(self.root)

    def verify(self, path: Path) -> Checkpoint:
        """The checkpoint at `path`, or CorruptCheckpoint if anything does not match.

        The manifest is data from a shared volume: any shape it has, and any file name in it
        that would lead outside the checkpoint's directory, makes the checkpoint corrupt."""
        try:
            manifest = json.loads((path / MANIFEST).read_text())
            step, when, files = int(manifest["step"]), float(manifest["time"]), manifest["files"]
            entries = [(str(name), int(meta["size"]), str(meta["sha256"])) for name, meta in files.items()]
            world_size = int(manifest.get("world_size", 1))
            shards = sorted(int(r) for r in manifest.get("shards", [0]))
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            raise CorruptCheckpoint(f"{path}: unreadable manifest ({exc})") from exc
        if step != step_of(path):
            raise CorruptCheckpoint(f"{path}: the manifest says step {step}")
        if world_size < 1 or shards != list(range(world_size)):
            raise CorruptCheckpoint(f"{path}: shards {shards} are not every rank of {world_size}")
        for name, size, digest in entries:
            rel = Path(name)
            if rel.is_absolute() or ".." in rel.parts or not rel.parts:
                raise CorruptCheckpoint(f"{path}: {name!r} is outside the checkpoint directory")
            f = path / rel
            if f.is_symlink() or not f.is_file() or f.stat().st_size != size or _sha256(f) != digest:
                raise CorruptCheckpoint(f"{path}: {name} does not match the manifest")
        return Checkpoint(step, path, when, world_size)

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

    def prune(self, current_step: int | None = None) -> None:
        """Keep the newest `keep` complete checkpoints; drop older ones, and temp directories
        nobody has written to for `stale_after` seconds. Temp directories of `current_step` or
        later are never touched: other ranks may still be writing them."""
        complete = 0
        for path in self.candidates():
            try:
                self.verify(path)
            except CorruptCheckpoint:
                continue
            complete += 1
            if complete > self.keep:
                shutil.rmtree(path, ignore_errors=True)
        now = time.time()  # file times are wall-clock, whatever `clock` says
        for tmp in self.root.glob(f"{TMP_PREFIX}*"):
            step = temp_step_of(tmp)
            if current_step is not None and step is not None and step >= current_step:
                continue
            if now - _newest_mtime(tmp) > self.stale_after:
                shutil.rmtree(tmp, ignore_errors=True)
