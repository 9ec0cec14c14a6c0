"""Applies the health core's decisions to Nodes: the record annotation, the taint, Events.

Every pass recomputes each node's decision from what the Node says now plus the record it
carries, so an operator restart or a retried pass decides the same thing again.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

from kubernetes import client
from kubernetes.client.exceptions import ApiException
from pydantic import ValidationError

from wanka import __version__
from wanka.api.gpupool import GPUPoolSpec
from wanka.cluster.cache import FleetCache
from wanka.cluster.fence import Fence, NotLeader, check
from wanka.cluster.kube import STRATEGIC_PATCH, api_message, request_json, side_by_side
from wanka.cluster.pools import parse_spec
from wanka.cluster.translate import device_count, labels
from wanka.cluster.writer import Recorder
from wanka.core.health import (
    HEALTH_ANNOTATION,
    HEALTHY,
    ONBOARDING,
    ONBOARDING_TAINT_KEY,
    PREFLIGHT_FAILED,
    QUARANTINE,
    REMEDIATION_ANNOTATION,
    TAINT_KEY,
    BurnIn,
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
                     content_type=STRATEGIC_PATCH)


BURN_IN_LABEL = "wanka.io/burn-in"  # on a burn-in pod: its number (the record's burnIns)
BURN_IN_POOL_LABEL = "wanka.io/pool"
REMEDIATION_LABEL = "wanka.io/remediation"
DEFAULT_IMAGE = f"ghcr.io/wanka-io/wanka:{__version__}"


def desired_taints(node: Mapping[str, Any], taint: Taint | None,
                   onboarding: bool = False) -> list[dict[str, Any]]:
    """The node's taints with ours replaced: `wanka.io/unhealthy` by `taint` (or removed), and
    `wanka.io/onboarding` present only while `onboarding`."""
    current = (node.get("spec") or {}).get("taints") or []
    out = [t for t in current if t.get("key") not in (TAINT_KEY, ONBOARDING_TAINT_KEY)]
    if taint is not None:
        out.append({"key": TAINT_KEY, "value": taint.value, "effect": taint.effect})
    if onboarding:
        out.append({"key": ONBOARDING_TAINT_KEY, "effect": "NoSchedule"})
    return out


def burn_in_name(node: str, number: int) -> str:
    """The burn-in pod's name: readable when the node's name allows, always a valid name."""
    name = f"wanka-burn-in-{node}-{number}"
    if len(name) <= 253:
        return name
    return f"wanka-burn-in-{hashlib.sha256(node.encode()).hexdigest()[:16]}-{number}"


def read_burn_in(pod: Mapping[str, Any]) -> BurnIn | None:
    """A burn-in pod as the health core sees it (None if it is not a readable one)."""
    meta = pod.get("metadata") or {}
    try:
        number = int((meta.get("labels") or {}).get(BURN_IN_LABEL, ""))
    except ValueError:
        return None
    status = pod.get("status") or {}
    message, code = "", None
    for cs in status.get("containerStatuses") or ():
        term = (cs.get("state") or {}).get("terminated") or {}
        if term:
            code = term.get("exitCode")
            message = burn_in_message(str(term.get("message") or "")) or str(term.get("reason") or "")
            if code:
                break
    if not message and status.get("phase") == "Failed":
        message = ": ".join(x for x in (status.get("reason"), status.get("message")) if x)
    return BurnIn(number=number, phase=str(status.get("phase") or "Pending"),
                  created=parse_time(meta.get("creationTimestamp")) or 0.0,
                  message=message, exit_code=int(code) if isinstance(code, int) else None)


def burn_in_message(text: str) -> str:
    """The human part of a burn-in's termination message (`wanka agent burn-in` writes JSON)."""
    text = text.strip()
    if text.startswith("{"):
        try:
            raw = json.loads(text)
        except ValueError:
            return text[:512]
        if isinstance(raw, dict):
            parts = [str(raw.get(k)) for k in ("reason", "message") if raw.get(k)]
            return ": ".join(parts)[:512]
    return text[:512]


def burn_in_pod(spec: GPUPoolSpec, pool: str, node: Mapping[str, Any], number: int,
                namespace: str, image: str) -> dict[str, Any]:
    """The burn-in pod of `node`: the pool's template (or the agent's one-shot check), pinned
    to the node, tolerating the onboarding taint, holding all the node's devices."""
    assert spec.onboarding is not None
    node_name = str(node["metadata"]["name"])
    resource = spec.accelerator.resource_name
    count = device_count(node, resource)
    template = json.loads(json.dumps(spec.onboarding.template or {}))
    meta = template.get("metadata") or {}
    pod_spec = template.get("spec") or {}
    if not pod_spec.get("containers"):
        pod_spec["containers"] = [{
            "name": "burn-in",
            "image": image,
            # Its own deadline comes before the pod's, so a slow check still reports why.
            "command": ["wanka", "agent", "burn-in", "--expect-devices", str(count),
                        "--timeout", str(max(20, spec.onboarding.timeout_seconds - 10))],
        }]
    first = pod_spec["containers"][0]
    resources = first.setdefault("resources", {})
    limits = resources.setdefault("limits", {})
    if count and resource not in limits and resource not in (resources.get("requests") or {}):
        limits[resource] = str(count)
    pod_spec["nodeName"] = node_name
    pod_spec["restartPolicy"] = "Never"
    pod_spec["activeDeadlineSeconds"] = spec.onboarding.timeout_seconds
    pod_spec["tolerations"] = [*(pod_spec.get("tolerations") or []),
                               {"key": ONBOARDING_TAINT_KEY, "operator": "Exists", "effect": "NoSchedule"}]
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": burn_in_name(node_name, number),
            "namespace": namespace,
            "labels": {**(meta.get("labels") or {}), BURN_IN_LABEL: str(number),
                       BURN_IN_POOL_LABEL: pool},
            "annotations": dict(meta.get("annotations") or {}),
            # Deleting the Node collects its burn-in pods.
            "ownerReferences": [{"apiVersion": "v1", "kind": "Node", "name": node_name,
                                 "uid": node["metadata"].get("uid", "")}],
        },
        "spec": pod_spec,
    }


def busy_nodes(pods: Iterable[Mapping[str, Any]], jobs: Iterable[Mapping[str, Any]]) -> set[str]:
    """Nodes with GPU work: a live pod bound there asking for an extended resource (any
    scheduler's, not a burn-in), or an active TrainingJob's placement (reserved, maybe not yet
    bound)."""
    busy: set[str] = set()
    for pod in pods:
        spec = pod.get("spec") or {}
        node = spec.get("nodeName")
        if not node or node in busy or BURN_IN_LABEL in labels(pod):
            continue
        if (pod.get("status") or {}).get("phase") in ("Succeeded", "Failed"):
            continue
        for c in spec.get("containers") or ():
            res = c.get("resources") or {}
            wanted = {**(res.get("requests") or {}), **(res.get("limits") or {})}
            if any("/" in k and str(v) not in ("0", "") for k, v in wanted.items()):
                busy.add(node)
                break
    for job in jobs:
        status = job.get("status") or {}
        if status.get("phase") in ("Admitted", "Running"):
            busy.update(str(p.get("node")) for p in status.get("placement") or () if p.get("node"))
    return busy


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


class ObjectWriter(Protocol):
    """Creates and deletes the objects onboarding and remediation need (pods, remediation)."""

    def create(self, path: str, body: Mapping[str, Any]) -> None: ...
    def delete(self, path: str) -> None: ...
    def resource_path(self, api_version: str, kind: str, namespace: str | None) -> str: ...


class ApiObjectWriter:
    """ObjectWriter against the API server; every write asks the fence first."""

    def __init__(self, api: client.ApiClient, fence: Fence | None = None) -> None:
        self.api = api
        self.fence = fence
        self._plurals: dict[tuple[str, str], str] = {}

    def create(self, path: str, body: Mapping[str, Any]) -> None:
        check(self.fence, f"create {path}")
        try:
            request_json(self.api, "POST", path, dict(body))
        except ApiException as exc:
            if exc.status != 409:  # it exists: an earlier pass (or replica) made it
                raise

    def delete(self, path: str) -> None:
        check(self.fence, f"delete {path}")
        try:
            request_json(self.api, "DELETE", path)
        except ApiException as exc:
            if exc.status != 404:
                raise

    def resource_path(self, api_version: str, kind: str, namespace: str | None) -> str:
        """The collection path of a kind, by API discovery (remembered)."""
        base = f"/api/{api_version}" if "/" not in api_version else f"/apis/{api_version}"
        plural = self._plurals.get((api_version, kind))
        if plural is None:
            found = request_json(self.api, "GET", base)
            for r in found.get("resources") or ():
                if r.get("kind") == kind and "/" not in str(r.get("name")):
                    plural = self._plurals[(api_version, kind)] = str(r["name"])
                    break
            else:
                raise LookupError(f"the API serves no kind {kind} in {api_version}")
        return f"{base}/namespaces/{namespace}/{plural}" if namespace else f"{base}/{plural}"


@dataclass
class HealthReconciler:
    """One pass over every pool's nodes: decide, guard, then write what changed."""

    cache: FleetCache
    nodes: NodePatcher
    events: Recorder
    clock: Callable[[], float] = time.time
    objects: ObjectWriter | None = None  # None: no onboarding pods or remediation objects
    namespace: str = field(default_factory=lambda: os.environ.get("POD_NAMESPACE") or "default")
    image: str = field(default_factory=lambda: os.environ.get("WANKA_IMAGE") or DEFAULT_IMAGE)
    guard_conditions: dict[str, PoolCondition] = field(default_factory=dict)
    # Per pool: (node faults recorded, node-seconds watched), for the interruption rate.
    reliability: dict[str, tuple[int, float]] = field(default_factory=dict)
    # Nodes whose last step changed nothing and can change only with the node itself (healthy,
    # nothing recorded, no taint): name -> (resourceVersion, policy, valid until, decision).
    # An agent's heartbeat bounds the validity: its silence is the one thing time alone reveals.
    _steady: dict[str, tuple[str, HealthPolicy, float, HealthDecision]] = field(default_factory=dict)
    # Per pass, when some pool onboards: nodes with GPU work, and each node's burn-in pods.
    _busy: set[str] = field(default_factory=set)
    _burn_ins: dict[str, list[dict[str, Any]]] = field(default_factory=dict)

    def reconcile_all(self) -> None:
        seen: set[str] = set()
        all_nodes = self.cache.store("nodes").values()
        pools = []
        for pool in sorted(self.cache.store("gpupools").values(), key=lambda p: p["metadata"]["name"]):
            try:
                pools.append((pool, parse_spec(pool)))
            except ValidationError:
                continue
        if any(spec.onboarding is not None for _, spec in pools):
            pods = self.cache.store("pods").values()
            self._busy = busy_nodes(pods, self.cache.store("trainingjobs").values())
            self._burn_ins = {}
            for pod in pods:
                if BURN_IN_LABEL in labels(pod) and (pod.get("metadata") or {}).get("namespace") == self.namespace:
                    node = (pod.get("spec") or {}).get("nodeName")
                    if node:
                        self._burn_ins.setdefault(str(node), []).append(pod)
        else:
            self._busy, self._burn_ins = set(), {}
        for pool, spec in pools:
            name = pool["metadata"]["name"]
            members = [n for n in all_nodes if spec.node_selector.matches(dict(labels(n)))
                       and n["metadata"]["name"] not in seen]
            seen.update(n["metadata"]["name"] for n in members)
            onboarding = spec.onboarding.model_dump(by_alias=True) if spec.onboarding is not None else None
            policy = HealthPolicy.from_spec(spec.health.model_dump(by_alias=True), onboarding)
            self.reconcile_pool(pool, name, policy, members, spec)
        for gone in self._steady.keys() - seen:
            del self._steady[gone]

    def reconcile_pool(
        self, pool: Mapping[str, Any], name: str, policy: HealthPolicy, nodes: list[dict[str, Any]],
        spec: GPUPoolSpec,
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
                if policy.onboarding is not None:
                    burn_ins = [b for b in map(read_burn_in, self._burn_ins.get(node_name, ())) if b]
                    observation = replace(observation, busy=node_name in self._busy,
                                          burn_in=max(burn_ins, key=lambda b: b.number, default=None))
                annotated = HEALTH_ANNOTATION in (n["metadata"].get("annotations") or {})
                record = read_record(n)
                decision = decisions[node_name] = step(record if annotated else None, observation, policy, now)
                if (version and decision.state == HEALTHY and not decision.events and decision.taint is None
                        and decision.record == record and not record.devices and not record.flaps
                        and (n["metadata"].get("annotations") or {}).get(HEALTH_ANNOTATION) == record.to_json()
                        and current_taint(n) is None and not self._burn_ins.get(node_name)
                        and not observation.device_faults and observation.quarantine_clear is None):
                    until = (observation.agent_heartbeat + policy.agent_silent_seconds
                             if observation.agent_heartbeat is not None else float("inf"))
                    onb = policy.onboarding
                    if onb is not None and onb.revalidate_idle_after_seconds:
                        # Idle revalidation comes due with time (and with the node going idle).
                        until = min(until, record.validated + onb.revalidate_idle_after_seconds)
                    self._steady[node_name] = (version, policy, until, decision)
            except NotLeader:
                raise  # this replica must stop writing altogether
            except Exception as exc:  # one node's malformed annotations fail that node only
                self._node_error(n, exc)
        nodes = [n for n in nodes if n["metadata"]["name"] in decisions]
        records = [decisions[n["metadata"]["name"]].record for n in nodes]
        self.reliability[name] = (sum(r.faults for r in records),
                                  sum(max(0.0, now - r.watched) for r in records if r.watched))
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
                self._apply(pool, name, node, decisions[node_name], node_name in verdict.held, now, spec)
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

    def _node_error(self, node: Mapping[str, Any], exc: Exception, reason: str = "ReconcileError") -> None:
        """An error handling one node (or one of its side objects, under `reason`): an Event on
        it and a metric; the other nodes, and the rest of this one, go on."""
        RECONCILE_ERRORS.labels("node").inc()
        name = node["metadata"]["name"]
        log.warning("node %s: %s: %s: %s", name, reason, type(exc).__name__, exc,
                    exc_info=not isinstance(exc, (ApiException, LookupError)))
        message = (f"the API answered {exc.status} {api_message(exc)}" if isinstance(exc, ApiException)
                   else f"{type(exc).__name__}: {exc}")[:1024]
        try:
            self.events.record({**node, "apiVersion": "v1", "kind": "Node"}, "Warning", reason, message)
        except Exception:
            log.debug("could not record the failure on node %s", name, exc_info=True)

    def _apply(
        self, pool: Mapping[str, Any], pool_name: str, node: Mapping[str, Any],
        decision: HealthDecision, held: bool, now: float, spec: GPUPoolSpec,
    ) -> None:
        meta = node.get("metadata") or {}
        annotations = meta.get("annotations") or {}
        old_record = annotations.get(HEALTH_ANNOTATION)
        new_record = decision.record.to_json()
        had = current_taint(node)
        # The guard holds back NEW taints only; a taint already there stays until recovery.
        want = decision.taint if not (held and had is None) else None
        taints = desired_taints(node, want, decision.onboarding)
        remedy = decision.remediation
        # Neither a burn-in pod the API refuses nor a remediation kind that is not served may
        # hold back the node's record and taint: each fails alone, with an Event.
        try:
            self._burn_in(spec, pool_name, node, decision)
        except NotLeader:
            raise
        except Exception as exc:
            self._node_error(node, exc, "BurnInPodFailed")
        try:
            self._remediate(spec, node, decision)
        except NotLeader:
            raise
        except Exception as exc:
            self._node_error(node, exc, "RemediationFailed")
            remedy = annotations.get(REMEDIATION_ANNOTATION)  # not done: tried again next pass
        body: dict[str, Any] = {"metadata": {"resourceVersion": meta.get("resourceVersion")}}
        patch_annotations: dict[str, str | None] = {}
        if old_record != new_record:
            patch_annotations[HEALTH_ANNOTATION] = new_record
        if annotations.get(REMEDIATION_ANNOTATION) != remedy:
            patch_annotations[REMEDIATION_ANNOTATION] = remedy
        if patch_annotations:
            body["metadata"]["annotations"] = patch_annotations
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

    def _burn_in(self, spec: GPUPoolSpec, pool_name: str, node: Mapping[str, Any],
                 decision: HealthDecision) -> None:
        """Create the burn-in pod the decision wants; delete the node's others (a failed one
        stays while its node is quarantined for it, for `kubectl logs`)."""
        if self.objects is None:
            return
        name = str(node["metadata"]["name"])
        record = decision.record
        keep = decision.burn_in or (record.burn_ins if record.state == ONBOARDING or (
            record.state == QUARANTINE and record.reason == PREFLIGHT_FAILED) else 0)
        have = False
        for pod in self._burn_ins.get(name, ()):
            burn_in = read_burn_in(pod)
            if burn_in is not None and burn_in.number == keep:
                have = True
            elif not (pod.get("metadata") or {}).get("deletionTimestamp"):
                self.objects.delete(f"/api/v1/namespaces/{self.namespace}/pods/{pod['metadata']['name']}")
        if decision.burn_in and not have and spec.onboarding is not None:
            self.objects.create(f"/api/v1/namespaces/{self.namespace}/pods",
                                burn_in_pod(spec, pool_name, node, decision.burn_in, self.namespace, self.image))

    def _remediate(self, spec: GPUPoolSpec, node: Mapping[str, Any], decision: HealthDecision) -> None:
        """Create the pool's remediation object for a node that needs one; delete it once the
        node no longer does. The node's wanka.io/remediation annotation, written after, marks
        what was done, so a restarted operator neither repeats nor forgets it."""
        target = spec.remediation.object
        if self.objects is None or target is None:
            return
        annotations = (node.get("metadata") or {}).get("annotations") or {}
        had, want = annotations.get(REMEDIATION_ANNOTATION), decision.remediation
        if had == want:
            return
        name = str(node["metadata"]["name"])
        path = self.objects.resource_path(target.api_version, target.kind, target.namespace)
        wanted = want is not None and want in spec.remediation.create_for
        if had is not None and had in spec.remediation.create_for and not wanted:
            self.objects.delete(f"{path}/{name}")
        if wanted:
            metadata: dict[str, Any] = {"name": name, "labels": {REMEDIATION_LABEL: str(want)},
                                        "annotations": {"wanka.io/reason": decision.record.reason}}
            if target.namespace:
                metadata["namespace"] = target.namespace
            self.objects.create(path, {"apiVersion": target.api_version, "kind": target.kind,
                                       "metadata": metadata, "spec": target.spec})
            self.events.record({**node, "apiVersion": "v1", "kind": "Node"}, "Warning",
                               "RemediationRequested",
                               f"{want} recommended ({decision.record.reason or decision.state}); "
                               f"created {target.kind} {name}")
