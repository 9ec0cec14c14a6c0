"""Synthetic multi-node gang workload simulator that drives the same core scheduling cycle.

The fleet is the 4,278-node shape of `spot_gpu_nodes_2026.csv` as is (models, GPUs and CPUs
per node), given a synthetic topology: racks of up to 16 nodes of one model, spines of 8
racks. Jobs arrive as a Poisson stream with a size mix from notebooks (a quarter GPU) to
64-node pre-training gangs, run for log-normal durations, fail at a configurable rate (the
gang restarts from its last checkpoint and queues again at the front) and are scheduled by
`wanka.core.queueing.schedule`, so the policy comparison is a comparison of the operator.
"""

from __future__ import annotations

import argparse
import csv
import heapq
import json
import math
import random
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from wanka.argparsing import Parser
from wanka.core.queueing import Admit, PoolQuota, QueueSpec, SchedulerConfig, schedule
from wanka.core.requests import GangRequest
from wanka.core.snapshot import WHOLE, Device, Node, Snapshot
from wanka.sim import data_dir
from wanka.sim.progress import progress

SPOT_CSV = data_dir() / "spot_gpu_nodes_2026.csv"
LEVELS = ("wanka.io/nvlink-domain", "wanka.io/rack", "wanka.io/spine")
RACK_NODES = 16
SPINE_RACKS = 8
NVLINK_NODES = 4
GPU_MEMORY_MIB = {"A10": 24 * 1024, "H800": 80 * 1024}


def _memory_of(model: str) -> int:
    return GPU_MEMORY_MIB.get(model, 80 * 1024 if "80GB" in model else 32 * 1024)


def _topology(model: str, i: int) -> tuple[str, str, str]:
    """Synthetic domains: the i-th node of a model sits in an NVLink group, rack and spine."""
    rack = i // RACK_NODES
    tag = model.lower()
    return (
        f"{tag}-nvl-{i // NVLINK_NODES}",
        f"{tag}-rack-{rack}",
        f"{tag}-spine-{rack // SPINE_RACKS}",
    )


def load_spot_fleet(path: Path = SPOT_CSV) -> list[Node]:
    """The CSV's nodes as snapshot nodes (memory: 8 GiB per core, a common server ratio)."""
    nodes: list[Node] = []
    seen: dict[str, int] = {}
    with path.open(newline="") as fh:
        for row in csv.DictReader(fh):
            model = row["gpu_model"]
            gpus = int(row["gpu_capacity_num"])
            cpus = int(row["cpu_num"])
            i = seen.get(model, 0)
            seen[model] = i + 1
            nodes.append(
                Node(
                    name=f"node-{row['node_name']}",
                    cpu_milli=cpus * 1000,
                    memory_mib=cpus * 8 * 1024,
                    devices=[Device(d, model, _memory_of(model)) for d in range(gpus)],
                    labels={"wanka.io/gpu-model": model},
                    topology=_topology(model, i),
                )
            )
    return nodes


def uniform_fleet(nodes: int = 1250, gpus: int = 8, model: str = "H100-80GB") -> list[Node]:
    """A homogeneous fleet such as 1,250 x 8 H100 (10,000 devices)."""
    return [
        Node(
            name=f"gpu-{i:05d}",
            cpu_milli=192_000,
            memory_mib=2048 * 1024,
            devices=[Device(d, model, _memory_of(model)) for d in range(gpus)],
            labels={"wanka.io/gpu-model": model},
            topology=_topology(model, i),
        )
        for i in range(nodes)
    ]


def occupy(snapshot: Snapshot, fraction: float, rng: random.Random) -> int:
    """Bring the fleet to about `fraction` busy with a realistic mix placed by the core.

    Jobs (by count: 30% quarter/half slices, 30% 1 GPU, 10% 2 GPU, 10% 4 GPU, 12% one
    8-GPU node, 8% 2-8 node gangs) are placed by `place_gang` up to fraction + 15%, then
    random ones end until `fraction` is left, so the free space has the holes that
    departures leave in a real fleet. Returns how many jobs remain.
    """
    # imported here: the simulator sits above the core, the core never imports it
    from wanka.core.gang import place_gang

    total = snapshot.total_devices() * WHOLE
    placed: list[str] = []
    misses = 0
    i = 0
    while snapshot.allocated_milli() < total * min(1.0, fraction + 0.15) and misses < 200:
        roll = rng.random()
        replicas, gpus, milli = 1, 0, 0
        if roll < 0.3:
            milli = rng.choice((250, 500))
        elif roll < 0.6:
            gpus = 1
        elif roll < 0.7:
            gpus = 2
        elif roll < 0.8:
            gpus = 4
        elif roll < 0.92:
            gpus = 8
        else:
            gpus, replicas = 8, rng.choice((2, 4, 8))
        owner = f"bg/job-{i}"
        i += 1
        req = GangRequest(
            owner,
            replicas=replicas,
            gpus=gpus,
            gpu_milli=milli,
            cpu_milli=2000 * max(1, gpus),
            memory_mib=8192 * max(1, gpus),
        )
        if place_gang(snapshot, req).ok:
            placed.append(owner)
        else:
            misses += 1
    rng.shuffle(placed)
    while placed and snapshot.allocated_milli() > total * fraction:
        snapshot.release(placed.pop())
    return len(placed)


# --- the simulator ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SizeClass:
    """One kind of job in the mix."""

    name: str
    weight: float
    replicas: tuple[int, ...]
    gpus: int = 0
    milli: int = 0
    mean_hours: float = 1.0
    models: frozenset[str] = frozenset()  # empty: any model
    priority: int = 0


# Training-class GPUs of the spot fleet (its 8-GPU servers); slices go to the A10s.
TRAINING = frozenset({"A100-SXM4-80GB", "A800-SXM4-80GB", "H800", "GPU-series-2"})
# Weights by count: many small jobs, a few big ones that hold most GPU-hours.
DEFAULT_MIX: tuple[SizeClass, ...] = (
    SizeClass("slice", 0.30, (1,), milli=250, mean_hours=0.5, models=frozenset({"A10"})),
    SizeClass("1gpu", 0.30, (1,), gpus=1, mean_hours=1.0, models=TRAINING),
    SizeClass("1node", 0.20, (1,), gpus=8, mean_hours=2.0, models=TRAINING),
    SizeClass("2-8node", 0.15, (2, 4, 8), gpus=8, mean_hours=4.0, priority=10, models=TRAINING),
    SizeClass(
        "16-64node", 0.05, (16, 32, 64), gpus=8, mean_hours=8.0, priority=20, models=TRAINING
    ),
)


@dataclass
class SimConfig:
    jobs: int = 1000
    seed: int = 1
    load: float = 1.3  # offered GPU-hours / capacity GPU-hours of the 8-GPU nodes
    failure_per_node_day: float = 0.02  # chance per node-day a running gang is interrupted
    checkpoint_minutes: float = 30.0
    backfill: bool = True
    preemption: bool = True
    mix: tuple[SizeClass, ...] = DEFAULT_MIX
    max_attempts: int = 100
    tick_seconds: float = 60.0  # a scheduling cycle at most once per tick
    queues: int = 3


@dataclass(slots=True)
class _Job:
    req: GangRequest
    size: str
    work: float  # seconds of useful work needed
    done: float = 0.0  # seconds of useful work banked at checkpoints
    submitted: float = 0.0
    first_start: float | None = None
    started: float | None = None
    restarts: int = 0
    epoch: int = 0  # bumps on every stop so stale events are ignored
    finished: float | None = None


@dataclass(slots=True)
class SimReport:
    policy: str
    jobs: int
    finished: int
    utilisation: float  # busy GPU-time / (all devices x makespan), drain tail included
    goodput: float
    preemptions: int
    failures: int
    utilisation_arriving: float = 0.0  # the same while jobs still arrive (steady state)
    queue_delay_p50_s: dict[str, float] = field(default_factory=dict)
    queue_delay_p95_s: dict[str, float] = field(default_factory=dict)
    makespan_h: float = 0.0

    def as_dict(self) -> dict[str, object]:
        return {
            "policy": self.policy,
            "jobs": self.jobs,
            "finished": self.finished,
            "utilisation": round(self.utilisation, 4),
            "utilisation_arriving": round(self.utilisation_arriving, 4),
            "goodput": round(self.goodput, 4),
            "preemptions": self.preemptions,
            "failures": self.failures,
            "queue_delay_p50_s": {k: round(v, 1) for k, v in self.queue_delay_p50_s.items()},
            "queue_delay_p95_s": {k: round(v, 1) for k, v in self.queue_delay_p95_s.items()},
            "makespan_h": round(self.makespan_h, 2),
        }


def _pct(values: Sequence[float], q: float) -> float:
    if not values:
        return math.nan
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * (len(ordered) - 1) + 0.5))]


def _make_jobs(cfg: SimConfig, capacity_gpus: int, rng: random.Random) -> list[_Job]:
    weights = [c.weight for c in cfg.mix]
    mean_gpu_h = sum(
        c.weight * (sum(c.replicas) / len(c.replicas)) * (c.gpus or c.milli / WHOLE) * c.mean_hours
        for c in cfg.mix
    ) / sum(weights)
    # arrivals per hour so that offered GPU-hours per hour = load x capacity
    rate = cfg.load * capacity_gpus / mean_gpu_h
    t = 0.0
    jobs = []
    for i in range(cfg.jobs):
        t += rng.expovariate(rate) * 3600
        cls = rng.choices(cfg.mix, weights)[0]
        hours = rng.lognormvariate(math.log(cls.mean_hours) - 0.5, 1.0)
        work = max(60.0, hours * 3600)
        req = GangRequest(
            owner=f"t{i % cfg.queues}/{cls.name}-{i}",
            queue=f"team-{i % cfg.queues}",
            pool="fleet",
            priority=cls.priority,
            replicas=rng.choice(cls.replicas),
            gpus=cls.gpus,
            gpu_milli=cls.milli,
            cpu_milli=2000 * max(cls.gpus, 1),
            memory_mib=8192 * max(cls.gpus, 1),
            models=cls.models,
            topology_level="wanka.io/spine" if cls.gpus == 8 else "",
            topology_mode="Required" if cls.gpus == 8 else "Preferred",
            created=t,
            duration_bound=work * 1.5,  # users over-estimate their jobs' run time
        )
        jobs.append(_Job(req, cls.name, work, submitted=t))
    return jobs


def simulate(cfg: SimConfig, nodes: Sequence[Node] | None = None) -> SimReport:
    """Run one policy over one seeded workload; deterministic for (cfg, nodes)."""
    rng = random.Random(cfg.seed)
    fleet = list(nodes) if nodes is not None else load_spot_fleet()
    snap = Snapshot(fleet, levels=LEVELS)
    capacity = snap.total_devices()
    big_capacity = sum(len(n.devices) for n in fleet if len(n.devices) == 8)
    jobs = _make_jobs(cfg, big_capacity, rng)
    by_owner = {j.req.owner: j for j in jobs}
    per_queue = max(1, capacity // cfg.queues)
    queues = [
        QueueSpec(f"team-{q}", (PoolQuota("fleet", per_queue, None),)) for q in range(cfg.queues)
    ]
    sched = SchedulerConfig(
        backfill=cfg.backfill, preemption=cfg.preemption, max_attempts=cfg.max_attempts
    )
    events: list[tuple[float, int, str, str, int]] = []  # (time, seq, kind, owner, epoch)
    seq = 0

    def push(t: float, kind: str, owner: str, epoch: int = 0) -> None:
        nonlocal seq
        heapq.heappush(events, (t, seq, kind, owner, epoch))
        seq += 1

    for j in jobs:
        push(j.submitted, "arrive", j.req.owner)
    cycle_due: float | None = None
    allocated = snap.allocated_milli()  # kept up to date here: a fleet-wide sum is slow
    busy_arriving_s = 0.0
    arrivals_end = jobs[-1].submitted if jobs else 0.0
    pending: dict[str, _Job] = {}
    running: dict[str, _Job] = {}
    busy_gpu_s = 0.0
    useful_gpu_s = 0.0
    preemptions = failures = 0
    last_t = 0.0
    ckpt = cfg.checkpoint_minutes * 60

    def stop(job: _Job, now: float) -> None:
        """Interrupt a running gang: work since its last checkpoint is lost."""
        nonlocal useful_gpu_s, allocated
        assert job.started is not None
        allocated -= sum(a.gpu_milli for a in snap.allocations_of(job.req.owner))
        banked = min(math.floor((now - job.started) / ckpt) * ckpt, job.work - job.done)
        job.done += banked
        useful_gpu_s += banked * job.req.gpu_equivalents
        snap.release(job.req.owner)
        running.pop(job.req.owner)
        job.started = None
        job.epoch += 1
        job.restarts += 1
        # requeue at the front: keep the original creation time
        job.req = replace(job.req, started=None, last_checkpoint=None)
        pending[job.req.owner] = job

    while events:
        t, _, kind, owner, epoch = heapq.heappop(events)
        busy_gpu_s += (t - last_t) * allocated / WHOLE
        if t <= arrivals_end:
            busy_arriving_s += (t - last_t) * allocated / WHOLE
        last_t = t
        if kind == "cycle":
            cycle_due = None
        job = by_owner.get(owner)
        if job is None:
            pass
        elif kind == "arrive":
            pending[owner] = job
        elif kind == "end" and epoch == job.epoch and owner in running:
            assert job.started is not None
            useful_gpu_s += (job.work - job.done) * job.req.gpu_equivalents
            job.done = job.work
            job.finished = t
            allocated -= sum(a.gpu_milli for a in snap.release(owner))
            running.pop(owner)
        elif kind == "fail" and epoch == job.epoch and owner in running:
            failures += 1
            stop(job, t)
        else:
            continue
        if kind != "cycle":
            # changes within one tick share a cycle, like the operator's debounced wake-up
            if cycle_due is None:
                cycle_due = math.floor(t / cfg.tick_seconds + 1) * cfg.tick_seconds
                push(cycle_due, "cycle", "")
            continue
        while True:
            result = schedule(
                snap,
                queues,
                [p.req for p in pending.values()],
                [_checkpointed(r, t, ckpt) for r in running.values()],
                t,
                config=sched,
            )
            victims = result.preempted
            for p in victims:
                preemptions += 1
                stop(by_owner[p.owner], t)
            for d in result.decisions:
                if not isinstance(d, Admit):
                    continue
                started = by_owner[d.owner]
                for alloc in d.placement.allocations:
                    snap.apply(alloc)
                    allocated += alloc.gpu_milli
                pending.pop(d.owner)
                running[d.owner] = started
                started.started = t
                if started.first_start is None:
                    started.first_start = t
                started.req = replace(started.req, started=t, last_checkpoint=t)
                left = started.work - started.done
                push(t + left, "end", d.owner, started.epoch)
                nodes_used = len(d.placement.nodes)
                fail_rate = cfg.failure_per_node_day * nodes_used / 86400
                if fail_rate > 0:
                    when = rng.expovariate(fail_rate)
                    if when < left:
                        push(t + when, "fail", d.owner, started.epoch)
            if not victims:
                break
    makespan = last_t
    finished = [j for j in jobs if j.finished is not None]
    delays: dict[str, list[float]] = {}
    for j in jobs:
        if j.first_start is not None:
            delays.setdefault(j.size, []).append(j.first_start - j.submitted)
    total_gpu_s = capacity * makespan if makespan else 1.0
    name = (
        f"backfill={'on' if cfg.backfill else 'off'},preemption={'on' if cfg.preemption else 'off'}"
    )
    return SimReport(
        policy=name,
        jobs=len(jobs),
        finished=len(finished),
        utilisation=busy_gpu_s / total_gpu_s,
        utilisation_arriving=busy_arriving_s / (capacity * arrivals_end) if arrivals_end else 0.0,
        goodput=useful_gpu_s / busy_gpu_s if busy_gpu_s else 0.0,
        preemptions=preemptions,
        failures=failures,
        queue_delay_p50_s={k: _pct(v, 0.5) for k, v in sorted(delays.items())},
        queue_delay_p95_s={k: _pct(v, 0.95) for k, v in sorted(delays.items())},
        makespan_h=makespan / 3600,
    )


def _checkpointed(job: _Job, now: float, every: float) -> GangRequest:
    """The running request with its latest periodic checkpoint (for victim ordering)."""
    assert job.started is not None
    last = job.started + math.floor((now - job.started) / every) * every
    if job.req.last_checkpoint == last:
        return job.req
    job.req = replace(job.req, last_checkpoint=last)
    return job.req


COMBINATIONS = ((False, False), (False, True), (True, False), (True, True))  # (backfill, preemption)


def compare(cfg: SimConfig, nodes: Sequence[Node] | None = None,
            done: Callable[[str], None] | None = None) -> list[SimReport]:
    """The same workload under each combination of backfill and preemption; `done` is called
    with each finished report's policy."""
    fleet = list(nodes) if nodes is not None else load_spot_fleet()
    out = []
    for backfill, preemption in COMBINATIONS:
        run = replace(cfg, backfill=backfill, preemption=preemption)
        out.append(simulate(run, [_fresh(n) for n in fleet]))
        if done:
            done(out[-1].policy)
    return out


def _fresh(node: Node) -> Node:
    return Node(
        node.name,
        node.cpu_milli,
        node.memory_mib,
        devices=[Device(d.index, d.model, d.memory_mib, d.healthy) for d in node.devices],
        labels=dict(node.labels),
        topology=node.topology,
        schedulable=node.schedulable,
        taints=node.taints,
    )


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--jobs", type=int, default=SimConfig.jobs,
                        help="gangs in the synthetic workload (default %(default)s)")
    parser.add_argument("--seed", type=int, default=SimConfig.seed,
                        help="seed of the workload and of failures (default %(default)s)")
    parser.add_argument("--load", type=float, default=SimConfig.load,
                        help="offered GPU-hours over the 8-GPU nodes' capacity (default %(default)s)")
    parser.add_argument("--failure-per-node-day", type=float, default=0.02,
                        help="node failures per node per day (default %(default)s)")
    parser.add_argument("--csv", type=Path, default=SPOT_CSV,
                        help="spot GPU node list of the fleet (default: spot_gpu_nodes_2026.csv in $WANKA_DATA)")
    parser.add_argument("--policy", choices=("all", "default"), default="all",
                        help="all: every combination of backfill and preemption; default: only the "
                        "default configuration")
    parser.add_argument("--no-progress", dest="progress", action="store_false",
                        help="print no progress on stderr (default: a bar with an ETA, or a line per run)")


def main(argv: Sequence[str] | None = None) -> int:
    """`wanka simulate-gangs`: print a JSON comparison of queue policies."""
    parser = Parser(prog="wanka simulate-gangs", description=__doc__)
    add_arguments(parser)
    args = parser.parse_args(argv)
    if not args.csv.is_file():
        print(f"wanka simulate-gangs: no such file: {args.csv} (--csv, or set $WANKA_DATA)", file=sys.stderr)
        return 2
    cfg = SimConfig(
        jobs=args.jobs,
        seed=args.seed,
        load=args.load,
        failure_per_node_day=args.failure_per_node_day,
    )
    fleet = load_spot_fleet(args.csv)
    with progress("simulations", len(COMBINATIONS) if args.policy == "all" else 1,
                  enabled=args.progress) as tick:
        if args.policy == "all":
            reports = compare(cfg, fleet, done=tick)
        else:
            reports = [simulate(cfg, fleet)]
            tick(reports[0].policy)
    print(json.dumps([r.as_dict() for r in reports], indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())


PASSTHROUGH = True  # `wanka simulate-gangs ARGS` calls main(ARGS): this module parses them


def register(sub: Any) -> None:
    add_arguments(sub.add_parser("simulate-gangs", help="synthetic multi-node gang workload on the spot fleet"))
