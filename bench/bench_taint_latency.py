"""Signal-to-taint latency on the local control plane: a node condition turns bad -> Wanka's
wanka.io/unhealthy taint is on the Node, seen through a watch.

Prints JSON with median and p99 over `--transitions` sick transitions spread over `--nodes`
nodes (each node goes sick and recovers in turn; recoveryStableSeconds 0, guard off).

    .venv/bin/python bench/bench_taint_latency.py --nodes 100 --transitions 200
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "operator"))

from kubernetes import client, watch  # noqa: E402

from wanka.cluster.dev import create_nodes  # noqa: E402
from wanka.cluster.devenv import create, devenv  # noqa: E402

TAINT = "wanka.io/unhealthy"


class TaintWatch(threading.Thread):
    """Records, per node, whether our taint is on it and since when (monotonic)."""

    def __init__(self, api: client.ApiClient) -> None:
        super().__init__(daemon=True)
        self.core = client.CoreV1Api(api)
        self.state: dict[str, tuple[bool, float]] = {}
        self.cond = threading.Condition()
        self.stop = False

    def run(self) -> None:
        while not self.stop:
            for ev in watch.Watch().stream(self.core.list_node, timeout_seconds=30):
                node = ev["object"]
                tainted = any(t.key == TAINT for t in node.spec.taints or [])
                with self.cond:
                    prev = self.state.get(node.metadata.name)
                    if prev is None or prev[0] != tainted:
                        self.state[node.metadata.name] = (tainted, time.monotonic())
                        self.cond.notify_all()
                if self.stop:
                    return

    def wait(self, node: str, tainted: bool, after: float, timeout: float = 30) -> float:
        deadline = time.monotonic() + timeout
        with self.cond:
            while True:
                cur = self.state.get(node)
                if cur and cur[0] == tainted and cur[1] >= after:
                    return cur[1]
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"{node}: taint={tainted} not seen")
                self.cond.wait(left)


def set_condition(core: client.CoreV1Api, node: str, status: str, reason: str) -> None:
    now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    core.patch_node_status(node, {"status": {"conditions": [{
        "type": "GPUHealthy", "status": status, "reason": reason, "message": "bench",
        "lastHeartbeatTime": now, "lastTransitionTime": now}]}})


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--nodes", type=int, default=100)
    parser.add_argument("--transitions", type=int, default=200)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="wanka-bench-") as tmp, devenv(Path(tmp)) as env:
        api, core = env.api, client.CoreV1Api(env.api)
        names = create_nodes(api, args.nodes, 8, "H100-80GB", 4, prefix="t", labels={"wanka.io/pool": "t"})
        create(api, "gpupools", {"apiVersion": "wanka.io/v1alpha1", "kind": "GPUPool",
                                 "metadata": {"name": "t"}, "spec": {
                                     "nodeSelector": {"matchLabels": {"wanka.io/pool": "t"}},
                                     "health": {"recoveryStableSeconds": 0, "maxUnhealthyPercent": 100,
                                                "flapLimit": 100, "flapWindowSeconds": 1}}})
        watcher = TaintWatch(api)
        watcher.start()
        time.sleep(2)  # nodes Ready, first pool pass done
        latencies = []
        for i in range(args.transitions):
            node = names[i % len(names)]
            start = time.monotonic()
            set_condition(core, node, "False", f"Bench{i}")
            latencies.append(watcher.wait(node, True, start) - start)
            cleared = time.monotonic()
            set_condition(core, node, "True", "Healthy")
            watcher.wait(node, False, cleared)
        watcher.stop = True
        metrics = env.operator.metrics() if env.operator else ""
    lat = sorted(latencies)
    p99 = lat[min(len(lat) - 1, round(0.99 * (len(lat) - 1)))]
    print(json.dumps({
        "benchmark": "node condition -> wanka.io/unhealthy taint (watch-observed)",
        "nodes": args.nodes, "transitions": len(lat),
        "median_seconds": round(statistics.median(lat), 4), "p99_seconds": round(p99, 4),
        "max_seconds": round(lat[-1], 4), "min_seconds": round(lat[0], 4),
        "operator_histogram_count": next((line.split()[-1] for line in metrics.splitlines()
                                          if line.startswith('wanka_health_signal_to_taint_seconds_count{pool="t"}')),
                                         None),
    }, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
