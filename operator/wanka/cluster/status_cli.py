"""`wanka status`: a readable table of pools and queues from the current kubeconfig's cluster."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from kubernetes import client

from wanka.api.common import GROUP, VERSION
from wanka.cluster.kube import KUBECONFIG_HELP, api_client
from wanka.core.accounting import WAITING_PHASES


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    cells = [[str(h) for h in headers], *[[_fmt(c) for c in row] for row in rows]]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in cells]
    return "\n".join(lines)


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:g}"
    return "-" if value is None else str(value)


def pool_rows(pools: Sequence[dict[str, Any]]) -> list[list[Any]]:
    rows = []
    for pool in sorted(pools, key=lambda p: p["metadata"]["name"]):
        st = pool.get("status") or {}
        g, n = st.get("gpus") or {}, st.get("nodes") or {}
        ready: dict[str, Any] = next(
            (c for c in st.get("conditions") or [] if c.get("type") == "Ready"), {})
        rows.append([
            pool["metadata"]["name"], (pool.get("spec") or {}).get("sharing", {}).get("mode", "Exclusive"),
            g.get("total"), g.get("allocated"), g.get("free"), g.get("stranded"),
            n.get("total"), n.get("healthy"), n.get("sick"), n.get("quarantined"),
            ready.get("reason", "-"),
        ])
    return rows


POOL_HEADERS = ["POOL", "MODE", "GPUS", "ALLOCATED", "FREE", "STRANDED", "NODES", "HEALTHY",
                "SICK", "QUARANTINED", "STATE"]
QUEUE_HEADERS = ["QUEUE", "WEIGHT", "RUNNING", "WAITING", "LONGEST WAIT", "USAGE (GPU)"]


def _age(stamp: str | None, now: datetime) -> str:
    if not stamp:
        return "-"
    seconds = int((now - datetime.fromisoformat(stamp.replace("Z", "+00:00"))).total_seconds())
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit}"
    return f"{max(seconds, 0)}s"


def queue_rows(queues: Sequence[dict[str, Any]], jobs: Sequence[dict[str, Any]] = (),
               now: datetime | None = None) -> list[list[Any]]:
    now = now or datetime.now(UTC)
    rows = []
    for q in sorted(queues, key=lambda p: p["metadata"]["name"]):
        name = q["metadata"]["name"]
        st = q.get("status") or {}
        usage = ", ".join(f"{u['pool']}={u['gpus']:g}" for u in st.get("usage") or []) or "-"
        waiting = [j["metadata"].get("creationTimestamp") for j in jobs
                   if (j.get("spec") or {}).get("queue") == name
                   and (j.get("status") or {}).get("phase") in WAITING_PHASES]
        oldest = min((w for w in waiting if w), default=None)
        rows.append([name, (q.get("spec") or {}).get("weight", 1), st.get("running", 0),
                     st.get("pending", 0), _age(oldest, now), usage])
    return rows


def render(api: client.ApiClient) -> str:
    custom = client.CustomObjectsApi(api)
    pools = custom.list_cluster_custom_object(GROUP, VERSION, "gpupools")["items"]
    queues = custom.list_cluster_custom_object(GROUP, VERSION, "tenantqueues")["items"]
    out = [table(POOL_HEADERS, pool_rows(pools))]
    if queues:
        jobs = custom.list_cluster_custom_object(GROUP, VERSION, "trainingjobs")["items"]
        out += ["", table(QUEUE_HEADERS, queue_rows(queues, jobs))]
    return "\n".join(out)


def _run(args: argparse.Namespace) -> int:
    print(render(api_client(args.kubeconfig)))
    return 0


def register(sub: Any) -> None:
    parser = sub.add_parser("status", help="pools and queues as a table")
    parser.add_argument("--kubeconfig", default=None, help=KUBECONFIG_HELP)
    parser.set_defaults(func=_run)
