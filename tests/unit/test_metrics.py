"""Pool and queue gauges: the GPU states add up to the capacity; queue depth counts waiting jobs."""

from __future__ import annotations

from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from tests.unit.builders import make_node, make_snapshot, occupy
from wanka.core.accounting import PoolSummary, queue_depth, summarize
from wanka.metrics import register_pool_collector


def samples(registry: CollectorRegistry, name: str) -> dict[tuple[str, ...], float]:
    return {tuple(s.labels.values()): s.value for m in registry.collect() for s in m.samples if s.name == name}


def busy_pool() -> PoolSummary:
    snap = make_snapshot([
        make_node("a").gpus(8).obj(),
        make_node("b").gpus(8).sick(0, 1).obj(),
        make_node("c").gpus(8).unschedulable().obj(),
    ])
    occupy(snap, "whole", "a", 0, 1, 2)
    occupy(snap, "half", "a", 3, milli=500)
    occupy(snap, "on-cordoned", "c", 0)
    return summarize(snap, stranded_milli=1500)


CASES = [
    pytest.param(PoolSummary(), {"allocated": 0, "free": 0, "stranded": 0, "unavailable": 0}, id="empty"),
    # a: 3.5 allocated, 4.5 free; b: 6 free, 2 sick; c: 1 allocated, 7 cordoned; 1.5 of the free is stranded
    pytest.param(busy_pool(), {"allocated": 4.5, "free": 9.0, "stranded": 1.5, "unavailable": 9.0}, id="busy"),
]


@pytest.mark.parametrize(("summary", "want_parts"), CASES)
def test_gpu_states_are_parts_of_the_capacity(summary: PoolSummary, want_parts: dict[str, float]) -> None:
    registry = CollectorRegistry()
    register_pool_collector(lambda: {"p": summary}, registry)
    parts = {labels[1]: v for labels, v in samples(registry, "wanka_pool_gpus").items()}
    assert parts == want_parts
    capacity = samples(registry, "wanka_pool_gpus_capacity")[("p",)]
    assert capacity == summary.gpus_total
    assert sum(parts.values()) == pytest.approx(capacity)


def job(queue: str, pool: str, phase: str | None) -> dict[str, Any]:
    return {"spec": {"queue": queue, "pool": pool}, "status": {"phase": phase} if phase else {}}


def test_queue_depth_counts_waiting_jobs_per_queue_and_pool() -> None:
    jobs = [job("team-a", "h100", None), job("team-a", "h100", "Queued"), job("team-a", "h100", "Running"),
            job("team-a", "a100", "Restarting"), job("team-b", "h100", "Succeeded"),
            job("team-b", "h100", "Suspended")]
    want = {("team-a", "h100"): 2, ("team-a", "a100"): 1}
    assert queue_depth(jobs) == want
    registry = CollectorRegistry()
    register_pool_collector(dict, registry, depth=lambda: queue_depth(jobs))
    assert samples(registry, "wanka_queue_pending_jobs") == {k: float(v) for k, v in want.items()}
