"""Prometheus metrics: counters and histograms updated in place, pool gauges computed at scrape."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Histogram, Info
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from wanka import __version__
from wanka.core.accounting import PoolSummary

BUILD_INFO = Info("wanka_build", "Wanka operator build information")
BUILD_INFO.info({"version": __version__})

RECONCILE_ERRORS = Counter(
    "wanka_reconcile_errors_total", "Reconcile passes that raised, by controller", ["controller"]
)
RECONCILE_SECONDS = Histogram(
    "wanka_reconcile_duration_seconds",
    "Time of one reconcile pass, by controller",
    ["controller"],
    buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
)
HEALTH_TRANSITIONS = Counter(
    "wanka_health_transitions_total", "Node health state transitions, by pool and new state",
    ["pool", "state"],
)
SIGNAL_TO_TAINT = Histogram(
    "wanka_health_signal_to_taint_seconds",
    "From a node condition turning bad to Wanka's taint on the node",
    ["pool"],
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60),
)
BINDS = Counter("wanka_binds_total", "Pod bindings through pods/binding, by result", ["result"])
EVENTS_DROPPED = Counter(
    "wanka_events_dropped_total", "Events not posted because the send queue was full (they are best effort)"
)
GANG_RESTARTS = Counter(
    "wanka_gang_restarts_total", "Whole-gang restarts, by pool and reason", ["pool", "reason"]
)
LOST_WORK_SECONDS = Counter(
    "wanka_lost_work_seconds_total",
    "Wall-clock training time lost to interruptions (since the last checkpoint)",
    ["pool"],
)
GANG_WAIT_SECONDS = Histogram(
    "wanka_gang_wait_seconds",
    "From job creation to its gang's admission",
    ["pool", "queue"],
    buckets=(0.5, 1, 2, 5, 10, 30, 60, 300, 900, 3600, 14400),
)
SCHEDULE_SECONDS = Histogram(
    "wanka_gang_placement_duration_seconds",
    "Time of one scheduling cycle (queue order, quotas, gang placement) for one pool",
    ["pool"],
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1),
)
LEADER_ELECTION_ERRORS = Counter(
    "wanka_leader_election_errors_total",
    "Leader election attempts that failed with an error (the next attempt follows)",
)


def _always() -> bool:
    return True


class PoolCollector(Collector):
    """Pool and queue gauges read at scrape time from the latest summaries and the cache's jobs
    (no stale series), and only on the leader: a standby's summaries are whatever it saw when it
    last led."""

    def __init__(self, source: Callable[[], Mapping[str, PoolSummary]],
                 leader: Callable[[], bool] = _always,
                 depth: Callable[[], Mapping[tuple[str, str], int]] = dict) -> None:
        self.source = source
        self.leader = leader
        self.depth = depth

    def collect(self) -> Iterator[GaugeMetricFamily]:
        leading = self.leader()
        yield GaugeMetricFamily("wanka_leader", "1 when this replica acts (holds the lease or runs alone)",
                                value=1.0 if leading else 0.0)
        if not leading:
            return
        pools = self.source()
        capacity = GaugeMetricFamily("wanka_pool_gpus_capacity", "GPUs of a pool, whatever their state",
                                     labels=["pool"])
        allocatable = GaugeMetricFamily(
            "wanka_pool_gpus_allocatable", "GPUs of a pool that can take work: healthy, on schedulable nodes",
            labels=["pool"])
        gpus = GaugeMetricFamily(
            "wanka_pool_gpus",
            "GPU-equivalents of a pool by state; the states add up to wanka_pool_gpus_capacity",
            labels=["pool", "state"])
        nodes = GaugeMetricFamily("wanka_pool_nodes", "Nodes of a pool by health", labels=["pool", "health"])
        devices = GaugeMetricFamily("wanka_pool_devices", "Devices of a pool by use",
                                    labels=["pool", "use"])
        for name, s in sorted(pools.items()):
            capacity.add_metric([name], float(s.gpus_total))
            allocatable.add_metric([name], float(s.gpus_allocatable))
            for state, value in s.gpu_parts().items():
                gpus.add_metric([name, state], float(value))
            for health, count in (
                ("healthy", s.nodes_healthy), ("sick", s.nodes_sick),
                ("recovering", s.nodes_recovering), ("quarantined", s.nodes_quarantined),
                ("onboarding", s.nodes_onboarding),
            ):
                nodes.add_metric([name, health], float(count))
            for use, count in (("idle", max(0, s.devices_idle)), ("shared", s.devices_shared),
                               ("full", s.devices_full), ("unhealthy", s.sick_devices)):
                devices.add_metric([name, use], float(count))
        depth = GaugeMetricFamily("wanka_queue_pending_jobs",
                                  "TrainingJobs waiting for a placement, by tenant queue and pool",
                                  labels=["queue", "pool"])
        for (queue, pool), count in sorted(self.depth().items()):
            depth.add_metric([queue, pool], float(count))
        yield capacity
        yield allocatable
        yield gpus
        yield nodes
        yield devices
        yield depth


def register_pool_collector(
    source: Callable[[], Mapping[str, PoolSummary]], registry: CollectorRegistry = REGISTRY,
    leader: Callable[[], bool] = _always,
    depth: Callable[[], Mapping[tuple[str, str], int]] = dict,
) -> PoolCollector:
    collector = PoolCollector(source, leader, depth)
    registry.register(collector)
    return collector
