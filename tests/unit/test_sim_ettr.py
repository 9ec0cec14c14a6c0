"""Fleet ETTR in the gang simulator: the accounting by hand, paired comparisons per seed, the CLI's JSON."""

from __future__ import annotations

import json
import statistics
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from wanka.core.advice import LLAMA3_RATE_PER_GPU_HOUR
from wanka.sim import gangs
from wanka.sim.gangs import SPENT, EttrConfig, ettr_table, simulate_ettr

DAY = 86400.0
QUIET = dict(fault_per_gpu_hour=0.0, latent_share=0.0)
# 32 nodes on a 64-node fleet, five days: small enough for a unit test, faulty enough to matter
SMALL = EttrConfig(gpus=256, days=5)
FLEET = 64


@pytest.mark.parametrize(("interval", "save", "want_checkpoints"), [
    pytest.param(3570.0, 30.0, 24, id="hourly-cycles-fill-the-day"),
    pytest.param(1190.0, 10.0, 72, id="twenty-minute-cycles"),
])
def test_no_faults_ettr_is_one_minus_the_checkpoint_overhead(
        interval: float, save: float, want_checkpoints: int) -> None:
    run = simulate_ettr(EttrConfig(gpus=64, days=1, interval_seconds=interval, save_seconds=save, **QUIET), 8)
    assert run.checkpoints == want_checkpoints and run.interruptions == 0
    assert run.ettr == pytest.approx(1 - save / (interval + save), abs=1e-12)
    assert run.spent["checkpoint"] == pytest.approx(want_checkpoints * save)
    assert run.spent["lost"] == run.spent["detect"] == run.spent["restart"] == 0


def test_no_faults_with_advice_loses_only_saves() -> None:
    run = simulate_ettr(EttrConfig(gpus=64, days=2, advised=True, **QUIET), 8)
    assert run.interruptions == 0 and run.checkpoints > 0
    assert run.ettr == pytest.approx(1 - run.spent["checkpoint"] / run.wall_s)
    # no fault seen: the prior decays with exposure, so the advised interval only grows
    assert run.mean_interval_s is not None and run.mean_interval_s > 3600


@pytest.mark.parametrize("variant", [
    pytest.param(dict(), id="defaults"),
    pytest.param(dict(onboarding=True, advised=True), id="onboarding-advice"),
    pytest.param(dict(latent_share=0.5, repair_hours=1000.0), id="spares-run-out"),
])
def test_the_wall_time_is_all_accounted_for(variant: dict[str, Any]) -> None:
    for seed in range(1, 4):
        run = simulate_ettr(replace(SMALL, seed=seed, **variant), 40)
        assert sum(run.spent.values()) == pytest.approx(run.wall_s)
        assert set(run.spent) == set(SPENT) and min(run.spent.values()) >= 0
        assert run.interruptions >= run.hardware >= run.latent


def test_a_fleet_without_spares_makes_the_job_wait() -> None:
    cfg = replace(SMALL, latent_share=0.5, repair_hours=24.0)
    run = simulate_ettr(cfg, cfg.nodes)  # every node in the job, none spare
    assert run.hardware > 0 and run.spent["wait"] > 0


def test_the_restart_backoff_doubles_up_to_its_cap() -> None:
    cfg = replace(SMALL, seed=2, fault_per_gpu_hour=40 * LLAMA3_RATE_PER_GPU_HOUR, backoff_seconds=30.0)
    run = simulate_ettr(cfg, FLEET)
    assert run.interruptions > 6
    # (with this seed no recovery is cut short by the end of the window)
    assert run.spent["reload"] == pytest.approx(run.interruptions * cfg.reload_seconds)
    want = sum(min(30.0 * 2**k, 600.0) for k in range(run.interruptions))
    assert run.spent["backoff"] == pytest.approx(want)
    assert simulate_ettr(replace(cfg, backoff_seconds=0.0), FLEET).spent["backoff"] == 0


@pytest.mark.parametrize("seed", range(1, 11))
def test_onboarding_never_does_worse_than_without_on_the_same_seed(seed: int) -> None:
    for base in (replace(SMALL, seed=seed), replace(SMALL, seed=seed, latent_share=0.2, advised=True)):
        off = simulate_ettr(base, FLEET)
        on = simulate_ettr(replace(base, onboarding=True), FLEET)
        assert on.ettr >= off.ettr
        assert on.latent <= off.latent


@pytest.mark.parametrize("seed", range(1, 11))
def test_advice_beats_a_badly_chosen_fixed_interval(seed: int) -> None:
    # forty times Llama 3's rate: the 32-node job fails about every 5 hours
    cfg = replace(SMALL, seed=seed, fault_per_gpu_hour=40 * LLAMA3_RATE_PER_GPU_HOUR)
    advised = simulate_ettr(replace(cfg, advised=True), FLEET)
    for bad in (6 * 3600.0, 60.0):  # far too seldom, far too often
        assert advised.ettr > simulate_ettr(replace(cfg, interval_seconds=bad), FLEET).ettr


def test_the_mean_agrees_with_the_first_order_estimate() -> None:
    # 1,024 GPUs at Llama 3's rate, no faulty deliveries: waste ~ C/(T+C) + ((T+C)/2 + R) / M
    cfg = EttrConfig(latent_share=0.0)
    m = 3600 / (cfg.fault_per_gpu_hour * cfg.gpus)
    recovery = (cfg.detect_seconds + cfg.hardware_share * cfg.taint_seconds + cfg.recovery_seconds
                + cfg.start_seconds + cfg.reload_seconds)
    t, c = cfg.interval_seconds, cfg.save_seconds
    want = 1 - c / (t + c) - ((t + c) / 2 + recovery) / m
    got = statistics.fmean(simulate_ettr(replace(cfg, seed=s), 200).ettr for s in range(1, 41))
    assert got == pytest.approx(want, abs=0.002)


def test_deterministic_for_a_seed() -> None:
    cfg = replace(SMALL, seed=7, advised=True)
    assert simulate_ettr(cfg, FLEET) == simulate_ettr(cfg, FLEET)
    assert simulate_ettr(cfg, FLEET) != simulate_ettr(replace(cfg, seed=8), FLEET)


def test_a_job_bigger_than_the_fleet() -> None:
    with pytest.raises(ValueError, match="needs 1024 nodes of 8 GPUs; the fleet has 872"):
        simulate_ettr(EttrConfig(gpus=8192), 872)
    rows = ettr_table(EttrConfig(days=1), [8192], [1], 872)
    assert len(rows) == 4 and all("needs 1024 nodes" in r["error"] for r in rows)


@pytest.mark.parametrize("bad", [
    pytest.param(dict(latent_share=1.5), id="share-above-one"),
    pytest.param(dict(save_seconds=-1.0), id="negative-save"),
    pytest.param(dict(interval_seconds=0.0), id="zero-interval"),
    pytest.param(dict(days=0.0), id="no-time"),
    pytest.param(dict(gpus=0), id="no-gpus"),
])
def test_bad_model_parameters_raise(bad: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        EttrConfig(**bad)


def test_cli_prints_the_table_as_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "ettr.json"
    rc = gangs.main(["--ettr", "--gpus", "64", "--gpus", "256", "--days", "2", "--seeds", "2",
                     "--fleet-nodes", "40", "--no-progress", "--json", str(out)])
    assert rc == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed == json.loads(out.read_text())
    assert printed["fleet"] == {"source": "uniform_fleet(40)", "nodes": 40, "gpus": 320, "nodes_8gpu": 40}
    assert printed["seeds"] == [1, 2]
    assert printed["model"]["save_seconds"] == 30.0 and printed["model"]["prior_node_hours"] > 0
    rows = printed["rows"]
    assert [(r["gpus"], r["onboarding"], r["interval"]) for r in rows] == [
        (g, o, i) for g in (64, 256) for o in (False, True) for i in ("fixed", "advised")
    ]
    for r in rows:
        assert 0 < r["ettr_min"] <= r["ettr_mean"] <= r["ettr_max"] <= 1
        assert r["interruptions_per_day"] >= 0 and r["checkpoint_interval_mean_s"] > 0
        assert sum(r["time_share"].values()) == pytest.approx(1, abs=1e-4)


def test_cli_rejects_bad_parameters_in_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    assert gangs.main(["--ettr", "--latent-share", "2", "--fleet-nodes", "8", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("wanka simulate-gangs: error: latent_share") and len(err.splitlines()) == 1
