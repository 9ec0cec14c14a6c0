"""Replay of the OpenB GPU trace (FGD paper's protocol) through the core slice policies.

Protocol: the whole trace in a seeded random order, then tasks drawn with replacement until
the GPUs requested reach `ratio` (130%) of capacity; each task is tried once, no departures.
The x-axis is the GPUs requested by all arrived tasks (failed ones included) as % of
capacity; unallocated GPUs = capacity - allocated milli / 1000.

Speed comes from grouping nodes by `NodeState`: identical nodes share one policy evaluation,
cached until no node is in that state any more. The evaluation itself is `core.slicing`'s.
"""

from __future__ import annotations

import bisect
import csv
import random
import statistics
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from wanka.core.fragmentation import NodeState, Shape, Workload, stranded_milli
from wanka.core.slicing import (
    Candidate,
    PolicyContext,
    SlicePolicy,
    SliceRequest,
    after,
    evaluate,
    fit_reason,
    get_policy,
)
from wanka.core.snapshot import WHOLE

DEFAULT_RATIO = 1.3  # arrive tasks until 130% of the GPU capacity was requested


@dataclass(frozen=True, slots=True)
class SimNode:
    """A node of the node list."""

    name: str
    cpu_milli: int
    memory_mib: int
    gpus: int
    model: str

    def state(self) -> NodeState:
        return NodeState(self.model, self.cpu_milli, self.memory_mib, (WHOLE,) * self.gpus)


@dataclass(frozen=True, slots=True)
class Task:
    """A task of the pod list, as the request the core sees."""

    name: str
    req: SliceRequest


def load_nodes(path: str | Path) -> list[SimNode]:
    """Nodes of an OpenB node list (`sn, cpu_milli, memory_mib, gpu, model`)."""
    with open(path, newline="") as f:
        return [
            SimNode(
                name=row["sn"],
                cpu_milli=int(row["cpu_milli"]),
                memory_mib=int(row["memory_mib"]),
                gpus=int(row["gpu"]),
                model=row.get("model") or "",
            )
            for row in csv.DictReader(f)
        ]


def task_request(
    cpu_milli: int, memory_mib: int, num_gpu: int, gpu_milli: int, gpu_spec: str
) -> SliceRequest:
    """The request of one trace row: a share of one GPU, whole GPUs, or CPU only."""
    models = frozenset(m for m in gpu_spec.split("|") if m)
    if num_gpu <= 0 or gpu_milli <= 0:
        return SliceRequest(cpu_milli=cpu_milli, memory_mib=memory_mib)
    if num_gpu == 1 and gpu_milli < WHOLE:
        return SliceRequest.fraction(
            gpu_milli, cpu_milli=cpu_milli, memory_mib=memory_mib, models=models
        )
    # The trace's multi-GPU tasks always take whole devices.
    return SliceRequest.whole(num_gpu, cpu_milli=cpu_milli, memory_mib=memory_mib, models=models)


def load_tasks(path: str | Path) -> list[Task]:
    """Tasks of an OpenB pod list; timestamps and phases are ignored."""
    with open(path, newline="") as f:
        return [
            Task(
                row["name"],
                task_request(
                    int(row["cpu_milli"]),
                    int(row["memory_mib"]),
                    int(row["num_gpu"]),
                    int(row["gpu_milli"]),
                    row.get("gpu_spec") or "",
                ),
            )
            for row in csv.DictReader(f)
        ]


def task_shape(req: SliceRequest) -> Shape:
    """FGD's key of a task shape: CPU, per-GPU milli, GPU count, models (memory left out)."""
    return Shape(req.cpu_milli, req.gpu_milli, req.gpus, req.models)


def target_workload(tasks: Iterable[Task], coverage: float = 0.95) -> Workload:
    """The typical shapes of the ORIGINAL trace, CPU-only ones included, as FGD builds them."""
    return Workload.from_shapes((task_shape(t.req) for t in tasks), coverage)


def arrivals(
    tasks: Sequence[Task], capacity_milli: int, seed: int, ratio: float = DEFAULT_RATIO
) -> list[Task]:
    """The trace shuffled by `seed`, then random copies until `ratio` of capacity is requested.

    A trace that already asks for more loses random tasks instead.
    """
    rng = random.Random(seed)
    seq = list(tasks)
    rng.shuffle(seq)
    target = ratio * capacity_milli
    total = sum(t.req.total_milli for t in seq)
    if total > target:
        while seq and total > target:
            total -= seq.pop(rng.randrange(len(seq))).req.total_milli
        return seq
    while total < target:
        extra = seq[rng.randrange(len(tasks))] if tasks else None
        if extra is None:
            break
        seq.append(extra)
        total += extra.req.total_milli
    return seq


@dataclass(slots=True)
class Step:
    """The cluster after the arrived workload first reached `arrived_pct` % of capacity."""

    arrived_pct: float
    allocated_gpus: float
    unallocated_gpus: float
    fragmented_gpus: float
    failed_tasks: int
    # Free GPU that no GPU shape of the target workload could use (the operator's
    # `status.gpus.stranded`, `fragmentation.stranded_milli`), in GPUs.
    stranded_gpus: float = 0.0


@dataclass(slots=True)
class Replay:
    """One replay: a policy, a seed, and the curve of steps."""

    policy: str
    seed: int
    nodes: int
    gpus: int
    tasks: int
    seconds: float
    steps: list[Step] = field(default_factory=list)
    # Each node's state at the end, by node index (for checks and analysis; not in the JSON).
    final: list[NodeState] = field(default_factory=list, repr=False)

    def at(self, pct: float) -> Step:
        """The first step whose arrived workload reached `pct` %, else the last one."""
        for step in self.steps:
            if step.arrived_pct >= pct - 1e-9:
                return step
        return self.steps[-1]

    def to_json(self) -> dict[str, Any]:
        return {
            "policy": self.policy,
            "seed": self.seed,
            "nodes": self.nodes,
            "gpus": self.gpus,
            "tasks": self.tasks,
            "seconds": round(self.seconds, 3),
            "steps": [
                {k: round(v, 4) if isinstance(v, float) else v for k, v in asdict(s).items()}
                for s in self.steps
            ],
        }


def tie_order(n: int, seed: int) -> list[int]:
    """Node indexes by tie rank: a fixed random order per seed, like the original's name prefixes.

    With per-decision random ties FGD does much worse; with a fixed order it matches the paper.
    """
    order = list(range(n))
    random.Random(f"{seed}-order").shuffle(order)
    return order


class _Group:
    """Nodes sharing one state: their tie ranks (sorted) and the cached evaluations."""

    __slots__ = ("ranks", "results")

    def __init__(self) -> None:
        self.ranks: list[int] = []
        self.results: dict[SliceRequest, Candidate | None] = {}


def replay(
    nodes: Sequence[SimNode],
    tasks: Sequence[Task],
    policy: SlicePolicy | str,
    seed: int,
    workload: Workload,
    *,
    step_pct: float = 1.0,
) -> Replay:
    """Try every task of `tasks` once, in order, and record the curve every `step_pct` %."""
    pol = get_policy(policy) if isinstance(policy, str) else policy
    started = time.perf_counter()
    ctx = PolicyContext(workload=workload, rng=random.Random(f"{seed}-policy"))
    order = tie_order(len(nodes), seed)
    states: list[NodeState] = [NodeState("", 0, 0, ())] * len(nodes)
    groups: dict[NodeState, _Group] = {}
    for rank, idx in enumerate(order):
        state = nodes[idx].state()
        states[rank] = state
        groups.setdefault(state, _Group()).ranks.append(rank)

    capacity = sum(n.gpus for n in nodes) * WHOLE
    allocated = 0
    requested = 0
    failed = 0
    frag = sum(ctx.fgd_frag(s) for s in states)
    curve: list[Step] = []
    shapes = [shape for shape, _ in workload.shapes]
    stranded_of: dict[NodeState, int] = {}

    def stranded() -> int:
        total = 0
        for state, group in groups.items():
            value = stranded_of.get(state)
            if value is None:
                value = stranded_of[state] = stranded_milli((state,), shapes)
            total += value * len(group.ranks)
        return total

    def record() -> None:
        curve.append(
            Step(
                arrived_pct=100.0 * requested / capacity,
                allocated_gpus=allocated / WHOLE,
                unallocated_gpus=(capacity - allocated) / WHOLE,
                fragmented_gpus=frag / WHOLE,
                failed_tasks=failed,
                stranded_gpus=stranded() / WHOLE,
            )
        )

    record()
    next_mark = step_pct
    for task in tasks:
        req = task.req
        requested += req.total_milli
        best = _choose(groups, req, pol, ctx)
        if best is None:
            failed += 1
        else:
            rank, devices = best
            old = states[rank]
            new = after(old, req, devices)
            if not pol.reads_tags and new.tags:
                new = NodeState(new.model, new.cpu_free, new.memory_free, new.free)
            states[rank] = new
            group = groups[old]
            del group.ranks[bisect.bisect_left(group.ranks, rank)]
            if not group.ranks:
                del groups[old]
            bisect.insort(groups.setdefault(new, _Group()).ranks, rank)
            allocated += req.total_milli
            frag += ctx.fgd_frag(new) - ctx.fgd_frag(old)
        if capacity and 100.0 * requested / capacity >= next_mark - 1e-9:
            record()  # once, even when one big task crosses several marks
            while 100.0 * requested / capacity >= next_mark - 1e-9:
                next_mark += step_pct
    if curve[-1].arrived_pct != 100.0 * requested / capacity:
        record()
    return Replay(
        policy=pol.name,
        seed=seed,
        nodes=len(nodes),
        gpus=capacity // WHOLE,
        tasks=len(tasks),
        seconds=time.perf_counter() - started,
        steps=curve,
        final=[states[order.index(i)] for i in range(len(nodes))],
    )


def _choose(
    groups: dict[NodeState, _Group], req: SliceRequest, pol: SlicePolicy, ctx: PolicyContext
) -> tuple[int, tuple[int, ...]] | None:
    """The winning node rank and devices: highest score, then lowest rank."""
    best_score = float("-inf")
    best_rank = -1
    best_devices: tuple[int, ...] = ()
    if pol.cacheable:
        for state, group in groups.items():
            results = group.results
            if req in results:
                res = results[req]
            else:
                res = results[req] = evaluate(state, req, pol, ctx)
            if res is None:
                continue
            score = res[0]
            rank = group.ranks[0]
            if score > best_score or (score == best_score and rank < best_rank):
                best_score, best_rank, best_devices = score, rank, res[1]
    else:
        for state, group in groups.items():
            if fit_reason(state, req) is not None:
                continue
            for rank in group.ranks:
                score, devices = pol.score(state, req, ctx)
                if score > best_score or (score == best_score and rank < best_rank):
                    best_score, best_rank, best_devices = score, rank, devices
    return None if best_rank < 0 else (best_rank, best_devices)


@dataclass(frozen=True, slots=True)
class Job:
    """One replay to run, possibly in another process."""

    nodes: str
    pods: str
    policy: str
    seed: int
    step_pct: float = 1.0
    ratio: float = DEFAULT_RATIO


def run_job(job: Job) -> Replay:
    nodes = load_nodes(job.nodes)
    tasks = load_tasks(job.pods)
    workload = target_workload(tasks)
    capacity = sum(n.gpus for n in nodes) * WHOLE
    seq = arrivals(tasks, capacity, job.seed, job.ratio)
    return replay(nodes, seq, job.policy, job.seed, workload, step_pct=job.step_pct)


def run_jobs(jobs: Sequence[Job], processes: int = 1,
             done: Callable[[str], None] | None = None) -> list[Replay]:
    """Run replays, in parallel processes when asked; results keep the jobs' order. `done` is
    called with "policy seed N" as each replay finishes."""
    out: list[Replay | None] = [None] * len(jobs)
    if processes <= 1 or len(jobs) <= 1:
        finished: Iterable[tuple[int, Replay]] = ((k, run_job(j)) for k, j in enumerate(jobs))
        for k, replay in finished:
            out[k] = replay
            if done:
                done(f"{replay.policy} seed {replay.seed}")
    else:
        from multiprocessing import get_context

        with get_context("spawn").Pool(processes) as pool:
            for k, replay in pool.imap_unordered(_indexed, enumerate(jobs), chunksize=1):
                out[k] = replay
                if done:
                    done(f"{replay.policy} seed {replay.seed}")
    return [r for r in out if r is not None]


def _indexed(item: tuple[int, Job]) -> tuple[int, Replay]:
    return item[0], run_job(item[1])


POINTS = (80.0, 90.0, 100.0, 130.0)


def summarize(replays: Sequence[Replay], points: Sequence[float] = POINTS) -> dict[str, Any]:
    """Median over seeds, per policy, of unallocated GPUs (count, % of capacity), allocated %
    and stranded GPUs at `points` arrived %."""
    by_policy: dict[str, list[Replay]] = {}
    for r in replays:
        by_policy.setdefault(r.policy, []).append(r)
    out: dict[str, Any] = {}
    for name, runs in by_policy.items():
        gpus = runs[0].gpus
        row: dict[str, Any] = {"seeds": sorted(r.seed for r in runs)}
        for p in points:
            un = statistics.median(r.at(p).unallocated_gpus for r in runs)
            alloc = statistics.median(r.at(p).allocated_gpus for r in runs)
            stranded = statistics.median(r.at(p).stranded_gpus for r in runs)
            row[f"{p:g}"] = {
                "unallocated_gpus": round(un, 2),
                "unallocated_pct": round(100.0 * un / gpus, 3),
                "allocated_pct": round(100.0 * alloc / gpus, 3),
                "stranded_gpus": round(stranded, 2),
            }
        row["seconds_median"] = round(statistics.median(r.seconds for r in runs), 3)
        out[name] = row
    return out
