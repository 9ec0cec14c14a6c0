"""Tidal inference and training in the gang simulator: service, the policy ranking, the accounting, the CLI."""

from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path

import pytest

from wanka.sim import gangs
from wanka.sim.tidal import (
    POLICIES,
    Policy,
    TidalConfig,
    TidalRun,
    demand_series,
    expected_share,
    simulate_tidal,
)

HOUR = 3600.0
# The default scenario on 8 nodes (64 GPUs) instead of 16: a week of every policy in about 4 s.
SMALL = TidalConfig(nodes=8)


@pytest.fixture(scope="module")
def week() -> dict[Policy, TidalRun]:
    return {p: simulate_tidal(SMALL, p) for p in POLICIES}


@pytest.mark.parametrize(("hour", "want"), [
    pytest.param(4.0, 0.15, id="trough-at-4"),
    pytest.param(14.0, 0.85, id="peak-at-14"),
    pytest.param(9.0, 0.50, id="midway-up-at-9"),
    pytest.param(21.0, 0.50, id="midway-down-at-21"),
    pytest.param(28.0, 0.15, id="next-day-trough"),
])
def test_the_daily_curve(hour: float, want: float) -> None:
    assert expected_share(TidalConfig(), hour * HOUR) == pytest.approx(want)


def test_the_curve_rises_to_the_peak_then_falls_and_the_low_period_is_below_its_midpoint() -> None:
    cfg = TidalConfig()
    up = [expected_share(cfg, h * HOUR) for h in range(4, 15)]
    down = [expected_share(cfg, h * HOUR) for h in range(14, 29)]
    assert up == sorted(up) and down == sorted(down, reverse=True)
    assert cfg.low_period == (21.0, 9.0)
    assert cfg.in_low_period(3 * HOUR) and cfg.in_low_period(21 * HOUR) and cfg.in_low_period(8.9 * HOUR)
    assert not cfg.in_low_period(9 * HOUR) and not cfg.in_low_period(20.9 * HOUR)


def test_the_demand_is_noisy_within_the_pool_and_follows_the_curve() -> None:
    cfg = TidalConfig(days=3)
    demand = demand_series(cfg)
    assert len(demand) == cfg.steps == 864 and min(demand) >= 0 and max(demand) <= cfg.gpus
    curve = [round(expected_share(cfg, k * cfg.step_seconds) * cfg.gpus) for k in range(cfg.steps)]
    gaps = [d - c for d, c in zip(demand, curve, strict=True)]
    assert any(gaps)  # noise is there
    assert max(abs(g) for g in gaps) < 0.15 * cfg.gpus  # and stays small next to the daily swing
    assert demand_series(replace(cfg, noise_share=0.0)) == curve


def test_tidal_serves_every_replica_in_the_step_it_is_demanded(week: dict[Policy, TidalRun]) -> None:
    run = week["tidal"]
    assert run.inference_running == demand_series(SMALL)
    assert run.inference_served >= 0.99 and run.never_started == 0
    assert run.preemptions > 0  # the demand was met by reclaiming training, not by idle GPUs
    # a replica that needed a preemption starts one cycle, the victim's grace period, later
    assert max(run.start_delays_s) == SMALL.grace_seconds


def test_tidal_beats_both_baselines_on_allocation_and_goodput(week: dict[Policy, TidalRun]) -> None:
    tidal = week["tidal"]
    for baseline in ("no-training-at-night", "static-split"):
        assert tidal.allocation > week[baseline].allocation + 0.2, baseline
        assert tidal.training_goodput > 2 * week[baseline].training_goodput, baseline
    assert tidal.allocation > 0.9


def test_victims_lose_at_most_the_work_since_their_last_checkpoint(week: dict[Policy, TidalRun]) -> None:
    every = SMALL.checkpoint_seconds
    for policy in ("tidal", "no-training-at-night"):
        reclaims = week[policy].reclaims
        assert len(reclaims) == week[policy].preemptions > 0
        assert any(r.ran_s > every + SMALL.restart_seconds for r in reclaims)  # some had saved before
        for r in reclaims:
            assert 0 <= r.since_checkpoint_s < every
            assert r.lost_gpu_s == pytest.approx(r.since_checkpoint_s * r.gpus)
            assert r.lost_gpu_s + r.restart_gpu_s <= r.ran_s * r.gpus + 1e-6
            # the core's estimate counts from the last save, or from the start before the first
            saved = r.ran_s - r.restart_gpu_s / r.gpus >= every
            want = r.lost_gpu_s if saved else r.lost_gpu_s + r.restart_gpu_s
            assert r.reported_gpu_s == pytest.approx(want)
        assert week[policy].training_lost_gpu_s == pytest.approx(sum(r.lost_gpu_s for r in reclaims))


@pytest.mark.parametrize("policy", POLICIES)
def test_every_gpu_second_is_accounted_for(week: dict[Policy, TidalRun], policy: Policy) -> None:
    run = week[policy]
    assert run.allocated_gpu_s == pytest.approx(run.inference_gpu_s + run.training_run_gpu_s)
    assert run.training_run_gpu_s == pytest.approx(
        run.training_useful_gpu_s + run.training_lost_gpu_s + run.training_restart_gpu_s + run.training_tail_gpu_s)
    assert min(run.training_lost_gpu_s, run.training_restart_gpu_s, run.training_tail_gpu_s) >= 0
    step = SMALL.step_seconds
    assert run.training_run_gpu_s == pytest.approx(sum(run.training_gpus) * step)
    assert run.inference_gpu_s == pytest.approx(sum(run.inference_running) * step)
    assert all(t + i <= SMALL.gpus for t, i in zip(run.training_gpus, run.inference_running, strict=True))
    assert run.finished > 0


def test_no_training_at_night_runs_no_training_in_the_low_period(week: dict[Policy, TidalRun]) -> None:
    run = week["no-training-at-night"]
    low = [k for k in range(SMALL.steps) if SMALL.in_low_period(k * SMALL.step_seconds)]
    assert len(low) == SMALL.steps // 2
    assert all(run.training_gpus[k] == 0 for k in low)
    assert sum(run.training_gpus) > 0 and run.drains > 0 and run.restarts >= run.drains


def test_the_static_split_keeps_to_its_partitions_and_never_preempts(week: dict[Policy, TidalRun]) -> None:
    run = week["static-split"]
    inference_gpus = SMALL.static_inference_nodes * 8
    assert inference_gpus == 56
    assert max(run.inference_running) == inference_gpus  # the noisy peak asks for more than that
    assert run.inference_served < 1 and run.never_started > 0
    assert max(run.training_gpus) == SMALL.gpus - inference_gpus
    assert run.preemptions == run.restarts == 0 and run.training_lost_gpu_s == 0


def test_a_scale_down_that_spreads_replicas_strands_the_pool() -> None:
    # A ReplicaSet's default removes replicas from the fullest nodes: no node comes free for a gang.
    cfg = replace(SMALL, days=3)
    pack = simulate_tidal(cfg, "tidal")
    spread = simulate_tidal(replace(cfg, scale_down="spread"), "tidal")
    assert spread.inference_served == pack.inference_served == 1
    assert spread.allocation < pack.allocation - 0.2
    assert spread.training_goodput < pack.training_goodput / 2


def test_deterministic_for_a_seed() -> None:
    cfg = TidalConfig(nodes=4, days=2, seed=3)
    for policy in POLICIES:
        assert simulate_tidal(cfg, policy) == simulate_tidal(cfg, policy)
    assert simulate_tidal(cfg, "tidal") != simulate_tidal(replace(cfg, seed=4), "tidal")


@pytest.mark.parametrize("bad", [
    pytest.param(dict(peak_share=1.5), id="share-above-one"),
    pytest.param(dict(trough_share=0.9, peak_share=0.5), id="trough-above-peak"),
    pytest.param(dict(peak_hour=4.0), id="peak-at-the-trough"),
    pytest.param(dict(checkpoint_seconds=0.0), id="no-checkpoint-interval"),
    pytest.param(dict(restart_seconds=-1.0), id="negative-restart"),
    pytest.param(dict(nodes=0), id="no-nodes"),
    pytest.param(dict(scale_down="random"), id="unknown-scale-down"),
])
def test_bad_model_parameters_raise(bad: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        TidalConfig(**bad)  # type: ignore[arg-type]


def test_cli_prints_the_table_and_writes_the_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "tidal.json"
    rc = gangs.main(["--tidal", "--fleet-nodes", "4", "--days", "2", "--seeds", "2", "--seed", "5",
                     "--no-progress", "--json", str(out)])
    assert rc == 0
    table = capsys.readouterr().out.splitlines()
    document = json.loads(out.read_text())
    assert document["fleet"] == {"source": "uniform_fleet(4)", "nodes": 4, "gpus": 32}
    assert document["seeds"] == [5, 6]
    assert document["model"]["days"] == 2 and document["model"]["low_period_hours"] == [21.0, 9.0]
    rows = document["rows"]
    assert [r["policy"] for r in rows] == list(POLICIES)
    for r in rows:
        for key, cell in r.items():
            if key != "policy":
                assert cell["min"] <= cell["mean"] <= cell["max"], key
    assert table[0].startswith("| policy | GPU allocation |") and len(table) == 2 + len(POLICIES)
    tidal = rows[0]
    want = (f"| tidal | {100 * tidal['allocation']['mean']:.1f}% ({100 * tidal['allocation']['min']:.1f}-"
            f"{100 * tidal['allocation']['max']:.1f}) |")
    assert table[2].startswith(want)
    # the JSON's numbers are those of the runs
    run = simulate_tidal(TidalConfig(nodes=4, days=2, seed=6), "tidal")
    assert tidal["allocation"]["max"] >= round(run.allocation, 5) >= tidal["allocation"]["min"]
    assert math.isclose(tidal["preemptions"]["mean"] * 2 - run.preemptions,
                        simulate_tidal(TidalConfig(nodes=4, days=2, seed=5), "tidal").preemptions)


def test_cli_without_json_prints_only_the_table(capsys: pytest.CaptureFixture[str]) -> None:
    assert gangs.main(["--tidal", "--fleet-nodes", "2", "--days", "1", "--seeds", "1", "--no-progress"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 5 and lines[2].startswith("| tidal | ") and "(" not in lines[2].split("|")[2]


def test_cli_rejects_bad_parameters_in_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    assert gangs.main(["--tidal", "--peak-share", "2", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("wanka simulate-gangs: error: peak_share") and len(err.splitlines()) == 1
    with pytest.raises(SystemExit) as exit_:
        gangs.main(["--tidal", "--ettr"])
    assert exit_.value.code == 2
    assert "--ettr and --tidal" in capsys.readouterr().err
