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

from wanka.argparsing import Parser
from wanka.core.slicing import POLICIES
from wanka.sim.openb import Job, Replay, run_jobs, summarize
from wanka.sim.progress import progress


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
        "--plot", default=None,
        help="draw unallocated GPUs vs arrived workload here (PNG), with a 90-130%% zoom beside",
    )
    parser.add_argument("--no-progress", dest="progress", action="store_false",
                        help="print no progress on stderr (default: a bar with an ETA, or a line per replay)")


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
    with progress("replays", len(jobs), enabled=args.progress) as tick:
        replays = run_jobs(jobs, processes, done=tick)
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


ZOOM = (90.0, 130.0)  # where policies part ways: the zoomed panel


def median_curves(replays: Sequence[Replay]) -> dict[str, tuple[list[float], list[float]]]:
    """Per policy: arrived % and the median over seeds of unallocated GPUs at each step."""
    by_policy: dict[str, list[Replay]] = {}
    for r in replays:
        by_policy.setdefault(r.policy, []).append(r)
    curves = {}
    for name, runs in by_policy.items():
        xs = [s.arrived_pct for s in runs[0].steps]
        ys = []
        for k in range(len(xs)):
            vals = sorted(r.steps[min(k, len(r.steps) - 1)].unallocated_gpus for r in runs)
            ys.append(vals[len(vals) // 2])
        curves[name] = (xs, ys)
    return curves


def zoom_limits(curves: dict[str, tuple[list[float], list[float]]],
                window: tuple[float, float] = ZOOM) -> tuple[float, float] | None:
    """The y range of the curves inside `window` of arrived %, padded, from the lowest point up to
    twice it: a policy far worse than the best runs off the top (the whole plot still shows it)
    rather than squashing the close ones together. None if no curve reaches the window."""
    inside = [y for xs, ys in curves.values() for x, y in zip(xs, ys, strict=True) if window[0] <= x <= window[1]]
    if not inside:
        return None
    low = min(inside)
    high = max(y for y in inside if y <= max(2 * low, low + 1.0))
    pad = max((high - low) * 0.08, 1.0)
    return max(0.0, low - pad), high + pad


def plot(replays: Sequence[Replay], out: str, title: str = "") -> None:
    """Unallocated GPUs against arrived workload, the median over seeds per policy; beside it the
    same curves zoomed to 90-130% arrived, where the policies differ."""
    import matplotlib.pyplot as plt

    fig = figure(replays, title)
    fig.savefig(out, dpi=120)
    plt.close(fig)


def figure(replays: Sequence[Replay], title: str = "") -> Any:
    """The plot's matplotlib Figure: the whole curves, and the 90-130% zoom beside them."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    curves = median_curves(replays)
    fig, (ax, zoom) = plt.subplots(1, 2, figsize=(12, 4.4), gridspec_kw={"width_ratios": [3, 2]})
    for name, (xs, ys) in curves.items():
        for axis in (ax, zoom):
            axis.plot(xs, ys, label=name, linewidth=2.2 if name == "wanka" else 1.3)
    ax.set_xlabel("arrived workload (% of GPU capacity requested)")
    ax.set_ylabel("unallocated GPUs")
    ax.set_xlim(60, max(s.arrived_pct for r in replays for s in r.steps))
    top = max((r.at(60).unallocated_gpus for r in replays), default=1.0)
    ax.set_ylim(0, top)
    ax.grid(alpha=0.3)
    ax.legend()
    limits = zoom_limits(curves)
    zoom.set_xlim(*ZOOM)
    if limits:
        zoom.set_ylim(*limits)
    zoom.set_xlabel("arrived workload (%), zoomed")
    zoom.set_title(f"{ZOOM[0]:g}-{ZOOM[1]:g}% arrived")
    zoom.grid(alpha=0.3)
    if title:
        ax.set_title(title)
    fig.tight_layout()
    return fig


def main(argv: Sequence[str] | None = None) -> int:
    """Run `simulate` on its own (python -m wanka.sim.cli ...)."""
    parser = Parser(prog="wanka simulate", description=__doc__)
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
