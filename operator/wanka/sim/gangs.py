"""Synthetic multi-node gang workload simulator that drives the same core scheduling cycle.

The fleet is the 4,278-node shape of `spot_gpu_nodes_2026.csv` as is (models, GPUs and CPUs
per node), given a synthetic topology: racks of up to 16 nodes of one model, spines of 8
racks. Jobs arrive as a Poisson stream with a size mix from notebooks (a quarter GPU) to
64-node pre-training gangs, run for log-normal durations, fail at a configurable rate (the
gang restarts from its last checkpoint and queues again at the front) and are scheduled by
`wanka.core.queueing.schedule`, so the policy comparison is a comparison of the operator.

With --ettr it instead follows one long training job on the fleet's 8-GPU nodes through faults
at published rates, detection, restart and checkpoints (fixed or advised by
`wanka.core.advice`), with and without onboarding burn-in, and reports its ETTR: useful
training time over wall time (docs/simulator.md, "Fleet ETTR").

With --tidal it instead shares a pool of 8-GPU nodes between a daily inference curve and a
backlog of checkpointing training gangs, scheduled by the same core, and compares tidal
preemption with no training at night and a static split (`wanka.sim.tidal`; docs/simulator.md,
"Tidal inference and training").
"""

from __future__ import annotations

import argparse
import csv
import heapq
import json
import math
import random
import statistics
import sys
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from wanka.argparsing import Parser
from wanka.core.advice import (
    LLAMA3_HARDWARE_SHARE,
    LLAMA3_RATE_PER_GPU_HOUR,
    LLAMA3_RATE_PER_NODE_HOUR,
    PRIOR_NODE_HOURS,
    advise,
    interruption_rate,
)
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


# --- fleet ETTR: one long training job under faults ------------------------------------------

GPUS_PER_NODE = 8  # a training job's nodes: the fleet's 8-GPU servers


@dataclass(frozen=True, slots=True)
class EttrConfig:
    """The fault and recovery model of one long training job; docs/simulator.md gives each source."""

    gpus: int = 1024
    days: float = 30.0  # wall time simulated
    seed: int = 1
    fault_per_gpu_hour: float = LLAMA3_RATE_PER_GPU_HOUR  # interruptions per GPU-hour of training
    hardware_share: float = LLAMA3_HARDWARE_SHARE  # of those, the share that takes a node out
    latent_share: float = 0.10  # fleet nodes delivered faulty
    latent_mean_hours: float = 6.0  # mean hours under load until such a node fails
    onboarding: bool = False  # burn-in before a node takes work
    catch_share: float = 0.90  # faulty nodes the burn-in catches
    detect_seconds: float = 30.0  # fault -> the agent (or the pod's exit) reports it
    taint_seconds: float = 0.10  # report -> node tainted: bench_taint_latency's median
    recovery_seconds: float = 0.53  # member failure -> gang placed again: bench_recovery's median
    backoff_seconds: float = 0.0  # restartPolicy.backoffSeconds: wait before the 1st restart, doubling
    max_backoff_seconds: float = 600.0  # restartPolicy.maxBackoffSeconds
    start_seconds: float = 120.0  # pods start and NCCL initialises
    reload_seconds: float = 60.0  # the checkpoint is read back
    save_seconds: float = 30.0  # the blocking part of a checkpoint save
    interval_seconds: float = 3600.0  # fixed compute time between checkpoints
    advised: bool = False  # take the interval from wanka.core.advice instead
    repair_hours: float = 72.0  # a node taken out comes back healthy after this

    def __post_init__(self) -> None:
        for name in ("hardware_share", "latent_share", "catch_share"):
            if not 0 <= getattr(self, name) <= 1:
                raise ValueError(f"{name} must be between 0 and 1, got {getattr(self, name)!r}")
        for name in ("fault_per_gpu_hour", "detect_seconds", "taint_seconds", "recovery_seconds",
                     "backoff_seconds", "max_backoff_seconds", "start_seconds", "reload_seconds",
                     "save_seconds", "repair_hours"):
            if not 0 <= getattr(self, name) < math.inf:
                raise ValueError(f"{name} must be a finite number >= 0, got {getattr(self, name)!r}")
        for name in ("days", "latent_mean_hours", "interval_seconds"):
            if not 0 < getattr(self, name) < math.inf:
                raise ValueError(f"{name} must be a finite number > 0, got {getattr(self, name)!r}")
        if self.gpus < 1:
            raise ValueError(f"gpus must be >= 1, got {self.gpus!r}")

    @property
    def nodes(self) -> int:
        return math.ceil(self.gpus / GPUS_PER_NODE)


SPENT = ("useful", "checkpoint", "lost", "detect", "wait", "backoff", "restart", "reload")


@dataclass(slots=True)
class EttrRun:
    """Where one simulated job's wall time went, in seconds, and what interrupted it."""

    wall_s: float
    spent: dict[str, float]  # SPENT -> seconds; they add up to wall_s
    interruptions: int = 0
    hardware: int = 0  # interruptions that took a node out (latent ones included)
    latent: int = 0  # interruptions by a node delivered faulty
    checkpoints: int = 0
    interval_sum_s: float = 0.0  # of the checkpoints taken

    @property
    def ettr(self) -> float:
        """Useful training time over wall time while the job holds its GPUs."""
        return self.spent["useful"] / self.wall_s

    @property
    def mean_interval_s(self) -> float | None:
        return self.interval_sum_s / self.checkpoints if self.checkpoints else None


def simulate_ettr(cfg: EttrConfig, fleet_nodes: int) -> EttrRun:
    """One job of `cfg.gpus` GPUs for `cfg.days` of wall time on `fleet_nodes` 8-GPU nodes.

    The job computes, saves a checkpoint every `interval` seconds of compute (blocking for
    `save_seconds`) and is interrupted by (a) a Poisson stream at `fault_per_gpu_hour` x GPUs,
    `hardware_share` of which take a random node of the job out, the rest restarting it in place,
    and (b) each latently faulty node it runs on, `latent_mean_hours` of load after it joined
    (exponential). Both clocks run only while the job computes or saves. An interruption loses
    the work since the last completed save, then costs detection (plus the taint for a node
    fault), waiting for a spare when none is ready, the operator's restart backoff (none by
    default), the gang restart and the reload. A node taken out, or caught by onboarding, comes
    back healthy after `repair_hours`.

    The fleet (which nodes are faulty, which burn-in catches, when each would fail, the order
    spares are handed out) and the job's own faults come from separate streams of the seed, so
    rows that differ only in onboarding or interval see the same fleet and the same faults.
    Deterministic for (cfg, fleet_nodes). Raises ValueError if the job needs more nodes.
    """
    need = cfg.nodes
    if need > fleet_nodes:
        raise ValueError(
            f"a {cfg.gpus}-GPU job needs {need} nodes of {GPUS_PER_NODE} GPUs; the fleet has {fleet_nodes}"
        )
    horizon = cfg.days * 86400
    repair_s = cfg.repair_hours * 3600
    draw = random.Random(f"{cfg.seed}:fleet")
    latent, caught, delay = [], [], []
    for _ in range(fleet_nodes):
        latent.append(draw.random() < cfg.latent_share)
        caught.append(draw.random() < cfg.catch_share)
        delay.append(draw.expovariate(1 / (cfg.latent_mean_hours * 3600)))
    order = list(range(fleet_nodes))
    draw.shuffle(order)
    faults = random.Random(f"{cfg.seed}:faults")

    ready: deque[int] = deque()
    repairs: list[tuple[float, int]] = []  # (back at wall time, node)
    for node in order:
        if cfg.onboarding and latent[node] and caught[node]:
            latent[node] = False  # repaired before it ever takes work
            repairs.append((repair_s, node))
        else:
            ready.append(node)
    heapq.heapify(repairs)
    run = EttrRun(horizon, dict.fromkeys(SPENT, 0.0))
    wall = busy = 0.0  # busy: seconds computed or saved, the clock faults run on
    slots: list[int] = []
    token: dict[int, int] = {}  # node -> its placement, to drop stale latent faults
    pending_latent: list[tuple[float, int, int]] = []  # (busy time, node, token)

    def spend(kind: str, seconds: float) -> None:
        nonlocal wall
        taken = min(seconds, horizon - wall)
        run.spent[kind] += taken
        wall += taken

    def place(slot: int) -> None:
        """A node for `slot`: the next ready one, else the first back from repair."""
        while repairs and repairs[0][0] <= wall:
            ready.append(heapq.heappop(repairs)[1])
        if not ready:
            back, node = heapq.heappop(repairs)
            spend("wait", back - wall)
            ready.append(node)
        node = ready.popleft()
        token[node] = token.get(node, 0) + 1
        if slot == len(slots):
            slots.append(node)
        else:
            slots[slot] = node
        if latent[node]:
            heapq.heappush(pending_latent, (busy + delay[node], node, token[node]))

    def interval() -> float:
        if not cfg.advised:
            return cfg.interval_seconds
        rate = interruption_rate(run.interruptions, need * busy)
        return advise(cfg.save_seconds, need, rate).interval_seconds

    for slot in range(need):
        place(slot)
    per_busy_second = cfg.fault_per_gpu_hour * cfg.gpus / 3600
    next_background = faults.expovariate(per_busy_second) if per_busy_second > 0 else math.inf
    progress = 0.0  # compute since the last completed save
    every = interval()
    while wall < horizon:
        while pending_latent and token[pending_latent[0][1]] != pending_latent[0][2]:
            heapq.heappop(pending_latent)  # its node was replaced before the fault showed
        next_latent = pending_latent[0][0] if pending_latent else math.inf
        to_save = every - progress + cfg.save_seconds
        to_fault = min(next_background, next_latent) - busy
        left = horizon - wall
        if to_save <= min(to_fault, left):
            busy += to_save
            wall += to_save
            run.spent["checkpoint"] += cfg.save_seconds
            run.spent["useful"] += every
            run.checkpoints += 1
            run.interval_sum_s += every
            progress = 0.0
            every = interval()
            continue
        step = min(to_fault, left)
        computed = min(step, every - progress)
        progress += computed
        run.spent["checkpoint"] += step - computed  # a save the fault or the window cut short
        busy += step
        wall += step
        if left < to_fault:
            run.spent["useful"] += progress  # the next save would bank it; the window ends first
            break
        run.spent["lost"] += progress
        progress = 0.0
        run.interruptions += 1
        out: int | None = None  # the slot whose node is taken out, if any
        if next_latent <= next_background:
            out = slots.index(heapq.heappop(pending_latent)[1])
            run.latent += 1
        else:
            # both draws every time, so the stream stays aligned across rows
            hardware = faults.random() < cfg.hardware_share
            victim = faults.randrange(need)
            out = victim if hardware else None
            next_background = busy + faults.expovariate(per_busy_second)
        if out is None:
            spend("detect", cfg.detect_seconds)
        else:
            run.hardware += 1
            spend("detect", cfg.detect_seconds + cfg.taint_seconds)
            node = slots[out]
            token[node] += 1
            latent[node] = False
            heapq.heappush(repairs, (wall + repair_s, node))
            place(out)
        if cfg.backoff_seconds:
            # the operator's restart backoff: base, 2 base, 4 base, ... capped (core.lifecycle)
            doubling = min(run.interruptions - 1, 62)
            spend("backoff", min(cfg.backoff_seconds * 2.0**doubling, cfg.max_backoff_seconds))
        spend("restart", cfg.recovery_seconds + cfg.start_seconds)
        spend("reload", cfg.reload_seconds)
        every = interval()
    return run


def summarize_ettr(runs: Sequence[EttrRun]) -> dict[str, Any]:
    """Mean and spread over seeds of one table row."""
    ettr = [r.ettr for r in runs]
    intervals = [i for i in (r.mean_interval_s for r in runs) if i is not None]
    return {
        "ettr_mean": round(statistics.fmean(ettr), 5),
        "ettr_min": round(min(ettr), 5),
        "ettr_max": round(max(ettr), 5),
        "ettr_stdev": round(statistics.pstdev(ettr), 5),
        "interruptions_per_day": round(statistics.fmean(r.interruptions * 86400 / r.wall_s for r in runs), 3),
        "latent_interruptions": round(statistics.fmean(r.latent for r in runs), 2),
        "checkpoint_interval_mean_s": round(statistics.fmean(intervals), 1) if intervals else None,
        "time_share": {
            k: round(statistics.fmean(r.spent[k] / r.wall_s for r in runs), 5) for k in SPENT
        },
    }


ETTR_VARIANTS = ((False, False), (False, True), (True, False), (True, True))  # (onboarding, advised)


def ettr_table(base: EttrConfig, sizes: Sequence[int], seeds: Sequence[int], fleet_nodes: int,
               done: Callable[[str], None] | None = None) -> list[dict[str, Any]]:
    """Rows of job size x onboarding off/on x fixed/advised interval, each over the same seeds; a size
    the fleet cannot hold gets an `error` instead of numbers. `done` is called after each row."""
    rows: list[dict[str, Any]] = []
    for gpus in sizes:
        for onboarding, advised in ETTR_VARIANTS:
            cfg = replace(base, gpus=gpus, onboarding=onboarding, advised=advised)
            row: dict[str, Any] = {
                "gpus": gpus,
                "nodes": cfg.nodes,
                "onboarding": onboarding,
                "interval": "advised" if advised else "fixed",
            }
            if cfg.nodes > fleet_nodes:
                row["error"] = f"needs {cfg.nodes} nodes of {GPUS_PER_NODE} GPUs; the fleet has {fleet_nodes}"
            else:
                row.update(summarize_ettr([simulate_ettr(replace(cfg, seed=s), fleet_nodes) for s in seeds]))
            rows.append(row)
            if done:
                done(f"{gpus} GPUs, onboarding {'on' if onboarding else 'off'}, {row['interval']}")
    return rows


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
    parser.add_argument("--json", dest="json_out", default=None, metavar="PATH",
                        help="also write the JSON printed on stdout to this file (with --tidal: the "
                        "numbers of the table printed)")
    add_ettr_arguments(parser)
    # imported here: the tidal mode builds on this module's fleet
    from wanka.sim.tidal import add_tidal_arguments

    add_tidal_arguments(parser)


def add_ettr_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of the ETTR mode; every default is sourced in docs/simulator.md ("Fleet ETTR")."""
    d = EttrConfig()
    g = parser.add_argument_group(
        "fleet ETTR (--ettr)",
        "one long training job under faults on the fleet's 8-GPU nodes; prints a JSON table of job size x "
        "onboarding off/on x fixed/advised checkpoint interval. --seed is the first seed.",
    )
    g.add_argument("--ettr", action="store_true",
                   help="simulate fleet ETTR (useful training time / wall time) instead of the queue policies")
    g.add_argument("--gpus", metavar="N", type=int, action="append", default=None,
                   help="job size in GPUs, 8 per node; repeat for several (default: 1024 and 8192)")
    g.add_argument("--days", metavar="DAYS", type=float, default=None,
                   help=f"wall time of each simulated job (default {d.days:g}; with --tidal 7)")
    g.add_argument("--seeds", metavar="N", type=int, default=None,
                   help=f"seeds per row: SEED, SEED+1, ... (default {ETTR_SEEDS}; with --tidal 5)")
    g.add_argument("--fault-per-gpu-hour", metavar="RATE", type=float, default=d.fault_per_gpu_hour,
                   help="interruptions per GPU-hour (default %(default).4g: Llama 3, 419 in 54 days on 16,384 GPUs)")
    g.add_argument("--hardware-share", metavar="SHARE", type=float, default=d.hardware_share,
                   help="share of interruptions that take a node out (default %(default)s: Llama 3)")
    g.add_argument("--latent-share", metavar="SHARE", type=float, default=d.latent_share,
                   help="share of the fleet's nodes delivered faulty (default %(default)s; operators report 0.1-0.2)")
    g.add_argument("--latent-mean-hours", metavar="HOURS", type=float, default=d.latent_mean_hours,
                   help="mean hours under load until a faulty node fails (default %(default)s; assumption)")
    g.add_argument("--catch-share", metavar="SHARE", type=float, default=d.catch_share,
                   help="share of faulty nodes the onboarding burn-in catches (default %(default)s; assumption)")
    g.add_argument("--detect-seconds", metavar="S", type=float, default=d.detect_seconds,
                   help="fault -> reported by the node agent or the pod's exit (default %(default)s; assumption)")
    g.add_argument("--taint-seconds", metavar="S", type=float, default=d.taint_seconds,
                   help="report -> node tainted (default %(default)s: bench_taint_latency median)")
    g.add_argument("--recovery-seconds", metavar="S", type=float, default=d.recovery_seconds,
                   help="member failure -> gang placed again (default %(default)s: bench_recovery median)")
    g.add_argument("--backoff-seconds", metavar="S", type=float, default=d.backoff_seconds,
                   help="the job's restartPolicy.backoffSeconds: wait before the first restart, doubling each "
                   "time (default %(default)s, as in bench_recovery; the API's default is 30)")
    g.add_argument("--max-backoff-seconds", metavar="S", type=float, default=d.max_backoff_seconds,
                   help="the job's restartPolicy.maxBackoffSeconds (default %(default)s, the API's default)")
    g.add_argument("--start-seconds", metavar="S", type=float, default=d.start_seconds,
                   help="pods start and NCCL initialises (default %(default)s; assumption)")
    g.add_argument("--reload-seconds", metavar="S", type=float, default=d.reload_seconds,
                   help="the checkpoint is read back (default %(default)s; assumption)")
    g.add_argument("--save-seconds", metavar="S", type=float, default=d.save_seconds,
                   help="blocking part of a checkpoint save (default %(default)s; assumption)")
    g.add_argument("--interval-seconds", metavar="S", type=float, default=d.interval_seconds,
                   help="compute time between checkpoints in the fixed rows (default %(default)s)")
    g.add_argument("--repair-hours", metavar="HOURS", type=float, default=d.repair_hours,
                   help="a node taken out or caught at onboarding returns healthy after this "
                   "(default %(default)s; assumption)")
    g.add_argument("--fleet-nodes", metavar="N", type=int, default=0,
                   help="a uniform fleet of this many 8-GPU nodes instead of the --csv fleet (default: the CSV; "
                   "with --tidal 16)")


def main(argv: Sequence[str] | None = None) -> int:
    """`wanka simulate-gangs`: print a JSON comparison of queue policies, or with --ettr a fleet ETTR table."""
    parser = Parser(prog="wanka simulate-gangs", description=__doc__)
    add_arguments(parser)
    args = parser.parse_args(argv)
    if args.ettr and args.tidal:
        parser.error("--ettr and --tidal are two different simulations: give one")
    if args.ettr:
        return run_ettr(args)
    if args.tidal:
        from wanka.sim.tidal import run_tidal

        return run_tidal(args)
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
    _emit([r.as_dict() for r in reports], args.json_out)
    return 0


def _emit(document: Any, path: str | None, text: str | None = None) -> None:
    """Print the JSON (or `text`, a table of the same numbers), and write the JSON to `path` when given."""
    encoded = json.dumps(document, indent=2)
    print(encoded if text is None else text)
    if path:
        Path(path).write_text(encoded + "\n")


DEFAULT_SIZES = (1024, 8192)
ETTR_SEEDS = 20


def run_ettr(args: argparse.Namespace) -> int:
    """`wanka simulate-gangs --ettr`: the fleet ETTR table as JSON."""
    sizes = args.gpus or list(DEFAULT_SIZES)
    try:
        base = EttrConfig(
            days=args.days if args.days is not None else EttrConfig().days,
            seed=args.seed,
            fault_per_gpu_hour=args.fault_per_gpu_hour,
            hardware_share=args.hardware_share,
            latent_share=args.latent_share,
            latent_mean_hours=args.latent_mean_hours,
            catch_share=args.catch_share,
            detect_seconds=args.detect_seconds,
            taint_seconds=args.taint_seconds,
            recovery_seconds=args.recovery_seconds,
            backoff_seconds=args.backoff_seconds,
            max_backoff_seconds=args.max_backoff_seconds,
            start_seconds=args.start_seconds,
            reload_seconds=args.reload_seconds,
            save_seconds=args.save_seconds,
            interval_seconds=args.interval_seconds,
            repair_hours=args.repair_hours,
        )
        for gpus in sizes:
            replace(base, gpus=gpus)
    except ValueError as exc:
        print(f"wanka simulate-gangs: error: {exc}", file=sys.stderr)
        return 2
    if args.fleet_nodes > 0:
        fleet, source = uniform_fleet(args.fleet_nodes), f"uniform_fleet({args.fleet_nodes})"
    elif not args.csv.is_file():
        print(f"wanka simulate-gangs: no such file: {args.csv} (--csv, or set $WANKA_DATA)", file=sys.stderr)
        return 2
    else:
        fleet, source = load_spot_fleet(args.csv), args.csv.name
    eight = sum(1 for n in fleet if len(n.devices) == GPUS_PER_NODE)
    seeds = [args.seed + k for k in range(max(args.seeds if args.seeds is not None else ETTR_SEEDS, 1))]
    with progress("ETTR rows", len(sizes) * len(ETTR_VARIANTS), enabled=args.progress) as tick:
        rows = ettr_table(base, sizes, seeds, eight, done=tick)
    model = {k: v for k, v in asdict(base).items() if k not in ("gpus", "seed", "onboarding", "advised")}
    model["prior_rate_per_node_hour"] = LLAMA3_RATE_PER_NODE_HOUR
    model["prior_node_hours"] = PRIOR_NODE_HOURS
    document = {
        "fleet": {
            "source": source,
            "nodes": len(fleet),
            "gpus": sum(len(n.devices) for n in fleet),
            "nodes_8gpu": eight,
        },
        "seeds": seeds,
        "model": model,
        "rows": rows,
    }
    _emit(document, args.json_out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())


PASSTHROUGH = True  # `wanka simulate-gangs ARGS` calls main(ARGS): this module parses them


def register(sub: Any) -> None:
    add_arguments(sub.add_parser("simulate-gangs", help="synthetic multi-node gang workload on the spot fleet; --ettr: "
                                 "a long training job's ETTR under faults; --tidal: inference and training "
                                 "sharing a pool by the day"))
