"""The OpenB simulator: fragmentation measures by hand, JSON shape, and same-core decisions."""

from __future__ import annotations

import itertools
import json
import math
import random
from pathlib import Path

import pytest

from wanka.core.fragmentation import (
    NodeState,
    Shape,
    Workload,
    fgd_fragmentation,
    stranded_milli,
    wanka_fragmentation,
)
from wanka.core.slicing import FGD, PolicyContext, SliceDecision, SliceRequest, get_policy, place
from wanka.core.snapshot import Device, Node, Snapshot
from wanka.sim import cli
from wanka.sim.openb import (
    Task,
    arrivals,
    load_nodes,
    load_tasks,
    replay,
    target_workload,
    task_request,
    tie_order,
)

# A node with 4 cores free and GPUs free (1000, 300, 0), and a three-shape workload.
STATE = NodeState(model="T4", cpu_free=4000, memory_free=10_000, free=(1000, 300, 0))
SHARE = Shape(cpu_milli=2000, gpu_milli=500, gpus=1)  # fits: strands the 300 sliver
BIG = Shape(cpu_milli=8000, gpu_milli=1000, gpus=1)  # CPU too short: strands all 1300
CPU_ONLY = Shape(cpu_milli=1000, gpu_milli=0, gpus=0)  # FGD counts all free GPU for it
WORKLOAD = Workload(((SHARE, 0.5), (BIG, 0.25), (CPU_ONLY, 0.25)))


def test_fgd_fragmentation_matches_hand_computation() -> None:
    # 0.5 * 300 + 0.25 * 1300 + 0.25 * 1300
    assert fgd_fragmentation(STATE, WORKLOAD) == pytest.approx(800.0)


def test_fgd_score_matches_hand_computation() -> None:
    # A 300m share on device 1 leaves (1000, 0, 0): frag 0 + 250 + 250 = 500, a gain of 300;
    # on device 0 it leaves (700, 300, 0): 150 + 250 + 250 = 650, a gain of only 150.
    score, devices = FGD().score(STATE, SliceRequest.fraction(300), PolicyContext(WORKLOAD))
    assert devices == (1,)
    assert score == math.floor(100 / (1 + math.exp(-0.3)))


def test_wanka_measure_adds_gpus_the_cpu_cannot_feed() -> None:
    # Same GPUs, 2 cores free: SHARE fits once by CPU but twice by GPU, so 1300 - 300 - 500 =
    # 500 milli are starved of CPU and count at the given weight on top of FGD's 300 sliver.
    starved = NodeState(model="T4", cpu_free=2000, memory_free=10_000, free=(1000, 300, 0))
    fgd = 0.5 * 300 + 0.25 * 1300 + 0.25 * 1300
    assert fgd_fragmentation(starved, WORKLOAD) == pytest.approx(fgd)
    assert wanka_fragmentation(starved, WORKLOAD, 0.25) == pytest.approx(fgd + 0.5 * 0.25 * 500)
    # With CPU for every copy the two measures agree.
    assert wanka_fragmentation(STATE, WORKLOAD) == pytest.approx(fgd_fragmentation(STATE, WORKLOAD))


def test_stranded_is_what_no_pending_shape_can_use() -> None:
    assert stranded_milli([STATE], [SHARE, BIG]) == 300
    assert stranded_milli([STATE], [BIG]) == 1300
    assert stranded_milli([STATE], []) == 1300


def test_typical_shapes_cover_95_percent_and_renormalise() -> None:
    shapes = [SHARE] * 90 + [BIG] * 6 + [CPU_ONLY] * 4
    wl = Workload.from_shapes(shapes)
    assert [s for s, _ in wl.shapes] == [SHARE, BIG]
    assert sum(p for _, p in wl.shapes) == pytest.approx(1.0)
    assert dict(wl.shapes)[SHARE] == pytest.approx(90 / 96)


@pytest.mark.parametrize(
    ("row", "want"),
    [
        (
            (4000, 100, 1, 500, "T4|A10"),
            SliceRequest.fraction(
                500, cpu_milli=4000, memory_mib=100, models=frozenset({"T4", "A10"})
            ),
        ),
        ((4000, 100, 2, 1000, ""), SliceRequest.whole(2, cpu_milli=4000, memory_mib=100)),
        ((4000, 100, 1, 1000, ""), SliceRequest.whole(1, cpu_milli=4000, memory_mib=100)),
        ((4000, 100, 0, 0, ""), SliceRequest(cpu_milli=4000, memory_mib=100)),
    ],
    ids=["share", "two-whole", "one-whole", "cpu-only"],
)
def test_trace_rows_become_requests(
    row: tuple[int, int, int, int, str], want: SliceRequest
) -> None:
    assert task_request(*row) == want


# --- a small trace ---------------------------------------------------------------------------
def write_trace(tmp: Path) -> tuple[Path, Path]:
    nodes = tmp / "nodes.csv"
    lines = ["sn,cpu_milli,memory_mib,gpu,model"]
    for k in range(12):  # 64 GPUs: the 60 tasks ask for less than 130% of them
        lines.append(f"n{k},{16000 * (1 + k % 2)},65536,{(2, 6, 8)[k % 3]},{('T4', 'A10')[k % 2]}")
    nodes.write_text("\n".join(lines) + "\n")
    pods = tmp / "pods.csv"
    rng = random.Random(7)
    rows = ["name,cpu_milli,memory_mib,num_gpu,gpu_milli,gpu_spec"]
    for k in range(60):
        kind = rng.random()
        if kind < 0.5:
            rows.append(
                f"p{k},{rng.choice((1000, 2000, 4000))},1024,1,{rng.choice((250, 500, 810))},"
            )
        elif kind < 0.8:
            rows.append(f"p{k},{rng.choice((2000, 6000))},2048,{rng.choice((1, 2, 4))},1000,")
        elif kind < 0.9:
            rows.append(f"p{k},3000,2048,1,1000,A10")
        else:
            rows.append(f"p{k},4000,1024,0,0,")
    pods.write_text("\n".join(rows) + "\n")
    return nodes, pods


def test_arrivals_append_copies_until_the_ratio(tmp_path: Path) -> None:
    _, pods = write_trace(tmp_path)
    tasks = load_tasks(pods)
    capacity = 100_000  # the trace asks for less than 130% of it
    seq = arrivals(tasks, capacity, seed=3, ratio=1.3)
    assert sorted(t.name for t in seq[: len(tasks)]) == sorted(t.name for t in tasks)
    total = sum(t.req.total_milli for t in seq)
    assert total >= 1.3 * capacity > total - seq[-1].req.total_milli
    assert arrivals(tasks, capacity, seed=3) == seq
    assert arrivals(tasks, capacity, seed=4) != seq


def test_arrivals_drop_tasks_of_a_trace_above_the_ratio(tmp_path: Path) -> None:
    _, pods = write_trace(tmp_path)
    tasks = load_tasks(pods)
    seq = arrivals(tasks, 10_000, seed=3, ratio=1.3)
    assert len(seq) < len(tasks)
    assert sum(t.req.total_milli for t in seq) <= 13_000
    assert {t.name for t in seq} <= {t.name for t in tasks}


def test_simulate_json_shape_and_monotone_steps(tmp_path: Path) -> None:
    nodes, pods = write_trace(tmp_path)
    out = tmp_path / "one.json"
    assert (
        cli.main(
            [
                "--nodes",
                str(nodes),
                "--pods",
                str(pods),
                "--policy",
                "fgd",
                "--json",
                str(out),
                "--step",
                "5",
            ]
        )
        == 0
    )
    doc = json.loads(out.read_text())
    assert set(doc) >= {"policy", "seed", "nodes", "gpus", "steps"}
    assert (doc["policy"], doc["seed"], doc["nodes"], doc["gpus"]) == ("fgd", 42, 12, 64)
    steps = doc["steps"]
    assert steps[0]["arrived_pct"] == 0 and steps[0]["allocated_gpus"] == 0
    assert steps[-1]["arrived_pct"] >= 130
    for prev, cur in itertools.pairwise(steps):
        assert cur["arrived_pct"] > prev["arrived_pct"]
        assert cur["arrived_pct"] - prev["arrived_pct"] <= 5 + 100 * 8 / 64  # one task may jump
        assert cur["allocated_gpus"] >= prev["allocated_gpus"]
        assert cur["failed_tasks"] >= prev["failed_tasks"]
    for s in steps:
        assert s["unallocated_gpus"] == pytest.approx(doc["gpus"] - s["allocated_gpus"], abs=1e-3)
        assert 0 <= s["fragmented_gpus"] <= s["unallocated_gpus"] + 1e-6
        assert 0 <= s["stranded_gpus"] <= s["unallocated_gpus"] + 1e-6
    assert steps[0]["stranded_gpus"] == 0  # an empty cluster strands nothing


@pytest.mark.parametrize("policy", ["wanka", "clustering"])
def test_stranded_gpus_are_the_operators_measure_on_the_final_cluster(
    tmp_path: Path, policy: str
) -> None:
    nodes_csv, pods_csv = write_trace(tmp_path)
    nodes, tasks = load_nodes(nodes_csv), load_tasks(pods_csv)
    workload = target_workload(tasks)
    seq = arrivals(tasks, sum(n.gpus for n in nodes) * 1000, seed=7)
    got = replay(nodes, seq, policy, 7, workload)
    shapes = [shape for shape, _ in workload.shapes]
    want = stranded_milli(got.final, shapes) / 1000
    assert got.steps[-1].stranded_gpus == pytest.approx(want)
    assert want > 0  # the trace is over capacity: something is left that nobody can use


def test_simulate_all_policies_several_seeds_and_plot(tmp_path: Path) -> None:
    nodes, pods = write_trace(tmp_path)
    out, png = tmp_path / "all.json", tmp_path / "all.png"
    argv = [
        "--nodes",
        str(nodes),
        "--pods",
        str(pods),
        "--policy",
        "all",
        "--seeds",
        "2",
        "--jobs",
        "1",
    ]
    assert cli.main([*argv, "--json", str(out), "--plot", str(png)]) == 0
    doc = json.loads(out.read_text())
    assert len(doc["runs"]) == 7 * 2
    assert {r["policy"] for r in doc["runs"]} == set(doc["summary"])
    assert all(row["seeds"] == [42, 43] for row in doc["summary"].values())
    assert png.stat().st_size > 10_000


@pytest.mark.parametrize("policy", ["wanka", "fgd", "bestfit", "packing", "clustering", "dotprod"])
def test_simulator_decides_exactly_like_core_place(tmp_path: Path, policy: str) -> None:
    # The simulator groups identical nodes and caches; `place` looks at every node. Same result.
    nodes_csv, pods_csv = write_trace(tmp_path)
    nodes, tasks = load_nodes(nodes_csv), load_tasks(pods_csv)
    workload = target_workload(tasks)
    seq = arrivals(tasks, sum(n.gpus for n in nodes) * 1000, seed=5)
    got = replay(nodes, seq, policy, 5, workload)

    snap = Snapshot(
        nodes=[
            Node(n.name, n.cpu_milli, n.memory_mib, [Device(i, n.model) for i in range(n.gpus)])
            for n in nodes
        ]
    )
    order = {nodes[idx].name: rank for rank, idx in enumerate(tie_order(len(nodes), 5))}
    ctx = PolicyContext(workload)
    pol = get_policy(policy)
    for k, task in enumerate(seq):
        decision = place(snap, task.req, pol, ctx, order=order)
        if isinstance(decision, SliceDecision):
            snap.apply(decision.allocation(task.name, str(k), task.req))
    for n, state in zip(nodes, got.final, strict=True):
        node = snap.nodes[n.name]
        assert state.free == tuple(d.free_milli for d in node.devices), n.name
        assert state.cpu_free == node.free_cpu_milli


def test_tasks_keep_their_names(tmp_path: Path) -> None:
    _, pods = write_trace(tmp_path)
    tasks = load_tasks(pods)
    assert isinstance(tasks[0], Task) and tasks[0].name == "p0"
