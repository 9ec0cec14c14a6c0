"""`kubectl wanka`: pools, queues and jobs as kubectl shows objects, and why a job waits.

Installed as the `kubectl-wanka` command, which kubectl runs for `kubectl wanka ...`. It takes
kubectl's own flags (-n, -A, --context, --kubeconfig, -o) and reads only what the operator
writes: GPUPool, TenantQueue and TrainingJob status, whose conditions carry the core's reasons.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import yaml

from wanka import __version__
from wanka.api.common import GROUP, VERSION
from wanka.argparsing import Parser
from wanka.cluster.kube import KUBECONFIG_HELP
from wanka.cluster.status_cli import POOL_HEADERS, QUEUE_HEADERS, _age, pool_rows, queue_rows, table
from wanka.core.accounting import WAITING_PHASES, queue_depth

PROG = "kubectl wanka"
OUTPUTS = ("table", "json", "yaml")
FINISHED = ("Succeeded", "Failed")


@dataclass
class Section:
    """One table of a report; as JSON or YAML, a list of objects keyed by the column names."""

    name: str
    headers: list[str]
    rows: list[list[Any]] = field(default_factory=list)

    def records(self) -> list[dict[str, Any]]:
        keys = [_key(h) for h in self.headers]
        return [dict(zip(keys, row, strict=True)) for row in self.rows]


def _key(header: str) -> str:
    words = header.replace("(", "").replace(")", "").lower().split()
    return words[0] + "".join(w.capitalize() for w in words[1:])


def render(report: Sequence[Section] | Mapping[str, Any], output: str) -> str:
    """A report as kubectl would print it: aligned tables, or one JSON / YAML document."""
    if isinstance(report, Mapping):
        doc: Any = dict(report)
    else:
        doc = {s.name: s.records() for s in report}
    if output == "json":
        return json.dumps(doc, indent=2, default=str)
    if output == "yaml":
        return str(yaml.safe_dump(doc, sort_keys=False, default_flow_style=False)).rstrip("\n")
    if isinstance(report, Mapping):
        return _describe(report)
    return "\n\n".join(table(s.headers, s.rows) if s.rows else f"No {s.name} found." for s in report)


# --- what each command shows (pure: dicts in, sections out) ---------------------------------

JOB_HEADERS = ["NAMESPACE", "NAME", "QUEUE", "POOL", "PHASE", "READY", "GPUS", "AGE", "REASON"]


def _status(obj: Mapping[str, Any]) -> dict[str, Any]:
    return dict(obj.get("status") or {})


def _condition(obj: Mapping[str, Any], type_: str) -> dict[str, Any] | None:
    return next((c for c in _status(obj).get("conditions") or [] if c.get("type") == type_), None)


def job_rows(jobs: Sequence[Mapping[str, Any]], now: datetime) -> list[list[Any]]:
    rows = []
    for job in sorted(jobs, key=lambda j: (j["metadata"].get("namespace", ""), j["metadata"]["name"])):
        spec, st = job.get("spec") or {}, _status(job)
        headline = waiting_reason(job) if st.get("phase") in WAITING_PHASES else None
        rows.append([job["metadata"].get("namespace"), job["metadata"]["name"], spec.get("queue"), spec.get("pool"),
                     st.get("phase") or "Pending", f"{st.get('replicasReady', 0)}/{spec.get('replicas', '?')}",
                     st.get("gpus"), _age(job["metadata"].get("creationTimestamp"), now),
                     headline[0] if headline else None])
    return rows


def waiting_reason(job: Mapping[str, Any]) -> tuple[str, str] | None:
    """The core's last word on why a job is not placed: the Admitted condition's reason and
    message while it is False; None while the operator has not looked at the job yet."""
    admitted = _condition(job, "Admitted")
    if admitted is None or admitted.get("status") == "True":
        return None
    return str(admitted.get("reason") or "Unknown"), str(admitted.get("message") or "")


def why(job: Mapping[str, Any], now: datetime) -> dict[str, Any]:
    """Why a job waits, or where it runs, or how it ended, from its status alone."""
    meta, spec, st = job["metadata"], job.get("spec") or {}, _status(job)
    phase = st.get("phase") or "Pending"
    out: dict[str, Any] = {"job": f"{meta.get('namespace')}/{meta['name']}", "phase": phase,
                           "queue": spec.get("queue"), "pool": spec.get("pool")}
    if phase in FINISHED:
        cond = _condition(job, phase) or {}
        out |= {"state": "finished", "reason": cond.get("reason"), "message": cond.get("message")}
    elif spec.get("suspend") or phase == "Suspended":
        out |= {"state": "suspended", "reason": "Suspended",
                "message": "spec.suspend is true: it holds nothing; `kubectl wanka resume` puts it back in the queue"}
    elif st.get("phase") in WAITING_PHASES:
        reason, message = waiting_reason(job) or (
            "NotSeen", "the operator has not looked at this job yet: is it running, and does the pool exist?")
        out |= {"state": "waiting", "reason": reason, "message": message}
        if st.get("retryAfter"):
            out["retryAfter"] = st["retryAfter"]
        if st.get("nominatedVictims"):
            out["nominatedVictims"] = list(st["nominatedVictims"])
    else:
        cond = _condition(job, "Admitted") or {}
        out |= {"state": "placed", "reason": cond.get("reason"), "message": cond.get("message"),
                "placement": [{"replica": p.get("replica"), "node": p.get("node"),
                               "devices": p.get("devices") or [],
                               **({"gpuMilli": p["gpuMilli"]} if p.get("gpuMilli") else {})}
                              for p in sorted(st.get("placement") or [], key=lambda p: p.get("replica", 0))]}
    if st.get("excludedNodes"):
        out["excludedNodes"] = list(st["excludedNodes"])
    restarts = _condition(job, "Restarting")
    if st.get("restarts"):
        out["restarts"] = st["restarts"]
        if restarts and restarts.get("message"):
            out["lastRestart"] = f"{restarts.get('reason')}: {restarts.get('message')}"
    out["age"] = _age(meta.get("creationTimestamp"), now)
    return out


def _describe(doc: Mapping[str, Any]) -> str:
    """`why` as kubectl describe-like lines."""
    lines = [f"{doc['job']} is {doc['state']} ({doc['phase']}, queue {doc['queue']}, pool {doc['pool']}, "
             f"age {doc['age']})"]
    if doc.get("reason"):
        lines.append(f"  {doc['reason']}: {doc.get('message') or ''}".rstrip(": "))
    for p in doc.get("placement") or []:
        share = f" ({p['gpuMilli'] / 1000:g} of a GPU)" if p.get("gpuMilli") else ""
        devices = ",".join(str(d) for d in p["devices"]) or "-"
        lines.append(f"  replica {p['replica']} on {p['node']}, devices {devices}{share}")
    labels = {"retryAfter": "not placed again before", "nominatedVictims": "waiting for preempted gangs",
              "excludedNodes": "avoids nodes that failed it", "restarts": "restarts", "lastRestart": "last restart"}
    for key, label in labels.items():
        if doc.get(key):
            value = doc[key]
            lines.append(f"  {label}: {', '.join(value) if isinstance(value, list) else value}")
    return "\n".join(lines)


TOP_POOL_HEADERS = ["POOL", "CAPACITY", "ALLOCATED", "FREE", "USE %", "PENDING JOBS"]
TOP_QUEUE_HEADERS = ["QUEUE", "POOL", "QUOTA", "USED", "USE % OF QUOTA", "RUNNING", "PENDING"]


def top(pools: Sequence[Mapping[str, Any]], queues: Sequence[Mapping[str, Any]],
        jobs: Sequence[Mapping[str, Any]]) -> list[Section]:
    """GPU use per pool and per (queue, pool), with the jobs waiting in each."""
    depth = queue_depth(jobs)
    running: dict[tuple[str, str], int] = {}
    for job in jobs:
        spec = job.get("spec") or {}
        if _status(job).get("phase") in ("Admitted", "Running"):
            key = (str(spec.get("queue")), str(spec.get("pool")))
            running[key] = running.get(key, 0) + 1
    pool_section = Section("pools", TOP_POOL_HEADERS)
    for pool in sorted(pools, key=lambda p: p["metadata"]["name"]):
        name, gpus = pool["metadata"]["name"], _status(pool).get("gpus") or {}
        total, allocated = gpus.get("total") or 0, gpus.get("allocated") or 0
        pool_section.rows.append([name, total, allocated, gpus.get("free"), _pct(allocated, total),
                                  sum(n for (_, p), n in depth.items() if p == name)])
    queue_section = Section("queues", TOP_QUEUE_HEADERS)
    for queue in sorted(queues, key=lambda q: q["metadata"]["name"]):
        name = queue["metadata"]["name"]
        quotas = {q["pool"]: q.get("gpus", 0) for q in (queue.get("spec") or {}).get("quotas") or []}
        used = {u["pool"]: u.get("gpus", 0) for u in _status(queue).get("usage") or []}
        seen = {in_pool for (of_queue, in_pool) in [*depth, *running] if of_queue == name}
        for in_pool in sorted(set(quotas) | set(used) | seen):
            quota, use = quotas.get(in_pool), used.get(in_pool, 0)
            queue_section.rows.append([name, in_pool, quota, use, _pct(use, quota),
                                       running.get((name, in_pool), 0), depth.get((name, in_pool), 0)])
    return [pool_section, queue_section]


def _pct(part: float, whole: float | None) -> str | None:
    return f"{100 * part / whole:.0f}%" if whole else None


# --- talking to the cluster ----------------------------------------------------------------

class Cluster:
    """The few reads and one write the plugin needs (api_client puts a deadline on each)."""

    def __init__(self, kubeconfig: str | None, context: str | None) -> None:
        from kubernetes import client

        from wanka.cluster.kube import api_client

        self.custom = client.CustomObjectsApi(api_client(kubeconfig, context))

    def list(self, plural: str, namespace: str | None = None) -> list[dict[str, Any]]:
        if namespace:
            found = self.custom.list_namespaced_custom_object(GROUP, VERSION, namespace, plural)
        else:
            found = self.custom.list_cluster_custom_object(GROUP, VERSION, plural)
        return list(found["items"])

    def job(self, namespace: str, name: str) -> dict[str, Any]:
        return dict(self.custom.get_namespaced_custom_object(GROUP, VERSION, namespace, "trainingjobs", name))

    def suspend(self, namespace: str, name: str, suspend: bool) -> None:
        self.custom.patch_namespaced_custom_object(GROUP, VERSION, namespace, "trainingjobs", name,
                                                   {"spec": {"suspend": suspend}})


def _namespace(args: argparse.Namespace) -> str:
    from wanka.cluster.kube import default_namespace

    return str(args.namespace or default_namespace(args.kubeconfig, args.context))


def _job(cluster: Cluster, args: argparse.Namespace) -> dict[str, Any]:
    from kubernetes.client.exceptions import ApiException

    namespace = _namespace(args)
    try:
        return cluster.job(namespace, args.job)
    except ApiException as exc:
        if exc.status == 404:
            raise CommandError(f'trainingjob "{args.job}" not found in namespace "{namespace}"') from None
        raise


class CommandError(Exception):
    """A failure the user can act on; printed as it is."""


def cmd_status(cluster: Cluster, args: argparse.Namespace) -> str:
    queues = cluster.list("tenantqueues")
    sections = [Section("pools", POOL_HEADERS, pool_rows(cluster.list("gpupools")))]
    if queues:
        sections.append(Section("queues", QUEUE_HEADERS, queue_rows(queues, cluster.list("trainingjobs"))))
    return render(sections, args.output)


def cmd_jobs(cluster: Cluster, args: argparse.Namespace) -> str:
    jobs = cluster.list("trainingjobs", None if args.all_namespaces else _namespace(args))
    return render([Section("jobs", JOB_HEADERS, job_rows(jobs, datetime.now(UTC)))], args.output)


def cmd_why(cluster: Cluster, args: argparse.Namespace) -> str:
    return render(why(_job(cluster, args), datetime.now(UTC)), args.output)


def cmd_suspend(cluster: Cluster, args: argparse.Namespace, suspend: bool = True) -> str:
    job = _job(cluster, args)
    cluster.suspend(job["metadata"]["namespace"], job["metadata"]["name"], suspend)
    verb = "suspended" if suspend else "resumed"
    doc = {"job": f"{job['metadata']['namespace']}/{job['metadata']['name']}", "suspend": suspend}
    return render(doc, args.output) if args.output != "table" else f"trainingjob.{GROUP}/{args.job} {verb}"


def cmd_top(cluster: Cluster, args: argparse.Namespace) -> str:
    return render(top(cluster.list("gpupools"), cluster.list("tenantqueues"), cluster.list("trainingjobs")),
                  args.output)


Command = Callable[[Cluster, argparse.Namespace], str]


def _common(parser: argparse.ArgumentParser, suppress: bool) -> None:
    """kubectl's flags; accepted before or after the command (defaults are filled in later)."""
    default = argparse.SUPPRESS if suppress else None
    parser.add_argument("-n", "--namespace", default=default,
                        help="namespace of the job(s) (default: the context's namespace, else default)")
    parser.add_argument("--context", default=default, help="kubeconfig context to use (default: the current one)")
    parser.add_argument("--kubeconfig", default=default, help=KUBECONFIG_HELP)
    parser.add_argument("-o", "--output", choices=OUTPUTS, default=argparse.SUPPRESS if suppress else "table",
                        help="output format (default: table)")


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog=PROG, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"kubectl-wanka {__version__}",
                        help="print the plugin's version and exit")
    _common(parser, suppress=False)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=Parser)
    commands: list[tuple[str, str, Command, bool]] = [
        ("status", "pools and tenant queues: capacity, health, waiting jobs", cmd_status, False),
        ("jobs", "TrainingJobs with their phase and, while they wait, why", cmd_jobs, False),
        ("why", "why a TrainingJob waits, or where it runs, or how it ended", cmd_why, True),
        ("suspend", "suspend a TrainingJob: it releases its GPUs and waits", cmd_suspend, True),
        ("resume", "resume a suspended TrainingJob: it goes back in its queue",
         lambda c, a: cmd_suspend(c, a, suspend=False), True),
        ("top", "GPU use per pool and per tenant queue", cmd_top, False),
    ]
    for name, help_, func, takes_job in commands:
        cmd = sub.add_parser(name, help=help_, description=help_)
        _common(cmd, suppress=True)
        if takes_job:
            cmd.add_argument("job", help="name of the TrainingJob")
        if name == "jobs":
            cmd.add_argument("-A", "--all-namespaces", action="store_true",
                             help="list the jobs of every namespace")
        cmd.set_defaults(func=func)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    args.all_namespaces = getattr(args, "all_namespaces", False)
    try:
        print(args.func(Cluster(args.kubeconfig, args.context), args))
    except CommandError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except Exception as exc:
        if os.environ.get("WANKA_DEBUG"):
            raise
        from wanka.cluster.errors import describe

        print(f"error: {describe(exc)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
