"""Full OpenB replays: time per policy per seed, and unallocated GPUs at 80/90/100% arrived.

Prints one JSON document: per trace file, per policy, the median over seeds of unallocated
GPUs (count and % of capacity) at 80, 90, 100 and 130% arrived, FGD's allocation rate at
130%, and the replay time. With `--results-dir`, each trace's runs (every step of every
seed) and summary also go to `openb-<trace>.json` there, in `wanka simulate`'s format; with
`--plot-dir`, its curves to `openb-<trace>.png`. Usage:

    python bench/bench_openb_replay.py [--seeds 10] [--seeds-other 5]
        [--traces default,gpuspec33,...] [--policies all] [--jobs 2]
        [--data DIR (default $OPENB, else ../shared/data/openb)] [--out results.json]
        [--results-dir docs/results] [--plot-dir docs/img]
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

from wanka.core.slicing import POLICIES
from wanka.sim.cli import plot
from wanka.sim.openb import Job, run_jobs, summarize

TRACES = ("default", "gpuspec33", "gpushare40", "multigpu20")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    beside = Path(__file__).resolve().parents[2] / "shared/data/openb"
    parser.add_argument("--data", default=os.environ.get("OPENB", str(beside)),
                        help="folder of the OpenB CSVs (default: $OPENB, else shared/data/openb beside the repo)")
    parser.add_argument("--traces", default=",".join(TRACES))
    parser.add_argument("--policies", default="all")
    parser.add_argument("--seeds", type=int, default=10)
    parser.add_argument(
        "--seeds-other", type=int, default=None, help="seeds for non-default traces"
    )
    parser.add_argument("--first-seed", type=int, default=42)
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--out", default=None, help="also write the JSON here")
    parser.add_argument("--results-dir", default=None, help="write openb-<trace>.json here")
    parser.add_argument("--plot-dir", default=None, help="draw openb-<trace>.png here")
    args = parser.parse_args()

    policies = list(POLICIES) if args.policies == "all" else args.policies.split(",")
    nodes = str(Path(args.data) / "openb_node_list_gpu_node.csv")
    report: dict[str, object] = {"seeds_first": args.first_seed, "traces": {}}
    started = time.perf_counter()
    for trace in args.traces.split(","):
        n_seeds = args.seeds if trace == "default" or args.seeds_other is None else args.seeds_other
        seeds = [args.first_seed + k for k in range(n_seeds)]
        pods = str(Path(args.data) / f"openb_pod_list_{trace}.csv")
        jobs = [Job(nodes, pods, p, s) for p in policies for s in seeds]
        replays = run_jobs(jobs, args.jobs)
        summary = summarize(replays)
        for name, row in summary.items():
            times = [r.seconds for r in replays if r.policy == name]
            row["seconds_max"] = round(max(times), 3)
        report["traces"][trace] = {"seeds": len(seeds), "policies": summary}  # type: ignore[index]
        if args.results_dir:
            doc = {"runs": [r.to_json() for r in replays], "summary": summary}
            out = Path(args.results_dir) / f"openb-{trace}.json"
            out.write_text(json.dumps(doc, separators=(",", ":")) + "\n")
        if args.plot_dir:
            plot(replays, str(Path(args.plot_dir) / f"openb-{trace}.png"), title=Path(pods).stem)
        print(f"# {trace}: {len(jobs)} replays done", file=sys.stderr, flush=True)
    report["wall_seconds"] = round(time.perf_counter() - started, 1)
    text = json.dumps(report, indent=1)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")
    # A compact table on stderr for people.
    for trace, data in report["traces"].items():  # type: ignore[attr-defined]
        print(
            f"\n{trace} (median of {data['seeds']} seeds): unallocated % at 80/90/100",
            file=sys.stderr,
        )
        for name, row in data["policies"].items():
            cells = " ".join(f"{row[p]['unallocated_pct']:6.2f}" for p in ("80", "90", "100"))
            print(
                f"  {name:<11}{cells}   {statistics.median([row['seconds_median']]):.1f}s",
                file=sys.stderr,
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
