"""A node belongs to at most one pool: the rule, the snapshots and the pools' status."""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

import pytest

from tests.objects import make_gpupool, make_node
from tests.unit.test_pool_ledger import Writer
from wanka.api.gpupool import GPUPoolSpec
from wanka.cluster.cache import FleetCache
from wanka.cluster.pools import PoolReconciler
from wanka.cluster.translate import build_pool_snapshot, pool_membership


def pool_spec(**match_labels: str) -> GPUPoolSpec:
    return GPUPoolSpec.model_validate({"nodeSelector": {"matchLabels": match_labels}})


def labelled(name: str, **labels: str) -> dict[str, Any]:
    return make_node(name).label(**labels).obj()


@dataclass
class MemberCase:
    name: str
    pools: dict[str, GPUPoolSpec]
    want_owner: dict[str, str]
    want_claims: dict[str, tuple[str, ...]]


NODES = [labelled("n1", team="a"), labelled("n2", team="a", spot="y"), labelled("n3", team="b", spot="y"),
         labelled("n4")]
MEMBER_CASES = [
    MemberCase("one pool", {"a": pool_spec(team="a")}, {"n1": "a", "n2": "a"}, {}),
    MemberCase("disjoint pools", {"a": pool_spec(team="a"), "b": pool_spec(team="b")},
               {"n1": "a", "n2": "a", "n3": "b"}, {}),
    MemberCase("overlap: the shared node is in neither", {"a": pool_spec(team="a"), "s": pool_spec(spot="y")},
               {"n1": "a", "n3": "s"}, {"n2": ("a", "s")}),
    MemberCase("three pools, one selecting every node: it keeps only the node no other pool selects",
               {"a": pool_spec(team="a"), "s": pool_spec(spot="y"), "all": pool_spec()},
               {"n4": "all"}, {"n1": ("a", "all"), "n2": ("a", "all", "s"), "n3": ("all", "s")}),
]


@pytest.mark.parametrize("case", MEMBER_CASES, ids=lambda c: c.name)
def test_a_node_belongs_to_at_most_one_pool(case: MemberCase) -> None:
    got = pool_membership(case.pools, NODES)
    assert dict(got.owner) == case.want_owner
    assert dict(got.claims) == case.want_claims
    # every node is counted in at most one pool's snapshot
    seen: list[str] = []
    for name, spec in case.pools.items():
        seen += build_pool_snapshot(spec, NODES, [], members=got.nodes_of(name)).snapshot.nodes
    assert sorted(seen) == sorted(case.want_owner)


def test_overlaps_name_the_nodes_and_the_other_pools() -> None:
    got = pool_membership({"a": pool_spec(team="a"), "s": pool_spec(spot="y"), "b": pool_spec(team="b")}, NODES)
    assert got.overlaps("a") == (["n2"], ["s"])
    assert got.overlaps("s") == (["n2", "n3"], ["a", "b"])
    assert got.overlaps("nobody") == ([], [])


class Events:
    def __init__(self) -> None:
        self.seen: list[tuple[str, str, str, str]] = []

    def record(self, obj: Any, type_: Any, reason: str, message: str) -> None:
        self.seen.append((obj["metadata"]["name"], type_, reason, message))


def test_overlapping_pools_are_not_ready_and_say_why() -> None:
    cache = FleetCache()
    shared = [labelled(f"s{i}", team="a", spot="y") for i in range(7)]
    cache.replace("nodes", [labelled("a1", team="a"), labelled("b1", spot="y"), *shared])
    invalid = make_gpupool("bad").spec_field("nodeSelector", {"matchLabels": "nope"}).obj()  # claims nothing
    cache.replace("gpupools", [make_gpupool("a").select(team="a").obj(), make_gpupool("spot").select(spot="y").obj(),
                               invalid])
    writer, events = Writer(), Events()
    loop = PoolReconciler(cache, writer, events)
    loop.reconcile_all()
    for name, other in (("a", "spot"), ("spot", "a")):
        ready = next(c for c in writer.status[name]["conditions"] if c["type"] == "Ready")
        assert (ready["status"], ready["reason"]) == ("False", "OverlappingPools")
        assert ready["message"].startswith("7 node(s) (s0, s1, s2, s3, s4 and 2 more) are also selected by "
                                           f"GPUPool {other}")
        assert writer.status[name]["nodes"]["total"] == 1  # only the node it alone selects
        assert writer.status[name]["gpus"]["total"] == 8
        assert (name, "Warning", "OverlappingPools", ready["message"]) in events.seen
    # the warning is not repeated while nothing changes
    for name in ("a", "spot"):
        pool = cache.store("gpupools").get("", name)
        assert pool is not None
        cache.store("gpupools").upsert({**copy.deepcopy(pool), "status": writer.status[name]})
    before = len([e for e in events.seen if e[2] == "OverlappingPools"])
    loop.reconcile_all()
    assert len([e for e in events.seen if e[2] == "OverlappingPools"]) == before
    # the overlap resolved: both pools are Ready and own their nodes again
    cache.replace("gpupools", [make_gpupool("a").select(team="a").obj(), make_gpupool("spot").select(spot="n").obj()])
    loop.reconcile_all()
    ready = next(c for c in writer.status["a"]["conditions"] if c["type"] == "Ready")
    assert (ready["status"], ready["reason"]) == ("True", "NodesSelected")
    assert writer.status["a"]["nodes"]["total"] == 8
