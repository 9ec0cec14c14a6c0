"""Tidal inference and training: a daily inference curve and a training backlog share one pool.

A pool of 8-GPU nodes serves one-GPU inference replicas whose number follows the day (low at
night, high in the afternoon) and lends whatever they leave to a backlog of checkpointing
training gangs. Every step scales the replicas to the demand and runs the operator's own cycle,
`wanka.core.queueing.schedule`, over a `Snapshot` of the pool, so the policies compared are
the operator's: `tidal` (training fills the pool, inference reclaims it by the core's
checkpoint-aware preemption), `no-training-at-night` and `static-split` (docs/simulator.md,
"Tidal inference and training").
"""

from __future__ import annotations

import argparse
import math
import random
import statistics
import sys
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Literal

from wanka.core.queueing import Admit, PoolQuota, QueueSpec, SchedulerConfig, schedule
from wanka.core.requests import GangRequest
from wanka.core.snapshot import WHOLE, Node, Snapshot
from wanka.sim.gangs import GPUS_PER_NODE, LEVELS, _emit, _pct, uniform_fleet
from wanka.sim.progress import progress

Policy = Literal["tidal", "no-training-at-night", "static-split"]
POLICIES: tuple[Policy, ...] = ("tidal", "no-training-at-night", "static-split")
# Which running replica a scale-down removes: pack, one on the node with the fewest replicas (what
# a lower controller.kubernetes.io/pod-deletion-cost on emptier nodes gives); spread, one on the node
# with the most (a ReplicaSet's default ranking), the newest of its node first either way.
ScaleDown = Literal["pack", "spread"]

POOL = "pool"
QUEUE = "tidal"  # one queue: inference outranks training by priority (within-queue LowerPriority)
ROLE = "wanka.io/role"  # node label of the static split's two partitions
TRAINING_NODES = (1, 2, 4)  # training gang shapes: nodes of 8 GPUs each
MAX_CYCLES = 10  # cycles in one step: one, and one more after each round of preemptions


@dataclass(frozen=True, slots=True)
class TidalConfig:
    """The pool, the inference curve and the training backlog; docs/simulator.md gives each default."""

    nodes: int = 16  # of GPUS_PER_NODE GPUs each
    days: float = 7.0
    seed: int = 1
    step_seconds: float = 300.0  # demand changes and the scheduler runs once per step
    trough_share: float = 0.15  # inference demand at its daily low, as a share of the pool's GPUs
    peak_share: float = 0.85  # and at its daily high
    trough_hour: float = 4.0
    peak_hour: float = 14.0
    noise_share: float = 0.03  # standard deviation of the demand's noise, as a share of the pool
    noise_hours: float = 1.0  # how long the noise stays correlated (an AR(1) process)
    checkpoint_seconds: float = 1800.0  # compute between two checkpoints of a training gang
    restart_seconds: float = 120.0  # a resumed gang starts, initialises and loads its checkpoint
    grace_seconds: float = 30.0  # a victim's pods stop: the preemptor starts in the next cycle, this later
    train_hours: float = 8.0  # mean compute a training gang needs (log-normal)
    scale_down: ScaleDown = "pack"

    def __post_init__(self) -> None:
        if self.nodes < 1:
            raise ValueError(f"nodes must be >= 1, got {self.nodes!r}")
        for name in ("trough_share", "peak_share"):
            if not 0 <= getattr(self, name) <= 1:
                raise ValueError(f"{name} must be between 0 and 1, got {getattr(self, name)!r}")
        if self.trough_share > self.peak_share:
            raise ValueError(f"trough_share {self.trough_share} is above peak_share {self.peak_share}")
        for name in ("trough_hour", "peak_hour"):
            if not 0 <= getattr(self, name) < 24:
                raise ValueError(f"{name} must be within [0, 24), got {getattr(self, name)!r}")
        if self.trough_hour == self.peak_hour:
            raise ValueError("trough_hour and peak_hour must differ")
        for name in ("noise_share", "restart_seconds", "grace_seconds"):
            if not 0 <= getattr(self, name) < math.inf:
                raise ValueError(f"{name} must be a finite number >= 0, got {getattr(self, name)!r}")
        for name in ("days", "step_seconds", "noise_hours", "checkpoint_seconds", "train_hours"):
            if not 0 < getattr(self, name) < math.inf:
                raise ValueError(f"{name} must be a finite number > 0, got {getattr(self, name)!r}")
        if self.scale_down not in ("pack", "spread"):
            raise ValueError(f"scale_down must be pack or spread, got {self.scale_down!r}")

    @property
    def gpus(self) -> int:
        return self.nodes * GPUS_PER_NODE

    @property
    def steps(self) -> int:
        return max(1, round(self.days * 86400 / self.step_seconds))

    @property
    def rise_hours(self) -> float:
        """Hours from the trough up to the peak; the curve falls for the rest of the day."""
        return (self.peak_hour - self.trough_hour) % 24

    @property
    def low_period(self) -> tuple[float, float]:
        """(start, end) hours of the day in which the noise-free curve is below its midpoint."""
        fall = 24 - self.rise_hours
        return (self.peak_hour + fall / 2) % 24, (self.trough_hour + self.rise_hours / 2) % 24

    def in_low_period(self, seconds: float) -> bool:
        hour = seconds / 3600 % 24
        start, end = self.low_period
        return start <= hour < end if start < end else hour >= start or hour < end

    @property
    def static_inference_nodes(self) -> int:
        """Nodes the static split gives inference: enough for its peak share."""
        return min(self.nodes, math.ceil(self.peak_share * self.nodes - 1e-9))


def expected_share(cfg: TidalConfig, seconds: float) -> float:
    """Inference demand without noise at a time of day: a half cosine up from the trough to the
    peak, and another down to the next day's trough."""
    h = (seconds / 3600 - cfg.trough_hour) % 24
    rise = cfg.rise_hours
    if h <= rise:
        level = (1 - math.cos(math.pi * h / rise)) / 2
    else:
        level = (1 + math.cos(math.pi * (h - rise) / (24 - rise))) / 2
    return cfg.trough_share + (cfg.peak_share - cfg.trough_share) * level


def demand_series(cfg: TidalConfig) -> list[int]:
    """Inference replicas (one GPU each) wanted at every step: the curve plus AR(1) noise,
    rounded and kept within the pool. Its own stream of the seed: every policy sees the same."""
    rng = random.Random(f"{cfg.seed}:demand")
    keep = math.exp(-cfg.step_seconds / (cfg.noise_hours * 3600))
    fresh = cfg.noise_share * math.sqrt(1 - keep * keep)
    noise = rng.gauss(0.0, cfg.noise_share)
    out = []
    for k in range(cfg.steps):
        share = expected_share(cfg, k * cfg.step_seconds) + noise
        out.append(min(cfg.gpus, max(0, round(share * cfg.gpus))))
        noise = keep * noise + rng.gauss(0.0, fresh)
    return out


@dataclass(slots=True)
class _Gang:
    """A training gang: its request, the compute it needs and what it has banked."""

    req: GangRequest
    work: float  # seconds of compute needed
    done: float = 0.0  # seconds of compute banked at checkpoints
    started: float | None = None  # this run's start
    resumed: bool = False  # this run loads a checkpoint first (restart_seconds)

    @property
    def gpus(self) -> int:
        return self.req.replicas * self.req.gpus


@dataclass(frozen=True, slots=True)
class Reclaim:
    """One training gang preempted for inference, and what it cost."""

    time: float
    owner: str
    gpus: int
    ran_s: float  # how long its run lasted
    since_checkpoint_s: float  # compute since its last checkpoint: lost
    lost_gpu_s: float
    restart_gpu_s: float  # restart time the run had spent (wasted too: it ran no compute)
    reported_gpu_s: float  # the core's Preempt.work_lost_gpu_seconds


@dataclass(slots=True)
class TidalRun:
    """One policy over one seeded week: GPU-seconds by use, inference service and reclaims."""

    policy: Policy
    seed: int
    pool_gpu_s: float  # the pool's GPUs x the horizon
    allocated_gpu_s: float = 0.0
    inference_gpu_s: float = 0.0
    training_run_gpu_s: float = 0.0  # training allocations held
    training_useful_gpu_s: float = 0.0  # compute kept: banked at checkpoints, finished or at the end
    training_lost_gpu_s: float = 0.0  # compute since the last checkpoint of a preempted gang
    training_restart_gpu_s: float = 0.0  # resumed gangs starting and loading their checkpoint
    training_tail_gpu_s: float = 0.0  # a finished gang held its GPUs until the next step
    demanded_replica_steps: int = 0
    served_replica_steps: int = 0
    start_delays_s: list[float] = field(default_factory=list)  # inference replicas, to admission
    never_started: int = 0  # inference replicas removed by a scale-down before they started
    preemptions: int = 0
    restarts: int = 0  # resumed runs of training gangs (after a preemption or a drain)
    drains: int = 0  # planned stops at the low period (no-training-at-night)
    finished: int = 0  # training gangs that completed their work
    reclaims: list[Reclaim] = field(default_factory=list)
    # per step, after its cycles: GPUs held by training, inference replicas running
    training_gpus: list[int] = field(default_factory=list)
    inference_running: list[int] = field(default_factory=list)

    @property
    def allocation(self) -> float:
        return self.allocated_gpu_s / self.pool_gpu_s

    @property
    def training_goodput(self) -> float:
        """Useful training GPU-time as a share of the pool's GPU-time."""
        return self.training_useful_gpu_s / self.pool_gpu_s

    @property
    def inference_served(self) -> float:
        return self.served_replica_steps / self.demanded_replica_steps if self.demanded_replica_steps else 1.0

    def metrics(self) -> dict[str, float]:
        """The numbers of a table row, in hours and shares."""
        return {
            "allocation": self.allocation,
            "training_goodput": self.training_goodput,
            "training_goodput_gpu_hours": self.training_useful_gpu_s / 3600,
            "training_run_gpu_hours": self.training_run_gpu_s / 3600,
            "training_lost_gpu_hours": self.training_lost_gpu_s / 3600,
            "training_restart_gpu_hours": self.training_restart_gpu_s / 3600,
            "inference_served": self.inference_served,
            "inference_start_p50_s": _pct(self.start_delays_s, 0.5) if self.start_delays_s else 0.0,
            "inference_start_p99_s": _pct(self.start_delays_s, 0.99) if self.start_delays_s else 0.0,
            "inference_never_started": self.never_started,
            "preemptions": self.preemptions,
            "preempted_gpus": sum(r.gpus for r in self.reclaims),
            "restarts": self.restarts,
            "drains": self.drains,
            "training_finished": self.finished,
        }


def _fleet(cfg: TidalConfig) -> list[Node]:
    """`uniform_fleet(cfg.nodes)`, the first nodes labelled for inference in the static split."""
    nodes = uniform_fleet(cfg.nodes, GPUS_PER_NODE)
    for i, node in enumerate(nodes):
        node.labels[ROLE] = "inference" if i < cfg.static_inference_nodes else "training"
    return nodes


class _Backlog:
    """Training gangs of each shape, a stream per shape: the n-th gang of a shape is the same in
    every policy of a seed, however many of the other shapes a policy ran."""

    def __init__(self, cfg: TidalConfig, selector: tuple[tuple[str, str], ...]) -> None:
        self.cfg = cfg
        self.selector = selector
        self.rng = {n: random.Random(f"{cfg.seed}:training:{n}") for n in TRAINING_NODES}
        self.count = dict.fromkeys(TRAINING_NODES, 0)

    def draw(self, nodes: int, now: float) -> _Gang:
        # log-normal with mean train_hours (sigma 0.8: a few gangs need days)
        hours = self.rng[nodes].lognormvariate(math.log(self.cfg.train_hours) - 0.32, 0.8)
        work = max(600.0, hours * 3600)
        self.count[nodes] += 1
        req = GangRequest(
            owner=f"train/{nodes}x8-{self.count[nodes]:04d}",
            queue=QUEUE,
            pool=POOL,
            priority=0,
            replicas=nodes,
            gpus=GPUS_PER_NODE,
            cpu_milli=96_000,
            memory_mib=1024 * 1024,
            node_selector=self.selector,
            created=now,
            duration_bound=work * 1.5,  # users over-estimate their jobs' run time
        )
        return _Gang(req, work)


def _checkpointed(gang: _Gang, now: float, cfg: TidalConfig) -> GangRequest:
    """The running request with its last checkpoint: the start (the checkpoint it loaded) until
    the first save of this run."""
    assert gang.started is not None
    begin = gang.started + (cfg.restart_seconds if gang.resumed else 0.0)
    saves = math.floor(max(0.0, now - begin) / cfg.checkpoint_seconds)
    last = begin + saves * cfg.checkpoint_seconds if saves else gang.started
    if gang.req.last_checkpoint != last:
        gang.req = replace(gang.req, last_checkpoint=last)
    return gang.req


def simulate_tidal(cfg: TidalConfig, policy: Policy) -> TidalRun:
    """One policy over `cfg.days` of seeded inference demand and training backlog.

    Each step: training gangs that finished leave; under no-training-at-night, training is
    stopped for the low period (it checkpoints first: nothing lost); inference scales to the
    step's demand (new one-GPU requests at priority 1000, or replicas removed, pending ones
    first); the backlog is topped up; then `schedule` runs over pending inference and training
    with the running ones as `running`. Admit applies the placement; Preempt stops the victim,
    which loses the compute since its last checkpoint and queues again with its original
    creation time; after preemptions a cycle runs again, `grace_seconds` later, to start the
    preemptors. Deterministic for (cfg, policy).

    tidal: training is offered every step and inference reclaims it by preemption.
    no-training-at-night: the same, but training is drained when the low period begins and
    not offered until it ends. static-split: inference only on `static_inference_nodes`,
    training only on the rest (by a node label and nodeSelector), preemption off.
    """
    snap = Snapshot(_fleet(cfg), levels=LEVELS)
    static = policy == "static-split"
    queues = [QueueSpec(QUEUE, (PoolQuota(POOL, cfg.gpus, None),), within_queue="LowerPriority")]
    sched = SchedulerConfig(preemption=not static)
    backlog = _Backlog(cfg, ((ROLE, "training"),) if static else ())
    inference_selector = ((ROLE, "inference"),) if static else ()
    demand = demand_series(cfg)
    step = cfg.step_seconds
    run = TidalRun(policy, cfg.seed, cfg.gpus * cfg.steps * step)
    # a backlog per shape that could fill the whole pool, so whatever is free can be filled
    want_pending = {n: math.ceil(cfg.nodes / n) for n in TRAINING_NODES}

    pending_inf: dict[str, GangRequest] = {}
    running_inf: dict[str, tuple[GangRequest, str]] = {}  # owner -> (request, node)
    pending: dict[str, _Gang] = {}
    running: dict[str, _Gang] = {}
    replicas = 0

    def stop(gang: _Gang, now: float, planned: bool) -> tuple[float, float, float]:
        """End a run: (compute lost, restart spent, compute banked), in seconds."""
        assert gang.started is not None
        ran = now - gang.started
        restart = min(ran, cfg.restart_seconds) if gang.resumed else 0.0
        compute = ran - restart
        lost = 0.0 if planned else compute - math.floor(compute / cfg.checkpoint_seconds) * cfg.checkpoint_seconds
        banked = compute - lost
        gang.done += banked
        g = gang.gpus
        run.training_run_gpu_s += ran * g
        run.training_restart_gpu_s += restart * g
        run.training_lost_gpu_s += lost * g
        run.training_useful_gpu_s += banked * g
        snap.release(gang.req.owner)
        running.pop(gang.req.owner)
        gang.started = None
        gang.resumed = True
        left = gang.work - gang.done
        gang.req = replace(gang.req, started=None, last_checkpoint=None, duration_bound=left * 1.5)
        pending[gang.req.owner] = gang  # keeps its creation time: back at the front of the queue
        return lost, restart, banked

    def finish(now: float) -> None:
        for gang in list(running.values()):
            assert gang.started is not None
            begin = gang.started + (cfg.restart_seconds if gang.resumed else 0.0)
            end = begin + gang.work - gang.done
            if end > now:
                continue
            g = gang.gpus
            run.training_run_gpu_s += (now - gang.started) * g
            run.training_restart_gpu_s += (begin - gang.started) * g
            run.training_useful_gpu_s += (gang.work - gang.done) * g
            run.training_tail_gpu_s += (now - end) * g
            gang.done = gang.work
            run.finished += 1
            snap.release(gang.req.owner)
            running.pop(gang.req.owner)

    def scale_down(count: int) -> None:
        """Remove `count` running replicas, by `cfg.scale_down`."""
        sign = 1 if cfg.scale_down == "pack" else -1
        for _ in range(count):
            per_node: dict[str, int] = {}
            for _, node in running_inf.values():
                per_node[node] = per_node.get(node, 0) + 1
            owner = min(running_inf, key=lambda o: (sign * per_node[running_inf[o][1]], -running_inf[o][0].created,
                                                     running_inf[o][1], o))
            snap.release(owner)
            del running_inf[owner]

    for k in range(cfg.steps):
        now = k * step
        finish(now)
        night = policy == "no-training-at-night" and cfg.in_low_period(now)
        if night:
            for gang in list(running.values()):
                stop(gang, now, planned=True)
                run.drains += 1
        wanted = demand[k]
        have = len(pending_inf) + len(running_inf)
        if wanted > have:
            for _ in range(wanted - have):
                replicas += 1
                owner = f"infer/r{replicas:06d}"
                pending_inf[owner] = GangRequest(
                    owner, queue=QUEUE, pool=POOL, priority=1000, gpus=1, cpu_milli=8000,
                    memory_mib=64 * 1024, node_selector=inference_selector, created=now,
                )
        elif wanted < have:
            drop = have - wanted
            gone = min(drop, len(pending_inf))
            for owner in sorted(pending_inf, key=lambda o: (pending_inf[o].created, o), reverse=True)[:gone]:
                del pending_inf[owner]  # a ReplicaSet deletes its unscheduled pods first
            run.never_started += gone
            scale_down(drop - gone)
        queued = dict.fromkeys(TRAINING_NODES, 0)
        for gang in pending.values():
            queued[gang.req.replicas] += 1
        for n in TRAINING_NODES:
            for _ in range(want_pending[n] - queued[n]):
                gang = backlog.draw(n, now)
                pending[gang.req.owner] = gang
        for cycle in range(MAX_CYCLES):
            offered = list(pending_inf.values())
            if not night:
                offered += [g.req for g in pending.values()]
            result = schedule(
                snap,
                queues,
                offered,
                [r for r, _ in running_inf.values()] + [_checkpointed(g, now, cfg) for g in running.values()],
                now,
                config=sched,
            )
            for p in result.preempted:
                victim = running[p.owner]
                ran = now - (victim.started or 0.0)
                lost, restart, _ = stop(victim, now, planned=False)
                run.preemptions += 1
                g = victim.gpus
                run.reclaims.append(Reclaim(now, p.owner, g, ran, lost, lost * g, restart * g,
                                            p.work_lost_gpu_seconds))
            for d in result.decisions:
                if not isinstance(d, Admit):
                    continue
                for alloc in d.placement.allocations:
                    snap.apply(alloc)
                if d.owner in pending_inf:
                    req = replace(pending_inf.pop(d.owner), started=now)
                    running_inf[d.owner] = (req, d.placement.allocations[0].node)
                    run.start_delays_s.append(now - req.created + cycle * cfg.grace_seconds)
                else:
                    gang = pending.pop(d.owner)
                    gang.started = now
                    gang.req = replace(gang.req, started=now, last_checkpoint=now)
                    running[d.owner] = gang
                    if gang.resumed:
                        run.restarts += 1
            if not result.preempted:
                break
        allocated = snap.allocated_milli() / WHOLE
        run.allocated_gpu_s += allocated * step
        run.inference_gpu_s += len(running_inf) * step
        run.training_gpus.append(sum(g.gpus for g in running.values()))
        run.inference_running.append(len(running_inf))
        run.demanded_replica_steps += wanted
        run.served_replica_steps += len(running_inf)
    end = cfg.steps * step
    finish(end)
    for gang in list(running.values()):
        stop(gang, end, planned=True)  # the window ends: the compute since the last save counts
        pending.pop(gang.req.owner)
    return run


# --- the table over seeds and the CLI ---------------------------------------------------------

INTEGER_METRICS = ("preemptions", "preempted_gpus", "restarts", "drains", "training_finished",
                   "inference_never_started")


def summarize_tidal(runs: Sequence[TidalRun]) -> dict[str, Any]:
    """One policy's row: each metric's mean, min and max over the seeds."""
    per_seed = [r.metrics() for r in runs]
    row: dict[str, Any] = {"policy": runs[0].policy}
    for key in per_seed[0]:
        values = [m[key] for m in per_seed]
        digits = 2 if key in INTEGER_METRICS or key.endswith(("_hours", "_s")) else 5
        row[key] = {
            "mean": round(statistics.fmean(values), digits),
            "min": round(min(values), digits),
            "max": round(max(values), digits),
        }
    return row


def tidal_table(cfg: TidalConfig, seeds: Sequence[int], policies: Sequence[Policy] = POLICIES,
                done: Callable[[str], None] | None = None) -> list[dict[str, Any]]:
    """A row per policy over the same seeds (each seed: the same demand and the same backlog in
    every policy). `done` is called after each run."""
    rows = []
    for policy in policies:
        runs = []
        for s in seeds:
            runs.append(simulate_tidal(replace(cfg, seed=s), policy))
            if done:
                done(f"{policy}, seed {s}")
        rows.append(summarize_tidal(runs))
    return rows


def _spread(cell: dict[str, float], digits: int, seeds: int) -> str:
    """A share as "45.4%", or "45.4% (45.2-45.9)" with its range over several seeds."""
    def pct(v: float) -> str:
        return f"{100 * v:.{digits}f}"

    if seeds == 1:
        return f"{pct(cell['mean'])}%"
    return f"{pct(cell['mean'])}% ({pct(cell['min'])}-{pct(cell['max'])})"


def format_table(rows: Sequence[dict[str, Any]], seeds: int) -> str:
    """The rows as a Markdown table (means, with min-max over the seeds when there are several)."""
    def num(v: float) -> str:
        return f"{v:,.0f}"

    lines = [
        "| policy | GPU allocation | training goodput | goodput GPU-h | inference served | time to start p50 / p99 "
        "| preemptions / restarts | GPU-h lost to reclaim | restart GPU-h |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['policy']} | {_spread(r['allocation'], 1, seeds)} "
            f"| {_spread(r['training_goodput'], 1, seeds)} | {num(r['training_goodput_gpu_hours']['mean'])} "
            f"| {_spread(r['inference_served'], 2, seeds)} "
            f"| {r['inference_start_p50_s']['mean']:.0f} s / {r['inference_start_p99_s']['mean']:.0f} s "
            f"| {num(r['preemptions']['mean'])} / {num(r['restarts']['mean'])} "
            f"| {num(r['training_lost_gpu_hours']['mean'])} | {num(r['training_restart_gpu_hours']['mean'])} |"
        )
    return "\n".join(lines)


def add_tidal_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of the tidal mode; --seed, --seeds, --days, --fleet-nodes and --json are shared."""
    d = TidalConfig()
    g = parser.add_argument_group(
        "tidal inference and training (--tidal)",
        "a daily inference curve and a training backlog share a pool of 8-GPU nodes; prints a table of "
        "the policies tidal, no-training-at-night and static-split (--days defaults to 7, --seeds to 5, "
        "--fleet-nodes to 16).",
    )
    g.add_argument("--tidal", action="store_true",
                   help="simulate tidal inference and training instead of the queue policies")
    g.add_argument("--trough-share", metavar="SHARE", type=float, default=d.trough_share,
                   help="inference demand at its daily low (%(default)s of the GPUs, at 04:00)")
    g.add_argument("--peak-share", metavar="SHARE", type=float, default=d.peak_share,
                   help="inference demand at its daily high (%(default)s of the GPUs, at 14:00)")
    g.add_argument("--noise-share", metavar="SHARE", type=float, default=d.noise_share,
                   help="standard deviation of the demand's noise, correlated over an hour (default %(default)s)")
    g.add_argument("--checkpoint-seconds", metavar="S", type=float, default=d.checkpoint_seconds,
                   help="compute between two checkpoints of a training gang (default %(default)s)")
    g.add_argument("--restart-seconds", metavar="S", type=float, default=d.restart_seconds,
                   help="a preempted gang's start and checkpoint load before work resumes (default %(default)s)")
    g.add_argument("--step-seconds", metavar="S", type=float, default=d.step_seconds,
                   help="demand changes and the scheduler runs once per step (default %(default)s)")
    g.add_argument("--grace-seconds", metavar="S", type=float, default=d.grace_seconds,
                   help="a victim's pods stop, then its preemptor starts (default %(default)s)")
    g.add_argument("--train-hours", metavar="HOURS", type=float, default=d.train_hours,
                   help="mean compute a training gang needs (log-normal; default %(default)s)")
    g.add_argument("--scale-down", choices=("pack", "spread"), default=d.scale_down,
                   help="which inference replica a scale-down removes: pack, one on the node with the fewest "
                   "replicas (pod-deletion-cost by node occupancy); spread, one on the node with the most "
                   "(a ReplicaSet's default); default %(default)s")


DEFAULT_SEEDS = 5
DEFAULT_NODES = 16


def run_tidal(args: argparse.Namespace) -> int:
    """`wanka simulate-gangs --tidal`: the policy table on stdout, its numbers as JSON in --json."""
    nodes = args.fleet_nodes if args.fleet_nodes > 0 else DEFAULT_NODES
    try:
        cfg = TidalConfig(
            nodes=nodes,
            days=args.days if args.days is not None else TidalConfig().days,
            seed=args.seed,
            step_seconds=args.step_seconds,
            trough_share=args.trough_share,
            peak_share=args.peak_share,
            noise_share=args.noise_share,
            checkpoint_seconds=args.checkpoint_seconds,
            restart_seconds=args.restart_seconds,
            grace_seconds=args.grace_seconds,
            train_hours=args.train_hours,
            scale_down=args.scale_down,
        )
    except ValueError as exc:
        print(f"wanka simulate-gangs: error: {exc}", file=sys.stderr)
        return 2
    seeds = [args.seed + k for k in range(max(args.seeds if args.seeds is not None else DEFAULT_SEEDS, 1))]
    with progress("tidal runs", len(POLICIES) * len(seeds), enabled=args.progress) as tick:
        rows = tidal_table(cfg, seeds, done=tick)
    model = {k: v for k, v in asdict(cfg).items() if k != "seed"}
    model["low_period_hours"] = list(cfg.low_period)
    model["static_inference_nodes"] = cfg.static_inference_nodes
    document = {
        "fleet": {"source": f"uniform_fleet({nodes})", "nodes": nodes, "gpus": cfg.gpus},
        "seeds": seeds,
        "model": model,
        "rows": rows,
    }
    _emit(document, args.json_out, text=format_table(rows, len(seeds)))
    return 0
