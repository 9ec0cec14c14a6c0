"""Cluster side of node constraints: template parsing, allocatable, taints, pool membership."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.objects import NodeObj, make_node, make_training_job
from tests.unit.test_translate_accounting import SPEC
from wanka.api.trainingjob import TrainingJobSpec, TrainingJobStatus
from wanka.cluster.jobs import Job, job_request
from wanka.cluster.manifests import pod_manifest
from wanka.cluster.template import template_constraints
from wanka.cluster.translate import build_node
from wanka.core.constraints import Requirement, Taint, Term, Toleration
from wanka.core.requests import InvalidRequest

AFFINITY = {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
    {"matchExpressions": [{"key": "zone", "operator": "In", "values": ["a", "b"]},
                          {"key": "gen", "operator": "Gt", "values": ["8"]}]},
    {"matchFields": [{"key": "metadata.name", "operator": "In", "values": ["n7"]}]},
]}}}
TOLERATIONS = [
    {"key": "dedicated", "operator": "Equal", "value": "team-a", "effect": "NoSchedule"},
    {"key": "spot", "operator": "Exists"},
    {"operator": "Exists"},
    {"key": "k", "value": "v"},  # operator defaults to Equal
]


def template(**spec: Any) -> dict[str, Any]:
    return {"metadata": {}, "spec": {"containers": [{"name": "c", "image": "x"}], **spec}}


def test_a_valid_template_reads_whole() -> None:
    got = template_constraints(template(nodeSelector={"zone": "a", "pool": "p"}, affinity=AFFINITY,
                                       tolerations=TOLERATIONS))
    assert got.problems == []
    assert got.node_selector == (("pool", "p"), ("zone", "a"))
    assert got.affinity == (
        Term((Requirement("zone", "In", ("a", "b")), Requirement("gen", "Gt", ("8",)))),
        Term(names_in=(frozenset({"n7"}),)),
    )
    assert got.tolerations == (
        Toleration("dedicated", "Equal", "team-a", "NoSchedule"),
        Toleration("spot", "Exists"),
        Toleration("", "Exists"),
        Toleration("k", "Equal", "v"),
    )


def test_no_constraints_is_no_constraint() -> None:
    got = template_constraints(template(affinity={"podAntiAffinity": {}}))
    assert (got.tolerations, got.node_selector, got.affinity, got.problems) == ((), (), None, [])


def terms(*raw: Any) -> dict[str, Any]:
    return {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": list(raw)}}}


@dataclass
class BadCase:
    name: str
    spec: dict[str, Any]
    want_problem: str
    want_affinity: tuple[Term, ...] | None = None
    want_tolerations: tuple[Toleration, ...] = ()
    want_selector: tuple[tuple[str, str], ...] = ()
    extra: dict[str, Any] = field(default_factory=dict)


BAD_CASES = [
    BadCase("nodeSelector not a map", {"nodeSelector": ["zone=a"]}, "nodeSelector: not a map"),
    BadCase("nodeSelector value not a string", {"nodeSelector": {"zone": 1, "ok": "y"}},
            "nodeSelector['zone']", want_selector=(("ok", "y"),)),
    BadCase("tolerations not a list", {"tolerations": {"key": "k"}}, "tolerations: not a list"),
    BadCase("toleration not an object", {"tolerations": ["k"]}, "tolerations[0]: not an object"),
    BadCase("unknown toleration operator", {"tolerations": [{"key": "k", "operator": "Maybe"}]},
            "tolerations[0].operator"),
    BadCase("unknown toleration effect", {"tolerations": [{"key": "k", "operator": "Exists", "effect": "Soon"}]},
            "tolerations[0].effect"),
    BadCase("Exists with a value", {"tolerations": [{"key": "k", "operator": "Exists", "value": "v"}]},
            "Exists takes no value"),
    BadCase("empty key with Equal", {"tolerations": [{"value": "v"}, {"key": "ok", "operator": "Exists"}]},
            "an empty key needs Exists", want_tolerations=(Toleration("ok", "Exists"),)),
    BadCase("toleration key not a string", {"tolerations": [{"key": 3}]}, "must be strings"),
    BadCase("affinity not an object", {"affinity": "near"}, "affinity: not an object", want_affinity=()),
    BadCase("nodeAffinity not an object", {"affinity": {"nodeAffinity": []}}, "affinity.nodeAffinity",
            want_affinity=()),
    BadCase("no terms", {"affinity": terms()}, "at least one term", want_affinity=()),
    BadCase("terms not a list", {"affinity": {"nodeAffinity": {
        "requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": "x"}}}},
            "at least one term", want_affinity=()),
    BadCase("required not an object", {"affinity": {"nodeAffinity": {
        "requiredDuringSchedulingIgnoredDuringExecution": 5}}}, "IgnoredDuringExecution: not an object",
            want_affinity=()),
    BadCase("required without terms", {"affinity": {"nodeAffinity": {
        "requiredDuringSchedulingIgnoredDuringExecution": {}}}}, "at least one term", want_affinity=()),
    BadCase("term not an object", {"affinity": terms("zone=a")}, "nodeSelectorTerms[0]: not an object",
            want_affinity=()),
    BadCase("matchExpressions not a list", {"affinity": terms({"matchExpressions": {"key": "z"}})},
            "must be lists", want_affinity=()),
    BadCase("unknown operator drops its term, keeps the valid one",
            {"affinity": terms({"matchExpressions": [{"key": "z", "operator": "Near", "values": ["a"]}]},
                               {"matchExpressions": [{"key": "z", "operator": "Exists"}]})},
            "matchExpressions[0].operator", want_affinity=(Term((Requirement("z", "Exists"),)),)),
    BadCase("In without values", {"affinity": terms({"matchExpressions": [{"key": "z", "operator": "In"}]})},
            "In needs at least one value", want_affinity=()),
    BadCase("Exists with values",
            {"affinity": terms({"matchExpressions": [{"key": "z", "operator": "Exists", "values": ["a"]}]})},
            "Exists takes no values", want_affinity=()),
    BadCase("Gt with a word",
            {"affinity": terms({"matchExpressions": [{"key": "z", "operator": "Gt", "values": ["ten"]}]})},
            "Gt needs exactly one integer", want_affinity=()),
    BadCase("Lt with two numbers",
            {"affinity": terms({"matchExpressions": [{"key": "z", "operator": "Lt", "values": ["1", "2"]}]})},
            "Lt needs exactly one integer", want_affinity=()),
    BadCase("values not strings",
            {"affinity": terms({"matchExpressions": [{"key": "z", "operator": "In", "values": [1]}]})},
            "a list of strings", want_affinity=()),
    BadCase("expression without a key",
            {"affinity": terms({"matchExpressions": [{"operator": "Exists"}]})}, "a label key is required",
            want_affinity=()),
    BadCase("matchFields on a label",
            {"affinity": terms({"matchFields": [{"key": "zone", "operator": "In", "values": ["a"]}]})},
            "only metadata.name", want_affinity=()),
    BadCase("matchFields with Exists",
            {"affinity": terms({"matchFields": [{"key": "metadata.name", "operator": "Exists"}]})},
            "is not In or NotIn", want_affinity=()),
    BadCase("matchFields with two names",
            {"affinity": terms({"matchFields": [{"key": "metadata.name", "operator": "In",
                                                  "values": ["a", "b"]}]})},
            "exactly one node name", want_affinity=()),
]


@pytest.mark.parametrize("case", BAD_CASES, ids=lambda c: c.name)
def test_a_malformed_template_is_read_without_raising(case: BadCase) -> None:
    got = template_constraints(template(**case.spec))
    assert any(case.want_problem in p for p in got.problems), got.problems
    assert got.affinity == case.want_affinity
    assert got.tolerations == case.want_tolerations
    assert got.node_selector == case.want_selector


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=8)
    | st.sampled_from(["In", "NotIn", "Exists", "Gt", "Equal", "NoSchedule", "metadata.name"]),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(
        st.sampled_from(["key", "operator", "values", "value", "effect", "matchExpressions", "matchFields",
                         "nodeSelectorTerms", "nodeAffinity", "requiredDuringSchedulingIgnoredDuringExecution"]),
        inner, max_size=5),
    max_leaves=20,
)


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(st.sampled_from(["nodeSelector", "affinity", "tolerations"]), JSON), JSON)
def test_any_template_parses_without_raising(spec: dict[str, Any], anything: Any) -> None:
    template_constraints({"spec": spec})
    template_constraints(anything)


# --- job_request and the pods ------------------------------------------------------------
def job(**pod_spec: Any) -> Job:
    raw = make_training_job("j").replicas(2).pod_spec(**pod_spec).obj()
    return Job(raw, TrainingJobSpec.model_validate(raw["spec"]), TrainingJobStatus())


def test_job_request_carries_the_template_constraints() -> None:
    got = job_request(job(nodeSelector={"zone": "a"}, affinity=AFFINITY, tolerations=TOLERATIONS[:1]),
                      SPEC, resuming=False)
    assert got.node_selector == (("zone", "a"),)
    assert got.tolerations == (Toleration("dedicated", "Equal", "team-a", "NoSchedule"),)
    assert got.affinity is not None and len(got.affinity) == 2


def test_a_malformed_template_makes_the_request_invalid_but_a_placed_gang_readable() -> None:
    bad = job(tolerations=[{"key": "k", "operator": "Maybe"}, {"value": "v"}, "x", 4],
              nodeSelector={"zone": "a"})
    with pytest.raises(InvalidRequest, match=r"ns/j: template: tolerations\[0\].operator.*\(and 1 more\)"):
        job_request(bad, SPEC, resuming=False)
    placed = job_request(bad, SPEC, resuming=False, placed=True)
    assert placed.node_selector == (("zone", "a"),) and placed.tolerations == ()


def test_pods_carry_the_template_constraints_unchanged() -> None:
    j = job(nodeSelector={"zone": "a"}, affinity=AFFINITY, tolerations=TOLERATIONS)
    assert j.spec is not None
    pod = pod_manifest(j.raw, j.spec, 0, 0, [(0, 1000)], "nvidia.com/gpu")
    assert pod["spec"]["nodeSelector"] == {"zone": "a"}
    assert pod["spec"]["affinity"] == AFFINITY
    assert pod["spec"]["tolerations"] == TOLERATIONS


# --- nodes: allocatable and taints ---------------------------------------------------------
@pytest.mark.parametrize("name,node,want", [
    ("the kubelet withholds two devices: never offer them", make_node("n").gpus(8).allocatable(6), 6),
    ("none allocatable", make_node("n").gpus(8).allocatable(0), 0),
    ("allocatable says nothing about the resource: capacity", make_node("n").gpus(8).not_allocatable(), 8),
])
def test_device_count_comes_from_allocatable(name: str, node: NodeObj, want: int) -> None:
    assert len(build_node(node.obj(), SPEC, ()).devices) == want


@pytest.mark.parametrize("name,node,want_schedulable,want_taints", [
    ("a custom NoSchedule taint is data", make_node("n").taint("dedicated", value="a"), True,
     (Taint("dedicated", "a", "NoSchedule"),)),
    ("NoExecute and PreferNoSchedule too", make_node("n").taint("x", "NoExecute").taint("y", "PreferNoSchedule"),
     True, (Taint("x", "", "NoExecute"), Taint("y", "", "PreferNoSchedule"))),
    ("wanka's own taint cannot be tolerated", make_node("n").unhealthy(), False, ()),
    ("cordoned", make_node("n").cordoned(), False, ()),
    ("malformed taints are left out", make_node("n").taint("z", "Later").taint("5"), True,
     (Taint("5", "", "NoSchedule"),)),
])
def test_taints_are_data_except_wankas_own(name: str, node: NodeObj, want_schedulable: bool,
                                           want_taints: tuple[Taint, ...]) -> None:
    got = build_node(node.obj(), SPEC, ())
    assert (got.schedulable, got.taints) == (want_schedulable, want_taints)


def test_taints_that_are_not_objects_are_ignored() -> None:
    raw = make_node("n").obj()
    raw["spec"]["taints"] = ["junk", {"key": 5, "effect": "NoSchedule"}, None]
    assert build_node(raw, SPEC, ()).taints == ()
    raw["spec"]["taints"] = "junk"
    assert build_node(raw, SPEC, ()).schedulable
