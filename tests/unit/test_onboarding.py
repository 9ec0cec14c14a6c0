"""Onboarding (burn-in before a node takes work) and remediation advice in the health core."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest

from wanka.api.gpupool import GPUPoolSpec
from wanka.cluster.cache import FleetCache
from wanka.cluster.health import HealthReconciler, burn_in_name, burn_in_pod, busy_nodes, read_burn_in
from wanka.core.health import (
    BurnIn,
    DeviceRecord,
    HealthDecision,
    HealthPolicy,
    HealthRecord,
    NodeCondition,
    NodeObservation,
    OnboardingPolicy,
    remediation,
    step,
)

T0 = 1_800_000_000.0
ONB = OnboardingPolicy(timeout_seconds=600, retries=1, revalidate_idle_after_seconds=86400,
                       return_after_not_ready_seconds=600)
POLICY = HealthPolicy(fatal_reasons=frozenset({"XID79", "XID48"}), recovery_stable_seconds=300,
                      onboarding=ONB)
READY = NodeObservation(conditions=(NodeCondition("Ready", "True"),))
NOT_READY = NodeObservation(conditions=(NodeCondition("Ready", "False", "KubeletNotReady"),))


def obs(burn_in: BurnIn | None = None, busy: bool = False, base: NodeObservation = READY) -> NodeObservation:
    return replace(base, burn_in=burn_in, busy=busy)


def again(decision: HealthDecision, observation: NodeObservation, at: float) -> None:
    """A step is idempotent: the same input again changes nothing and says nothing."""
    repeat = step(decision.record, observation, POLICY, T0 + at)
    assert repeat.record == decision.record
    assert repeat.events == ()
    assert repeat.burn_in == decision.burn_in


def reasons(decision: HealthDecision) -> list[str]:
    return [e.reason for e in decision.events]


def test_a_new_idle_node_is_tainted_and_gets_its_first_burn_in() -> None:
    d = step(None, obs(), POLICY, T0)
    assert d.state == "Onboarding"
    assert d.onboarding and d.taint is None
    assert d.burn_in == 1 and d.record.burn_ins == 1 and d.record.tries == 1
    assert d.record.onboard == "NewNode"
    assert reasons(d) == ["Onboarding"]
    assert "wanka.io/onboarding:NoSchedule" in d.events[0].message
    again(d, obs(), 1)


def test_a_passed_burn_in_makes_the_node_healthy_and_validated() -> None:
    d = step(None, obs(), POLICY, T0)
    running = BurnIn(number=1, phase="Running", created=T0 + 1)
    d = step(d.record, obs(running), POLICY, T0 + 10)
    assert d.state == "Onboarding" and d.burn_in == 1
    d = step(d.record, obs(BurnIn(1, "Succeeded", T0 + 1)), POLICY, T0 + 60)
    assert d.state == "Healthy" and not d.onboarding and d.burn_in == 0
    assert d.record.validated == int(T0 + 60)
    assert reasons(d) == ["BurnInPassed"]
    again(d, obs(BurnIn(1, "Succeeded", T0 + 1)), 61)


def test_a_failed_burn_in_is_retried_then_quarantines_with_the_pods_message() -> None:
    d = step(None, obs(), POLICY, T0)
    d = step(d.record, obs(BurnIn(1, "Failed", T0, "DeviceFault: device 3 XID79")), POLICY, T0 + 30)
    assert d.state == "Onboarding" and d.burn_in == 2 and d.record.tries == 2
    assert reasons(d) == ["BurnInFailed"]
    assert "attempt 1 of 2" in d.events[0].message and "device 3 XID79" in d.events[0].message
    # The old pod's result does not judge the new attempt.
    again(d, obs(BurnIn(1, "Failed", T0, "DeviceFault: device 3 XID79")), 31)
    d = step(d.record, obs(BurnIn(2, "Failed", T0 + 31, "DCGMFailed: diag level 1 failed")), POLICY, T0 + 90)
    assert d.state == "Quarantined" and d.record.reason == "PreflightFailed"
    assert d.taint is not None and d.taint.value == "Quarantined" and not d.onboarding
    assert reasons(d) == ["PreflightFailed"]
    assert "DCGMFailed: diag level 1 failed" in d.events[0].message
    assert remediation(d.record) == "replace" and d.remediation == "replace"
    assert d.record.faults == 1  # a failed burn-in counts as a fault of the pool


def test_a_burn_in_that_never_ends_times_out() -> None:
    d = step(None, obs(), POLICY, T0)
    hung = BurnIn(1, "Running", T0 + 5)
    assert step(d.record, obs(hung), POLICY, T0 + 600).state == "Onboarding"
    d = step(d.record, obs(hung), POLICY, T0 + 606)
    assert reasons(d) == ["BurnInFailed"] and "did not finish within 600s" in d.events[0].message
    assert d.burn_in == 2


def test_a_burn_in_pod_that_never_appears_times_out_with_a_margin() -> None:
    d = step(None, obs(), POLICY, T0)
    assert step(d.record, obs(), POLICY, T0 + 650).burn_in == 1  # still waiting: not yet seen
    d = step(d.record, obs(), POLICY, T0 + 661)
    assert reasons(d) == ["BurnInFailed"] and d.burn_in == 2


def test_no_retries_quarantines_after_the_first_failure() -> None:
    policy = replace(POLICY, onboarding=replace(ONB, retries=0))
    d = step(None, obs(), policy, T0)
    d = step(d.record, obs(BurnIn(1, "Failed", T0, "bad")), policy, T0 + 5)
    assert d.state == "Quarantined" and d.record.reason == "PreflightFailed"


def test_a_new_node_already_running_gpu_work_counts_as_validated_in_service() -> None:
    d = step(None, obs(busy=True), POLICY, T0)
    assert d.state == "Healthy" and not d.onboarding and d.record.validated == int(T0)
    assert d.events == ()


def test_a_known_never_validated_idle_node_is_onboarded_when_the_pool_turns_onboarding_on() -> None:
    known = HealthRecord(state="Healthy", since=int(T0 - 1000), watched=int(T0 - 1000))
    d = step(known, obs(), POLICY, T0)
    assert d.state == "Onboarding" and d.record.onboard == "NotValidated" and d.burn_in == 1


def test_onboarding_waits_for_gpu_work_on_the_node_to_end() -> None:
    known = HealthRecord(state="Quarantined", since=int(T0 - 100), reason="XID79")
    cleared = replace(obs(busy=True), quarantine_clear="2027-01-15T08:00:00Z")
    d = step(known, cleared, POLICY, T0)
    assert d.state == "Onboarding" and d.record.onboard == "Returned"
    assert d.burn_in == 0 and d.record.tries == 0  # its pods still hold the devices
    d = step(d.record, replace(cleared, busy=False), POLICY, T0 + 10)
    assert d.burn_in == 1


def test_an_idle_node_is_revalidated_after_the_interval_but_never_while_busy() -> None:
    validated = HealthRecord(state="Healthy", since=int(T0), validated=int(T0), watched=int(T0))
    assert step(validated, obs(), POLICY, T0 + 86399).state == "Healthy"
    assert step(validated, obs(busy=True), POLICY, T0 + 90000).state == "Healthy"
    d = step(validated, obs(), POLICY, T0 + 90000)
    assert d.state == "Onboarding" and d.record.onboard == "Revalidate" and d.burn_in == 1


def test_a_node_back_from_a_long_not_ready_is_checked_again_not_just_waited_out() -> None:
    validated = HealthRecord(state="Healthy", since=int(T0), validated=int(T0), watched=int(T0))
    d = step(validated, NOT_READY, POLICY, T0 + 10)
    assert d.state == "Sick"
    d = step(d.record, obs(), POLICY, T0 + 10 + 600)
    assert d.state == "Onboarding" and d.record.onboard == "Returned" and d.burn_in == 1
    # A short NotReady only waits out the stable window.
    short = step(validated, NOT_READY, POLICY, T0 + 10)
    assert step(short.record, obs(), POLICY, T0 + 100).state == "Recovering"


def test_a_fault_during_onboarding_makes_it_sick_and_the_burn_in_starts_over() -> None:
    d = step(None, obs(), POLICY, T0)
    d = step(d.record, NOT_READY, POLICY, T0 + 5)
    assert d.state == "Sick" and d.burn_in == 0 and d.record.onboard == "NewNode"
    assert d.record.faults == 1
    d = step(d.record, obs(BurnIn(1, "Running", T0)), POLICY, T0 + 20)
    assert d.state == "Onboarding" and d.burn_in == 2  # a fresh attempt, not the stale pod


def test_a_pool_that_turns_onboarding_off_releases_its_onboarding_nodes() -> None:
    d = step(None, obs(), POLICY, T0)
    off = replace(POLICY, onboarding=None)
    d = step(d.record, obs(), off, T0 + 5)
    assert d.state == "Healthy" and not d.onboarding and reasons(d) == ["OnboardingOff"]


def test_without_onboarding_nothing_changes_for_a_new_node() -> None:
    d = step(None, obs(), replace(POLICY, onboarding=None), T0)
    assert d.state == "Healthy" and not d.onboarding and d.events == () and d.burn_in == 0


def test_record_round_trips_the_onboarding_and_reliability_fields() -> None:
    rec = HealthRecord(state="Onboarding", since=5, reason="NewNode", onboard="NewNode", tries=2,
                       burn_ins=7, checked=9, validated=3, faults=4, watched=1)
    assert HealthRecord.from_json(rec.to_json()) == rec


def test_faults_and_watch_time_are_counted_for_the_interruption_rate() -> None:
    policy = replace(POLICY, onboarding=None)
    d = step(None, READY, policy, T0)
    assert d.record.watched == int(T0) and d.record.faults == 0
    d = step(d.record, NOT_READY, policy, T0 + 10)
    d = step(d.record, READY, policy, T0 + 20)
    d = step(d.record, NOT_READY, policy, T0 + 30)
    assert d.record.faults == 2 and d.record.watched == int(T0)


@pytest.mark.parametrize(
    ("record", "want"),
    [
        (HealthRecord(), None),
        (HealthRecord(state="Sick", reason="NodeNotReady"), None),  # not fatal: nothing to do
        (HealthRecord(state="Sick", reason="XID79", fatal=True), "reboot"),
        (HealthRecord(state="Sick", reason="XID48", fatal=True), "reset"),
        (HealthRecord(state="Sick", reason="XID64", fatal=True), "replace"),
        (HealthRecord(state="Sick", reason="SomethingNew", fatal=True), "reboot"),
        (HealthRecord(state="Quarantined", reason="XID79"), "replace"),
        (HealthRecord(devices={3: DeviceRecord(state="Quarantined", reason="XID94")}), "reset"),
        (HealthRecord(state="Sick", reason="XID79", fatal=True,
                      devices={3: DeviceRecord(state="Quarantined")}), "reboot"),
    ],
)
def test_remediation_advice(record: HealthRecord, want: str | None) -> None:
    assert remediation(record) == want


def test_the_decision_carries_the_advice_for_a_fatal_fault() -> None:
    xid = NodeObservation(conditions=(NodeCondition("Ready", "True"),
                                      NodeCondition("GPUHealthy", "False", "XID79")))
    d = step(HealthRecord(validated=1, watched=1), xid, POLICY, T0)
    assert d.state == "Sick" and d.remediation == "reboot"


def test_the_default_burn_in_pod_holds_every_device_and_runs_the_agents_check() -> None:
    spec = GPUPoolSpec.model_validate({"nodeSelector": {}, "onboarding": {"timeoutSeconds": 300}})
    node = {"metadata": {"name": "gpu-7", "uid": "u7"},
            "status": {"allocatable": {"nvidia.com/gpu": "8"}}}
    pod = burn_in_pod(spec, "pool-a", node, 3, "wanka-system", "img:1")
    assert pod["metadata"]["name"] == "wanka-burn-in-gpu-7-3"
    assert pod["metadata"]["labels"] == {"wanka.io/burn-in": "3", "wanka.io/pool": "pool-a"}
    assert pod["metadata"]["ownerReferences"][0]["uid"] == "u7"
    container = pod["spec"]["containers"][0]
    assert container["image"] == "img:1"
    assert container["command"][:5] == ["wanka", "agent", "burn-in", "--expect-devices", "8"]
    assert container["resources"]["limits"] == {"nvidia.com/gpu": "8"}
    assert pod["spec"]["nodeName"] == "gpu-7" and pod["spec"]["activeDeadlineSeconds"] == 300
    assert {"key": "wanka.io/onboarding", "operator": "Exists", "effect": "NoSchedule"} in pod["spec"]["tolerations"]
    assert len(burn_in_name("n" * 300, 1)) <= 253

    pod["metadata"]["creationTimestamp"] = "2026-12-01T10:00:00Z"
    pod["status"] = {"phase": "Failed", "containerStatuses": [{"name": "burn-in", "state": {"terminated": {
        "exitCode": 1, "message": '{"wankaBurnIn":1,"ok":false,"reason":"DeviceFault","message":"device 2: XID48"}'}}}]}
    seen = read_burn_in(pod)
    assert seen is not None and seen.number == 3 and seen.phase == "Failed" and seen.exit_code == 1
    assert seen.message == "DeviceFault: device 2: XID48"


def test_busy_nodes_are_those_with_gpu_pods_or_gang_reservations() -> None:
    def pod(node: str, gpus: str = "1", phase: str = "Running", burn_in: bool = False) -> dict[str, object]:
        labels = {"wanka.io/burn-in": "1"} if burn_in else {}
        return {"metadata": {"labels": labels}, "spec": {"nodeName": node, "containers": [
            {"resources": {"limits": {"nvidia.com/gpu": gpus, "cpu": "2"}}}]}, "status": {"phase": phase}}

    jobs = [{"status": {"phase": "Admitted", "placement": [{"node": "reserved"}]}},
            {"status": {"phase": "Succeeded", "placement": [{"node": "old"}]}}]
    pods = [pod("gpu"), pod("cpu-only", gpus="0"), pod("done", phase="Succeeded"), pod("checking", burn_in=True)]
    assert busy_nodes(pods, jobs) == {"gpu", "reserved"}


def test_a_busy_never_validated_node_recovering_from_a_fault_still_waits_out_the_window() -> None:
    sick = HealthRecord(state="Sick", since=int(T0), reason="NodeNotReady", watched=int(T0))
    d = step(sick, obs(busy=True), POLICY, T0 + 30)
    assert d.state == "Recovering" and d.taint is not None
    d = step(d.record, obs(busy=True), POLICY, T0 + 31 + 300)
    assert d.state == "Healthy" and d.record.validated == int(T0 + 331)  # in service, counted
    idle = step(sick, obs(), POLICY, T0 + 30)
    assert idle.state == "Onboarding" and idle.burn_in == 1  # idle: the burn-in instead


class _Fakes:
    """The health loop's outlets, recording what it sends; `objects_fail` makes every object
    write (pods, remediation objects) fail as a misconfigured kind or a refusing API would."""

    def __init__(self, objects_fail: bool = False) -> None:
        self.patches: list[tuple[str, dict[str, Any]]] = []
        self.created: list[str] = []
        self.events: list[str] = []
        self.objects_fail = objects_fail

    def patch_node(self, name: str, body: dict[str, Any]) -> None:
        self.patches.append((name, body))

    def record(self, obj: object, type_: object, reason: str, message: str) -> None:
        self.events.append(reason)

    def create(self, path: str, body: object) -> None:
        if self.objects_fail:
            raise LookupError("the API serves no kind NodeRepair in test.wanka.io/v1")
        self.created.append(path)

    def delete(self, path: str) -> None:
        if self.objects_fail:
            raise LookupError("no")

    def resource_path(self, api_version: str, kind: str, namespace: str | None) -> str:
        if self.objects_fail:
            raise LookupError(f"the API serves no kind {kind} in {api_version}")
        return "/apis/test.wanka.io/v1/namespaces/default/noderepairs"


def _loop(fakes: _Fakes, pool_spec: dict[str, object]) -> HealthReconciler:
    cache = FleetCache()
    cache.store("gpupools").replace([{"apiVersion": "wanka.io/v1alpha1", "kind": "GPUPool",
                                      "metadata": {"name": "p", "resourceVersion": "1"},
                                      "spec": {"nodeSelector": {"matchLabels": {"pool": "p"}}, **pool_spec}}])
    cache.store("nodes").replace([{"metadata": {"name": "n1", "uid": "u1", "resourceVersion": "5",
                                                "labels": {"pool": "p"}},
                                   "status": {"allocatable": {"nvidia.com/gpu": "8"}, "conditions": [
                                       {"type": "Ready", "status": "True"},
                                       {"type": "GPUHealthy", "status": "False", "reason": "XID79"}]}}])
    return HealthReconciler(cache, fakes, fakes, clock=lambda: T0, objects=fakes)


def test_a_remediation_kind_that_is_not_served_never_holds_back_the_taint() -> None:
    fakes = _Fakes(objects_fail=True)
    _loop(fakes, {"health": {"fatalReasons": ["XID79"]},
                  "remediation": {"object": {"apiVersion": "test.wanka.io/v1", "kind": "NodeRepair",
                                             "namespace": "default"}}}).reconcile_all()
    (_, body), = fakes.patches
    assert body["spec"] == {"taints": [{"key": "wanka.io/unhealthy", "value": "XID79", "effect": "NoExecute"}]}
    annotations = body["metadata"]["annotations"]
    assert "wanka.io/remediation" not in annotations  # not done: tried again on the next pass
    assert "RemediationFailed" in fakes.events and "NodeSick" in fakes.events


def test_the_remediation_object_is_created_before_the_annotation_says_so() -> None:
    fakes = _Fakes()
    _loop(fakes, {"health": {"fatalReasons": ["XID79"]},
                  "remediation": {"object": {"apiVersion": "test.wanka.io/v1", "kind": "NodeRepair",
                                             "namespace": "default"}}}).reconcile_all()
    assert fakes.created == ["/apis/test.wanka.io/v1/namespaces/default/noderepairs"]
    (_, body), = fakes.patches
    assert body["metadata"]["annotations"]["wanka.io/remediation"] == "reboot"
