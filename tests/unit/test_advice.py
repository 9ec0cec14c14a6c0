"""Checkpoint-interval advice: Daly's estimate by hand, monotonicity, clamping, the prior, bad input."""

from __future__ import annotations

import math
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from wanka.core.advice import (
    FLOOR_SECONDS,
    LLAMA3_RATE_PER_GPU_HOUR,
    LLAMA3_RATE_PER_NODE_HOUR,
    PRIOR_NODE_HOURS,
    Advice,
    advise,
    interruption_rate,
    young_daly_interval,
)

DAY = 86400.0


def test_llama3_rates_are_the_papers_arithmetic() -> None:
    per_gpu_hour, per_node_hour = LLAMA3_RATE_PER_GPU_HOUR, LLAMA3_RATE_PER_NODE_HOUR
    assert per_gpu_hour == pytest.approx(419 / 21_233_664)  # 16,384 GPUs x 54 d x 24 h
    assert per_node_hour == pytest.approx(8 * per_gpu_hour)
    assert 1 / per_node_hour == pytest.approx(6334.6, abs=0.1)


@pytest.mark.parametrize(("save", "mtbf", "want"), [
    # sqrt(2*60*86400) = 3219.938; x = 60/172800; 3219.938 * (1 + sqrt(x)/3 + x/9) - 60
    pytest.param(60.0, DAY, 3180.062, id="C=60s,M=24h"),
    # sqrt(2*30*178,200) = 3269.86; x = 30/356,400 = 8.418e-5: 3269.86 * 1.003068 - 30
    pytest.param(30.0, 178_200.0, 3249.89, id="C=30s,M=49.5h"),
    pytest.param(10.0, 5.0, 5.0, id="C>=2M-gives-M"),
    pytest.param(0.0, DAY, FLOOR_SECONDS, id="free-save-gives-the-floor"),
])
def test_young_daly_known_values(save: float, mtbf: float, want: float) -> None:
    assert young_daly_interval(save, mtbf) == pytest.approx(want, rel=1e-5)


def test_young_daly_leading_term_is_young() -> None:
    # for C << M the higher-order terms vanish: T -> sqrt(2CM) - C
    c, m = 1.0, 1e9
    assert young_daly_interval(c, m) == pytest.approx(math.sqrt(2 * c * m), rel=1e-3)


@given(st.floats(0.5, 3600), st.floats(0.5, 3600), st.floats(3600, 1e7))
def test_bigger_saves_mean_longer_intervals(c1: float, c2: float, m: float) -> None:
    low, high = sorted((c1, c2))
    assert young_daly_interval(low, m) <= young_daly_interval(high, m) + 1e-9


@given(st.floats(1, 600), st.floats(3600, 1e7), st.floats(3600, 1e7))
def test_longer_mtbf_means_longer_intervals(c: float, m1: float, m2: float) -> None:
    low, high = sorted((m1, m2))
    assert young_daly_interval(c, low) <= young_daly_interval(c, high) + 1e-9


RATE = LLAMA3_RATE_PER_NODE_HOUR / 3600


def test_advise_a_1024_gpu_job_at_the_llama3_rate() -> None:
    got = advise(30, 128, RATE)
    assert got.job_mtbf_seconds == pytest.approx(1 / (128 * RATE))
    assert got.job_mtbf_seconds / 3600 == pytest.approx(49.5, abs=0.1)
    assert got.interval_seconds == round(young_daly_interval(30, got.job_mtbf_seconds))
    assert got.interval_seconds.is_integer()
    assert got.expected_waste_fraction == pytest.approx(
        30 / got.interval_seconds + got.interval_seconds / (2 * got.job_mtbf_seconds))


def test_more_nodes_shorter_interval_bigger_save_longer() -> None:
    intervals = [advise(30, n, RATE).interval_seconds for n in (1, 8, 64, 512, 4096)]
    assert intervals == sorted(intervals, reverse=True) and len(set(intervals)) == len(intervals)
    by_save = [advise(c, 128, RATE).interval_seconds for c in (5, 30, 120, 600)]
    assert by_save == sorted(by_save) and len(set(by_save)) == len(by_save)


@pytest.mark.parametrize(("kwargs", "want_interval"), [
    pytest.param(dict(save_seconds=1, nodes=100_000, rate_per_node_second=1e-3), 60.0, id="min-seconds"),
    pytest.param(dict(save_seconds=50, nodes=100_000, rate_per_node_second=1e-3), 100.0, id="twice-the-save"),
    pytest.param(dict(save_seconds=30, nodes=1, rate_per_node_second=1e-12), 86400.0, id="max-seconds"),
    pytest.param(dict(save_seconds=30, nodes=1, rate_per_node_second=0.0), 86400.0, id="no-faults-max"),
    pytest.param(dict(save_seconds=30, nodes=1, rate_per_node_second=1e-12, max_seconds=7200), 7200.0,
                 id="max-seconds-given"),
    pytest.param(dict(save_seconds=1, nodes=100_000, rate_per_node_second=1e-3, min_seconds=300), 300.0,
                 id="min-seconds-given"),
    pytest.param(dict(save_seconds=5000, nodes=1, rate_per_node_second=1e-3, max_seconds=3600), 10000.0,
                 id="lower-bound-wins-when-crossed"),
    pytest.param(dict(save_seconds=30.2, nodes=100_000, rate_per_node_second=1e-3), 61.0,
                 id="rounds-up-at-the-lower-bound"),
])
def test_advise_clamps(kwargs: dict[str, Any], want_interval: float) -> None:
    assert advise(**kwargs).interval_seconds == want_interval


def test_advise_without_faults_has_infinite_mtbf_and_only_save_waste() -> None:
    assert advise(30, 8, 0.0) == Advice(86400.0, math.inf, 30 / 86400)


@pytest.mark.parametrize(("faults", "node_seconds", "want_per_node_hour"), [
    pytest.param(0, 0.0, LLAMA3_RATE_PER_NODE_HOUR, id="nothing-seen-is-the-prior"),
    pytest.param(0, PRIOR_NODE_HOURS * 3600, LLAMA3_RATE_PER_NODE_HOUR / 2, id="a-quiet-prior-sized-history-halves-it"),
    pytest.param(1_000_000, 1e8 * 3600, 0.01, id="much-history-is-the-observed-rate"),
])
def test_interruption_rate(faults: int, node_seconds: float, want_per_node_hour: float) -> None:
    assert interruption_rate(faults, node_seconds) * 3600 == pytest.approx(want_per_node_hour, rel=2e-3)


def test_a_young_pool_without_faults_still_checkpoints() -> None:
    rate = interruption_rate(0, 128 * 7 * DAY)  # a week of 128 nodes, nothing failed
    assert rate > 0
    assert advise(30, 128, rate).interval_seconds < 86400


def test_the_prior_pulls_towards_its_rate() -> None:
    observed = 50 / (1000 * 3600.0)  # 50 faults in 1,000 node-hours: far above Llama 3
    blended = interruption_rate(50, 1000 * 3600.0)
    assert RATE < blended < observed
    stronger = interruption_rate(50, 1000 * 3600.0, prior_node_hours=100_000)
    assert RATE < stronger < blended


@pytest.mark.parametrize(("call", "args"), [
    pytest.param(young_daly_interval, (-1.0, DAY), id="negative-save"),
    pytest.param(young_daly_interval, (60.0, 0.0), id="zero-mtbf"),
    pytest.param(young_daly_interval, (60.0, -5.0), id="negative-mtbf"),
    pytest.param(young_daly_interval, (math.nan, DAY), id="nan-save"),
    pytest.param(young_daly_interval, (60.0, math.inf), id="infinite-mtbf"),
    pytest.param(interruption_rate, (-1, 10.0), id="negative-faults"),
    pytest.param(interruption_rate, (1, -10.0), id="negative-exposure"),
    pytest.param(interruption_rate, (1, 10.0, 0.0), id="zero-prior-rate"),
    pytest.param(interruption_rate, (1, 10.0, RATE, 0.0), id="zero-prior-weight"),
    pytest.param(advise, (-1.0, 8, RATE), id="advise-negative-save"),
    pytest.param(advise, (30.0, 0, RATE), id="advise-no-nodes"),
    pytest.param(advise, (30.0, 8, -RATE), id="advise-negative-rate"),
    pytest.param(advise, (30.0, 8, math.inf), id="advise-infinite-rate"),
])
def test_bad_input_raises(call: Any, args: tuple[Any, ...]) -> None:
    with pytest.raises(ValueError):
        call(*args)


@pytest.mark.parametrize("kwargs", [
    pytest.param(dict(min_seconds=0), id="zero-min"),
    pytest.param(dict(max_seconds=-1), id="negative-max"),
    pytest.param(dict(max_seconds=math.inf), id="infinite-max"),
])
def test_advise_bad_bounds_raise(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        advise(30, 8, RATE, **kwargs)
