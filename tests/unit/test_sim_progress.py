"""Long simulations say how far they are and how long is left; the plot zooms where policies differ."""

from __future__ import annotations

import io
from pathlib import Path

import pytest

from tests.unit.test_openb_sim import write_trace
from wanka.sim import cli
from wanka.sim.openb import Job, Replay, Step, run_jobs
from wanka.sim.progress import clock, eta, progress


@pytest.mark.parametrize(("done", "total", "elapsed", "want"), [
    pytest.param(0, 10, 5.0, None, id="nothing-finished-no-guess"),
    pytest.param(2, 10, 30.0, 120.0, id="linear"),
    pytest.param(10, 10, 99.0, 0.0, id="finished"),
])
def test_eta(done: int, total: int, elapsed: float, want: float | None) -> None:
    assert eta(done, total, elapsed) == want


@pytest.mark.parametrize(("seconds", "want"), [(None, "-:--"), (59.6, "1:00"), (125, "2:05"), (3725, "1:02:05")])
def test_clock(seconds: float | None, want: str) -> None:
    assert clock(seconds) == want


def test_off_a_terminal_each_finished_unit_is_one_line_with_its_eta() -> None:
    out, now = io.StringIO(), iter([0.0, 10.0, 30.0])
    with progress("replays", 3, out=out, now=lambda: next(now)) as tick:
        tick("wanka seed 42")
        tick("fgd seed 42")
    assert out.getvalue().splitlines() == [
        "replays [1/3] wanka seed 42 · elapsed 0:10 · ETA 0:20",
        "replays [2/3] fgd seed 42 · elapsed 0:30 · ETA 0:15",
    ]


def test_disabled_progress_prints_nothing() -> None:
    out = io.StringIO()
    with progress("replays", 3, enabled=False, out=out) as tick:
        tick("x")
    assert out.getvalue() == ""


@pytest.mark.parametrize("processes", [1, 2])
def test_run_jobs_reports_every_replay_and_keeps_the_order(tmp_path: Path, processes: int) -> None:
    nodes, pods = write_trace(tmp_path)
    jobs = [Job(str(nodes), str(pods), p, s, 5.0, 1.3) for p in ("wanka", "bestfit") for s in (1, 2)]
    seen: list[str] = []
    replays = run_jobs(jobs, processes, done=seen.append)
    assert [(r.policy, r.seed) for r in replays] == [(j.policy, j.seed) for j in jobs]
    assert sorted(seen) == sorted(f"{j.policy} seed {j.seed}" for j in jobs)


def test_simulate_reports_progress_on_stderr(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    nodes, pods = write_trace(tmp_path)
    argv = ["--nodes", str(nodes), "--pods", str(pods), "--policy", "wanka", "--seeds", "2", "--jobs", "1"]
    assert cli.main(argv) == 0
    err = capsys.readouterr().err.splitlines()
    assert [line.split(" · ")[0] for line in err] == ["replays [1/2] wanka seed 42", "replays [2/2] wanka seed 43"]
    assert cli.main([*argv, "--no-progress"]) == 0
    assert capsys.readouterr().err == ""


def test_the_zoom_fits_the_curves_between_90_and_130_percent() -> None:
    curves = {"a": ([50.0, 95.0, 120.0, 140.0], [900.0, 40.0, 60.0, 1.0]),
              "b": ([50.0, 100.0, 131.0], [800.0, 50.0, 2.0]),
              "far-worse": ([100.0, 120.0], [300.0, 200.0])}
    limits = cli.zoom_limits(curves)
    assert limits is not None
    low, high = limits
    assert low < 40.0 and 60.0 < high < 100.0, "outside 90-130%, or over twice the best, is off the zoom"
    assert cli.zoom_limits({"a": ([10.0, 50.0], [1.0, 2.0])}) is None


def test_the_plot_has_a_zoomed_panel() -> None:
    import matplotlib.pyplot as plt

    steps = [Step(arrived_pct=float(p), allocated_gpus=p / 2, unallocated_gpus=100 - p / 2, fragmented_gpus=0,
                  failed_tasks=0, stranded_gpus=0) for p in range(0, 140, 5)]
    replays = [Replay(policy=name, seed=1, nodes=1, gpus=100, tasks=1, seconds=0.1, steps=steps)
               for name in ("wanka", "fgd")]
    fig = cli.figure(replays)
    try:
        whole, zoom = fig.axes
        assert zoom.get_xlim() == (90.0, 130.0)
        low, high = zoom.get_ylim()
        assert 0 < low < 35 and 55 < high < 70, "fitted to 35-55 unallocated GPUs, padded"
        assert whole.get_xlim()[0] == 60 and whole.get_ylim()[0] == 0
    finally:
        plt.close(fig)
