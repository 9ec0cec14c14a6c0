"""Benchmark of gang decisions, a scheduling cycle and snapshot memory; prints JSON.

Usage: python bench/bench_gang.py [--trials N] [--seed S]
"""

from __future__ import annotations

import argparse
import gc
import json
import random
import statistics
import sys
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "operator"))

from wanka.core.gang import place_gang
from wanka.core.queueing import PoolQuota, QueueSpec, schedule
from wanka.core.requests import GangRequest
from wanka.core.snapshot import Allocation, DeviceShare, Snapshot
from wanka.sim.gangs import LEVELS, load_spot_fleet, occupy, uniform_fleet


def timings(fn: Callable[[], object], trials: int) -> dict[str, float]:
    samples = []
    for _ in range(trials):
        t0 = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - t0) * 1000)
    samples.sort()
    return {
        "p50_ms": round(statistics.median(samples), 3),
        "p99_ms": round(samples[min(len(samples) - 1, int(0.99 * len(samples)))], 3),
        "max_ms": round(samples[-1], 3),
        "trials": trials,
    }


def gang_case(snap: Snapshot, req: GangRequest, trials: int) -> dict[str, object]:
    result = place_gang(snap, req, dry_run=True)  # a decision: plan + statement, discarded
    out: dict[str, object] = {"gang": req.describe(), "placed": result.ok}
    if result.placement is not None:
        out["level"] = result.placement.level or "spans"
        out["domains"] = len(result.placement.domains)
        out["nodes"] = len(result.placement.nodes)
    else:
        out["reason"] = result.reason
    out.update(timings(lambda: place_gang(snap, req, dry_run=True), trials))
    return out


def fleet_cases(snap: Snapshot, trials: int, models: frozenset[str]) -> list[dict[str, object]]:
    cases = [
        GangRequest("bench/g128", replicas=128, gpus=8, cpu_milli=8000, memory_mib=65536),
        GangRequest(
            "bench/g128-spine",
            replicas=128,
            gpus=8,
            topology_level="wanka.io/spine",
            topology_mode="Preferred",
            models=models,
        ),
        GangRequest(
            "bench/g16-rack",
            replicas=16,
            gpus=8,
            topology_level="wanka.io/rack",
            topology_mode="Required",
            models=models,
        ),
        GangRequest("bench/g32", replicas=32, gpus=8, models=models),
        GangRequest("bench/g96", replicas=96, gpus=8, topology_level="wanka.io/spine"),
        GangRequest("bench/slice", replicas=1, gpu_milli=250),
    ]
    return [gang_case(snap, c, trials) for c in cases]


def cycle_case(snap: Snapshot, rng: random.Random) -> dict[str, object]:
    pending = []
    for i in range(200):
        size = rng.choice((1, 1, 2, 4, 8))
        replicas = rng.choice((1, 1, 1, 2, 4, 16))
        pending.append(
            GangRequest(
                f"bench/p{i}",
                queue=f"q{i % 4}",
                pool="p",
                replicas=replicas,
                gpus=size,
                created=float(i),
            )
        )
    queues = [QueueSpec(f"q{i}", (PoolQuota("p", 5000, None),)) for i in range(4)]
    t0 = time.perf_counter()
    result = schedule(snap, queues, pending, [], 0.0)
    ms = (time.perf_counter() - t0) * 1000
    return {"pending": 200, "admitted": len(result.admitted), "cycle_ms": round(ms, 1)}


def snapshot_memory(rng: random.Random) -> dict[str, object]:
    gc.collect()
    tracemalloc.start()
    base = tracemalloc.take_snapshot()
    snap = Snapshot(load_spot_fleet(), levels=LEVELS)
    nodes = list(snap.nodes.values())
    made = 0
    while made < 50_000:
        node = rng.choice(nodes)
        dev = rng.randrange(len(node.devices))
        alloc = Allocation(
            f"ns/pod-{made}",
            "0",
            node.name,
            cpu_milli=100,
            memory_mib=256,
            devices=(DeviceShare(dev, rng.choice((50, 100))),),
        )
        if snap.check(alloc) is None:
            snap.apply(alloc)
            made += 1
    current, peak = tracemalloc.get_traced_memory()
    stats = tracemalloc.take_snapshot().compare_to(base, "filename")
    tracemalloc.stop()
    return {
        "nodes": len(snap.nodes),
        "devices": snap.total_devices(),
        "allocations": len(snap.allocations),
        "traced_mib": round(sum(s.size_diff for s in stats) / 2**20, 1),
        "current_mib": round(current / 2**20, 1),
        "peak_mib": round(peak / 2**20, 1),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--trials", type=int, default=200)
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args(argv)
    rng = random.Random(args.seed)
    uniform = Snapshot(uniform_fleet(1250, 8), levels=LEVELS)
    occupy(uniform, 0.5, rng)
    spot = Snapshot(load_spot_fleet(), levels=LEVELS)
    occupy(spot, 0.5, rng)
    out = {
        "python": sys.version.split()[0],
        "uniform_1250x8": {
            "busy_fraction": round(uniform.allocated_milli() / 1000 / uniform.total_devices(), 3),
            "cases": fleet_cases(uniform, args.trials, frozenset()),
            "cycle": cycle_case(uniform, rng),
        },
        "spot_4278": {
            "busy_fraction": round(spot.allocated_milli() / 1000 / spot.total_devices(), 3),
            "cases": fleet_cases(spot, args.trials, frozenset({"A100-SXM4-80GB"})),
            "cycle": cycle_case(spot, rng),
        },
        "snapshot_memory_4278_nodes_50k_allocations": snapshot_memory(rng),
    }
    print(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
