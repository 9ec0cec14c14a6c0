"""The operator process: kopf runs it (login, start-up, liveness, signals), our own watch
streams feed the cache (`cluster/watch.py`), and one long-lived loop reconciles from it."""

from __future__ import annotations

import argparse
import asyncio
import gc
import logging
import os
import time
from dataclasses import dataclass, field
from typing import Any

import kopf
from prometheus_client import start_http_server

from wanka import __version__
from wanka.cluster.cache import KINDS, FleetCache
from wanka.cluster.fence import NotLeader
from wanka.cluster.health import ApiNodePatcher, ApiObjectWriter, HealthReconciler
from wanka.cluster.jobio import JobIO
from wanka.cluster.jobs import JobReconciler
from wanka.cluster.kube import KUBECONFIG_HELP, api_client, connection_settings, list_all
from wanka.cluster.leader import ApiLeaseStore, LeaseElector
from wanka.cluster.pools import PoolReconciler
from wanka.cluster.watch import Watches
from wanka.cluster.writer import EventRecorder, StatusWriter
from wanka.controllers.logs import configure_logging
from wanka.core.accounting import PoolSummary, queue_depth
from wanka.metrics import RECONCILE_ERRORS, RECONCILE_SECONDS, register_pool_collector

log = logging.getLogger("wanka")
DEBOUNCE_SECONDS = 0.05
HEALTH_PERIOD_SECONDS = 1.0
RESYNC_SECONDS = 300.0
# The cache holds the fleet as hundreds of thousands of long-lived dicts. With CPython's
# default thresholds (700, 10, 10) the collector walks all of them many times during a burst:
# a third to a half of the operator's CPU in `bench/bench_pass.py` (17 full collections of
# about 150 ms each, one of them in the way of any placement). The cache's objects are plain
# JSON trees, freed by reference counting; the cyclic collector only has to run now and then.
GC_THRESHOLDS = (50_000, 20, 10)


def tune_gc() -> None:
    gc.set_threshold(*GC_THRESHOLDS)


@dataclass
class Runtime:
    """Everything the handlers share."""

    cache: FleetCache = field(default_factory=FleetCache)
    summaries: dict[str, PoolSummary] = field(default_factory=dict)
    tasks: list[asyncio.Task[None]] = field(default_factory=list)
    watches: Watches | None = None
    elector: LeaseElector | None = None
    lease: tuple[str, str] | None = None  # (namespace, name) when --leader-elect

    def is_leader(self) -> bool:
        """Whether this replica may act (and write) right now; a sole replica always may."""
        if self.lease is None:
            return True
        return self.elector is not None and self.elector.is_leader

    def term(self) -> int:
        """Which term of leadership this is; a new term starts from a clean slate."""
        return self.elector.term if self.elector is not None else 0


RUNTIME = Runtime()


async def _loop(name: str, wake: asyncio.Event, step: Any, period: float | None = None) -> None:
    """Run `step` (synchronous, it talks to the API) whenever the cache changes, and at least
    every `period` seconds (time alone moves health records from Recovering to Healthy)."""
    while True:
        try:
            await asyncio.wait_for(wake.wait(), timeout=period)
        except TimeoutError:
            pass
        await asyncio.sleep(DEBOUNCE_SECONDS)  # coalesce bursts of watch events
        wake.clear()
        with RECONCILE_SECONDS.labels(name).time():
            try:
                await asyncio.to_thread(step)
            except Exception:
                RECONCILE_ERRORS.labels(name).inc()
                log.exception("%s loop pass failed; retrying on the next change", name)
                await asyncio.sleep(1)
                wake.set()


@kopf.on.login()
def operator_login(**kwargs: Any) -> kopf.ConnectionInfo | None:
    """Log in exactly as our own client does (kubernetes.config reads $KUBECONFIG at import).
    In a pod, kopf's own service-account login re-reads the projected token as it rotates."""
    if not os.environ.get("KUBECONFIG") and os.environ.get("KUBERNETES_SERVICE_HOST"):
        return kopf.login_with_service_account(**kwargs)
    conn = connection_settings(api_client(os.environ.get("KUBECONFIG")))
    return kopf.ConnectionInfo(
        server=str(conn["server"]),
        ca_path=conn["ca_path"],  # type: ignore[arg-type]
        insecure=bool(conn["insecure"]),
        token=conn["token"],  # type: ignore[arg-type]
        certificate_path=conn["certificate_path"],  # type: ignore[arg-type]
        private_key_path=conn["private_key_path"],  # type: ignore[arg-type]
    )


@kopf.on.startup()
async def operator_startup(settings: kopf.OperatorSettings, **_: Any) -> None:
    # kopf handles no resource (our streams watch): its watching and persistence settings
    # have nothing to act on, so none are set here.
    settings.posting.level = logging.WARNING
    api = api_client(os.environ.get("KUBECONFIG"))
    # Every replica watches (a standby keeps its cache warm); only the leader acts.
    watches = RUNTIME.watches = Watches(api, RUNTIME.cache).start()
    # Every write asks the fence first: a replica that lost the lease mid-pass sends nothing more.
    fence = RUNTIME.is_leader if RUNTIME.lease is not None else None

    # One recorder for the process (its sender threads and repeat memory outlive terms).
    events = EventRecorder(api, fence=fence)

    def reconcilers() -> tuple[HealthReconciler, JobReconciler, PoolReconciler]:
        health = HealthReconciler(RUNTIME.cache, ApiNodePatcher(api, fence), events,
                                  objects=ApiObjectWriter(api, fence))
        pools = PoolReconciler(
            RUNTIME.cache,
            StatusWriter(api, fence),
            events,
            on_summary=RUNTIME.summaries.__setitem__,
            guard=health.guard_conditions,
        )
        jobs = JobReconciler(RUNTIME.cache, JobIO(api, fence), events,
                             status_writer=StatusWriter(api, fence),
                             mig_namespace=os.environ.get("POD_NAMESPACE") or "default",
                             reliability=health.reliability)
        return health, jobs, pools

    term, last_sync = -1, 0.0
    health, jobs, pools = reconcilers()
    if RUNTIME.lease is not None:
        RUNTIME.elector = LeaseElector(ApiLeaseStore(api), *RUNTIME.lease)
        log.info("leader election on lease %s/%s as %s", *RUNTIME.lease, RUNTIME.elector.identity)
        RUNTIME.tasks.append(asyncio.create_task(_elect(RUNTIME.elector)))

    def fleet_pass() -> None:
        nonlocal term, last_sync, health, jobs, pools
        if not RUNTIME.is_leader():
            return  # a standby keeps its cache warm and acts only once it holds the lease
        if not watches.synced():
            return  # the ledger (admitted jobs' status) must be complete before anything is placed
        if RUNTIME.term() != term:
            # A new term: nothing remembered from an earlier one (what was written, assumed,
            # announced) may hold now that another replica has acted in between.
            # The first term starts on the watches' own fresh LISTs; a later one lists again.
            term, last_sync = RUNTIME.term(), (time.monotonic() if term < 0 else 0.0)
            RUNTIME.cache.forget()
            health, jobs, pools = reconcilers()
        try:
            # A full LIST every few minutes (and when a new term starts): a missed watch
            # event must not leave a phantom object in the cache for long.
            if time.monotonic() - last_sync > RESYNC_SECONDS:
                for kind in KINDS:
                    RUNTIME.cache.replace(kind, list_all(api, kind))
                last_sync = time.monotonic()
            # Health first: jobs then see this pass's taints, and pools report them.
            health.reconcile_all()
            jobs.reconcile_all()
            pools.reconcile_all()
        except NotLeader as exc:
            log.info("%s; ending this pass", exc)

    RUNTIME.tasks.append(asyncio.create_task(
        _loop("fleet", RUNTIME.cache.subscribe(), fleet_pass, period=HEALTH_PERIOD_SECONDS)))


async def _elect(elector: LeaseElector) -> None:
    """Renew (or try to take) the lease every retry period; a tick never raises."""
    term = elector.term
    while True:
        if await asyncio.to_thread(elector.tick):
            if elector.term != term:
                term = elector.term
                RUNTIME.cache.wake()  # a new leader re-lists and acts at once
        else:
            RUNTIME.summaries.clear()  # a standby reports no pools (and a pass may have refilled)
        await asyncio.sleep(elector.retry_period)


@kopf.on.cleanup()
async def operator_cleanup(**_: Any) -> None:
    if RUNTIME.watches is not None:
        RUNTIME.watches.stop()
    for task in RUNTIME.tasks:
        task.cancel()
    await asyncio.gather(*RUNTIME.tasks, return_exceptions=True)
    RUNTIME.tasks.clear()
    if RUNTIME.elector is not None:
        await asyncio.to_thread(RUNTIME.elector.release)


def _run(args: argparse.Namespace) -> int:
    if args.kubeconfig:
        os.environ["KUBECONFIG"] = os.path.abspath(args.kubeconfig)
    configure_logging(args.log_format, args.verbose)
    tune_gc()
    log.info("wanka %s starting: metrics on %s, liveness on %s, leader election %s", __version__,
             f"{args.metrics_addr}:{args.metrics_port}" if args.metrics_port else "off",
             f"{args.health_addr}:{args.health_port}" if args.health_port else "off",
             "on" if args.leader_elect else "off")
    if args.metrics_port:
        start_http_server(args.metrics_port, addr=args.metrics_addr)
    register_pool_collector(lambda: dict(RUNTIME.summaries), leader=RUNTIME.is_leader,
                            depth=lambda: queue_depth(RUNTIME.cache.store("trainingjobs").values()))
    if args.leader_elect:
        namespace = args.lease_namespace or os.environ.get("POD_NAMESPACE") or "default"
        RUNTIME.lease = (namespace, args.lease_name)
    kopf.run(
        clusterwide=True,
        # Leadership is ours (a Lease), not kopf's peering: every replica watches, one acts.
        standalone=True,
        liveness_endpoint=f"http://{args.health_addr}:{args.health_port}/healthz"
        if args.health_port
        else None,
    )
    return 0


def register(sub: Any) -> None:
    parser = sub.add_parser("run", help="run the operator (all namespaces)")
    parser.add_argument("--kubeconfig", default=None, help=KUBECONFIG_HELP)
    parser.add_argument("--metrics-port", type=int, default=8000, help="Prometheus /metrics port; 0 disables")
    parser.add_argument("--metrics-addr", default="0.0.0.0", help="address /metrics listens on")
    parser.add_argument("--health-port", type=int, default=8080, help="liveness endpoint (/healthz) port; 0 disables")
    parser.add_argument("--health-addr", default="0.0.0.0", help="address /healthz listens on")
    parser.add_argument("--leader-elect", action="store_true",
                        help="run as one of several replicas: only the Lease holder acts")
    parser.add_argument("--lease-namespace", default=None,
                        help="namespace of the Lease (default: $POD_NAMESPACE, else default)")
    parser.add_argument("--lease-name", default="wanka-operator", help="name of the Lease (default %(default)s)")
    parser.add_argument("--log-format", choices=["text", "json"], default="text",
                        help="text lines, or one JSON object a line, tracebacks included (default text)")
    parser.add_argument("--verbose", action="store_true", help="log at DEBUG, kopf's per-object lines included")
    parser.set_defaults(func=_run)
