"""Slice packing: constraints every policy honours, each baseline's own choice, invariants."""

from __future__ import annotations

import pickle
import random
from dataclasses import dataclass, field

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from wanka.core.fragmentation import (
    NodeState,
    Shape,
    StateCache,
    Workload,
    node_state,
    node_tags,
    snapshot_states,
)
from wanka.core.slicing import (
    POLICIES,
    PolicyContext,
    SliceDecision,
    SliceRejection,
    SliceRequest,
    evaluate,
    get_policy,
    place,
)
from wanka.core.snapshot import WHOLE, Allocation, Device, DeviceShare, Node, Snapshot


# --- builders ------------------------------------------------------------------------------
class NodeBuilder:
    """Fluent test node: make_node("a").gpus(2, "T4").cpu(8000).used(0, 500).obj()."""

    def __init__(self, name: str) -> None:
        self._node = Node(name=name, cpu_milli=64_000, memory_mib=256_000)

    def gpus(self, n: int, model: str = "T4", memory_mib: int = 0) -> NodeBuilder:
        self._node.devices = [Device(i, model, memory_mib) for i in range(n)]
        return self

    def cpu(self, milli: int) -> NodeBuilder:
        self._node.cpu_milli = milli
        return self

    def used(self, index: int, milli: int, shares: int = 1, memory_mib: int = 0) -> NodeBuilder:
        dev = self._node.devices[index]
        dev.used_milli, dev.shares, dev.used_memory_mib = milli, shares, memory_mib
        return self

    def sick(self, index: int) -> NodeBuilder:
        self._node.devices[index].healthy = False
        return self

    def cordoned(self) -> NodeBuilder:
        self._node.schedulable = False
        return self

    def obj(self) -> Node:
        return self._node


def make_node(name: str) -> NodeBuilder:
    return NodeBuilder(name)


def share(milli: int, **kw: int) -> SliceRequest:
    return SliceRequest.fraction(milli, **kw)  # type: ignore[arg-type]


ALL = sorted(POLICIES)


# --- constraints every policy honours ------------------------------------------------------
@dataclass
class Case:
    name: str
    nodes: list[Node]
    req: SliceRequest
    max_shares: int | None = None
    want_node: str | None = None  # None: want a rejection
    want_devices: tuple[int, ...] | None = None
    want_reason: str = ""
    policies: list[str] = field(default_factory=lambda: ALL)


CONSTRAINT_CASES = [
    Case(
        name="share never split across two half-free devices",
        nodes=[make_node("a").gpus(2).used(0, 500).used(1, 500).obj()],
        req=share(600),
        want_reason="no device with enough free share",
    ),
    Case(
        name="share lands on the only device with room",
        nodes=[make_node("a").gpus(2).used(0, 700).used(1, 300).obj()],
        req=share(600),
        want_node="a",
        want_devices=(1,),
    ),
    Case(
        name="device at the share limit counts as full",
        nodes=[make_node("a").gpus(1).used(0, 200, shares=2).obj()],
        req=share(100),
        max_shares=2,
        want_reason="share limit of 2",
    ),
    Case(
        name="below the share limit the device is used",
        nodes=[make_node("a").gpus(1).used(0, 200, shares=1).obj()],
        req=share(100),
        max_shares=2,
        want_node="a",
        want_devices=(0,),
    ),
    Case(
        name="GPU memory bound skips the device without memory",
        nodes=[make_node("a").gpus(2, memory_mib=16_000).used(0, 100, memory_mib=12_000).obj()],
        req=share(200, gpu_memory_mib=8_000),
        want_node="a",
        want_devices=(1,),
    ),
    Case(
        name="GPU memory bound nobody meets",
        nodes=[make_node("a").gpus(1, memory_mib=16_000).used(0, 100, memory_mib=12_000).obj()],
        req=share(200, gpu_memory_mib=8_000),
        want_reason="no device with enough free GPU memory",
    ),
    Case(
        name="model filter",
        nodes=[make_node("a").gpus(1, "T4").obj(), make_node("b").gpus(1, "A100").obj()],
        req=SliceRequest.fraction(500, models=frozenset({"A100"})),
        want_node="b",
        want_devices=(0,),
    ),
    Case(
        name="model filter nobody meets",
        nodes=[make_node("a").gpus(1, "T4").obj()],
        req=SliceRequest.fraction(500, models=frozenset({"H100"})),
        want_reason="1 wrong GPU model",
    ),
    Case(
        name="unhealthy device skipped",
        nodes=[make_node("a").gpus(2).sick(0).obj()],
        req=share(500),
        want_node="a",
        want_devices=(1,),
    ),
    Case(
        name="unschedulable node skipped",
        nodes=[make_node("a").gpus(1).cordoned().obj()],
        req=share(500),
        want_reason="1 node unschedulable or unhealthy",
    ),
    Case(
        name="whole devices all on one node",
        nodes=[make_node("a").gpus(2).obj(), make_node("b").gpus(4).used(0, 100).obj()],
        req=SliceRequest.whole(3),
        want_node="b",
        want_devices=(1, 2, 3),
    ),
    Case(
        name="whole devices never taken from a shared device",
        nodes=[make_node("a").gpus(2).used(0, 100).obj()],
        req=SliceRequest.whole(2),
        want_reason="not enough whole free devices",
    ),
    Case(
        name="CPU must fit",
        nodes=[make_node("a").gpus(1).cpu(1000).obj()],
        req=share(100, cpu_milli=2000),
        want_reason="not enough CPU",
    ),
    Case(
        name="CPU-only task takes no device",
        nodes=[make_node("a").gpus(1).obj()],
        req=SliceRequest(cpu_milli=1000, memory_mib=100),
        want_node="a",
        want_devices=(),
    ),
    Case(
        name="a fraction over two devices is malformed",
        nodes=[make_node("a").gpus(2).obj()],
        req=SliceRequest(gpu_milli=500, gpus=2),
        want_reason="invalid request",
    ),
]


@pytest.mark.parametrize("policy", ALL)
@pytest.mark.parametrize("case", CONSTRAINT_CASES, ids=lambda c: c.name)
def test_constraints(case: Case, policy: str) -> None:
    snap = Snapshot(nodes=[_clone(n) for n in case.nodes])
    got = place(
        snap, case.req, get_policy(policy), PolicyContext(), max_shares_per_device=case.max_shares
    )
    if case.want_node is None:
        assert isinstance(got, SliceRejection), got
        assert case.want_reason in got.reason
        return
    assert isinstance(got, SliceDecision), got
    assert got.node == case.want_node
    if case.want_devices is not None:
        assert tuple(s.index for s in got.devices) == case.want_devices
    assert all(s.milli == case.req.gpu_milli for s in got.devices)
    snap.apply(got.allocation("t", "0", case.req))  # raises if anything is over-allocated


def _clone(node: Node) -> Node:
    return Node(
        name=node.name,
        cpu_milli=node.cpu_milli,
        memory_mib=node.memory_mib,
        devices=[
            Device(
                d.index, d.model, d.memory_mib, d.healthy, d.used_milli, d.used_memory_mib, d.shares
            )
            for d in node.devices
        ],
        schedulable=node.schedulable,
    )


# --- each baseline's own preference --------------------------------------------------------
@dataclass
class PreferCase:
    name: str
    policy: str
    nodes: list[Node]
    req: SliceRequest
    want_node: str
    want_devices: tuple[int, ...]
    allocations: list[Allocation] = field(default_factory=list)


PREFER_CASES = [
    PreferCase(
        name="best-fit takes the node with the least left over",
        policy="bestfit",
        nodes=[
            make_node("a").gpus(4).obj(),
            make_node("b").gpus(4).used(0, 600).used(1, 1000).obj(),
        ],
        req=share(300),
        want_node="b",
        want_devices=(0,),
    ),
    PreferCase(
        name="packing prefers an already shared device over an idle node",
        policy="packing",
        nodes=[make_node("a").gpus(2).obj(), make_node("b").gpus(2).used(1, 200).obj()],
        req=share(300),
        want_node="b",
        want_devices=(1,),
    ),
    PreferCase(
        name="clustering prefers a node with the same kind of work",
        policy="clustering",
        nodes=[make_node("a").gpus(2).obj(), make_node("b").gpus(2).obj()],
        allocations=[
            Allocation("x", "0", "a", devices=(DeviceShare(0, WHOLE),)),
            Allocation("y", "0", "b", devices=(DeviceShare(0, 500),)),
        ],
        req=share(200),
        want_node="b",
        want_devices=(0,),
    ),
    PreferCase(
        name="dot product prefers the node whose free vector is least aligned",
        policy="dotprod",
        nodes=[make_node("a").gpus(8).cpu(8000).obj(), make_node("b").gpus(1).cpu(8000).obj()],
        req=SliceRequest.whole(1, cpu_milli=1000),
        want_node="b",
        want_devices=(0,),
    ),
]


@pytest.mark.parametrize("case", PREFER_CASES, ids=lambda c: c.name)
def test_policy_preference(case: PreferCase) -> None:
    snap = Snapshot(nodes=[_clone(n) for n in case.nodes])
    for alloc in case.allocations:
        snap.apply(alloc)
    got = place(snap, case.req, get_policy(case.policy))
    assert isinstance(got, SliceDecision), got
    assert (got.node, tuple(s.index for s in got.devices)) == (case.want_node, case.want_devices)


def test_fgd_and_wanka_avoid_breaking_a_whole_node_for_a_share() -> None:
    # Typical work: half the tasks want a whole 4-GPU node. A share should not break one.
    workload = Workload(((Shape(0, WHOLE, 4), 0.5), (Shape(0, 500, 1), 0.5)))
    nodes = [make_node("a").gpus(4).obj(), make_node("b").gpus(4).used(0, 500).obj()]
    for name in ("fgd", "wanka"):
        got = place(
            Snapshot(nodes=[_clone(n) for n in nodes]),
            share(500),
            get_policy(name),
            PolicyContext(workload),
        )
        assert isinstance(got, SliceDecision)
        assert (got.node, got.devices[0].index) == ("b", 0), name


def test_ties_follow_the_given_order() -> None:
    nodes = [make_node(n).gpus(1).obj() for n in ("a", "b", "c")]
    got = place(
        Snapshot(nodes=nodes), share(100), get_policy("packing"), order={"c": 0, "a": 1, "b": 2}
    )
    assert isinstance(got, SliceDecision) and got.node == "c"


def test_excluded_nodes_are_left_out() -> None:
    nodes = [make_node(n).gpus(1).obj() for n in ("a", "b")]
    snap, pol, ctx = Snapshot(nodes=nodes), get_policy("wanka"), PolicyContext()
    got = place(snap, share(100), pol, ctx, exclude={"a"})
    assert isinstance(got, SliceDecision) and got.node == "b"
    assert isinstance(place(snap, share(100), pol, ctx), SliceDecision)
    none = place(snap, share(100), pol, ctx, exclude={"a", "b"})
    assert isinstance(none, SliceRejection) and none.counts == {
        "node unschedulable or unhealthy": 2
    }


def test_unknown_policy_lists_the_known_ones() -> None:
    with pytest.raises(ValueError, match="known: wanka"):
        get_policy("tetris")


def test_rejection_reason_names_the_request_and_counts_nodes() -> None:
    nodes = [make_node("a").gpus(1, "A10").obj(), make_node("b").gpus(1, "T4").cpu(100).obj()]
    req = SliceRequest.fraction(300, cpu_milli=500, models=frozenset({"T4"}))
    got = place(Snapshot(nodes=nodes), req, get_policy("wanka"))
    assert isinstance(got, SliceRejection)
    assert got.reason.startswith("0/2 nodes fit 300m of one GPU of model T4, 500m CPU")
    assert got.counts == {"not enough CPU": 1, "wrong GPU model": 1}


# --- invariants ------------------------------------------------------------------------------
requests = st.one_of(
    st.builds(
        lambda m, c: SliceRequest.fraction(m, cpu_milli=c),
        st.integers(1, 999),
        st.integers(0, 8000),
    ),
    st.builds(
        lambda n, c: SliceRequest.whole(n, cpu_milli=c), st.integers(1, 4), st.integers(0, 8000)
    ),
    st.builds(lambda c: SliceRequest(cpu_milli=c), st.integers(0, 8000)),
)


def _fleet() -> list[Node]:
    return [
        make_node("a").gpus(4, "T4").cpu(32_000).obj(),
        make_node("b").gpus(2, "A10").cpu(16_000).sick(1).obj(),
        make_node("c").gpus(8, "A10").cpu(64_000).obj(),
        make_node("d").gpus(1, "T4").cpu(8_000).cordoned().obj(),
    ]


@settings(max_examples=25, deadline=None)
@given(
    policy=st.sampled_from(ALL),
    reqs=st.lists(requests, min_size=1, max_size=40),
    max_shares=st.one_of(st.none(), st.integers(1, 4)),
)
def test_no_device_ever_over_allocated(
    policy: str, reqs: list[SliceRequest], max_shares: int | None
) -> None:
    snap = Snapshot(nodes=_fleet())
    pol = get_policy(policy)
    ctx = PolicyContext(Workload.from_shapes([r.shape for r in reqs]), rng=random.Random(1))
    for k, req in enumerate(reqs):
        got = place(snap, req, pol, ctx, max_shares_per_device=max_shares)
        if isinstance(got, SliceDecision):
            assert got.node not in ("d",), "unschedulable node used"
            snap.apply(got.allocation("t", str(k), req))  # raises on over-allocation
    for node in snap.nodes.values():
        assert node.used_cpu_milli <= node.cpu_milli
        for dev in node.devices:
            assert 0 <= dev.used_milli <= WHOLE
            if max_shares is not None:
                assert dev.shares <= max_shares
            if not dev.healthy:
                assert dev.used_milli == 0


@settings(max_examples=15, deadline=None)
@given(
    policy=st.sampled_from(ALL),
    reqs=st.lists(requests, min_size=1, max_size=25),
    seed=st.integers(0, 99),
)
def test_same_seed_same_decisions(policy: str, reqs: list[SliceRequest], seed: int) -> None:
    def run() -> list[tuple[str, tuple[int, ...]] | str]:
        snap = Snapshot(nodes=_fleet())
        ctx = PolicyContext(Workload.from_shapes([r.shape for r in reqs]), rng=random.Random(seed))
        out: list[tuple[str, tuple[int, ...]] | str] = []
        for k, req in enumerate(reqs):
            got = place(snap, req, get_policy(policy), ctx)
            if isinstance(got, SliceDecision):
                snap.apply(got.allocation("t", str(k), req))
                out.append((got.node, tuple(s.index for s in got.devices)))
            else:
                out.append(got.reason)
        return out

    assert run() == run()


def test_state_hides_capacity_nobody_can_use() -> None:
    node = make_node("a").gpus(3).sick(0).used(1, 300, shares=2).obj()
    assert node_state(node, max_shares_per_device=2).free == (0, 0, WHOLE)
    assert node_state(node).free == (0, 700, WHOLE)
    assert isinstance(node_state(node), NodeState)


# --- the fast path decides exactly like looking at every node ------------------------------
def _oracle(
    snap: Snapshot,
    req: SliceRequest,
    policy: str,
    ctx: PolicyContext,
    order: dict[str, int] | None,
    max_shares: int | None,
) -> tuple[str, tuple[int, ...]] | None:
    """Every schedulable node scored on its own with `evaluate`; highest score, then rank."""
    tags = node_tags(snap)
    best: tuple[float, int, str, tuple[int, ...]] | None = None
    for name, node in snap.nodes.items():
        if not node.schedulable:
            continue
        state = node_state(node, max_shares, tags.get(name, frozenset()))
        got = evaluate(state, req, get_policy(policy), ctx)
        if got is None:
            continue
        rank = order.get(name, len(order)) if order is not None else 0
        key = (-got[0], rank, name)
        if best is None or key < (-best[0], best[1], best[2]):
            best = (got[0], rank, name, got[1])
    return None if best is None else (best[2], best[3])


def _random_fleet(rng: random.Random) -> list[Node]:
    """Many nodes of a few kinds (so identical states are common), some already in use."""
    kinds = [("T4", 2, 32_000), ("A10", 4, 64_000), ("V100", 8, 96_000), ("A100", 8, 128_000)]
    nodes = []
    for k in range(40):
        model, gpus, cpu = rng.choice(kinds)
        b = make_node(f"n{k:02d}").gpus(gpus, model).cpu(cpu)
        if rng.random() < 0.3:
            b.used(rng.randrange(gpus), rng.choice([250, 500, 1000]))
        if rng.random() < 0.05:
            b.sick(0)
        if rng.random() < 0.05:
            b.cordoned()
        nodes.append(b.obj())
    return nodes


def _random_request(rng: random.Random) -> SliceRequest:
    cpu = rng.choice([0, 2000, 4000, 8000, 16_000])
    models = rng.choice([frozenset(), frozenset({"V100"}), frozenset({"A10", "A100"})])
    kind = rng.random()
    if kind < 0.55:
        return SliceRequest.fraction(
            rng.choice([100, 250, 300, 500, 750, 900]), cpu_milli=cpu, models=models
        )
    if kind < 0.9:
        return SliceRequest.whole(rng.choice([1, 1, 2, 4, 8]), cpu_milli=cpu, models=models)
    return SliceRequest(cpu_milli=cpu)


@pytest.mark.parametrize("policy", ["wanka", "fgd", "bestfit", "dotprod", "packing", "clustering"])
@pytest.mark.parametrize("seed", [1, 2])
def test_grouped_place_decides_like_every_node_scored_alone(policy: str, seed: int) -> None:
    # A seeded random cycle: place, apply, sometimes release. The grouped, cached path (with
    # the snapshot's state cache or with states passed in) must pick what the oracle picks.
    rng = random.Random(seed)
    snap = Snapshot(nodes=_random_fleet(rng))
    shapes = [_random_request(rng).shape for _ in range(30)]
    workload = Workload.from_shapes(shapes)
    names = sorted(snap.nodes)
    rng.shuffle(names)
    order = {n: r for r, n in enumerate(names[:-3])} if seed == 1 else None  # some unranked
    max_shares = 3 if seed == 2 else None
    pol, ctx, oracle_ctx = get_policy(policy), PolicyContext(workload), PolicyContext(workload)
    placed: list[str] = []
    decisions = 0
    for k in range(120):
        req = _random_request(rng)
        want = _oracle(snap, req, policy, oracle_ctx, order, max_shares)
        states = snapshot_states(snap, max_shares) if k % 3 == 0 else None
        got = place(
            snap, req, pol, ctx, order=order, states=states, max_shares_per_device=max_shares
        )
        if want is None:
            assert isinstance(got, SliceRejection), k
            continue
        assert isinstance(got, SliceDecision), (k, got)
        assert (got.node, tuple(d.index for d in got.devices)) == want, k
        snap.apply(got.allocation("t", str(k), req))
        placed.append(str(k))
        decisions += 1
        if rng.random() < 0.15:  # a departure: the state cache must notice it
            snap.release("t", placed.pop(rng.randrange(len(placed))))
    assert decisions > 30


def test_state_cache_follows_apply_and_release() -> None:
    snap = Snapshot(nodes=_fleet())
    cache = StateCache()
    assert cache.states_of(snap) == snapshot_states(snap)
    alloc = Allocation("o", "0", "c", cpu_milli=1000, devices=(DeviceShare(2, 300),))
    snap.apply(alloc)
    after_apply = cache.states_of(snap)
    assert after_apply == snapshot_states(snap)
    assert after_apply["c"].free[2] == 700 and after_apply["c"].tags == {"share"}
    assert cache.states_of(snap) is after_apply  # unchanged snapshot: no rebuild
    snap.release("o")
    assert cache.states_of(snap) == snapshot_states(snap)
    assert cache.states_of(snap, max_shares_per_device=1) == snapshot_states(snap, 1)


def test_node_state_hash_survives_pickling() -> None:
    state = node_state(make_node("a").gpus(2, "A10").used(0, 300).obj(), None, frozenset({"x"}))
    copy = pickle.loads(pickle.dumps(state))
    assert copy == state and hash(copy) == hash(state) and {state: 1}[copy] == 1
