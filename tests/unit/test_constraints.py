"""Node constraints in the core: tolerations, nodeSelector and required affinity, in placement."""

from __future__ import annotations

from dataclasses import dataclass, replace

import pytest

from tests.unit.builders import make_job, make_node, make_queue, make_snapshot
from wanka.core.constraints import Requirement, Taint, Term, Toleration, selects, untolerated
from wanka.core.gang import place_gang
from wanka.core.queueing import schedule
from wanka.core.requests import GangRequest
from wanka.core.sharing import FragmentationAwareShares
from wanka.core.snapshot import Node

DEDICATED = Taint("dedicated", "team-a", "NoSchedule")


@dataclass
class TolCase:
    name: str
    tolerations: tuple[Toleration, ...]
    taints: tuple[Taint, ...]
    want_blocked_by: Taint | None


TOLERATION_CASES = [
    TolCase("no taint, no toleration", (), (), None),
    TolCase("NoSchedule blocks without toleration", (), (DEDICATED,), DEDICATED),
    TolCase("NoExecute blocks without toleration", (), (Taint("k", "", "NoExecute"),), Taint("k", "", "NoExecute")),
    TolCase("PreferNoSchedule never blocks", (), (Taint("k", "v", "PreferNoSchedule"),), None),
    TolCase("Equal with the same key, value and effect",
            (Toleration("dedicated", "Equal", "team-a", "NoSchedule"),), (DEDICATED,), None),
    TolCase("Equal with another value",
            (Toleration("dedicated", "Equal", "team-b", "NoSchedule"),), (DEDICATED,), DEDICATED),
    TolCase("Equal with another key",
            (Toleration("other", "Equal", "team-a"),), (DEDICATED,), DEDICATED),
    TolCase("Exists on the key, any value", (Toleration("dedicated", "Exists"),), (DEDICATED,), None),
    TolCase("empty effect matches every effect",
            (Toleration("k", "Equal", "v"),), (Taint("k", "v", "NoSchedule"), Taint("k", "v", "NoExecute")), None),
    TolCase("another effect does not tolerate",
            (Toleration("dedicated", "Exists", effect="NoExecute"),), (DEDICATED,), DEDICATED),
    TolCase("empty key with Exists tolerates everything",
            (Toleration("", "Exists"),), (DEDICATED, Taint("x", "", "NoExecute")), None),
    TolCase("empty key with Exists and an effect tolerates only that effect",
            (Toleration("", "Exists", effect="NoSchedule"),), (DEDICATED, Taint("x", "", "NoExecute")),
            Taint("x", "", "NoExecute")),
    TolCase("every taint needs its own toleration",
            (Toleration("dedicated", "Exists"),), (DEDICATED, Taint("gpu", "broken")), Taint("gpu", "broken")),
    TolCase("an empty value equals an empty value",
            (Toleration("k", "Equal", ""),), (Taint("k", "", "NoSchedule"),), None),
]


@pytest.mark.parametrize("case", TOLERATION_CASES, ids=lambda c: c.name)
def test_tolerations(case: TolCase) -> None:
    assert untolerated(case.tolerations, case.taints) == case.want_blocked_by


LABELS = {"zone": "a", "gpu-gen": "9", "team": "x"}


@dataclass
class SelCase:
    name: str
    node_selector: tuple[tuple[str, str], ...]
    affinity: tuple[Term, ...] | None
    want: bool
    node: str = "n1"


def term(*exprs: Requirement, names_in: tuple[frozenset[str], ...] = (),
         names_not_in: frozenset[str] = frozenset()) -> Term:
    return Term(exprs, names_in, names_not_in)


SELECTOR_CASES = [
    SelCase("nothing asked", (), None, True),
    SelCase("nodeSelector equal", (("zone", "a"),), None, True),
    SelCase("nodeSelector another value", (("zone", "b"),), None, False),
    SelCase("nodeSelector missing label", (("rack", "1"),), None, False),
    SelCase("nodeSelector every pair must hold", (("zone", "a"), ("team", "y")), None, False),
    SelCase("In", (), (term(Requirement("zone", "In", ("a", "b"))),), True),
    SelCase("In without the label", (), (term(Requirement("rack", "In", ("a",))),), False),
    SelCase("NotIn", (), (term(Requirement("zone", "NotIn", ("b",))),), True),
    SelCase("NotIn of its value", (), (term(Requirement("zone", "NotIn", ("a",))),), False),
    SelCase("NotIn matches a node without the label", (), (term(Requirement("rack", "NotIn", ("a",))),), True),
    SelCase("Exists", (), (term(Requirement("team", "Exists")),), True),
    SelCase("Exists without the label", (), (term(Requirement("rack", "Exists")),), False),
    SelCase("DoesNotExist", (), (term(Requirement("rack", "DoesNotExist")),), True),
    SelCase("DoesNotExist with the label", (), (term(Requirement("zone", "DoesNotExist")),), False),
    SelCase("Gt", (), (term(Requirement("gpu-gen", "Gt", ("8",))),), True),
    SelCase("Gt equal is not greater", (), (term(Requirement("gpu-gen", "Gt", ("9",))),), False),
    SelCase("Lt", (), (term(Requirement("gpu-gen", "Lt", ("10",))),), True),
    SelCase("Lt of a label that is not a number", (), (term(Requirement("zone", "Lt", ("10",))),), False),
    SelCase("Gt without the label", (), (term(Requirement("rack", "Gt", ("1",))),), False),
    SelCase("requirements of a term are ANDed", (),
            (term(Requirement("zone", "In", ("a",)), Requirement("team", "In", ("y",))),), False),
    SelCase("terms are ORed", (),
            (term(Requirement("zone", "In", ("b",))), term(Requirement("team", "In", ("x",)))), True),
    SelCase("an empty term matches nothing", (), (term(),), False),
    SelCase("no valid term left matches nothing", (), (), False),
    SelCase("matchFields In on the node name", (), (term(names_in=(frozenset({"n1"}),)),), True),
    SelCase("matchFields In another name", (), (term(names_in=(frozenset({"n2"}),)),), False),
    SelCase("matchFields NotIn the node name", (), (term(names_not_in=frozenset({"n1"})),), False),
    SelCase("matchFields and expressions together", (),
            (term(Requirement("zone", "In", ("a",)), names_in=(frozenset({"n1"}),)),), True),
    SelCase("nodeSelector and affinity both must hold", (("zone", "b"),),
            (term(Requirement("zone", "In", ("a",))),), False),
]


@pytest.mark.parametrize("case", SELECTOR_CASES, ids=lambda c: c.name)
def test_node_selector_and_affinity(case: SelCase) -> None:
    assert selects(case.node_selector, case.affinity, case.node, LABELS) is case.want


def fleet() -> list[Node]:
    """Four 8-GPU nodes: a and b plain, c tainted for team-a, d labelled zone=b."""
    return [
        make_node("a").gpus(8).label("zone", "a").obj(),
        make_node("b").gpus(8).label("zone", "a").obj(),
        make_node("c").gpus(8).label("zone", "a").taint("dedicated", "team-a").obj(),
        make_node("d").gpus(8).label("zone", "b").obj(),
    ]


@dataclass
class PlaceCase:
    name: str
    job: GangRequest
    want_nodes: set[str] | None  # None: does not fit
    want_reason: str = ""


TEAM_A = Toleration("dedicated", "Equal", "team-a", "NoSchedule")
PLACE_CASES = [
    PlaceCase("untolerated taint keeps the gang off c", make_job("j").replicas(3).gpus(8).obj(),
              {"a", "b", "d"}),
    PlaceCase("untolerated taint counted in the reason", make_job("j").replicas(4).gpus(8).obj(),
              None, "1 untolerated taint"),
    PlaceCase("a toleration opens c", make_job("j").replicas(4).gpus(8).tolerate(TEAM_A).obj(),
              {"a", "b", "c", "d"}),
    PlaceCase("nodeSelector keeps the gang off d",
              make_job("j").replicas(3).gpus(8).tolerate(TEAM_A).node_selector({"zone": "a"}).obj(),
              {"a", "b", "c"}),
    PlaceCase("nodeSelector counted in the reason",
              make_job("j").replicas(3).gpus(8).node_selector({"zone": "a"}).obj(),
              None, "1 untolerated taint, 1 not matching nodeSelector/affinity"),
    PlaceCase("affinity picks d",
              make_job("j").replicas(1).gpus(8).affinity(Term((Requirement("zone", "NotIn", ("a",)),))).obj(),
              {"d"}),
    PlaceCase("affinity on names",
              make_job("j").replicas(2).gpus(8).tolerate(TEAM_A).affinity(
                  Term(names_in=(frozenset({"c"}),)), Term(names_in=(frozenset({"d"}),))).obj(),
              {"c", "d"}),
]


@pytest.mark.parametrize("case", PLACE_CASES, ids=lambda c: c.name)
def test_gang_placement_honours_node_constraints(case: PlaceCase) -> None:
    result = place_gang(make_snapshot(fleet(), levels=()), case.job)
    if case.want_nodes is None:
        assert not result.ok
        assert case.want_reason in result.reason
    else:
        assert result.placement is not None, result.reason
        assert set(result.placement.nodes) == case.want_nodes


def test_prefer_no_schedule_taint_does_not_keep_a_gang_off() -> None:
    nodes = [make_node("a").gpus(8).taint("busy", effect="PreferNoSchedule").obj()]
    assert place_gang(make_snapshot(nodes, levels=()), make_job("j").gpus(8).obj()).ok


def test_shares_honour_taints_and_selectors() -> None:
    """Fractional gangs are placed by the share placer, which must leave refused nodes out."""
    policy = FragmentationAwareShares()
    job = make_job("s").replicas(4).milli(500).node_selector({"zone": "a"}).obj()
    nodes = [make_node("a").gpus(1).label("zone", "a").obj(),
             make_node("c").gpus(8).label("zone", "a").taint("dedicated", "team-a").obj(),
             make_node("d").gpus(8).label("zone", "b").obj()]
    result = place_gang(make_snapshot(nodes, levels=()), job, slice_policy=policy)
    assert not result.ok
    assert "1 untolerated taint" in result.reason and "1 not matching nodeSelector/affinity" in result.reason
    tolerant = make_job("s").replicas(4).milli(500).node_selector({"zone": "a"}).tolerate(TEAM_A).obj()
    result = place_gang(make_snapshot(nodes, levels=()), tolerant, slice_policy=policy)
    assert result.placement is not None, result.reason
    assert set(result.placement.nodes) <= {"a", "c"}


def test_refusal_names_taint_before_labels() -> None:
    node = make_node("c").gpus(8).label("zone", "a").taint("dedicated", "team-a").obj()
    assert make_job("j").obj().refusal(node) == "taint"
    assert make_job("j").tolerate(TEAM_A).node_selector({"zone": "b"}).obj().refusal(node) == "affinity"
    assert make_job("j").tolerate(TEAM_A).node_selector({"zone": "a"}).obj().refusal(node) is None


def test_a_cycle_does_not_mistake_a_constrained_gang_for_the_same_shape_without_constraints() -> None:
    """The cycle remembers shapes that did not fit; node constraints are part of the shape."""
    snap = make_snapshot(fleet(), levels=())
    queue = make_queue("q").quota("p", 100).obj()
    pending = [
        make_job("zone-c").gpus(8).node_selector({"zone": "c"}).priority(10).obj(),
        make_job("untolerated").gpus(8).affinity(Term(names_in=(frozenset({"c"}),))).priority(9).obj(),
        make_job("tolerant").gpus(8).affinity(Term(names_in=(frozenset({"c"}),))).tolerate(TEAM_A)
        .priority(8).obj(),
        make_job("anywhere").gpus(8).priority(7).obj(),
    ]
    result = schedule(snap, [queue], pending, [], 0.0)
    assert {a.owner for a in result.admitted} == {"ns/tolerant", "ns/anywhere"}
    assert {w.owner for w in result.waiting} == {"ns/zone-c", "ns/untolerated"}


def test_preemption_frees_only_nodes_the_preemptor_can_use() -> None:
    nodes = [make_node("a").gpus(8).label("zone", "a").obj(), make_node("b").gpus(8).label("zone", "b").obj()]
    snap = make_snapshot(nodes, levels=())
    low_a, low_b = make_job("low-a").gpus(8).obj(), make_job("low-b").gpus(8).obj()
    for job, node in ((low_a, "a"), (low_b, "b")):
        assert place_gang(snap, replace(job, excluded_nodes=frozenset({"a", "b"} - {node}))).ok
    queue = make_queue("q").quota("p", 100).obj()
    high = make_job("high").gpus(8).node_selector({"zone": "b"}).priority(100).obj()
    result = schedule(snap, [queue], [high], [low_a, low_b], 0.0)
    assert [p.owner for p in result.preempted] == ["ns/low-b"]
