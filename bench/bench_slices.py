"""Slice decision time on the OpenB cluster under load: median and p99 per `place()` call.

The cluster is loaded by replaying the trace to `--load` % arrived with the same policy, then
`--decisions` further trace tasks are each placed on that snapshot. Reported (milliseconds):
- `decision_ms`: `place()` with the node states built once per scheduling cycle, warm
  policy caches, decisions not applied;
- `decision_cold_ms`: the same with fresh caches (first decision of a cycle on a new fleet);
- `with_state_build_ms`: `place()` given only the snapshot (states from it), not applied;
- `cycle_ms`: a scheduling cycle: snapshot in, decision out, the decision applied to the
  snapshot before the next one; one `PolicyContext` for the cycle (the first decisions of
  each request shape are cold);
- `cycle_rebuild_ms`: the same, with `snapshot_states()` rebuilt and passed for every
  decision (how `core.sharing` calls `place()` per replica).
`--clock cpu` times with the process's CPU clock instead of the wall clock: on a machine
shared with other work it measures the decision, not the wait for a core.
Usage: python bench/bench_slices.py [--policies wanka,fgd] [--load 80] [--decisions 500]
    [--clock wall|cpu]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "operator"))

from wanka.core.fragmentation import snapshot_states
from wanka.core.slicing import (
    POLICIES,
    PolicyContext,
    SliceDecision,
    SlicePolicy,
    get_policy,
    place,
)
from wanka.core.snapshot import WHOLE, Device, Node, Snapshot
from wanka.sim.openb import (
    Task,
    arrivals,
    load_nodes,
    load_tasks,
    replay,
    target_workload,
    tie_order,
)

clock = time.perf_counter


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    beside = Path(__file__).resolve().parents[2] / "shared/data/openb"
    parser.add_argument("--data", default=os.environ.get("OPENB", str(beside)),
                        help="folder of the OpenB CSVs (default: $OPENB, else shared/data/openb beside the repo)")
    parser.add_argument("--trace", default="default")
    parser.add_argument("--policies", default="wanka,fgd")
    parser.add_argument("--load", type=float, default=80.0)
    parser.add_argument("--decisions", type=int, default=500)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--clock", choices=("wall", "cpu"), default="wall")
    args = parser.parse_args()
    global clock
    clock = time.process_time if args.clock == "cpu" else time.perf_counter

    nodes = load_nodes(Path(args.data) / "openb_node_list_gpu_node.csv")
    tasks = load_tasks(Path(args.data) / f"openb_pod_list_{args.trace}.csv")
    workload = target_workload(tasks)
    capacity = sum(n.gpus for n in nodes) * WHOLE
    seq = arrivals(tasks, capacity, args.seed)
    cut, total = 0, 0
    while cut < len(seq) and total < args.load / 100 * capacity:
        total += seq[cut].req.total_milli
        cut += 1
    probe = seq[cut : cut + args.decisions]
    names = list(POLICIES) if args.policies == "all" else args.policies.split(",")
    order_idx = tie_order(len(nodes), args.seed)
    order = {nodes[idx].name: rank for rank, idx in enumerate(order_idx)}
    out: dict[str, object] = {
        "trace": args.trace,
        "load_pct": args.load,
        "nodes": len(nodes),
        "gpus": capacity // WHOLE,
        "decisions": len(probe),
        "clock": args.clock,
        "policies": {},
    }
    for name in names:
        loaded = replay(nodes, seq[:cut], name, args.seed, workload)
        snap = Snapshot(nodes=[_node(n, s) for n, s in zip(nodes, loaded.final, strict=True)])
        policy = get_policy(name)
        results = {}
        for label, warm in (("decision_cold_ms", False), ("decision_ms", True)):
            ctx = PolicyContext(workload)
            if warm:  # warm the caches as a running operator would have them
                for task in probe:
                    place(snap, task.req, policy, ctx, order=order, states=snapshot_states(snap))
            states = snapshot_states(snap)
            times = []
            for task in probe:
                if not warm:
                    ctx = PolicyContext(workload)
                t0 = clock()
                place(snap, task.req, policy, ctx, order=order, states=states)
                times.append((clock() - t0) * 1000)
            results[label] = {
                "median": round(statistics.median(times), 4),
                "p99": round(pct(times, 0.99), 4),
            }
        ctx = PolicyContext(workload)
        times = []
        for task in probe:
            t0 = clock()
            place(snap, task.req, policy, ctx, order=order)
            times.append((clock() - t0) * 1000)
        results["with_state_build_ms"] = {
            "median": round(statistics.median(times), 4),
            "p99": round(pct(times, 0.99), 4),
        }
        for label, rebuild in (("cycle_ms", False), ("cycle_rebuild_ms", True)):
            times = _cycle(snap.copy(), probe, policy, PolicyContext(workload), order, rebuild)
            results[label] = {
                "median": round(statistics.median(times), 4),
                "p99": round(pct(times, 0.99), 4),
            }
        out["policies"][name] = results  # type: ignore[index]
    print(json.dumps(out, indent=1))
    return 0


def _cycle(
    snap: Snapshot,
    probe: list[Task],
    policy: SlicePolicy,
    ctx: PolicyContext,
    order: dict[str, int],
    rebuild: bool,
) -> list[float]:
    """Milliseconds per decision of one cycle that applies every decision it makes."""
    times = []
    for k, task in enumerate(probe):
        t0 = clock()
        states = snapshot_states(snap) if rebuild else None
        got = place(snap, task.req, policy, ctx, order=order, states=states)
        times.append((clock() - t0) * 1000)
        if isinstance(got, SliceDecision):
            snap.apply(got.allocation(task.name, str(k), task.req))
    return times


def _node(n: object, state: object) -> Node:
    from wanka.core.fragmentation import NodeState
    from wanka.sim.openb import SimNode

    assert isinstance(n, SimNode) and isinstance(state, NodeState)
    node = Node(
        n.name,
        n.cpu_milli,
        n.memory_mib,
        [
            Device(i, n.model, used_milli=WHOLE - f, shares=int(f < WHOLE))
            for i, f in enumerate(state.free)
        ],
    )
    node.used_cpu_milli = n.cpu_milli - state.cpu_free
    node.used_memory_mib = n.memory_mib - state.memory_free
    return node


if __name__ == "__main__":
    sys.exit(main())
