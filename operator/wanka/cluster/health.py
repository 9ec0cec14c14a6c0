"""Applies the health core's decisions to Nodes: the record annotation, the taint, Events.

Every pass recomputes each node's decision from what the Node says now plus the record it
carries, so an operator restart or a retried pass decides the same thing again.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from kubernetes import client
from kubernetes.client.exceptions import ApiException
from pydantic import ValidationError

from wanka.cluster.cache import FleetCache
from wanka.cluster.fence import Fence, NotLeader, check
from wanka.cluster.kube import request_json, side_by_side
from wanka.cluster.pools import parse_spec
from wanka.cluster.translate import labels
from wanka.core.health import (
    HEALTH_ANNOTATION,
    HEALTHY,
    TAINT_KEY,
    GuardInput,
    HealthDecision,
    HealthPolicy,
    PoolCondition,
    Taint,
    current_taint,
    guard_pool,
    observe_node,
    parse_time,
    read_record,
    step,
)
from wanka.metrics import HEALTH_TRANSITIONS, RECONCILE_ERRORS, SIGNAL_TO_TAINT

log = logging.getLogger(__name__)


class Recorder(Protocol):
    def record(self, obj: Mapping[str, Any], type_: Any, reason: str, message: str) -> None: ...


class NodePatcher(Protocol):
    def patch_node(self, name: str, body: Mapping[str, Any]) -> None: ...


class ApiNodePatcher:
    """Patches Nodes; the resourceVersion in the body makes it fail on a stale view (409).

    A strategic merge patch replaces `spec.taints` whole (the list has no merge key), which
    is why the view must be fresh.
    """

    def __init__(self, api: client.ApiClient, fence: Fence | None = None) -> None:
        self.api = api
        self.fence = fence

    def patch_node(self, name: str, body: Mapping[str, Any]) -> None:
        check(self.fence, f"patch node {name}")
        request_json(self.api, "PATCH", f"/api/v1/nodes/{name}", dict(body),
                     content_type="application/strategic-merge-patch+json")


def desired_taints(node: Mapping[str, Any], taint: Taint | None) -> list[dict[str, Any]]:
    """The node's taints with ours replaced by `taint` (or removed)."""
    others = [t for t in (node.get("spec") or {}).get("taints") or [] if t.get("key") != TAINT_KEY]
    if taint is None:
        return others
    return [*others, {"key": TAINT_KEY, "value": taint.value, "effect": taint.effect}]


def signal_time(node: Mapping[str, Any], decision: HealthDecision) -> float | None:
    """When the condition that made the node sick changed, for signal-to-taint latency."""
    newest = None
    for cond in (node.get("status") or {}).get("conditions") or []:
        bad = (cond.get("type") == "Ready" and cond.get("status") != "True") or (
            cond.get("type") != "Ready" and cond.get("status") in ("True", "False")
            and decision.record.reason and decision.record.reason in (cond.get("reason") or "",
                                                                      cond.get("type"))
        )
        if bad:
            t = parse_time(cond.get("lastTransitionTime"))
            if t is not None and (newest is None or t > newest):
                newest = t
    return newest


@dataclass
class HealthReconciler:
    """One pass over every pool's nodes: decide, guard, then write what changed."""

    cache: FleetCache
    nodes: NodePatcher
    events: Recorder
    clock: Callable[[], float] = time.time
    guard_conditions: dict[str, PoolCondition] = field(default_factory=dict)
    # Nodes whose last step changed nothing and can change only with the node itself (healthy,
    # nothing recorded, no taint): name -> (resourceVersion, policy, valid until, decision).
    # An agent's heartbeat bounds the validity: its silence is the one thing time alone reveals.
    _steady: dict[str, tuple[str, HealthPolicy, float, HealthDecision]] = field(default_factory=dict)

    def reconcile_all(self) -> None:
        seen: set[str] = set()
        all_nodes = self.cache.store("nodes").values()
        for pool in sorted(self.cache.store("gpupools").values(), key=lambda p: p["metadata"]["name"]):
            name = pool["metadata"]["name"]
            try:
                spec = parse_spec(pool)
            except ValidationError:
                continue
            members = [n for n in all_nodes if spec.node_selector.matches(dict(labels(n)))
                       and n["metadata"]["name"] not in seen]
            seen.update(n["metadata"]["name"] for n in members)
            policy = HealthPolicy.from_spec(spec.health.model_dump(by_alias=True))
            self.reconcile_pool(pool, name, policy, members)
        for gone in self._steady.keys() - seen:
            del self._steady[gone]

    def reconcile_pool(
        self, pool: Mapping[str, Any], name: str, policy: HealthPolicy, nodes: list[dict[str, Any]]
    ) -> None:
        now = self.clock()
        decisions: dict[str, HealthDecision] = {}
        steady: set[str] = set()
        for n in list(nodes):
            node_name = n["metadata"]["name"]
            version = str(n["metadata"].get("resourceVersion") or "")
            memo = self._steady.pop(node_name, None)
            if memo is not None and memo[0] == version and memo[1] == policy and now < memo[2]:
                decisions[node_name] = memo[3]
                steady.add(node_name)
                self._steady[node_name] = memo
                continue
            try:
                observation = observe_node(n)
                record = read_record(n)
                decision = decisions[node_name] = step(record, observation, policy, now)
                if (version and decision.state == HEALTHY and not decision.events and decision.taint is None
                        and decision.record == record and not record.devices and not record.flaps
                        and (n["metadata"].get("annotations") or {}).get(HEALTH_ANNOTATION) == record.to_json()
                        and current_taint(n) is None
                        and not observation.device_faults and observation.quarantine_clear is None):
                    until = (observation.agent_heartbeat + policy.agent_silent_seconds
                             if observation.agent_heartbeat is not None else float("inf"))
                    self._steady[node_name] = (version, policy, until, decision)
            except NotLeader:
                raise  # this replica must stop writing altogether
            except Exception as exc:  # one node's malformed annotations fail that node only
                self._node_error(n, exc)
        nodes = [n for n in nodes if n["metadata"]["name"] in decisions]
        verdict = guard_pool(
            [GuardInput(name=n, tainted=current_taint(node) is not None,
                        wants_taint=decisions[n].taint is not None,
                        reason=decisions[n].record.reason or "")
             for n, node in ((x["metadata"]["name"], x) for x in nodes)],
            policy.max_unhealthy_percent,
        )
        previous = self.guard_conditions.get(name)
        self.guard_conditions[name] = verdict.condition
        if verdict.tripped and (previous is None or previous.status != "True"):
            self.events.record(pool, "Warning", "HealthGuardTripped", verdict.condition.message)
        elif not verdict.tripped and previous is not None and previous.status == "True":
            self.events.record(pool, "Normal", "HealthGuardReleased", verdict.condition.message)
        def apply(node: dict[str, Any]) -> None:
            node_name = node["metadata"]["name"]
            try:
                self._apply(pool, name, node, decisions[node_name], node_name in verdict.held, now)
            except ApiException as exc:
                if exc.status not in (404, 409):
                    self._node_error(node, exc)
                # A stale view (409) or a vanished node: the watch brings news, the next pass retries.
            except NotLeader:
                raise  # this replica must stop writing altogether
            except Exception as exc:
                self._node_error(node, exc)

        # Each node's write is its own (a fleet that joins at once gets its records side by side).
        side_by_side(apply, [n for n in nodes if n["metadata"]["name"] not in steady])

    def _node_error(self, node: Mapping[str, Any], exc: Exception) -> None:
        """An error handling one node: an Event on it and a metric; the other nodes go on."""
        RECONCILE_ERRORS.labels("node").inc()
        name = node["metadata"]["name"]
        log.warning("health of node %s not reconciled: %s: %s", name, type(exc).__name__, exc,
                    exc_info=not isinstance(exc, ApiException))
        message = (f"the API answered {exc.status} {exc.reason}" if isinstance(exc, ApiException)
                   else f"{type(exc).__name__}: {exc}")[:1024]
        try:
            self.events.record({**node, "apiVersion": "v1", "kind": "Node"}, "Warning", "ReconcileError", message)
        except Exception:
            log.debug("could not record the failure on node %s", name, exc_info=True)

    def _apply(
        self, pool: Mapping[str, Any], pool_name: str, node: Mapping[str, Any],
        decision: HealthDecision, held: bool, now: float,
    ) -> None:
        meta = node.get("metadata") or {}
        old_record = (meta.get("annotations") or {}).get(HEALTH_ANNOTATION)
        new_record = decision.record.to_json()
        had = current_taint(node)
        # The guard holds back NEW taints only; a taint already there stays until recovery.
        want = decision.taint if not (held and had is None) else None
        taints = desired_taints(node, want)
        body: dict[str, Any] = {"metadata": {"resourceVersion": meta.get("resourceVersion")}}
        if old_record != new_record:
            body["metadata"]["annotations"] = {HEALTH_ANNOTATION: new_record}
        if taints != ((node.get("spec") or {}).get("taints") or []):
            body["spec"] = {"taints": taints}
        if len(body) == 1 and "annotations" not in body["metadata"]:
            return
        self.nodes.patch_node(meta["name"], body)
        old_state = read_record(node).state
        if old_state != decision.state:
            HEALTH_TRANSITIONS.labels(pool_name, decision.state).inc()
        if want is not None and had is None:
            signalled = signal_time(node, decision)
            if signalled is not None:
                SIGNAL_TO_TAINT.labels(pool_name).observe(max(0.0, now - signalled))
        for event in decision.events:
            self.events.record({**node, "apiVersion": "v1", "kind": "Node"}, event.type,
                               event.reason, event.message)
