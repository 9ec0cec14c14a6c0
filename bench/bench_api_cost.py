"""What one write of each kind costs the local API server, in milliseconds of its CPU.

A burst of small jobs is bound by the API server on a small control plane: this says which
writes weigh. A fresh local control plane (no operator, no scheduler) takes N writes of each
kind, 16 at a time, and the API server's CPU time over each batch is divided by N:

- a ConfigMap, a Pod and an Event created;
- a TrainingJob created (a custom resource: JSON, its structural schema and CEL rules), then
  its finalizer merge-patched, then its status merge-patched (what the operator writes per job);
- the same create and status patch under a copy of the TrainingJob CRD with no schema (group
  `schemaless.wanka.io`, `x-kubernetes-preserve-unknown-fields`): what of a custom resource's
  cost is its schema's;
- the same create once more with the chart's job-finalizer policy installed: what the
  MutatingAdmissionPolicy adds to a create (it saves the finalizer patch).

Prints JSON. The figures include what the API server does for the writes' watchers (the
controller-manager's), as any real write does.

    .venv/bin/python bench/bench_api_cost.py [--writes 400]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "operator"))
sys.path.insert(0, str(REPO / "bench"))

from bench_scale import MAP_API, proc_cpu_seconds  # noqa: E402

from wanka.cluster.devenv import apply_manifests, install_crds, render_chart  # noqa: E402
from wanka.cluster.kube import MERGE_PATCH, api_client, request_json  # noqa: E402
from wanka.cluster.localcluster import LocalCluster  # noqa: E402

NS = "default"
JOBS = f"/apis/wanka.io/v1alpha1/namespaces/{NS}/trainingjobs"


def training_job(i: int) -> dict[str, Any]:
    return {"apiVersion": "wanka.io/v1alpha1", "kind": "TrainingJob", "metadata": {"name": f"j-{i}"},
            "spec": {"pool": "p", "queue": "q", "replicas": 1, "resources": {"gpus": 1},
                     "checkpoint": {"resume": "Never"},
                     "template": {"spec": {"terminationGracePeriodSeconds": 0,
                                           "containers": [{"name": "t", "image": "trainer:1"}]}}}}


SCHEMALESS = "schemaless.wanka.io"


def schemaless_crd_dir(tmp: Path) -> Path:
    """The TrainingJob CRD, renamed into its own group, with no schema at all."""
    crd = yaml.safe_load((REPO / "crds" / "wanka.io_trainingjobs.yaml").read_text())
    crd["metadata"]["name"] = f"trainingjobs.{SCHEMALESS}"
    crd["spec"]["group"] = SCHEMALESS
    for version in crd["spec"]["versions"]:
        version["schema"] = {"openAPIV3Schema": {"type": "object", "x-kubernetes-preserve-unknown-fields": True}}
        version.pop("additionalPrinterColumns", None)
    out = tmp / "schemaless"
    out.mkdir()
    (out / "trainingjobs.yaml").write_text(yaml.safe_dump(crd))
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--writes", type=int, default=400, help="writes of each kind (default 400)")
    args = parser.parse_args()
    n = args.writes
    with tempfile.TemporaryDirectory(prefix="wanka-apicost-") as tmp:
        cluster = LocalCluster(Path(tmp) / "cluster")
        api = api_client(cluster.up())
        try:
            install_crds(api)
            apiserver = cluster.pids()["kube-apiserver"]
            costs: dict[str, float] = {}

            def batch(kind: str, write: Callable[[int], Any]) -> None:
                time.sleep(1)  # let the last batch's watchers settle first
                before = proc_cpu_seconds(apiserver)
                with ThreadPoolExecutor(16) as pool:
                    list(pool.map(write, range(n)))
                costs[kind] = round(1000 * (proc_cpu_seconds(apiserver) - before) / n, 2)

            batch("configmap create", lambda i: request_json(
                api, "POST", f"/api/v1/namespaces/{NS}/configmaps",
                {"metadata": {"name": f"c-{i}"}, "data": {"a": "b"}}))
            batch("pod create", lambda i: request_json(
                api, "POST", f"/api/v1/namespaces/{NS}/pods",
                {"metadata": {"name": f"p-{i}"}, "spec": {"containers": [{"name": "c", "image": "x"}]}}))
            batch("event create", lambda i: request_json(
                api, "POST", f"/api/v1/namespaces/{NS}/events",
                {"metadata": {"name": f"e-{i}"}, "type": "Normal", "reason": "Scheduled", "message": "m",
                 "involvedObject": {"kind": "Pod", "name": f"p-{i}", "namespace": NS}}))
            batch("trainingjob create", lambda i: request_json(api, "POST", JOBS, training_job(i)))
            batch("trainingjob finalizer patch", lambda i: request_json(
                api, "PATCH", f"{JOBS}/j-{i}", {"metadata": {"finalizers": ["wanka.io/finalizer"]}},
                content_type=MERGE_PATCH))
            status = {"status": {"phase": "Queued", "conditions": [
                {"type": "Admitted", "status": "False", "reason": "Queued", "message": "waiting in queue q",
                 "lastTransitionTime": "2026-01-01T00:00:00Z"}]}}
            batch("trainingjob status patch", lambda i: request_json(
                api, "PATCH", f"{JOBS}/j-{i}/status", status, content_type=MERGE_PATCH))
            install_crds(api, schemaless_crd_dir(Path(tmp)))
            bare = JOBS.replace("wanka.io", SCHEMALESS, 1)
            batch("schemaless trainingjob create", lambda i: request_json(
                api, "POST", bare, {**training_job(i), "apiVersion": f"{SCHEMALESS}/v1alpha1"}))
            batch("schemaless trainingjob status patch", lambda i: request_json(
                api, "PATCH", f"{bare}/j-{i}/status", status, content_type=MERGE_PATCH))
            apply_manifests(api, render_chart("wanka", "default", "--api-versions", MAP_API,
                                              "--show-only", "templates/jobfinalizer.yaml"), "default")
            time.sleep(2)  # the policy takes effect once the API server has read it
            batch("trainingjob create, finalizer policy", lambda i: request_json(
                api, "POST", JOBS, training_job(n + i)))
            last = request_json(api, "GET", f"{JOBS}/j-{2 * n - 1}")
            if "wanka.io/finalizer" not in (last["metadata"].get("finalizers") or []):
                costs.pop("trainingjob create, finalizer policy")  # the policy did not run: no figure
        finally:
            cluster.down()
    print(json.dumps({"benchmark": "API server CPU per write, local control plane", "writes_each": n,
                      "apiserver_cpu_ms_per_write": costs}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
