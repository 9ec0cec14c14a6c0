"""`wanka simulate`: replay an OpenB trace through slice policies and report the curves.

JSON output: one replay gives one object `{"policy", "seed", "nodes", "gpus", "tasks",
"seconds", "steps": [...]}`; several (policies x seeds) give `{"runs": [those objects],
"summary": {policy: {"seeds", "80", "90", "100", "130"}}}`, the summary holding medians over
seeds of unallocated GPUs at those arrived percentages.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from wanka.core.slicing import POLICIES
from wanka.sim.openb import Job, Replay, run_jobs, summarize


def register(subparsers: Any) -> None:
    """Add the `simulate` subcommand to the `wanka` command."""
    parser = subparsers.add_parser(
        "simulate",
        help="replay a GPU trace (OpenB) through slice policies",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_arguments(parser)
    parser.set_defaults(func=run)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--nodes", required=True, help="node list CSV (sn,cpu_milli,memory_mib,gpu,model)"
    )
    parser.add_argument("--pods", required=True, help="pod list CSV of the trace")
    parser.add_argument(
        "--policy",
        action="append",
        default=None,
        help=f"policy to replay; repeat for several, or 'all' ({', '.join(POLICIES)})",
    )
    parser.add_argument("--seed", type=int, default=42, help="first seed (default 42)")
    parser.add_argument("--seeds", type=int, default=1, help="number of seeds: seed, seed+1, ...")
    parser.add_argument(
        "--step", type=float, default=1.0, help="record a step every STEP %% (default 1)"
    )
    parser.add_argument(
        "--ratio", type=float, default=1.3, help="arrive until this share of capacity"
    )
    parser.add_argument(
        "--jobs", type=int, default=0, help="parallel processes (default: CPU count)"
    )
    parser.add_argument("--json", dest="json_out", default=None, help="write the results here")
    parser.add_argument(
        "--plot", default=None, help="draw unallocated GPUs vs arrived workload here"
    )


def policies_from(names: Sequence[str] | None) -> list[str]:
    """Policy names in the order given, 'all' expanded, unknown names rejected."""
    chosen: list[str] = []
    for name in names or ["wanka"]:
        for n in POLICIES if name == "all" else [name]:
            if n not in POLICIES:
                raise SystemExit(f"unknown policy {n!r}; known: {', '.join(POLICIES)}, all")
            if n not in chosen:
                chosen.append(n)
    return chosen


def run(args: argparse.Namespace) -> int:
    policies = policies_from(args.policy)
    for path in (args.nodes, args.pods):
        if not Path(path).is_file():
            print(f"wanka simulate: no such file: {path}", file=sys.stderr)
            return 2
    seeds = [args.seed + k for k in range(max(args.seeds, 1))]
    jobs = [
        Job(args.nodes, args.pods, p, s, args.step, args.ratio) for p in policies for s in seeds
    ]
    processes = args.jobs or min(len(jobs), os.cpu_count() or 1)
    replays = run_jobs(jobs, processes)
    summary = summarize(replays)
    print(format_table(summary, replays[0].gpus if replays else 0))
    if args.json_out:
        document: Any = (
            replays[0].to_json()
            if len(replays) == 1
            else {"runs": [r.to_json() for r in replays], "summary": summary}
        )
        Path(args.json_out).write_text(json.dumps(document, indent=1) + "\n")
    if args.plot:
        plot(replays, args.plot, title=Path(args.pods).stem)
    return 0


def format_table(summary: dict[str, Any], gpus: int) -> str:
    """A plain-text table: policy x arrived % -> median unallocated GPUs (and % of capacity)."""
    points = ["80", "90", "100", "130"]
    lines = [f"unallocated GPUs of {gpus} (median over seeds) at arrived % of capacity"]
    lines.append(f"{'policy':<11}" + "".join(f"{p + '%':>17}" for p in points) + "  seeds  s/run")
    for name, row in summary.items():
        cells = "".join(
            f"{row[p]['unallocated_gpus']:>9.1f} ({row[p]['unallocated_pct']:>4.2f}%)"
            for p in points
        )
        lines.append(f"{name:<11}{cells}  {len(row['seeds']):>5}  {row['seconds_median']:>5.1f}")
    return "\n".join(lines)


def plot(replays: Sequence[Replay], out: str, title: str = "") -> None:
    """Unallocated GPUs against arrived workload, the median over seeds per policy."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    by_policy: dict[str, list[Replay]] = {}
    for r in replays:
        by_policy.setdefault(r.policy, []).append(r)
    fig, ax = plt.subplots(figsize=(7, 4.2))
    for name, runs in by_policy.items():
        xs = [s.arrived_pct for s in runs[0].steps]
        ys = []
        for k in range(len(xs)):
            vals = sorted(r.steps[min(k, len(r.steps) - 1)].unallocated_gpus for r in runs)
            ys.append(vals[len(vals) // 2])
        ax.plot(xs, ys, label=name, linewidth=2.2 if name == "wanka" else 1.3)
    ax.set_xlabel("arrived workload (% of GPU capacity requested)")
    ax.set_ylabel("unallocated GPUs")
    ax.set_xlim(60, max(s.arrived_pct for r in replays for s in r.steps))
    top = max((r.at(60).unallocated_gpus for r in replays), default=1.0)
    ax.set_ylim(0, top)
    ax.grid(alpha=0.3)
    ax.legend()
    if title:
        ax.set_title(title)
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)


def main(argv: Sequence[str] | None = None) -> int:
    """Run `simulate` on its own (python -m wanka.sim.cli ...)."""
    parser = argparse.ArgumentParser(prog="wanka simulate", description=__doc__)
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
