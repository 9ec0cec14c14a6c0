"""The training SDK: atomic checkpoints, resume that skips torn ones, SIGTERM, reports."""

from __future__ import annotations

import hashlib
import json
import os
import signal
from pathlib import Path

import pytest

from wanka.sdk import CheckpointDir, CorruptCheckpoint, GracefulStop, Reporter, Settings
from wanka.sdk.checkpoint import MANIFEST, step_dir


def write(ck: CheckpointDir, step: int, payload: bytes = b"weights") -> None:
    with ck.save(step) as d:
        (d / "state.bin").write_bytes(payload + str(step).encode())
        (d / "sub").mkdir()
        (d / "sub" / "opt.bin").write_bytes(b"opt")


def test_latest_is_the_newest_complete_checkpoint(tmp_path: Path) -> None:
    ck = CheckpointDir(tmp_path, keep=5, clock=lambda: 1000.0)
    assert ck.latest() is None
    for step in (10, 20, 30):
        write(ck, step)
    latest = ck.latest()
    assert latest is not None and latest.step == 30 and latest.time == 1000.0
    assert latest.file("state.bin").read_bytes() == b"weights30"


@pytest.mark.parametrize("damage", ["truncate", "flip", "no-manifest", "bad-manifest", "missing-file",
                                    "files-not-a-map", "entry-not-a-map", "wrong-step", "escaping-path",
                                    "absolute-path"])
def test_a_torn_or_corrupt_checkpoint_is_skipped(tmp_path: Path, damage: str) -> None:
    ck = CheckpointDir(tmp_path, keep=5)
    write(ck, 10)
    write(ck, 20)
    newest = step_dir(tmp_path, 20)
    if damage == "truncate":
        (newest / "state.bin").write_bytes(b"w")
    elif damage == "flip":
        (newest / "state.bin").write_bytes(b"Weights20")
    elif damage == "no-manifest":
        (newest / MANIFEST).unlink()
    elif damage == "bad-manifest":
        (newest / MANIFEST).write_text("{not json")
    elif damage in ("files-not-a-map", "entry-not-a-map", "wrong-step", "escaping-path", "absolute-path"):
        manifest = json.loads((newest / MANIFEST).read_text())
        outside = tmp_path / "outside.bin"
        outside.write_bytes(b"x")
        digest = hashlib.sha256(b"x").hexdigest()
        manifest.update({
            "files-not-a-map": {"files": ["state.bin"]},
            "entry-not-a-map": {"files": {"state.bin": 7}},
            "wrong-step": {"step": 99},
            # A manifest naming files outside its directory must not make them "verified".
            "escaping-path": {"files": {"../outside.bin": {"size": 1, "sha256": digest}}},
            "absolute-path": {"files": {str(outside): {"size": 1, "sha256": digest}}},
        }[damage])
        (newest / MANIFEST).write_text(json.dumps(manifest))
    else:
        (newest / "sub" / "opt.bin").unlink()
    with pytest.raises(CorruptCheckpoint):
        ck.verify(newest)
    latest = ck.latest()
    assert latest is not None and latest.step == 10


def test_checkpoints_are_ordered_by_step_number_not_by_name(tmp_path: Path) -> None:
    ck = CheckpointDir(tmp_path, keep=2)
    for step in (99_999_999, 100_000_000, 100_000_001):
        write(ck, step)
    latest = ck.latest()
    assert latest is not None and latest.step == 100_000_001
    # prune kept the two highest steps, not the two longest-or-highest names.
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step-100000000", "step-100000001"]
    (tmp_path / "step-notanumber").mkdir()
    assert [p.name for p in ck.candidates()] == ["step-100000001", "step-100000000"]


def test_an_exception_while_writing_publishes_nothing(tmp_path: Path) -> None:
    ck = CheckpointDir(tmp_path)
    write(ck, 5)
    with pytest.raises(RuntimeError), ck.save(6) as d:
        (d / "state.bin").write_bytes(b"half")
        raise RuntimeError("killed mid-save")
    assert [p.name for p in tmp_path.iterdir()] == ["step-00000005"]
    latest = ck.latest()
    assert latest is not None and latest.step == 5


def test_a_crash_before_rename_leaves_a_temp_dir_that_is_ignored_and_cleaned(tmp_path: Path) -> None:
    ck = CheckpointDir(tmp_path)
    write(ck, 5)
    stale = tmp_path / ".tmp-step-00000009-999999"  # another (dead) process's half save
    stale.mkdir()
    (stale / "state.bin").write_bytes(b"x")
    latest = ck.latest()
    assert latest is not None and latest.step == 5
    write(ck, 10)
    assert not stale.exists()


def test_keeps_the_newest_k_complete_checkpoints(tmp_path: Path) -> None:
    ck = CheckpointDir(tmp_path, keep=2)
    for step in range(1, 6):
        write(ck, step)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step-00000004", "step-00000005"]
    with pytest.raises(ValueError):
        CheckpointDir(tmp_path, keep=0)


def test_saving_the_same_step_again_replaces_it(tmp_path: Path) -> None:
    ck = CheckpointDir(tmp_path)
    write(ck, 7, b"old")
    write(ck, 7, b"new")
    latest = ck.latest()
    assert latest is not None and latest.file("state.bin").read_bytes() == b"new7"


def test_sigterm_only_asks_the_loop_to_stop_and_save_once(tmp_path: Path) -> None:
    saves: list[int] = []
    stop = GracefulStop(lambda: saves.append(1))
    try:
        assert not stop.requested
        os.kill(os.getpid(), signal.SIGTERM)
        assert stop.requested and saves == []  # nothing saved inside the handler
        stop.save_once()
        stop.save_once()
        assert saves == [1]
    finally:
        stop.restore()


def test_settings_from_env() -> None:
    s = Settings.from_env({"WANKA_JOB": "ns/j", "RANK": "3", "WORLD_SIZE": "4", "WANKA_RESUME": "1",
                           "WANKA_RESTART_COUNT": "2", "WANKA_CHECKPOINT_DIR": "/c",
                           "WANKA_CHECKPOINT_CONFIGMAP": "j-checkpoint", "WANKA_NAMESPACE": "ns"})
    assert (s.rank, s.world_size, s.resume, s.restart_count, s.checkpoint_dir) == (3, 4, True, 2, "/c")
    assert Settings.from_env({}).resume is False


def test_report_is_a_no_op_outside_a_cluster(tmp_path: Path) -> None:
    settings = Settings(configmap="j-checkpoint", namespace="ns")
    assert not Reporter(settings, sa_dir=tmp_path, server=None).enabled
    assert Reporter(settings, sa_dir=tmp_path, server=None).report(1, "/c", 0.0) is False
    # Only rank 0 reports, even inside a cluster.
    (tmp_path / "token").write_text("t")
    assert Reporter(settings, sa_dir=tmp_path, server="https://x").enabled
    assert not Reporter(Settings(configmap="c", rank=1), sa_dir=tmp_path, server="https://x").enabled
