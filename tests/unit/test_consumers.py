"""Plain Pods, pod groups and batch Jobs without a cluster: units read from plain objects
(`cluster/consumers.py`), their allocations in the snapshot (`cluster/translate.py`), and the
writes that carry out the cycle's decisions (`cluster/units.py`) against a recording fake."""

from __future__ import annotations

import copy
import json
import threading
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, cast

import pytest

from wanka.api.gpupool import GPUPoolSpec
from wanka.api.tenantqueue import TenantQueueSpec
from wanka.cluster.cache import FleetCache
from wanka.cluster.consumers import (
    FRACTION_ANNOTATION,
    GROUP_SIZE_ANNOTATION,
    INDEX_ANNOTATION,
    MEMORY_GIB_ANNOTATION,
    MIG_PROFILE_ANNOTATION,
    MPS_MEMORY_ANNOTATION,
    MPS_THREADS_ANNOTATION,
    NOMINATED_ANNOTATION,
    PLACEMENT_ANNOTATION,
    POOL_LABEL,
    QUEUE_LABEL,
    RESERVATION_ANNOTATIONS,
    VISIBLE_ANNOTATION,
    Shape,
    Unit,
    batch_ledger,
    bound,
    by_index,
    collect_units,
    encode_placement,
    fingerprint,
    free_slots,
    live,
    problem,
    request,
    reservation,
    reserved,
    running_request,
    shape_of,
    slot_allocation,
)
from wanka.cluster.jobio import Conflict, JobIO
from wanka.cluster.mig import INSTANCE_ANNOTATION as MIG_INSTANCE_ANNOTATION
from wanka.cluster.translate import (
    BATCH_JOB_LABEL,
    DEVICES_ANNOTATION,
    GPU_MEMORY_ANNOTATION,
    JOB_LABEL,
    NODE_ANNOTATION,
    POD_GROUP_LABEL,
    REPLICA_LABEL,
    SLOT_ANNOTATION,
    PassMemo,
    build_pool_snapshot,
    pod_allocation,
    pod_node,
    pod_owner,
)
from wanka.cluster.units import UnitWriter
from wanka.core.constraints import Toleration
from wanka.core.gang import GangPlacement
from wanka.core.queueing import Admit
from wanka.core.requests import InvalidRequest
from wanka.core.snapshot import Allocation, DeviceShare

NS = "team-a"
CREATED = "2026-01-02T03:04:05Z"
CREATED_TS = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC).timestamp()
PINNED_REF = f"metadata.annotations['{VISIBLE_ANNOTATION}']"

EXCLUSIVE = GPUPoolSpec.model_validate({"nodeSelector": {"matchLabels": {"wanka.io/pool": "p"}}})
MPS = GPUPoolSpec.model_validate({"nodeSelector": {}, "sharing": {"mode": "MPS"}})
TIMESLICE = GPUPoolSpec.model_validate({"nodeSelector": {}, "sharing": {"mode": "TimeSlice"}})
MIG = GPUPoolSpec.model_validate({"nodeSelector": {}, "sharing": {"mode": "MIG",
                                                                  "migProfiles": ["1g.10gb", "3g.40gb"]}})
POOLS = {"p": EXCLUSIVE, "mps": MPS, "ts": TIMESLICE, "mig": MIG}
QUEUES = {
    "q": TenantQueueSpec.model_validate({
        "namespaces": [NS], "maxPriority": 100,
        "quotas": [{"pool": p, "gpus": 8} for p in ("p", "mps", "ts", "mig", "gone")]}),
    "labelled": TenantQueueSpec.model_validate({
        "namespaceSelector": {"matchLabels": {"team": "a"}}, "quotas": [{"pool": "p", "gpus": 8}]}),
    "narrow": TenantQueueSpec.model_validate({"namespaces": [NS], "quotas": [{"pool": "mps", "gpus": 1}]}),
    "empty": TenantQueueSpec.model_validate({"namespaces": [NS]}),
}


# --- builders ------------------------------------------------------------------------------
class PodBuilder:
    """`make_pod("a").queue().pool().gpus(1).obj()`: a pod for Wanka to bind, as the API holds it."""

    def __init__(self, name: str, namespace: str = NS) -> None:
        self._pod: dict[str, Any] = {
            "metadata": {"name": name, "namespace": namespace, "resourceVersion": "10",
                         "creationTimestamp": CREATED, "labels": {}, "annotations": {}},
            "spec": {"schedulerName": "wanka",
                     "containers": [{"name": "main", "image": "x",
                                     "resources": {"requests": {"cpu": "500m", "memory": "1Gi"}}}]},
            "status": {"phase": "Pending"},
        }

    @property
    def _meta(self) -> dict[str, Any]:
        return cast(dict[str, Any], self._pod["metadata"])

    @property
    def _spec(self) -> dict[str, Any]:
        return cast(dict[str, Any], self._pod["spec"])

    def label(self, key: str, value: str) -> PodBuilder:
        self._meta["labels"][key] = value
        return self

    def annotate(self, key: str, value: str) -> PodBuilder:
        self._meta["annotations"][key] = value
        return self

    def queue(self, name: str = "q") -> PodBuilder:
        return self.label(QUEUE_LABEL, name)

    def pool(self, name: str = "p") -> PodBuilder:
        return self.label(POOL_LABEL, name)

    def group(self, name: str, size: int | str | None = None) -> PodBuilder:
        self.label(POD_GROUP_LABEL, name)
        return self if size is None else self.annotate(GROUP_SIZE_ANNOTATION, str(size))

    def of_job(self, name: str) -> PodBuilder:
        return self.label(BATCH_JOB_LABEL, name)

    def limit(self, resource: str, value: str, container: int = 0) -> PodBuilder:
        self._spec["containers"][container]["resources"].setdefault("limits", {})[resource] = value
        return self

    def gpus(self, n: int) -> PodBuilder:
        return self.limit("nvidia.com/gpu", str(n))

    def fraction(self, value: str, memory_gib: str | None = None) -> PodBuilder:
        self.annotate(FRACTION_ANNOTATION, value)
        return self if memory_gib is None else self.annotate(MEMORY_GIB_ANNOTATION, memory_gib)

    def mig(self, profile: str, with_limit: bool = True) -> PodBuilder:
        self.annotate(MIG_PROFILE_ANNOTATION, profile)
        return self.limit(f"nvidia.com/mig-{profile}", "1") if with_limit else self

    def container(self, name: str) -> PodBuilder:
        self._spec["containers"].append({"name": name, "image": "x", "resources": {}})
        return self

    def env(self, container: int, name: str, **value: Any) -> PodBuilder:
        self._spec["containers"][container].setdefault("env", []).append({"name": name, **value})
        return self

    def pinned(self) -> PodBuilder:
        """Every container takes its device from Wanka's annotation (the downward API)."""
        for i in range(len(self._spec["containers"])):
            self.env(i, "NVIDIA_VISIBLE_DEVICES", valueFrom={"fieldRef": {"fieldPath": PINNED_REF}})
        return self

    def on(self, node: str) -> PodBuilder:
        self._spec["nodeName"] = node
        self._pod["status"]["phase"] = "Running"
        return self

    def reserved(self, node: str, devices: str | None = None) -> PodBuilder:
        self.annotate(NODE_ANNOTATION, node)
        return self if devices is None else self.annotate(DEVICES_ANNOTATION, devices)

    def slot(self, i: int | str) -> PodBuilder:
        return self.annotate(SLOT_ANNOTATION, str(i))

    def index(self, i: int | str) -> PodBuilder:
        return self.annotate(INDEX_ANNOTATION, str(i))

    def phase(self, phase: str) -> PodBuilder:
        self._pod["status"]["phase"] = phase
        return self

    def deleting(self) -> PodBuilder:
        self._meta["deletionTimestamp"] = "2026-01-02T04:00:00Z"
        return self

    def scheduler(self, name: str | None) -> PodBuilder:
        if name is None:
            self._spec.pop("schedulerName")
        else:
            self._spec["schedulerName"] = name
        return self

    def priority(self, p: int) -> PodBuilder:
        self._spec["priority"] = p
        return self

    def started(self, when: str) -> PodBuilder:
        self._pod["status"]["startTime"] = when
        return self

    def grace(self, seconds: int) -> PodBuilder:
        self._spec["terminationGracePeriodSeconds"] = seconds
        return self

    def spec(self, key: str, value: Any) -> PodBuilder:
        self._spec[key] = value
        return self

    def scheduled(self, status: str, message: str) -> PodBuilder:
        self._pod["status"].setdefault("conditions", []).append(
            {"type": "PodScheduled", "status": status, "reason": "Unschedulable", "message": message})
        return self

    def obj(self) -> dict[str, Any]:
        return copy.deepcopy(self._pod)


def make_pod(name: str, namespace: str = NS) -> PodBuilder:
    return PodBuilder(name, namespace)


class BatchJobBuilder:
    """`make_batch("j").parallelism(2).placed(allocs).obj()`: a batch/v1 Job labelled for Wanka."""

    def __init__(self, name: str, namespace: str = NS) -> None:
        self._job: dict[str, Any] = {
            "apiVersion": "batch/v1", "kind": "Job",
            "metadata": {"name": name, "namespace": namespace, "resourceVersion": "20", "creationTimestamp": CREATED,
                         "labels": {QUEUE_LABEL: "q", POOL_LABEL: "p"}, "annotations": {}},
            "spec": {"parallelism": 2, "suspend": True,
                     "template": {"metadata": {}, "spec": {
                         "schedulerName": "wanka", "restartPolicy": "Never",
                         "containers": [{"name": "main", "image": "x", "resources": {
                             "requests": {"cpu": "1", "memory": "2Gi"}, "limits": {"nvidia.com/gpu": "1"}}}]}}},
            "status": {},
        }

    def label(self, key: str, value: str | None) -> BatchJobBuilder:
        if value is None:
            self._job["metadata"]["labels"].pop(key, None)
        else:
            self._job["metadata"]["labels"][key] = value
        return self

    def parallelism(self, n: Any) -> BatchJobBuilder:
        self._job["spec"]["parallelism"] = n
        return self

    def completions(self, n: int, succeeded: int = 0) -> BatchJobBuilder:
        self._job["spec"]["completions"] = n
        self._job["status"]["succeeded"] = succeeded
        return self

    def suspend(self, value: bool) -> BatchJobBuilder:
        self._job["spec"]["suspend"] = value
        return self

    def placed(self, allocs: list[Allocation]) -> BatchJobBuilder:
        """Admitted by Wanka: its ledger written and the Job unsuspended."""
        return self.suspend(False).annotate(PLACEMENT_ANNOTATION, encode_placement(allocs))

    def annotate(self, key: str, value: str) -> BatchJobBuilder:
        self._job["metadata"]["annotations"][key] = value
        return self

    def condition(self, type_: str, status: str = "True") -> BatchJobBuilder:
        self._job["status"].setdefault("conditions", []).append({"type": type_, "status": status})
        return self

    def template(self, key: str, value: Any) -> BatchJobBuilder:
        self._job["spec"]["template"]["spec"][key] = value
        return self

    def obj(self) -> dict[str, Any]:
        return copy.deepcopy(self._job)


def make_batch(name: str, namespace: str = NS) -> BatchJobBuilder:
    return BatchJobBuilder(name, namespace)


def alloc(node: str, *devices: DeviceShare, owner: str = "o", member: str = "0") -> Allocation:
    return Allocation(owner, member, node, 0, 0, tuple(devices))


def the_unit(pods: Sequence[Mapping[str, Any]], jobs: Sequence[Mapping[str, Any]] = ()) -> Unit:
    units = collect_units(pods, jobs)
    assert len(units) == 1, units.keys()
    return next(iter(units.values()))


def names(pods: list[dict[str, Any]]) -> list[str]:
    return [str(p["metadata"]["name"]) for p in pods]


# --- collect_units ---------------------------------------------------------------------------
def test_a_plain_pod_is_a_unit_of_its_own() -> None:
    units = collect_units([make_pod("web-0").queue().pool().obj(), make_pod("web-1").obj()], [])
    assert sorted(units) == [f"pod:{NS}/web-0", f"pod:{NS}/web-1"]
    unit = units[f"pod:{NS}/web-0"]
    assert (unit.kind, unit.namespace, unit.name, names(unit.pods)) == ("Pod", NS, "web-0", ["web-0"])
    assert unit.batch is None and unit.stopping == []


def test_pod_group_members_are_one_unit_per_namespace() -> None:
    pods = [make_pod("g-1").group("g", 2).obj(), make_pod("g-0").group("g", 2).obj(),
            make_pod("g-0", "team-b").group("g", 1).obj()]
    units = collect_units(pods, [])
    assert sorted(units) == [f"group:{NS}/g", "group:team-b/g"]
    unit = units[f"group:{NS}/g"]
    assert (unit.kind, unit.namespace, unit.name) == ("PodGroup", NS, "g")
    assert sorted(names(unit.pods)) == ["g-0", "g-1"]
    assert names([unit.record]) == ["g-0"], "the first member by name speaks for the group"


def test_the_pods_of_a_queue_labelled_job_belong_to_its_batch_unit() -> None:
    job = make_batch("train").obj()
    pods = [make_pod("train-a").of_job("train").obj(), make_pod("train-b").of_job("train").group("g", 2).obj()]
    units = collect_units(pods, [job])
    assert list(units) == [f"batch:{NS}/train"]
    unit = units[f"batch:{NS}/train"]
    assert (unit.kind, unit.name) == ("Job", "train")
    assert sorted(names(unit.pods)) == ["train-a", "train-b"]
    assert unit.batch == job and unit.record is unit.batch


def test_a_queue_labelled_job_without_pods_is_still_a_unit() -> None:
    units = collect_units([], [make_batch("train").obj()])
    assert list(units) == [f"batch:{NS}/train"] and units[f"batch:{NS}/train"].pods == []


def test_pods_of_a_job_without_the_queue_label_are_plain_pods() -> None:
    job = make_batch("train").label(QUEUE_LABEL, None).obj()
    units = collect_units([make_pod("train-a").of_job("train").obj()], [job])
    assert list(units) == [f"pod:{NS}/train-a"]
    assert units[f"pod:{NS}/train-a"].kind == "Pod"


def test_a_pod_naming_a_job_of_another_namespace_is_a_plain_pod() -> None:
    units = collect_units([make_pod("train-a", "team-b").of_job("train").obj()], [make_batch("train").obj()])
    assert sorted(units) == [f"batch:{NS}/train", "pod:team-b/train-a"]
    assert units[f"batch:{NS}/train"].pods == []


@pytest.mark.parametrize("pod", [
    pytest.param(make_pod("tj-0").label(JOB_LABEL, "tj").obj(), id="a TrainingJob's member"),
    pytest.param(make_pod("other").scheduler("default-scheduler").obj(), id="another scheduler"),
    pytest.param(make_pod("none").scheduler(None).obj(), id="no scheduler named"),
    pytest.param(make_pod("done").phase("Succeeded").obj(), id="succeeded"),
    pytest.param(make_pod("failed").on("n1").phase("Failed").obj(), id="failed"),
    pytest.param(make_pod("gone").deleting().obj(), id="deleted before it was bound"),
    pytest.param(make_pod("gone").reserved("n1", "0").deleting().obj(), id="deleted while only reserved"),
])
def test_pods_that_are_no_unit_of_wankas(pod: dict[str, Any]) -> None:
    assert collect_units([pod], []) == {}


def test_terminal_members_do_not_count_in_their_group() -> None:
    unit = the_unit([make_pod("g-0").group("g", 2).phase("Succeeded").obj(), make_pod("g-1").group("g", 2).obj()])
    assert names(unit.pods) == ["g-1"]


def test_a_deleting_bound_pod_is_stopping_not_live() -> None:
    pods = [make_pod("g-0").group("g", 2).on("n1").deleting().obj(), make_pod("g-1").group("g", 2).obj(),
            make_pod("g-2").group("g", 2).deleting().obj()]
    unit = the_unit(pods)
    assert names(unit.pods) == ["g-1"] and names(unit.stopping) == ["g-0"]
    alone = the_unit([make_pod("solo").on("n1").deleting().obj()])
    assert alone.key == f"pod:{NS}/solo" and alone.pods == [] and names(alone.stopping) == ["solo"]
    assert names([alone.record]) == ["solo"]


def test_collected_pods_are_copies_of_the_cached_objects() -> None:
    pod = make_pod("a").obj()
    unit = the_unit([pod])
    assert unit.pods[0] == pod and unit.pods[0] is not pod


def test_live_bound_and_reserved() -> None:
    free, held = make_pod("a").obj(), make_pod("b").reserved("n1").obj()
    on = make_pod("c").reserved("n1").on("n1").obj()
    assert [live(p) for p in (free, held, on)] == [True, True, True]
    assert not live(make_pod("d").deleting().obj()) and not live(make_pod("e").phase("Failed").obj())
    assert [bound(p) for p in (free, held, on)] == [False, False, True]
    assert [reserved(p) for p in (free, held, on)] == [False, True, False], "bound is not reserved"


# --- Unit properties ---------------------------------------------------------------------------
@pytest.mark.parametrize("pods,want", [
    pytest.param([make_pod("a").group("g", 3).obj()], 3, id="declared"),
    pytest.param([make_pod("a").group("g", 2).obj(), make_pod("b").group("g", 2).obj()], 2, id="agreeing"),
    pytest.param([make_pod("a").group("g", 2).obj(), make_pod("b").group("g", 3).obj()], 0, id="disagreeing"),
    pytest.param([make_pod("a").group("g").obj()], 0, id="missing"),
    pytest.param([make_pod("a").group("g", 2).obj(), make_pod("b").group("g").obj()], 0, id="partly missing"),
    pytest.param([make_pod("a").group("g", "two").obj()], 0, id="not a number"),
    pytest.param([make_pod("a").group("g", 2).on("n").deleting().obj()], 2, id="from a stopping member"),
])
def test_a_pod_groups_size_is_its_members_one_declared_count(pods: list[dict[str, Any]], want: int) -> None:
    assert the_unit(pods).size == want


def test_a_plain_pods_size_is_one_and_an_empty_group_label_names_no_group() -> None:
    assert the_unit([make_pod("a").group("", 5).obj()]).size == 1


@pytest.mark.parametrize("job,want", [
    pytest.param(make_batch("j").parallelism(4).obj(), 4, id="parallelism"),
    pytest.param(make_batch("j").parallelism(None).obj(), 1, id="parallelism unset means 1"),
    pytest.param(make_batch("j").parallelism(0).obj(), 0, id="parallelism 0"),
    pytest.param(make_batch("j").parallelism("4").obj(), 0, id="parallelism not an integer"),
    pytest.param(make_batch("j").parallelism(4).completions(10, 8).obj(), 2, id="fewer completions left"),
    pytest.param(make_batch("j").parallelism(4).completions(10, 3).obj(), 4, id="more completions left"),
    pytest.param(make_batch("j").parallelism(4).completions(3, 5).obj(), 0, id="over-completed"),
    pytest.param(make_batch("j").parallelism(None).completions(3, 3).obj(), 0, id="all completed"),
])
def test_a_batch_jobs_size_is_parallelism_bounded_by_completions_left(job: dict[str, Any], want: int) -> None:
    assert the_unit([], [job]).size == want


@pytest.mark.parametrize("pods,jobs,want", [
    pytest.param([make_pod("a").priority(7).obj()], [], 7, id="pod"),
    pytest.param([make_pod("a").obj()], [], 0, id="pod without priority"),
    pytest.param([make_pod("a").group("g", 2).obj(), make_pod("b").group("g", 2).priority(9).obj()], [], 9,
                 id="group: a member that has one"),
    pytest.param([make_pod("a").group("g", 1).on("n").priority(4).deleting().obj()], [], 4, id="stopping member"),
    pytest.param([make_pod("j-0").of_job("j").priority(3).obj()], [make_batch("j").template("priority", 5).obj()],
                 5, id="job: its template first"),
    pytest.param([make_pod("j-0").of_job("j").priority(3).obj()], [make_batch("j").obj()], 3,
                 id="job: its pods when the template has none"),
    pytest.param([make_pod("a").spec("priority", "high").obj()], [], 0, id="not an integer"),
])
def test_priority(pods: list[dict[str, Any]], jobs: list[dict[str, Any]], want: int) -> None:
    assert the_unit(pods, jobs).priority == want


def test_members_by_ledger_state() -> None:
    pods = [make_pod("g-0").group("g", 4).on("n1").obj(), make_pod("g-1").group("g", 4).reserved("n2", "1").obj(),
            make_pod("g-2").group("g", 4).obj(), make_pod("g-3").group("g", 4).reserved("n2", "0").on("n2").obj()]
    unit = the_unit(pods)
    assert sorted(names(unit.bound_pods)) == ["g-0", "g-3"]
    assert names(unit.reserved_pods) == ["g-1"]
    assert names(unit.free_pods) == ["g-2"]


def test_queue_pool_and_template_of_a_job_are_the_jobs_not_its_pods() -> None:
    job = make_batch("j").label(QUEUE_LABEL, "jq").label(POOL_LABEL, "jp").obj()
    unit = the_unit([make_pod("j-0").of_job("j").queue("pq").pool("pp").obj()], [job])
    assert (unit.queue, unit.pool) == ("jq", "jp")
    assert unit.template == job["spec"]["template"]
    pod_unit = the_unit([make_pod("a").queue("pq").pool("pp").obj()])
    assert (pod_unit.queue, pod_unit.pool) == ("pq", "pp") and pod_unit.template is pod_unit.record
    assert (the_unit([make_pod("b").obj()]).queue, the_unit([make_pod("b").obj()]).pool) == ("", "")


def test_created_is_the_records_creation_time() -> None:
    assert the_unit([make_pod("a").obj()]).created == CREATED_TS
    assert the_unit([], [make_batch("j").obj()]).created == CREATED_TS
    pod = make_pod("a").obj()
    pod["metadata"]["creationTimestamp"] = "yesterday"
    assert the_unit([pod]).created == 0.0


PLACED = [alloc("n1", DeviceShare(0)), alloc("n2", DeviceShare(3))]


@pytest.mark.parametrize("job,want", [
    pytest.param(make_batch("j").obj(), dict(suspended=True, finished=False, placement=0, admitted=False),
                 id="created suspended"),
    pytest.param(make_batch("j").placed(PLACED).obj(),
                 dict(suspended=False, finished=False, placement=2, admitted=True), id="admitted"),
    pytest.param(make_batch("j").placed(PLACED).suspend(True).obj(),
                 dict(suspended=True, finished=False, placement=2, admitted=False), id="suspended again"),
    pytest.param(make_batch("j").placed(PLACED).condition("Complete").obj(),
                 dict(suspended=False, finished=True, placement=2, admitted=False), id="complete"),
    pytest.param(make_batch("j").placed(PLACED).condition("Failed").obj(),
                 dict(suspended=False, finished=True, placement=2, admitted=False), id="failed"),
    pytest.param(make_batch("j").placed(PLACED).condition("Complete", "False").obj(),
                 dict(suspended=False, finished=False, placement=2, admitted=True), id="not yet complete"),
    pytest.param(make_batch("j").suspend(False).annotate(PLACEMENT_ANNOTATION, "{not json").obj(),
                 dict(suspended=False, finished=False, placement=0, admitted=False), id="unreadable ledger"),
    pytest.param(make_batch("j").suspend(False).annotate(PLACEMENT_ANNOTATION, '{"node": "n1"}').obj(),
                 dict(suspended=False, finished=False, placement=0, admitted=False), id="ledger not a list"),
    pytest.param(make_batch("j").suspend(False).annotate(
        PLACEMENT_ANNOTATION, '[{"node": "n1"}, {"node": 3}, "n2", {"devices": "0"}]').obj(),
                 dict(suspended=False, finished=False, placement=1, admitted=True), id="entries without a node"),
])
def test_a_batch_jobs_state(job: dict[str, Any], want: dict[str, Any]) -> None:
    unit = the_unit([], [job])
    got = dict(suspended=unit.suspended, finished=unit.finished, placement=len(unit.placement),
               admitted=unit.admitted)
    assert got == want


def test_pods_and_groups_have_no_job_state() -> None:
    unit = the_unit([make_pod("a").on("n1").obj()])
    assert (unit.suspended, unit.finished, unit.placement, unit.admitted) == (False, False, [], False)


@pytest.mark.parametrize("pods,jobs,want", [
    pytest.param([make_pod("a").obj()], [], False, id="free pod"),
    pytest.param([make_pod("a").reserved("n1").obj()], [], True, id="reserved pod"),
    pytest.param([make_pod("a").on("n1").obj()], [], True, id="bound pod"),
    pytest.param([make_pod("a").on("n1").deleting().obj()], [], True, id="stopping, still on its node"),
    pytest.param([], [make_batch("j").placed(PLACED).obj()], True, id="admitted Job before its pods"),
    pytest.param([], [make_batch("j").placed(PLACED).suspend(True).obj()], False, id="suspended Job"),
    pytest.param([make_pod("j-0").of_job("j").on("n1").obj()], [make_batch("j").obj()], True,
                 id="suspended Job whose pod is still bound"),
    pytest.param([], [make_batch("j").placed(PLACED).condition("Complete").obj()], False, id="finished Job"),
])
def test_holding(pods: list[dict[str, Any]], jobs: list[dict[str, Any]], want: bool) -> None:
    assert the_unit(pods, jobs).holding is want


# --- shape_of ---------------------------------------------------------------------------------
@pytest.mark.parametrize("pod,pool,want", [
    pytest.param(make_pod("a").gpus(2).obj(), EXCLUSIVE, Shape(gpus=2, cpu_milli=500, mem_mib=1024), id="whole"),
    pytest.param(make_pod("a").obj(), EXCLUSIVE, Shape(cpu_milli=500, mem_mib=1024), id="no accelerator"),
    pytest.param(make_pod("a").limit("amd.com/gpu", "4").obj(),
                 GPUPoolSpec.model_validate({"nodeSelector": {}, "accelerator": {"resourceName": "amd.com/gpu"}}),
                 Shape(gpus=4, cpu_milli=500, mem_mib=1024), id="the pool's own resource"),
    pytest.param(make_pod("a").limit("amd.com/gpu", "4").obj(), EXCLUSIVE,
                 Shape(cpu_milli=500, mem_mib=1024), id="another pool's resource"),
    pytest.param(make_pod("a").fraction("0.25").obj(), MPS, Shape(milli=250, cpu_milli=500, mem_mib=1024),
                 id="fraction"),
    pytest.param(make_pod("a").fraction("0.5", "8").obj(), MPS,
                 Shape(milli=500, memory_mib=8192, cpu_milli=500, mem_mib=1024), id="fraction and memory"),
    pytest.param(make_pod("a").fraction("0.5", "1.5").obj(), MPS,
                 Shape(milli=500, memory_mib=1536, cpu_milli=500, mem_mib=1024), id="memory in fractional GiB"),
    pytest.param(make_pod("a").fraction("0.0001").obj(), MPS, Shape(milli=1, cpu_milli=500, mem_mib=1024),
                 id="tiny fraction is never 0"),
    pytest.param(make_pod("a").mig("1g.10gb").obj(), MIG,
                 Shape(mig_profile="1g.10gb", cpu_milli=500, mem_mib=1024), id="MIG profile"),
    pytest.param(make_pod("a").mig("1g.10gb").gpus(0).obj(), MIG,
                 Shape(mig_profile="1g.10gb", cpu_milli=500, mem_mib=1024), id="MIG with a zero GPU limit"),
])
def test_shape_of(pod: dict[str, Any], pool: GPUPoolSpec, want: Shape) -> None:
    assert shape_of(pod, pool) == want


@pytest.mark.parametrize("pod,message", [
    pytest.param(make_pod("a").fraction("half").obj(), f"annotation {FRACTION_ANNOTATION}: 'half' is not a number",
                 id="fraction not a number"),
    *[pytest.param(make_pod("a").fraction(v).obj(),
                   f"annotation {FRACTION_ANNOTATION}: {v} is not between 0 and 1 "
                   "(ask for whole devices with nvidia.com/gpu)", id=f"fraction {v}")
      for v in ("0", "1", "1.5", "-0.25", "nan", "inf")],
    pytest.param(make_pod("a").fraction("0.5", "lots").obj(),
                 f"annotation {MEMORY_GIB_ANNOTATION}: 'lots' is not a finite number", id="memory not a number"),
    pytest.param(make_pod("a").fraction("0.5", "nan").obj(),
                 f"annotation {MEMORY_GIB_ANNOTATION}: 'nan' is not a finite number", id="memory nan"),
    *[pytest.param(pod, f"annotation {MEMORY_GIB_ANNOTATION} needs a positive value and {FRACTION_ANNOTATION}",
                   id=why) for pod, why in [
        (make_pod("a").annotate(MEMORY_GIB_ANNOTATION, "8").obj(), "memory without fraction"),
        (make_pod("a").gpus(1).annotate(MEMORY_GIB_ANNOTATION, "8").obj(), "memory with whole devices"),
        (make_pod("a").fraction("0.5", "0").obj(), "memory 0"),
        (make_pod("a").fraction("0.5", "-2").obj(), "memory negative"),
        (make_pod("a").fraction("0.5", "0.0001").obj(), "memory under one MiB"),
    ]],
    *[pytest.param(pod, f"ask for one of nvidia.com/gpu, {FRACTION_ANNOTATION} or {MIG_PROFILE_ANNOTATION}, "
                   "not several", id=why) for pod, why in [
        (make_pod("a").gpus(1).fraction("0.5").obj(), "whole and fraction"),
        (make_pod("a").gpus(1).mig("1g.10gb").obj(), "whole and MIG"),
        (make_pod("a").fraction("0.5").mig("1g.10gb").obj(), "fraction and MIG"),
    ]],
])
def test_shape_of_refuses_with_a_message_to_act_on(pod: dict[str, Any], message: str) -> None:
    with pytest.raises(InvalidRequest) as exc:
        shape_of(pod, MPS)
    assert str(exc.value) == message


# --- problem ---------------------------------------------------------------------------------
def valid_pod(name: str = "a", namespace: str = NS, pool: str = "p", queue: str = "q") -> PodBuilder:
    return make_pod(name, namespace).queue(queue).pool(pool)


def group_pod(name: str, size: int | str | None = 2, pool: str = "p", queue: str = "q") -> PodBuilder:
    return valid_pod(name, pool=pool, queue=queue).group("g", size).gpus(1)


def job_unit(job: dict[str, Any]) -> Unit:
    return the_unit([], [job])


PROBLEMS: list[Any] = [
    # (unit, namespace labels, want reason, want message or None)
    pytest.param(the_unit([make_pod("a").pool("p").obj()]), {}, "NoQueue",
                 f"the pod has no label {QUEUE_LABEL}: name the TenantQueue it runs under", id="pod without queue"),
    pytest.param(job_unit(make_batch("j").label(QUEUE_LABEL, "").obj()), {}, "NoQueue",
                 f"the Job has no label {QUEUE_LABEL}: name the TenantQueue it runs under", id="Job, empty queue"),
    pytest.param(the_unit([make_pod("a").queue("missing").obj()]), {}, "NoPool",
                 f"the pod has no label {POOL_LABEL}: name the GPUPool it runs in", id="pod without pool"),
    pytest.param(job_unit(make_batch("j").label(POOL_LABEL, None).obj()), {}, "NoPool",
                 f"the Job has no label {POOL_LABEL}: name the GPUPool it runs in", id="Job without pool"),
    pytest.param(the_unit([valid_pod(queue="missing").obj()]), {}, "NoQueue", "TenantQueue missing does not exist",
                 id="unknown queue"),
    pytest.param(the_unit([valid_pod(namespace="team-b").obj()]), {}, "NoQueue",
                 "TenantQueue q does not admit namespace team-b", id="namespace not listed"),
    pytest.param(the_unit([valid_pod(namespace="team-b", queue="labelled").obj()]), {"team": "b"}, "NoQueue",
                 "TenantQueue labelled does not admit namespace team-b", id="namespace not selected"),
    pytest.param(the_unit([valid_pod(namespace="team-b", queue="labelled").obj()]), {"team": "a"}, None, None,
                 id="namespace selected by its labels"),
    pytest.param(the_unit([valid_pod(pool="gone").obj()]), {}, "NoPool", "GPUPool gone does not exist or is invalid",
                 id="unknown pool"),
    pytest.param(the_unit([valid_pod(queue="narrow").obj()]), {}, "NoQuota",
                 "TenantQueue narrow has no quota on pool p (its pools: mps)", id="no quota in the pool"),
    pytest.param(the_unit([valid_pod(queue="empty").obj()]), {}, "NoQuota",
                 "TenantQueue empty has no quota on pool p (its pools: none)", id="no quota at all"),
    pytest.param(the_unit([valid_pod().priority(101).obj()]), {}, "PriorityTooHigh",
                 "priority 101 is above TenantQueue q's maxPriority 100", id="priority above the ceiling"),
    pytest.param(the_unit([valid_pod().priority(100).obj()]), {}, None, None, id="priority at the ceiling"),
    pytest.param(job_unit(make_batch("j").template("priority", 500).obj()), {}, "PriorityTooHigh",
                 "priority 500 is above TenantQueue q's maxPriority 100", id="Job priority above the ceiling"),
    # pod groups
    *[pytest.param(the_unit(pods), {}, "InvalidRequest",
                   f"pod group g: every member needs the same annotation {GROUP_SIZE_ANNOTATION} "
                   "with a count from 1 to 4096", id=why) for pods, why in [
        ([group_pod("g-0", None).obj()], "group size missing"),
        ([group_pod("g-0", 0).obj()], "group size 0"),
        ([group_pod("g-0", 4097).obj()], "group size above 4096"),
        ([group_pod("g-0", -1).obj()], "group size negative"),
        ([group_pod("g-0", 2).obj(), group_pod("g-1", 3).obj()], "group sizes differ"),
    ]],
    pytest.param(the_unit([group_pod("g-0", 1).obj(), group_pod("g-1", 1).obj()]), {}, "InvalidRequest",
                 "pod group g has 2 members but declares 1", id="more members than declared"),
    pytest.param(the_unit([group_pod("g-0").obj(), group_pod("g-1", pool="mps").obj()]), {}, "InvalidRequest",
                 "pod group g: members name different queues or pools", id="members in different pools"),
    pytest.param(the_unit([group_pod("g-0").obj(), group_pod("g-1", queue="narrow").obj()]), {}, "InvalidRequest",
                 "pod group g: members name different queues or pools", id="members in different queues"),
    pytest.param(the_unit([group_pod("g-0", 4096).obj()]), {}, None, None, id="group of its largest size, forming"),
    pytest.param(the_unit([group_pod("g-0").obj(), group_pod("g-1").obj()]), {}, None, None, id="valid group"),
    # batch Jobs
    pytest.param(job_unit(make_batch("j").template("schedulerName", "default-scheduler").obj()), {},
                 "InvalidRequest", "spec.template.spec.schedulerName must be wanka, so that Wanka binds the Job's pods",
                 id="Job template for another scheduler"),
    pytest.param(job_unit(make_batch("j").parallelism(0).obj()), {}, "InvalidRequest",
                 "spec.parallelism must be at least 1", id="Job parallelism 0"),
    pytest.param(job_unit(make_batch("j").obj()), {}, None, None, id="valid Job"),
    pytest.param(job_unit(make_batch("j").template("containers", [{"name": "main", "resources": {
        "limits": {"nvidia.com/gpu": "1"}}}]).annotate(FRACTION_ANNOTATION, "0.5").obj()), {}, None, None,
                 id="a Job's own annotations are not its pods'"),
    # the request itself
    pytest.param(the_unit([valid_pod(pool="mps").fraction("2").obj()]), {}, "InvalidRequest",
                 f"annotation {FRACTION_ANNOTATION}: 2 is not between 0 and 1 (ask for whole devices with "
                 "nvidia.com/gpu)", id="invalid shape"),
    pytest.param(the_unit([valid_pod().spec("nodeSelector", ["gpu"]).gpus(1).obj()]), {}, "InvalidRequest",
                 "nodeSelector: not a map of labels", id="invalid node constraints"),
    pytest.param(the_unit([valid_pod().spec("tolerations", [{"operator": "Maybe"}, 3, {"key": "k", "operator": "Exists",
                                                                                      "value": "v"}, "x"]).obj()]),
                 {}, "InvalidRequest",
                 "tolerations[0].operator: 'Maybe' is not Equal or Exists; tolerations[1]: not an object; "
                 "tolerations[2].value: Exists takes no value", id="at most three template problems"),
    # sharing
    pytest.param(the_unit([valid_pod().fraction("0.5").pinned().obj()]), {}, "SharingMismatch",
                 f"{FRACTION_ANNOTATION} needs an MPS or TimeSlice pool; p is Exclusive", id="fraction, Exclusive"),
    pytest.param(the_unit([valid_pod(pool="mig").fraction("0.5").pinned().obj()]), {}, "SharingMismatch",
                 f"{FRACTION_ANNOTATION} needs an MPS or TimeSlice pool; mig is MIG", id="fraction, MIG pool"),
    pytest.param(the_unit([valid_pod(pool="mps").mig("1g.10gb").obj()]), {}, "SharingMismatch",
                 f"{MIG_PROFILE_ANNOTATION} needs a MIG pool; mps is MPS", id="MIG profile, MPS pool"),
    pytest.param(the_unit([valid_pod().mig("1g.10gb").obj()]), {}, "SharingMismatch",
                 f"{MIG_PROFILE_ANNOTATION} needs a MIG pool; p is Exclusive", id="MIG profile, Exclusive pool"),
    pytest.param(the_unit([valid_pod(pool="mig").obj()]), {}, "SharingMismatch",
                 f"mig is a MIG pool: annotate {MIG_PROFILE_ANNOTATION}", id="nothing asked of a MIG pool"),
    pytest.param(the_unit([valid_pod(pool="mig").gpus(1).obj()]), {}, None, None, id="whole devices of a MIG pool"),
    pytest.param(the_unit([valid_pod(pool="mig").mig("2g.20gb").obj()]), {}, "SharingMismatch",
                 "mig offers MIG profiles 1g.10gb, 3g.40gb, not 2g.20gb", id="MIG profile not offered"),
    pytest.param(the_unit([valid_pod(pool="mig").mig("1g.10gb", with_limit=False).obj()]), {}, "NotPinnable",
                 "a container must ask for nvidia.com/mig-1g.10gb: 1 in its limits, so the device plugin hands "
                 "it the instance (the chart's slice policy adds it)", id="MIG without its limit"),
    pytest.param(the_unit([valid_pod(pool="mig").mig("1g.10gb", with_limit=False).limit(
        "nvidia.com/mig-3g.40gb", "1").obj()]), {}, "NotPinnable",
                 "a container must ask for nvidia.com/mig-1g.10gb: 1 in its limits, so the device plugin hands "
                 "it the instance (the chart's slice policy adds it)", id="MIG with another profile's limit"),
    pytest.param(the_unit([valid_pod(pool="mig").mig("1g.10gb", with_limit=False).container("side").limit(
        "nvidia.com/mig-1g.10gb", "1", container=1).obj()]), {}, None, None, id="MIG limit in any container"),
    pytest.param(the_unit([valid_pod(pool="mig").mig("3g.40gb").obj()]), {}, None, None, id="valid MIG pod"),
    pytest.param(the_unit([valid_pod(pool="mps").fraction("0.5").obj()]), {}, "NotPinnable",
                 "container main must take NVIDIA_VISIBLE_DEVICES from "
                 f"metadata.annotations['{VISIBLE_ANNOTATION}'] (the downward API), or it would see every device "
                 "of its node; the chart's slice policy adds it", id="fraction without the downward API"),
    pytest.param(the_unit([valid_pod(pool="mps").fraction("0.5").env(
        0, "NVIDIA_VISIBLE_DEVICES", value="0").obj()]), {}, "NotPinnable",
                 "container main must take NVIDIA_VISIBLE_DEVICES from "
                 f"metadata.annotations['{VISIBLE_ANNOTATION}'] (the downward API), or it would see every device "
                 "of its node; the chart's slice policy adds it", id="fraction with a fixed device"),
    pytest.param(the_unit([valid_pod(pool="ts").fraction("0.5").env(
        0, "NVIDIA_VISIBLE_DEVICES", valueFrom={"fieldRef": {"fieldPath": "metadata.annotations['other']"}}).obj()]),
                 {}, "NotPinnable", "container main must take NVIDIA_VISIBLE_DEVICES from "
                 f"metadata.annotations['{VISIBLE_ANNOTATION}'] (the downward API), or it would see every device "
                 "of its node; the chart's slice policy adds it", id="fraction from another annotation"),
    pytest.param(the_unit([valid_pod(pool="mps").fraction("0.5").env(
        0, "NVIDIA_VISIBLE_DEVICES", valueFrom={"fieldRef": {"fieldPath": PINNED_REF}}).container("side").obj()]),
                 {}, "NotPinnable", "container side must take NVIDIA_VISIBLE_DEVICES from "
                 f"metadata.annotations['{VISIBLE_ANNOTATION}'] (the downward API), or it would see every device "
                 "of its node; the chart's slice policy adds it", id="fraction, a second container unpinned"),
    pytest.param(the_unit([valid_pod(pool="mps").fraction("0.5", "8").container("side").pinned().obj()]), {},
                 None, None, id="valid MPS slice"),
    pytest.param(the_unit([valid_pod(pool="ts").fraction("0.25").pinned().obj()]), {}, None, None,
                 id="valid TimeSlice slice"),
    pytest.param(the_unit([valid_pod().gpus(8).obj()]), {}, None, None, id="valid whole-device pod"),
    pytest.param(the_unit([valid_pod().obj()]), {}, None, None, id="valid CPU-only pod"),
]


@pytest.mark.parametrize("unit,ns_labels,want_reason,want_message", PROBLEMS)
def test_problem(unit: Unit, ns_labels: dict[str, str], want_reason: str | None, want_message: str | None) -> None:
    got = problem(unit, POOLS, QUEUES, ns_labels)
    assert got == (None if want_reason is None else (want_reason, want_message))


def test_a_jobs_finished_completions_leave_it_nothing_to_run() -> None:
    unit = job_unit(make_batch("j").parallelism(2).completions(4, 4).obj())
    assert problem(unit, POOLS, QUEUES, {}) == ("InvalidRequest", "spec.parallelism must be at least 1")


# --- request / running_request ---------------------------------------------------------------
def test_request_carries_the_members_shape_constraints_and_queueing() -> None:
    toleration = {"key": "dedicated", "operator": "Equal", "value": "ml", "effect": "NoSchedule"}
    pods = [group_pod(f"g-{i}", 3).priority(42).spec("nodeSelector", {"zone": "a"}).spec("tolerations", [toleration])
            .gpus(2).obj() for i in range(3)]
    unit = the_unit(pods)
    req = request(unit, EXCLUSIVE, "owner-x", 3)
    assert (req.owner, req.queue, req.pool, req.priority, req.replicas) == ("owner-x", "q", "p", 42, 3)
    assert (req.gpus, req.gpu_milli, req.mig_profile, req.cpu_milli, req.memory_mib) == (2, 0, "", 500, 1024)
    assert req.node_selector == (("zone", "a"),)
    assert req.tolerations == (Toleration("dedicated", "Equal", "ml", "NoSchedule"),)
    assert req.created == CREATED_TS and req.started is None


def test_request_of_a_slice_and_of_a_mig_instance() -> None:
    req = request(the_unit([valid_pod(pool="mps").fraction("0.25", "4").pinned().obj()]), MPS, "o", 1)
    assert (req.gpus, req.gpu_milli, req.gpu_memory_mib) == (0, 250, 4096)
    req = request(the_unit([valid_pod(pool="mig").mig("3g.40gb").obj()]), MIG, "o", 1)
    assert (req.gpus, req.gpu_milli, req.mig_profile) == (0, 0, "3g.40gb")


def test_request_of_a_job_reads_its_template() -> None:
    unit = job_unit(make_batch("j").parallelism(4).template("priority", 7).obj())
    req = request(unit, EXCLUSIVE, unit.key, unit.size)
    assert (req.owner, req.replicas, req.gpus, req.cpu_milli, req.memory_mib, req.priority) == (
        f"batch:{NS}/j", 4, 1, 1000, 2048, 7)


def test_request_raises_for_an_invalid_shape() -> None:
    with pytest.raises(InvalidRequest):
        request(the_unit([valid_pod().gpus(1).fraction("0.5").obj()]), MPS, "o", 1)


def test_running_request_starts_with_its_earliest_bound_member() -> None:
    pods = [group_pod("g-0", 3).on("n1").started("2026-01-02T05:00:00Z").obj(),
            group_pod("g-1", 3).on("n1").started("2026-01-02T04:00:00Z").obj(),
            group_pod("g-2", 3).obj()]
    unit = the_unit(pods)
    req = running_request(unit, EXCLUSIVE, held=2)
    assert req.owner == unit.key and req.replicas == 2
    assert req.started == datetime(2026, 1, 2, 4, tzinfo=UTC).timestamp()


def test_running_request_falls_back_to_creation_and_to_one_member() -> None:
    unit = the_unit([valid_pod().gpus(1).on("n1").obj()])
    req = running_request(unit, EXCLUSIVE, held=0)
    assert req.replicas == 1 and req.started == CREATED_TS
    unbound = running_request(the_unit([valid_pod().gpus(1).reserved("n1").obj()]), EXCLUSIVE, held=1)
    assert unbound.started is None


# --- reservation ---------------------------------------------------------------------------
@pytest.mark.parametrize("allocation,mode,slot,want", [
    pytest.param(alloc("n1", DeviceShare(0), DeviceShare(1)), "Exclusive", None,
                 {NODE_ANNOTATION: "n1", DEVICES_ANNOTATION: "0,1"}, id="whole devices"),
    pytest.param(alloc("n1", DeviceShare(5)), "MPS", None, {NODE_ANNOTATION: "n1", DEVICES_ANNOTATION: "5"},
                 id="one whole device in an MPS pool is not pinned"),
    pytest.param(alloc("n1", DeviceShare(3, 250, 8192)), "MPS", None,
                 {NODE_ANNOTATION: "n1", DEVICES_ANNOTATION: "3:250", VISIBLE_ANNOTATION: "3",
                  GPU_MEMORY_ANNOTATION: "8192", MPS_THREADS_ANNOTATION: "25", MPS_MEMORY_ANNOTATION: "3=8192M"},
                 id="MPS share with memory"),
    pytest.param(alloc("n1", DeviceShare(2, 500)), "MPS", None,
                 {NODE_ANNOTATION: "n1", DEVICES_ANNOTATION: "2:500", VISIBLE_ANNOTATION: "2",
                  MPS_THREADS_ANNOTATION: "50"}, id="MPS share without memory"),
    pytest.param(alloc("n1", DeviceShare(0, 5)), "MPS", None,
                 {NODE_ANNOTATION: "n1", DEVICES_ANNOTATION: "0:5", VISIBLE_ANNOTATION: "0",
                  MPS_THREADS_ANNOTATION: "1"}, id="MPS threads never 0"),
    pytest.param(alloc("n1", DeviceShare(3, 250, 8192)), "TimeSlice", None,
                 {NODE_ANNOTATION: "n1", DEVICES_ANNOTATION: "3:250", VISIBLE_ANNOTATION: "3",
                  GPU_MEMORY_ANNOTATION: "8192"}, id="TimeSlice share: no MPS annotations"),
    pytest.param(alloc("n1", DeviceShare(2, 142, mig_start=4)), "MIG", None,
                 {NODE_ANNOTATION: "n1", MIG_INSTANCE_ANNOTATION: "2:4"}, id="MIG instance"),
    pytest.param(alloc("n1", DeviceShare(2, 142, mig_start=0)), "MIG", None,
                 {NODE_ANNOTATION: "n1", MIG_INSTANCE_ANNOTATION: "2:0"}, id="MIG instance at slice 0"),
    pytest.param(alloc("n1"), "Exclusive", None, {NODE_ANNOTATION: "n1"}, id="CPU only"),
    pytest.param(alloc("n1", DeviceShare(1)), "Exclusive", 3,
                 {NODE_ANNOTATION: "n1", DEVICES_ANNOTATION: "1", SLOT_ANNOTATION: "3"}, id="slot"),
    pytest.param(alloc("n1", DeviceShare(1)), "Exclusive", 0,
                 {NODE_ANNOTATION: "n1", DEVICES_ANNOTATION: "1", SLOT_ANNOTATION: "0"}, id="slot 0"),
])
def test_reservation(allocation: Allocation, mode: str, slot: int | None, want: dict[str, str]) -> None:
    got = reservation(allocation, mode, slot)
    assert got == want
    assert set(got) <= set(RESERVATION_ANNOTATIONS), "a release must clear everything a reservation writes"


# --- the batch Job ledger ----------------------------------------------------------------------
def test_encode_placement() -> None:
    allocs = [alloc("n1", DeviceShare(0), DeviceShare(1)), alloc("n2", DeviceShare(3, 250, 4096)),
              alloc("n3", DeviceShare(1, 142, mig_start=4)), alloc("n4")]
    assert json.loads(encode_placement(allocs)) == [
        {"node": "n1", "devices": "0,1"}, {"node": "n2", "devices": "3:250", "memoryMiB": 4096},
        {"node": "n3", "mig": "1:4:142"}, {"node": "n4", "devices": ""}]
    assert encode_placement([]) == "[]"


def test_the_ledger_round_trips_through_the_jobs_annotation() -> None:
    key = f"batch:{NS}/j"
    shape = shape_of(make_batch("j").obj()["spec"]["template"], EXCLUSIVE)
    allocs = [Allocation(key, str(i), node, shape.cpu_milli, shape.mem_mib, devices) for i, (node, devices) in
              enumerate([("n1", (DeviceShare(0), DeviceShare(1))), ("n2", (DeviceShare(3, 250, 4096),)),
                         ("n3", (DeviceShare(1, 142, mig_start=4),)), ("n4", ()), ("n1", (DeviceShare(7, 500),))])]
    unit = job_unit(make_batch("j").parallelism(5).placed(allocs).obj())
    assert batch_ledger(unit, EXCLUSIVE) == allocs
    assert [slot_allocation(unit, i, e, shape) for i, e in enumerate(unit.placement)] == allocs


def test_slot_allocation_gives_memory_only_to_a_single_share() -> None:
    unit = job_unit(make_batch("j").obj())
    got = slot_allocation(unit, 2, {"node": "n1", "devices": "0,1", "memoryMiB": 4096}, Shape(cpu_milli=7, mem_mib=9))
    assert got == Allocation(f"batch:{NS}/j", "2", "n1", 7, 9, (DeviceShare(0), DeviceShare(1)))


@pytest.mark.parametrize("job", [
    pytest.param(make_batch("j").obj(), id="never admitted"),
    pytest.param(make_batch("j").placed(PLACED).suspend(True).obj(), id="suspended"),
    pytest.param(make_batch("j").placed(PLACED).condition("Complete").obj(), id="finished"),
    pytest.param(make_batch("j").suspend(False).annotate(PLACEMENT_ANNOTATION, '[{"node":"n1","devices":"x"}]').obj(),
                 id="devices unreadable"),
    pytest.param(make_batch("j").suspend(False).annotate(PLACEMENT_ANNOTATION, '[{"node":"n1","mig":"1:a:2"}]').obj(),
                 id="MIG instance unreadable"),
    pytest.param(make_batch("j").suspend(False).annotate(PLACEMENT_ANNOTATION, '[{"node":"n1","mig":"1:2"}]').obj(),
                 id="MIG instance short"),
    pytest.param(make_batch("j").suspend(False).annotate(
        PLACEMENT_ANNOTATION, '[{"node":"n1","devices":"1:250","memoryMiB":"lots"}]').obj(), id="memory unreadable"),
])
def test_a_batch_ledger_that_holds_nothing(job: dict[str, Any]) -> None:
    assert batch_ledger(job_unit(job), EXCLUSIVE) == []


def test_a_batch_ledger_with_an_invalid_template_holds_nothing() -> None:
    job = make_batch("j").placed(PLACED).obj()
    job["spec"]["template"]["metadata"] = {"annotations": {FRACTION_ANNOTATION: "2"}}
    assert batch_ledger(job_unit(job), EXCLUSIVE) == []


def test_free_slots_are_those_no_live_or_stopping_pod_takes() -> None:
    allocs = [alloc("n1", DeviceShare(i)) for i in range(4)]
    pods = [make_pod("j-a").of_job("j").slot(0).on("n1").obj(), make_pod("j-b").of_job("j").slot(2).on("n1").deleting()
            .obj(), make_pod("j-c").of_job("j").slot("x").obj(), make_pod("j-d").of_job("j").obj()]
    unit = the_unit(pods, [make_batch("j").parallelism(4).placed(allocs).obj()])
    assert names(unit.stopping) == ["j-b"]
    assert free_slots(unit) == [1, 3]
    assert free_slots(job_unit(make_batch("j").obj())) == []


def test_by_index_orders_by_completion_index_then_name() -> None:
    pods = [make_pod("e").index(10).obj(), make_pod("d").obj(), make_pod("c").index(2).obj(),
            make_pod("b").index("-1").obj(), make_pod("a").index(0).obj(), make_pod("f").index(2).obj()]
    assert names(by_index(pods)) == ["a", "c", "f", "e", "b", "d"]
    assert by_index([]) == []


# --- translate: Wanka-scheduled pods in the snapshot ------------------------------------------
@pytest.mark.parametrize("pod,want", [
    pytest.param(make_pod("a").obj(), (f"pod:{NS}/a", "0"), id="plain pod"),
    pytest.param(make_pod("g-1").group("g", 2).obj(), (f"group:{NS}/g", "g-1"), id="group member"),
    pytest.param(make_pod("j-x").of_job("j").slot(3).obj(), (f"batch:{NS}/j", "3"), id="batch pod with its slot"),
    pytest.param(make_pod("j-x").of_job("j").group("g", 2).slot(1).obj(), (f"batch:{NS}/j", "1"),
                 id="a slot outranks a group"),
    pytest.param(make_pod("j-x").of_job("j").obj(), (f"pod:{NS}/j-x", "0"), id="batch pod before its slot"),
    pytest.param(make_pod("j-x").of_job("j").group("g", 2).obj(), (f"group:{NS}/g", "j-x"),
                 id="batch pod before its slot, in a group"),
    pytest.param(make_pod("g-1").group("g", 2).scheduler("default-scheduler").obj(), (f"pod:{NS}/g-1", "0"),
                 id="another scheduler's pod in a group"),
    pytest.param(make_pod("j-x").of_job("j").slot(3).scheduler("default-scheduler").obj(), (f"pod:{NS}/j-x", "0"),
                 id="another scheduler's pod with a slot"),
    pytest.param(make_pod("tj-2").label(JOB_LABEL, "tj").label(REPLICA_LABEL, "2").group("g").obj(),
                 (f"{NS}/tj", "2"), id="TrainingJob member"),
])
def test_pod_owner(pod: dict[str, Any], want: tuple[str, str]) -> None:
    assert pod_owner(pod) == want


def test_a_group_members_owner_is_its_units_key() -> None:
    pods = [make_pod("g-0").group("g", 2).obj(), make_pod("g-1").group("g", 2).obj()]
    assert {pod_owner(p)[0] for p in pods} == {the_unit(pods).key}
    solo = make_pod("a").obj()
    assert pod_owner(solo)[0] == the_unit([solo]).key


@pytest.mark.parametrize("pod,want", [
    pytest.param(make_pod("a").reserved("n1", "0").obj(), "n1", id="reserved, not bound"),
    pytest.param(make_pod("a").reserved("n1", "0").on("n2").obj(), "n2", id="bound wins"),
    pytest.param(make_pod("a").on("n2").scheduler("default-scheduler").obj(), "n2", id="another scheduler's bound"),
    pytest.param(make_pod("a").reserved("n1", "0").scheduler("default-scheduler").obj(), None,
                 id="another scheduler's pod with our annotation"),
    pytest.param(make_pod("a").obj(), None, id="free"),
])
def test_pod_node(pod: dict[str, Any], want: str | None) -> None:
    assert pod_node(pod) == want


@pytest.mark.parametrize("pod,want", [
    pytest.param(make_pod("a").gpus(2).reserved("n1", "0,1").obj(),
                 Allocation(f"pod:{NS}/a", "0", "n1", 500, 1024, (DeviceShare(0), DeviceShare(1))),
                 id="reserved whole devices"),
    pytest.param(make_pod("g-0").group("g", 2).fraction("0.25").reserved("n1", "3:250")
                 .annotate(GPU_MEMORY_ANNOTATION, "4096").obj(),
                 Allocation(f"group:{NS}/g", "g-0", "n1", 500, 1024, (DeviceShare(3, 250, 4096),)),
                 id="reserved share with memory"),
    pytest.param(make_pod("j-0").of_job("j").mig("1g.10gb").reserved("n1").slot(1)
                 .annotate(MIG_INSTANCE_ANNOTATION, "2:4").obj(),
                 Allocation(f"batch:{NS}/j", "1", "n1", 500, 1024, (DeviceShare(2, 142, mig_start=4),)),
                 id="reserved MIG instance"),
    pytest.param(make_pod("a").gpus(2).reserved("n1").obj(),
                 Allocation(f"pod:{NS}/a", "0", "n1", 500, 1024, (), opaque_gpus=2), id="reserved, no devices named"),
    pytest.param(make_pod("a").gpus(2).reserved("n1", "0,1").scheduler("default-scheduler").obj(), None,
                 id="another scheduler's pod holds nothing until bound"),
    pytest.param(make_pod("a").gpus(2).reserved("n1", "0,1").phase("Failed").obj(), None, id="terminal"),
    pytest.param(make_pod("a").gpus(2).obj(), None, id="free"),
])
def test_pod_allocation(pod: dict[str, Any], want: Allocation | None) -> None:
    assert pod_allocation(pod, "nvidia.com/gpu") == want


def gpu_node(name: str, gpus: int = 8) -> dict[str, Any]:
    return {"metadata": {"name": name, "labels": {"wanka.io/pool": "p"}},
            "spec": {},
            "status": {"allocatable": {"nvidia.com/gpu": str(gpus), "cpu": "64", "memory": "512Gi"},
                       "conditions": [{"type": "Ready", "status": "True"}]}}


def test_the_snapshot_counts_a_reserved_pods_devices() -> None:
    held = make_pod("a").gpus(2).reserved("n1", "2,5").obj()
    view = build_pool_snapshot(EXCLUSIVE, [gpu_node("n1")], [held])
    n1 = view.snapshot.node("n1")
    assert [d.index for d in n1.devices if d.used_milli] == [2, 5]
    assert n1.free_whole == 6 and n1.used_cpu_milli == 500 and view.conflicts == []
    assert view.snapshot.allocations_of(f"pod:{NS}/a") == [pod_allocation(held, "nvidia.com/gpu")]


def test_the_snapshot_ignores_another_schedulers_pod_with_our_annotation() -> None:
    foreign = make_pod("a").gpus(2).reserved("n1", "2,5").scheduler("default-scheduler").obj()
    view = build_pool_snapshot(EXCLUSIVE, [gpu_node("n1")], [foreign])
    assert view.snapshot.node("n1").free_whole == 8 and list(view.snapshot.owners()) == []


def test_a_reserved_pod_and_the_ledger_entry_for_it_are_one_allocation() -> None:
    unit = job_unit(make_batch("j").placed([alloc("n1", DeviceShare(0)), alloc("n1", DeviceShare(1))]).obj())
    ledger = batch_ledger(unit, EXCLUSIVE)
    pod = make_pod("j-a").of_job("j").gpus(1).reserved("n1", "0").slot(0).obj()
    view = build_pool_snapshot(EXCLUSIVE, [gpu_node("n1")], [pod], ledger)
    assert view.conflicts == [] and view.snapshot.node("n1").free_whole == 6
    assert [a.member for a in view.snapshot.allocations_of(unit.key)] == ["0", "1"]


# --- UnitWriter ---------------------------------------------------------------------------------
def merge(target: dict[str, Any], patch: Mapping[str, Any]) -> dict[str, Any]:
    """A JSON merge patch (None removes a key)."""
    out = dict(target)
    for k, v in patch.items():
        if v is None:
            out.pop(k, None)
        elif isinstance(v, Mapping) and isinstance(out.get(k), Mapping):
            out[k] = merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def bumped(obj: dict[str, Any]) -> dict[str, Any]:
    meta = obj["metadata"]
    return {**obj, "metadata": {**meta, "resourceVersion": str(int(meta.get("resourceVersion") or 0) + 1)}}


class FakeIO:
    """Records every write in order; stores what it writes, so it answers as the API would."""

    def __init__(self, pods: Sequence[Mapping[str, Any]] = (), jobs: Sequence[Mapping[str, Any]] = ()) -> None:
        self.pods = {p["metadata"]["name"]: copy.deepcopy(dict(p)) for p in pods}
        self.jobs = {j["metadata"]["name"]: copy.deepcopy(dict(j)) for j in jobs}
        self.calls: list[tuple[Any, ...]] = []
        self.conflicts: set[str] = set()  # pods whose annotation write is refused
        self.bind_failures: dict[str, str] = {}
        self.lock = threading.Lock()

    def _record(self, *call: Any) -> None:
        with self.lock:
            self.calls.append(call)

    def annotate_pod(self, ns: str, name: str, annotations: Mapping[str, str | None],
                     version: str | None = None) -> dict[str, Any]:
        self._record("annotate", name, dict(annotations), version)
        if name in self.conflicts or name not in self.pods:
            raise Conflict(f"pod {ns}/{name}: Conflict")
        self.pods[name] = bumped(merge(self.pods[name], {"metadata": {"annotations": annotations}}))
        return copy.deepcopy(self.pods[name])

    def pod_condition(self, ns: str, name: str, condition: Mapping[str, Any]) -> None:
        self._record("condition", name, dict(condition))

    def patch_batch_job(self, ns: str, name: str, body: Mapping[str, Any]) -> dict[str, Any]:
        self._record("patch_job", name, copy.deepcopy(dict(body)))
        self.jobs[name] = bumped(merge(self.jobs[name], body))
        return copy.deepcopy(self.jobs[name])

    def bind(self, ns: str, pod: str, node: str) -> str | None:
        self._record("bind", pod, node)
        if pod in self.bind_failures:
            return self.bind_failures[pod]
        self.pods[pod] = bumped(merge(self.pods[pod], {"spec": {"nodeName": node}}))
        return None

    def delete_pod(self, ns: str, name: str, grace: int | None = None) -> None:
        self._record("delete", name)

    def kinds(self) -> list[str]:
        return [c[0] for c in self.calls]

    def of(self, kind: str) -> list[tuple[Any, ...]]:
        return [c for c in self.calls if c[0] == kind]


class FakeEvents:
    def __init__(self) -> None:
        self.events: list[tuple[str, str, str, str, str]] = []
        self.lock = threading.Lock()

    def record(self, obj: Mapping[str, Any], type_: Any, reason: str, message: str) -> None:
        with self.lock:
            self.events.append((str(obj.get("kind")), str(obj["metadata"]["name"]), str(type_), reason, message))

    def reasons(self) -> list[str]:
        return [e[3] for e in self.events]


NOW = datetime(2026, 1, 2, 6, 0, 0, tzinfo=UTC).timestamp()
CLEARED: dict[str, str | None] = dict.fromkeys(RESERVATION_ANNOTATIONS)


class Rig:
    """A UnitWriter over a real FleetCache holding the given objects, a FakeIO and FakeEvents."""

    def __init__(self, pods: Sequence[Mapping[str, Any]], jobs: Sequence[Mapping[str, Any]] = ()) -> None:
        self.cache = FleetCache(clock=lambda: 0.0)
        self.cache.replace("pods", [copy.deepcopy(dict(p)) for p in pods])
        self.cache.replace("jobs", [copy.deepcopy(dict(j)) for j in jobs])
        self.io = FakeIO(pods, jobs)
        self.events = FakeEvents()
        self.writer = UnitWriter(self.cache, cast(JobIO, self.io), self.events, lambda: NOW)

    def cached(self, name: str) -> dict[str, Any]:
        got = self.cache.store("pods").get(NS, name)
        assert got is not None
        return got

    def unit(self) -> Unit:
        """The unit as the next pass reads it from the cache (assumptions included)."""
        return the_unit(self.cache.store("pods").values(), self.cache.store("jobs").values())


def decision(unit: Unit, *allocs: Allocation) -> Admit:
    return Admit(unit.key, unit.queue, GangPlacement(unit.key, tuple(allocs), "", ()), 0.0, "fits")


def test_settle_releases_a_group_reserved_only_in_part() -> None:
    pods = [group_pod("g-0", 3).reserved("n1", "0").obj(), group_pod("g-1", 3).reserved("n1", "1").obj(),
            group_pod("g-2", 3).obj()]
    rig = Rig(pods)
    unit = the_unit(pods)
    # Released, then offered to this very cycle again: the unit itself now shows every member free.
    assert rig.writer.settle(unit, EXCLUSIVE) is True
    assert sorted(rig.io.calls) == [("annotate", "g-0", CLEARED, None), ("annotate", "g-1", CLEARED, None)]
    assert rig.events.reasons() == ["ReservationReleased"]
    assert "2 member(s): its reservation was not complete" in rig.events.events[0][4]
    assert unit.reserved_pods == [] and sorted(names(unit.free_pods)) == ["g-0", "g-1", "g-2"]
    after = rig.unit()
    assert after.reserved_pods == [] and len(after.free_pods) == 3, "the next pass sees the group free"


def test_settle_binds_a_wholly_reserved_group() -> None:
    pods = [group_pod("g-0").reserved("n1", "0").obj(), group_pod("g-1").reserved("n2", "4").obj()]
    rig = Rig(pods)
    assert rig.writer.settle(the_unit(pods), EXCLUSIVE) is False
    assert sorted(rig.io.calls) == [("bind", "g-0", "n1"), ("bind", "g-1", "n2")], "no reservation is written"
    assert rig.cached("g-0")["spec"]["nodeName"] == "n1" and rig.cached("g-1")["spec"]["nodeName"] == "n2"
    assert sorted(rig.events.reasons()) == ["Scheduled", "Scheduled"]
    assert rig.unit().reserved_pods == [] and len(rig.unit().bound_pods) == 2


def test_settle_binds_the_reserved_rest_of_a_partly_bound_group() -> None:
    pods = [group_pod("g-0").on("n1").obj(), group_pod("g-1").reserved("n2", "4").obj()]
    rig = Rig(pods)
    assert rig.writer.settle(the_unit(pods), EXCLUSIVE) is False
    assert rig.io.calls == [("bind", "g-1", "n2")]


def test_settle_waits_for_the_members_of_an_incomplete_group() -> None:
    pods = [group_pod("g-0", 3).obj(), group_pod("g-1", 3).obj()]
    rig = Rig(pods)
    assert rig.writer.settle(the_unit(pods), EXCLUSIVE) is False
    text = "PodGroupIncomplete: pod group g has 2 of its 3 members"
    assert rig.io.kinds() == ["condition", "condition"]
    assert {c[2]["message"] for c in rig.io.calls} == {text}


def test_settle_releases_an_incomplete_group_whose_member_went_away() -> None:
    pods = [group_pod("g-0", 3).reserved("n1", "0").obj(), group_pod("g-1", 3).obj()]
    rig = Rig(pods)
    assert rig.writer.settle(the_unit(pods), EXCLUSIVE) is False
    assert rig.io.calls[0] == ("annotate", "g-0", CLEARED, None), "released before it waits"
    assert rig.io.of("bind") == []
    want = {"type": "PodScheduled", "status": "False", "reason": "Unschedulable",
            "message": "PodGroupIncomplete: pod group g has 2 of its 3 members",
            "lastTransitionTime": "2026-01-02T06:00:00Z", "lastProbeTime": None}
    assert sorted(rig.io.of("condition")) == [("condition", "g-0", want), ("condition", "g-1", want)]
    assert "a member is gone before the group was bound" in rig.events.events[0][4]


@pytest.mark.parametrize("pods,want", [
    pytest.param([valid_pod().obj()], True, id="free pod"),
    pytest.param([group_pod("g-0").obj(), group_pod("g-1").obj()], True, id="free complete group"),
    pytest.param([group_pod("g-0").on("n1").obj(), group_pod("g-1").obj()], True, id="a member to replace"),
    pytest.param([valid_pod().on("n1").obj()], False, id="bound pod"),
])
def test_settle_with_nothing_to_finish(pods: list[dict[str, Any]], want: bool) -> None:
    rig = Rig(pods)
    assert rig.writer.settle(the_unit(pods), EXCLUSIVE) is want
    assert rig.io.calls == []


def test_a_failed_binding_is_reported_and_gives_back_the_members_reservation() -> None:
    pods = [group_pod("g-0").reserved("n1", "0").obj(), group_pod("g-1").reserved("n2", "4").obj()]
    rig = Rig(pods)
    rig.io.bind_failures["g-1"] = "binding g-1 to n2 failed: 500 boom"
    rig.writer.settle(the_unit(pods), EXCLUSIVE)
    assert rig.io.of("bind") == [("bind", "g-0", "n1"), ("bind", "g-1", "n2")]
    assert ("annotate", "g-1", CLEARED, None) in rig.io.calls
    assert ("Pod", "g-0", "Warning", "BindFailed", "binding g-1 to n2 failed: 500 boom") in rig.events.events
    assert NODE_ANNOTATION not in rig.cached("g-1")["metadata"]["annotations"]


def test_admit_reserves_every_member_before_binding_any() -> None:
    pods = [group_pod(f"g-{i}", 3).obj() for i in (2, 0, 1)]
    rig = Rig(pods)
    unit = the_unit(pods)
    # Members "10" > "9" > "0" by length then name: g-0 takes "0", g-1 "9", g-2 "10".
    allocs = [alloc("n3", DeviceShare(0), owner=unit.key, member="10"),
              alloc("n1", DeviceShare(0), owner=unit.key, member="0"),
              alloc("n2", DeviceShare(5), owner=unit.key, member="9")]
    rig.writer.admit(unit, decision(unit, *allocs), EXCLUSIVE)
    assert rig.io.kinds() == ["annotate"] * 3 + ["bind"] * 3
    assert rig.io.of("annotate") == [
        ("annotate", "g-0", {**CLEARED, NODE_ANNOTATION: "n1", DEVICES_ANNOTATION: "0"}, "10"),
        ("annotate", "g-1", {**CLEARED, NODE_ANNOTATION: "n2", DEVICES_ANNOTATION: "5"}, "10"),
        ("annotate", "g-2", {**CLEARED, NODE_ANNOTATION: "n3", DEVICES_ANNOTATION: "0"}, "10")]
    assert rig.io.of("bind") == [("bind", "g-0", "n1"), ("bind", "g-1", "n2"), ("bind", "g-2", "n3")]
    assert [rig.cached(f"g-{i}")["spec"]["nodeName"] for i in range(3)] == ["n1", "n2", "n3"]
    assert rig.cached("g-1")["metadata"]["annotations"][DEVICES_ANNOTATION] == "5"


def test_admit_of_a_slice_writes_its_pinning_before_the_binding() -> None:
    pods = [valid_pod(pool="mps").fraction("0.25", "4").pinned().obj()]
    rig = Rig(pods)
    unit = the_unit(pods)
    rig.writer.admit(unit, decision(unit, alloc("n1", DeviceShare(6, 250, 4096), owner=unit.key)), MPS)
    assert rig.io.calls == [
        ("annotate", "a", {**CLEARED, NODE_ANNOTATION: "n1", DEVICES_ANNOTATION: "6:250", VISIBLE_ANNOTATION: "6",
                           GPU_MEMORY_ANNOTATION: "4096", MPS_THREADS_ANNOTATION: "25",
                           MPS_MEMORY_ANNOTATION: "6=4096M"}, "10"),
        ("bind", "a", "n1")]


def test_admit_binds_a_lone_whole_device_pod_in_one_write() -> None:
    pods = [valid_pod().gpus(2).obj()]
    rig = Rig(pods)
    unit = the_unit(pods)
    rig.writer.admit(unit, decision(unit, alloc("n1", DeviceShare(3), DeviceShare(4), owner=unit.key)), EXCLUSIVE)
    # The binding is its ledger: no reservation written first, nothing to release after.
    assert rig.io.calls == [("bind", "a", "n1")]
    assert rig.events.reasons() == ["Scheduled"]
    bound = rig.cached("a")
    assert bound["spec"]["nodeName"] == "n1" and NODE_ANNOTATION not in bound["metadata"]["annotations"]
    # Bound, it holds two whole devices of n1 (which ones is the device plugin's choice).
    view = build_pool_snapshot(EXCLUSIVE, [gpu_node("n1")], [bound])
    assert view.snapshot.node("n1").free_whole == 6 and view.conflicts == []
    assert rig.unit().bound_pods and not rig.unit().free_pods


def test_a_lone_pod_whose_direct_binding_fails_is_left_free_without_a_write() -> None:
    pods = [valid_pod().gpus(1).obj()]
    rig = Rig(pods)
    rig.io.bind_failures["a"] = "binding a to n1 failed: node n1 not found"
    unit = the_unit(pods)
    rig.writer.admit(unit, decision(unit, alloc("n1", DeviceShare(0), owner=unit.key)), EXCLUSIVE)
    assert rig.io.calls == [("bind", "a", "n1")]
    assert rig.events.reasons() == ["BindFailed"]
    assert names(rig.unit().free_pods) == ["a"]


def test_a_lone_pod_already_reserved_is_bound_where_its_reservation_says() -> None:
    # Reserved by an operator that stopped before binding: settle binds it to its reservation.
    pods = [valid_pod().gpus(1).reserved("n2", "1").obj()]
    rig = Rig(pods)
    rig.writer.settle(the_unit(pods), EXCLUSIVE)
    assert rig.io.of("bind") == [("bind", "a", "n2")]


def test_admit_binds_nothing_when_a_reservation_is_refused() -> None:
    pods = [group_pod(f"g-{i}", 3).obj() for i in range(3)]
    rig = Rig(pods)
    rig.io.conflicts.add("g-1")
    unit = the_unit(pods)
    allocs = [alloc("n1", DeviceShare(i), owner=unit.key, member=str(i)) for i in range(3)]
    rig.writer.admit(unit, decision(unit, *allocs), EXCLUSIVE)
    assert rig.io.kinds() == ["annotate"] * 3 and rig.io.of("bind") == []
    assert rig.events.reasons() == []
    # The next pass finds the group reserved in part and releases it.
    again = rig.unit()
    assert sorted(names(again.reserved_pods)) == ["g-0", "g-2"] and names(again.free_pods) == ["g-1"]
    assert rig.writer.settle(again, EXCLUSIVE) is True
    assert sorted(c[1] for c in rig.io.calls[3:]) == ["g-0", "g-2"]
    assert rig.io.of("bind") == [] and len(again.free_pods) == 3
    assert all(c[2] == CLEARED for c in rig.io.calls[3:])


def test_admit_refuses_a_placement_for_another_number_of_members() -> None:
    pods = [group_pod("g-0").obj(), group_pod("g-1").obj()]
    rig = Rig(pods)
    unit = the_unit(pods)
    with pytest.raises(Conflict, match="2 members to place, 1 placed"):
        rig.writer.admit(unit, decision(unit, alloc("n1", DeviceShare(0), owner=unit.key)), EXCLUSIVE)
    assert rig.io.calls == []


def test_admit_of_a_job_writes_its_ledger_and_unsuspends_it_in_one_conditional_patch() -> None:
    job = make_batch("j").annotate(NOMINATED_ANNOTATION, "pod:team-a/victim").obj()
    rig = Rig([], [job])
    unit = job_unit(job)
    allocs = [alloc("n2", DeviceShare(1), owner=unit.key, member="1"),
              alloc("n1", DeviceShare(0), owner=unit.key, member="0")]
    rig.writer.admit(unit, decision(unit, *allocs), EXCLUSIVE)
    assert rig.io.calls == [("patch_job", "j", {
        "metadata": {"annotations": {PLACEMENT_ANNOTATION: encode_placement([allocs[1], allocs[0]]),
                                     NOMINATED_ANNOTATION: None}, "resourceVersion": "20"},
        "spec": {"suspend": False}})]
    assert rig.events.events == [("Job", "j", "Normal", "Admitted", "fits: 2 pods on 2 nodes (n1, n2)")]
    assert unit.admitted and unit.batch is not None and unit.batch["metadata"]["resourceVersion"] == "21"
    assert [a.node for a in batch_ledger(rig.unit(), EXCLUSIVE)] == ["n1", "n2"]


def test_wait_writes_the_condition_once() -> None:
    pods = [valid_pod().obj()]
    rig = Rig(pods)
    rig.writer.wait(the_unit(pods), "Capacity", "no node has 8 free GPUs")
    text = "Capacity: no node has 8 free GPUs"
    assert rig.io.calls == [("condition", "a", {
        "type": "PodScheduled", "status": "False", "reason": "Unschedulable", "message": text,
        "lastTransitionTime": "2026-01-02T06:00:00Z", "lastProbeTime": None})]
    assert rig.events.events == [("Pod", "a", "Warning", "FailedScheduling", text)]
    # The next pass reads the condition it wrote (assumed in the cache) and writes nothing.
    assert [c["message"] for c in rig.cached("a")["status"]["conditions"]] == [text]
    rig.writer.wait(rig.unit(), "Capacity", "no node has 8 free GPUs")
    assert len(rig.io.calls) == 1 and len(rig.events.events) == 1


@pytest.mark.parametrize("pod,writes", [
    pytest.param(valid_pod().scheduled("False", "Capacity: full").obj(), False, id="same message"),
    pytest.param(valid_pod().scheduled("False", "Quota: over").obj(), True, id="another message"),
    pytest.param(valid_pod().scheduled("True", "Capacity: full").obj(), True, id="same message, other status"),
])
def test_wait_writes_only_a_change(pod: dict[str, Any], writes: bool) -> None:
    rig = Rig([pod])
    rig.writer.wait(the_unit([pod]), "Capacity", "full")
    assert rig.io.kinds() == (["condition"] if writes else [])
    assert len(rig.events.events) == (1 if writes else 0)


def test_wait_leaves_reserved_and_bound_members_alone() -> None:
    pods = [group_pod("g-0", 3).on("n1").obj(), group_pod("g-1", 3).reserved("n1").obj(), group_pod("g-2", 3).obj()]
    rig = Rig(pods)
    rig.writer.wait(the_unit(pods), "Capacity", "full")
    assert [c[1] for c in rig.io.calls] == ["g-2"]


def test_wait_truncates_a_long_message() -> None:
    pods = [valid_pod().obj()]
    rig = Rig(pods)
    rig.writer.wait(the_unit(pods), "Capacity", "x" * 2000)
    assert len(rig.io.calls[0][2]["message"]) == 1024


@pytest.mark.parametrize("cause,want_type,want_reason", [
    ("Capacity", "Normal", "FailedScheduling"),
    ("Quota", "Normal", "FailedScheduling"),
    ("Preempting", "Normal", "Preempting"),
    ("InvalidRequest", "Warning", "FailedScheduling"),
])
def test_a_waiting_job_gets_an_event_not_a_condition(cause: str, want_type: str, want_reason: str) -> None:
    job = make_batch("j").obj()
    rig = Rig([make_pod("j-0").of_job("j").obj()], [job])
    rig.writer.wait(rig.unit(), cause, "why")
    assert rig.io.calls == []
    assert rig.events.events == [("Job", "j", want_type, want_reason, f"{cause}: why")]


def test_preempt_deletes_every_live_pod_of_a_group() -> None:
    pods = [group_pod("g-0", 4).on("n1").grace(10).obj(), group_pod("g-1", 4).reserved("n1", "1").obj(),
            group_pod("g-2", 4).obj(), group_pod("g-3", 4).on("n1").deleting().obj()]
    rig = Rig(pods)
    rig.writer.preempt(the_unit(pods), "preempted by pod:team-a/b: priority")
    assert sorted(rig.io.calls) == [("delete", "g-0"), ("delete", "g-1"), ("delete", "g-2")]
    assert rig.events.reasons() == ["Preempted"] * 3
    assert rig.cached("g-0")["metadata"]["deletionTimestamp"] == "2026-01-02T06:00:10Z"
    assert rig.cached("g-2")["metadata"]["deletionTimestamp"] == "2026-01-02T06:00:30Z"
    after = rig.unit()
    assert after.pods == [] and sorted(names(after.stopping)) == ["g-0", "g-3"]


def test_preempt_suspends_a_job_and_clears_its_ledger() -> None:
    job = make_batch("j").placed(PLACED).obj()
    pods = [make_pod("j-0").of_job("j").slot(0).on("n1").obj()]
    rig = Rig(pods, [job])
    unit = rig.unit()
    rig.writer.preempt(unit, "preempted by pod:team-a/b: priority")
    assert rig.io.calls == [("patch_job", "j", {"spec": {"suspend": True},
                                                "metadata": {"annotations": {PLACEMENT_ANNOTATION: None}}})]
    assert rig.events.events == [("Job", "j", "Normal", "Preempted", "preempted by pod:team-a/b: priority")]
    assert unit.suspended and unit.placement == [] and not unit.admitted
    assert rig.unit().suspended and rig.unit().placement == []


def test_settle_suspends_a_job_created_running() -> None:
    job = make_batch("j").suspend(False).obj()
    rig = Rig([], [job])
    assert rig.writer.settle(job_unit(job), EXCLUSIVE) is False
    assert rig.io.calls == [("patch_job", "j", {"spec": {"suspend": True}})]
    assert rig.events.events == [("Job", "j", "Normal", "Suspended", "suspended until Wanka admits it in queue q")]
    assert rig.unit().suspended


def test_settle_clears_the_ledger_of_a_job_suspended_by_hand() -> None:
    job = make_batch("j").placed(PLACED).suspend(True).obj()
    rig = Rig([], [job])
    assert rig.writer.settle(job_unit(job), EXCLUSIVE) is False
    assert rig.io.calls == [("patch_job", "j", {"metadata": {"annotations": {PLACEMENT_ANNOTATION: None}}})]
    assert rig.unit().placement == []


@pytest.mark.parametrize("job,want", [
    pytest.param(make_batch("j").obj(), True, id="suspended: to be placed"),
    pytest.param(make_batch("j").suspend(False).condition("Complete").obj(), False, id="finished"),
    pytest.param(make_batch("j").placed(PLACED).condition("Failed").obj(), False, id="failed while admitted"),
])
def test_settle_of_a_job_with_nothing_to_write(job: dict[str, Any], want: bool) -> None:
    rig = Rig([], [job])
    assert rig.writer.settle(job_unit(job), EXCLUSIVE) is want
    assert rig.io.calls == []


def test_an_admitted_job_binds_nothing_until_all_its_pods_exist() -> None:
    job = make_batch("j").placed(PLACED).obj()
    pods = [make_pod("j-a").of_job("j").index(0).obj()]
    rig = Rig(pods, [job])
    assert rig.writer.settle(rig.unit(), EXCLUSIVE) is False
    assert rig.io.calls == []


def test_an_admitted_job_reserves_slots_by_completion_index_then_binds() -> None:
    allocs = [alloc("n1", DeviceShare(0)), alloc("n2", DeviceShare(3))]
    job = make_batch("j").placed(allocs).obj()
    pods = [make_pod("j-a").of_job("j").index(1).obj(), make_pod("j-b").of_job("j").index(0).obj()]
    rig = Rig(pods, [job])
    assert rig.writer.settle(rig.unit(), EXCLUSIVE) is False
    assert rig.io.kinds() == ["annotate", "annotate", "bind", "bind"]
    assert rig.io.of("annotate") == [
        ("annotate", "j-b", {**CLEARED, NODE_ANNOTATION: "n1", DEVICES_ANNOTATION: "0", SLOT_ANNOTATION: "0"}, "10"),
        ("annotate", "j-a", {**CLEARED, NODE_ANNOTATION: "n2", DEVICES_ANNOTATION: "3", SLOT_ANNOTATION: "1"}, "10")]
    assert rig.io.of("bind") == [("bind", "j-b", "n1"), ("bind", "j-a", "n2")]
    assert [pod_owner(rig.cached(n)) for n in ("j-b", "j-a")] == [(f"batch:{NS}/j", "0"), (f"batch:{NS}/j", "1")]


def test_an_admitted_job_binds_its_reserved_pods_and_fills_a_freed_slot() -> None:
    allocs = [alloc("n1", DeviceShare(0)), alloc("n2", DeviceShare(3)), alloc("n3", DeviceShare(1))]
    job = make_batch("j").parallelism(3).placed(allocs).obj()
    pods = [make_pod("j-a").of_job("j").slot(0).reserved("n1", "0").obj(),
            make_pod("j-b").of_job("j").slot(1).on("n2").obj(),
            make_pod("j-c").of_job("j").slot(2).on("n3").deleting().obj(),
            make_pod("j-d").of_job("j").obj()]
    rig = Rig(pods, [job])
    assert rig.writer.settle(rig.unit(), EXCLUSIVE) is False
    assert rig.io.calls == [("bind", "j-a", "n1")], "slot 2 is still held by its stopping pod"
    # Once the stopping pod is gone its slot goes to the replacement.
    rig.cache.observe("pods", "DELETED", pods[2])
    rig.io.calls.clear()
    rig.writer.settle(rig.unit(), EXCLUSIVE)
    assert rig.io.calls == [
        ("annotate", "j-d", {**CLEARED, NODE_ANNOTATION: "n3", DEVICES_ANNOTATION: "1", SLOT_ANNOTATION: "2"}, "10"),
        ("bind", "j-d", "n3")]


# --- regressions: found by this file's first run ------------------------------------------------
@pytest.mark.parametrize("memory", ["inf", "1e400", "-inf"])
def test_an_infinite_gpu_memory_is_an_invalid_request_not_a_crash(memory: str) -> None:
    with pytest.raises(InvalidRequest, match="not a finite number"):
        shape_of(make_pod("a").fraction("0.5", memory).obj(), MPS)


def test_a_failed_binding_keeps_the_reservation_of_members_already_bound() -> None:
    pods = [group_pod("g-0").reserved("n1", "0").obj(), group_pod("g-1").reserved("n2", "4").obj()]
    rig = Rig(pods)
    rig.io.bind_failures["g-1"] = "boom"
    rig.writer.settle(the_unit(pods), EXCLUSIVE)
    assert [c[1] for c in rig.io.of("annotate")] == ["g-1"]


def test_a_bound_slice_still_holds_its_share_after_a_partner_fails_to_bind() -> None:
    pods = [group_pod(f"g-{i}", pool="mps").gpus(0).fraction("0.5").pinned().reserved("n1", f"{i}:500").obj()
            for i in range(2)]
    rig = Rig(pods)
    rig.io.bind_failures["g-1"] = "boom"
    rig.writer.settle(the_unit(pods), MPS)
    got = pod_allocation(rig.cached("g-0"), "nvidia.com/gpu")
    assert got is not None and got.gpu_milli == 500


def test_a_failed_binding_never_frees_a_bound_batch_pods_slot() -> None:
    job = make_batch("j").placed([alloc("n1", DeviceShare(0)), alloc("n2", DeviceShare(3))]).obj()
    rig = Rig([make_pod("j-a").of_job("j").index(0).obj(), make_pod("j-b").of_job("j").index(1).obj()], [job])
    rig.io.bind_failures["j-b"] = "boom"
    rig.writer.settle(rig.unit(), EXCLUSIVE)
    rig.io.calls.clear()
    rig.io.bind_failures.clear()
    rig.writer.settle(rig.unit(), EXCLUSIVE)
    assert not any(c[0] == "annotate" and c[2].get(SLOT_ANNOTATION) == "0" for c in rig.io.calls)


def test_an_unreadable_ledger_queues_the_job_again() -> None:
    job = make_batch("j").parallelism(1).suspend(False).annotate(
        PLACEMENT_ANNOTATION, '[{"node":"n1","devices":"x"}]').obj()
    rig = Rig([make_pod("j-a").of_job("j").obj()], [job])
    assert rig.writer.settle(rig.unit(), EXCLUSIVE) is False
    assert not rig.io.of("bind")
    assert any(e[3] == "InvalidPlacement" for e in rig.events.events)


def test_members_of_one_group_asking_for_different_devices_are_refused() -> None:
    pods = [group_pod("g-0").gpus(1).obj(), group_pod("g-1").gpus(8).obj()]
    why = problem(the_unit(pods), POOLS, QUEUES, {})
    assert why is not None and why[0] == "InvalidRequest" and "different resources" in why[1]


def test_an_init_container_of_a_slice_pod_must_be_pinned_too() -> None:
    pod = valid_pod(pool="mps").fraction("0.5").pinned().spec(
        "initContainers", [{"name": "warmup", "image": "nvidia/cuda"}]).obj()
    why = problem(the_unit([pod]), POOLS, QUEUES, {})
    assert why is not None and why[0] == "NotPinnable" and "warmup" in why[1]


def test_a_fingerprint_follows_every_object_version_of_a_unit() -> None:
    pods = [group_pod("g-0").obj(), group_pod("g-1").obj()]
    unit = the_unit(pods)
    assert fingerprint(unit) == (("g-0", "10"), ("g-1", "10"))
    pods[1] = {**pods[1], "metadata": {**pods[1]["metadata"], "resourceVersion": "11"}}
    assert fingerprint(the_unit(pods)) != fingerprint(unit)
    pods[1] = {**pods[1], "metadata": {**pods[1]["metadata"], "resourceVersion": ""}}
    assert fingerprint(the_unit(pods)) is None  # nothing to key on: read every time


def test_a_pass_memo_keeps_what_the_last_pass_asked_for_and_no_more() -> None:
    memo = PassMemo()
    calls: list[str] = []

    def make(value: str) -> Callable[[], str]:
        return lambda: calls.append(value) or value

    assert memo.get("a", make("a")) == "a" and memo.get("a", make("x")) == "a"
    memo.turn()
    assert memo.get("a", make("x")) == "a"  # asked for again in the next pass: kept
    memo.turn()
    memo.turn()  # a pass that did not ask for it: dropped
    assert memo.get("a", make("b")) == "b"
    assert memo.get(None, make("c")) == "c" and memo.get(None, make("d")) == "d"  # never kept
    with pytest.raises(InvalidRequest):
        memo.get("bad", lambda: (_ for _ in ()).throw(InvalidRequest("no")))
    assert memo.get("bad", make("ok")) == "ok"  # an error is not kept
    assert calls == ["a", "b", "c", "d", "ok"]
