"""The example trainer: killed at a random step and resumed, it ends exactly where an
uninterrupted run ends (same loss to 1e-6, same weights)."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch  # installed by `make venv` (the examples extra): missing torch is an error, not a skip

REPO = Path(__file__).resolve().parents[2]
TRAINER = REPO / "examples" / "trainer" / "train.py"


def run(ckpt: Path, *extra: str, env: dict[str, str] | None = None) -> list[dict[str, Any]]:
    proc = subprocess.run(
        [sys.executable, str(TRAINER), "--steps", "60", "--checkpoint-dir", str(ckpt), *extra],
        capture_output=True, text=True, timeout=120, env=env or _env(), check=True,
    )
    return [json.loads(line) for line in proc.stdout.splitlines()]


def _env(**more: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("WANKA_")}
    return {**env, "PYTHONPATH": str(REPO / "operator"), **more}


def kill_at(ckpt: Path, step: int, sig: signal.Signals) -> list[dict[str, Any]]:
    """Start the trainer, and send `sig` once it reports `step`."""
    proc = subprocess.Popen(
        [sys.executable, str(TRAINER), "--steps", "60", "--checkpoint-dir", str(ckpt),
         "--step-seconds", "0.02"],
        stdout=subprocess.PIPE, text=True, env=_env(),
    )
    lines = []
    assert proc.stdout is not None
    for raw in proc.stdout:
        lines.append(json.loads(raw))
        if lines[-1].get("step", 0) >= step:
            proc.send_signal(sig)
            break
    lines += [json.loads(x) for x in proc.stdout.read().splitlines()]
    proc.wait(30)
    return lines


def final_weights(ckpt: Path) -> Any:
    latest = sorted(p for p in ckpt.iterdir() if p.name.startswith("step-"))[-1]
    return torch.load(latest / "state.pt", weights_only=True)["model"]


@pytest.fixture(scope="module")
def clean_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    ckpt = tmp_path_factory.mktemp("clean")
    return ckpt, run(ckpt)[-1]


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM], ids=["SIGKILL", "SIGTERM"])
def test_killed_and_resumed_run_matches_the_uninterrupted_one(
    tmp_path: Path, sig: signal.Signals, clean_run: tuple[Path, dict[str, Any]]
) -> None:
    clean_dir, done = clean_run
    assert done["event"] == "done" and done["step"] == 60

    rng = random.Random()
    resumed_dir = tmp_path / "resumed"
    kills = 0
    # At step 6 or later the step-5 checkpoint is complete (it is saved before step 6 starts),
    # so the resumed run must pick something up.
    lines = kill_at(resumed_dir, rng.randint(6, 50), sig)
    kills += 1
    if sig == signal.SIGTERM:
        assert lines[-1]["event"] == "stopped", lines[-3:]  # saved once and exited cleanly
    # Resume (as Wanka would, with WANKA_RESUME=1) until done.
    for _ in range(5):
        out = run(resumed_dir, env=_env(WANKA_RESUME="1"))
        if out[-1]["event"] == "done":
            break
    assert out[0]["event"] == "resumed" and out[0]["step"] > 0
    assert out[-1]["event"] == "done" and out[-1]["step"] == 60
    assert abs(out[-1]["loss"] - done["loss"]) < 1e-6, (out[-1], done)
    a, b = final_weights(clean_dir), final_weights(resumed_dir)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert kills == 1


def test_first_attempt_ignores_checkpoints_when_told_not_to_resume(tmp_path: Path) -> None:
    run(tmp_path, "--steps", "10")
    out = run(tmp_path, env=_env(WANKA_RESUME="0"))
    assert out[0]["event"] == "step" and out[0]["step"] == 1
