"""The training SDK: atomic checkpoints, resume that skips torn ones, SIGTERM, reports."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from wanka.sdk import CheckpointDir, CorruptCheckpoint, GracefulStop, Reporter, Settings
from wanka.sdk.checkpoint import MANIFEST, IncompleteCheckpoint, step_dir


def write(ck: CheckpointDir, step: int, payload: bytes = b"weights") -> None:
    with ck.save(step) as d:
        (d / "state.bin").write_bytes(payload + str(step).encode())
        (d / "sub").mkdir()
        (d / "sub" / "opt.bin").write_bytes(b"opt")


def age(path: Path, seconds: float) -> None:
    """Make everything under `path` look untouched for `seconds`."""
    when = time.time() - seconds
    for p in [*path.rglob("*"), path]:
        os.utime(p, (when, when))


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


def test_a_crash_before_rename_leaves_a_temp_dir_that_is_ignored_and_cleaned_once_stale(tmp_path: Path) -> None:
    ck = CheckpointDir(tmp_path, stale_after=3600)
    write(ck, 5)
    stale = tmp_path / ".tmp-step-00000009-otherhost-999999-abcd"  # a dead process's half save
    stale.mkdir()
    (stale / "state.bin").write_bytes(b"x")
    latest = ck.latest()
    assert latest is not None and latest.step == 5
    write(ck, 10)
    assert stale.exists()  # written to just now: it may be another process still saving
    age(stale, 7200)
    write(ck, 11)
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
                           "WANKA_PROGRESS": "j", "WANKA_NAMESPACE": "ns"})
    assert (s.rank, s.world_size, s.resume, s.restart_count, s.checkpoint_dir, s.progress) == (3, 4, True, 2, "/c", "j")
    assert Settings.from_env({}).resume is False


def test_report_is_a_no_op_outside_a_cluster(tmp_path: Path) -> None:
    settings = Settings(progress="j", namespace="ns")
    assert not Reporter(settings, sa_dir=tmp_path, server=None).enabled
    assert Reporter(settings, sa_dir=tmp_path, server=None).report(1, "/c", 0.0) is False
    # Only rank 0 reports, even inside a cluster.
    (tmp_path / "token").write_text("t")
    assert Reporter(settings, sa_dir=tmp_path, server="https://x").enabled
    assert not Reporter(Settings(progress="j", rank=1), sa_dir=tmp_path, server="https://x").enabled


# --- a gang: several ranks saving into one shared directory ---------------------------------

def gang(root: Path, world: int, **kw: float) -> list[CheckpointDir]:
    return [CheckpointDir(root, keep=kw.pop("keep", 3), rank=r, world_size=world, attempt=1,
                          barrier_timeout=kw.get("barrier_timeout", 30.0), poll_seconds=0.005)
            for r in range(world)]


def write_shard(ck: CheckpointDir, d: Path, step: int, tag: bytes) -> None:
    (d / "model.bin").write_bytes(b"%d:%d:%s" % (ck.rank, step, tag) * 1000)
    (d / "optim").mkdir()
    (d / "optim" / "state.bin").write_bytes(b"o%d" % ck.rank)


def gang_save(ranks: list[CheckpointDir], step: int, tag: bytes = b"",
              write: Callable[[CheckpointDir, Path, int, bytes], None] = write_shard) -> list[BaseException | None]:
    """Every rank saves `step` at once, each from its own thread; what each one raised."""
    errors: list[BaseException | None] = [None] * len(ranks)

    def one(ck: CheckpointDir) -> None:
        try:
            with ck.save(step) as d:
                write(ck, d, step, tag)
        except BaseException as exc:
            errors[ck.rank] = exc

    threads = [threading.Thread(target=one, args=(ck,)) for ck in ranks]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    return errors


def test_a_gang_saves_one_checkpoint_with_every_ranks_shard(tmp_path: Path) -> None:
    ranks = gang(tmp_path, 4)
    for step in (10, 20):
        assert gang_save(ranks, step) == [None] * 4
    latest = ranks[2].latest()
    assert latest is not None and (latest.step, latest.world_size) == (20, 4)
    for r in range(4):
        assert latest.shard(r).joinpath("model.bin").read_bytes() == b"%d:20:" % r * 1000
        assert latest.shard(r).joinpath("optim", "state.bin").read_bytes() == b"o%d" % r
    manifest = json.loads((latest.path / MANIFEST).read_text())
    assert manifest["shards"] == [0, 1, 2, 3]
    assert sorted(manifest["files"]) == sorted(f"rank-{r:05d}/{f}" for r in range(4)
                                               for f in ("model.bin", "optim/state.bin"))
    # Nothing is left behind: no staging directory, no done-markers in the checkpoint.
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step-00000010", "step-00000020"]
    assert sorted(p.name for p in latest.path.iterdir()) == [MANIFEST] + [f"rank-{r:05d}" for r in range(4)]


def test_a_gang_saving_the_same_step_twice_never_mixes_the_two_saves(tmp_path: Path) -> None:
    ranks = gang(tmp_path, 3)
    assert gang_save(ranks, 7, b"periodic") == [None] * 3
    assert gang_save(ranks, 7, b"on-sigterm") == [None] * 3
    latest = ranks[0].latest()
    assert latest is not None
    assert {latest.shard(r).joinpath("model.bin").read_bytes()[-10:] for r in range(3)} == {b"on-sigterm"}


def test_a_rank_that_dies_mid_save_never_makes_its_step_latest(tmp_path: Path) -> None:
    """Real processes: rank 2 is killed (os._exit) halfway through writing its shard."""
    script = textwrap.dedent("""
        import os, sys
        from wanka.sdk import CheckpointDir
        root, rank, world, step = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
        die, timeout = sys.argv[5] == "1", float(sys.argv[6])
        ck = CheckpointDir(root, rank=rank, world_size=world, attempt=0, barrier_timeout=timeout,
                           poll_seconds=0.01)
        with ck.save(step) as d:
            with open(d / "model.bin", "wb") as fh:
                fh.write(b"x" * 4096)
                if die:
                    fh.flush()
                    os._exit(137)
                fh.write(b"y" * 4096)
    """)

    def run_gang(step: int, dying: int | None, timeout: float) -> list[subprocess.CompletedProcess[str]]:
        env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2] / "operator")}
        procs = [subprocess.Popen([sys.executable, "-c", script, str(tmp_path), str(r), "4", str(step),
                                   "1" if r == dying else "0", str(timeout)],
                                  env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                 for r in range(4)]
        return [subprocess.CompletedProcess(p.args, p.wait(timeout=120), *p.communicate()) for p in procs]

    assert [p.returncode for p in run_gang(100, None, 60)] == [0, 0, 0, 0]
    done = run_gang(200, 2, 1.5)
    assert [p.returncode for p in done] == [1, 0, 137, 0]
    assert "IncompleteCheckpoint" in done[0].stderr and "rank(s) [2]" in done[0].stderr
    ck = CheckpointDir(tmp_path)
    latest = ck.latest()
    assert latest is not None and latest.step == 100
    assert not step_dir(tmp_path, 200).exists()
    # The dead save's staging directory survives until it is stale, then prune() removes it.
    staging = [p for p in tmp_path.iterdir() if p.name.startswith(".tmp-step-00000200")]
    assert len(staging) == 1
    ck.prune()
    assert staging[0].exists()
    age(staging[0], 7200)
    ck.prune()
    assert not staging[0].exists()


def test_rank_zero_gives_up_on_a_missing_shard_and_publishes_nothing(tmp_path: Path) -> None:
    ranks = gang(tmp_path, 3, barrier_timeout=0.3)
    assert gang_save(ranks, 1) == [None] * 3
    errors = gang_save(ranks[:2], 2)  # rank 2 never saves step 2
    assert isinstance(errors[0], IncompleteCheckpoint) and errors[1] is None
    latest = ranks[1].latest()
    assert latest is not None and latest.step == 1
    # A rank whose block raises removes its half shard and leaves no marker.
    with pytest.raises(RuntimeError), ranks[1].save(3) as d:
        (d / "model.bin").write_bytes(b"half")
        raise RuntimeError("rank 1 crashed")
    staging = next(p for p in tmp_path.iterdir() if p.name.startswith(".tmp-step-00000003"))
    assert list(staging.iterdir()) == []


def test_prune_never_removes_a_temp_dir_another_rank_may_still_write(tmp_path: Path) -> None:
    ck = CheckpointDir(tmp_path, stale_after=600)
    busy = tmp_path / ".tmp-step-00000004.1-3"  # an older step, but a rank wrote into it just now
    (busy / ".tmp-rank-00001.host-1-ab").mkdir(parents=True)
    current = tmp_path / ".tmp-step-00000009.1-4"  # the step being saved: never touched
    (current / "rank-00003").mkdir(parents=True)
    later = tmp_path / ".tmp-step-00000010.1-5"  # a faster rank already on the next save
    later.mkdir()
    stale = tmp_path / ".tmp-step-00000002.0-1"
    (stale / "rank-00000").mkdir(parents=True)
    deep = busy / ".tmp-rank-00001.host-1-ab" / "model.bin"
    deep.write_bytes(b"still growing")
    age(busy, 7200)
    os.utime(deep)  # only a file deep inside is fresh: the directory is still in use
    age(current, 7200)
    age(later, 7200)
    age(stale, 7200)
    ck.prune(current_step=9)
    assert busy.exists() and current.exists() and later.exists()
    assert not stale.exists()


def test_a_gang_manifest_missing_a_rank_is_torn(tmp_path: Path) -> None:
    ranks = gang(tmp_path, 3)
    assert gang_save(ranks, 1) == [None] * 3
    assert gang_save(ranks, 2) == [None] * 3
    newest = step_dir(tmp_path, 2)
    manifest = json.loads((newest / MANIFEST).read_text())
    manifest["shards"] = [0, 1]
    manifest["files"] = {k: v for k, v in manifest["files"].items() if not k.startswith("rank-00002/")}
    (newest / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(CorruptCheckpoint, match="every rank"):
        ranks[0].verify(newest)
    latest = ranks[0].latest()
    assert latest is not None and latest.step == 1


def test_ranks_must_belong_to_the_world() -> None:
    with pytest.raises(ValueError):
        CheckpointDir("/tmp/x", rank=4, world_size=4)


def test_torch_distributed_checkpoint_writes_each_ranks_shard(tmp_path: Path) -> None:
    """The documented recipe: DCP writes each rank's state into that rank's shard."""
    torch = pytest.importorskip("torch")
    dcp = pytest.importorskip("torch.distributed.checkpoint")
    ranks = gang(tmp_path, 2)

    def with_dcp(ck: CheckpointDir, shard: Path, step: int, tag: bytes) -> None:
        dcp.save({"w": torch.full((4,), float(ck.rank))}, checkpoint_id=shard, no_dist=True)

    assert gang_save(ranks, 5, write=with_dcp) == [None, None]
    latest = ranks[1].latest()
    assert latest is not None and latest.step == 5
    for r in range(2):
        state = {"w": torch.zeros(4)}
        dcp.load(state, checkpoint_id=latest.shard(r), no_dist=True)
        assert state["w"].tolist() == [float(r)] * 4
