"""Table-driven tests of the pure health state machine and the pool guard, with a fake clock."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from wanka.core.health import (
    AGENT_SILENT,
    GPU_HEALTH_ANNOTATION,
    HEALTH_ANNOTATION,
    QUARANTINE_CLEAR_ANNOTATION,
    TAINT_KEY,
    ConditionRule,
    DeviceFault,
    DeviceHealth,
    GuardInput,
    HealthDecision,
    HealthPolicy,
    HealthRecord,
    NodeCondition,
    NodeObservation,
    Taint,
    current_taint,
    decode_device_health,
    encode_device_health,
    format_time,
    guard_pool,
    observe_node,
    parse_time,
    read_record,
    step,
    summarize,
)

T0 = 1_800_000_000.0  # an arbitrary epoch second; every test time is relative to it
POLICY = HealthPolicy(
    fatal_reasons=frozenset({"XID79", "XID48"}),
    recovery_stable_seconds=300,
    flap_limit=3,
    flap_window_seconds=3600,
    max_unhealthy_percent=20,
    agent_silent_seconds=120,
)


class ObsBuilder:
    """`node().gpu_false("XID79").fault(3, "XID79").obs()` builds a NodeObservation."""

    def __init__(self) -> None:
        self._conditions: list[NodeCondition] = [NodeCondition("Ready", "True")]
        self._faults: list[DeviceFault] = []
        self._clear: str | None = None
        self._heartbeat: float | None = None

    def ready(self, status: str) -> ObsBuilder:
        self._conditions = [c for c in self._conditions if c.type != "Ready"]
        self._conditions.append(NodeCondition("Ready", status, "KubeletNotReady", "PLEG"))
        return self

    def condition(self, type_: str, status: str, reason: str = "") -> ObsBuilder:
        self._conditions.append(NodeCondition(type_, status, reason, f"{type_} says {status}"))
        return self

    def gpu_false(self, reason: str) -> ObsBuilder:
        return self.condition("GPUHealthy", "False", reason)

    def fault(self, index: int, reason: str) -> ObsBuilder:
        self._faults.append(DeviceFault(index, reason, "seen by the agent"))
        return self

    def clear(self, value: str) -> ObsBuilder:
        self._clear = value
        return self

    def heartbeat(self, at: float) -> ObsBuilder:
        self._heartbeat = at
        return self

    def obs(self) -> NodeObservation:
        return NodeObservation(
            conditions=tuple(self._conditions),
            device_faults=tuple(self._faults),
            quarantine_clear=self._clear,
            agent_heartbeat=self._heartbeat,
        )


def node() -> ObsBuilder:
    return ObsBuilder()


HEALTHY = node().obs()
SICK = node().gpu_false("NVMLInitFailed").obs()


def flapping(
    times: Sequence[float], sick: NodeObservation = SICK
) -> list[tuple[float, NodeObservation]]:
    """Sick at each time and healthy one second later: one sick transition per time."""
    out: list[tuple[float, NodeObservation]] = []
    for t in times:
        out += [(t, sick), (t + 1, HEALTHY)]
    return out


def run(
    steps: list[tuple[float, NodeObservation]],
    policy: HealthPolicy = POLICY,
    record: HealthRecord | None = None,
) -> tuple[HealthRecord | None, HealthDecision]:
    """Apply the steps in order; return the record before the last step and its decision."""
    decision: HealthDecision | None = None
    before = record
    for when, obs in steps:
        before = record
        decision = step(record, obs, policy, T0 + when)
        record = decision.record
    assert decision is not None
    return before, decision


@dataclass
class Case:
    name: str
    steps: list[tuple[float, NodeObservation]]
    want_state: str
    want_taint: Taint | None
    want_events: list[str] = field(default_factory=list)  # reasons of the last step's events
    want_excluded: frozenset[int] = frozenset()
    policy: HealthPolicy = POLICY


QUARANTINE_TIMES = [0, 100, 200, 300]  # four sick transitions within the hour; flapLimit is 3

CASES = [
    Case("healthy stays healthy", [(0, HEALTHY)], "Healthy", None),
    Case(
        "sick on a configured condition: NoSchedule at once",
        [(0, HEALTHY), (10, SICK)],
        "Sick",
        Taint("NVMLInitFailed", "NoSchedule"),
        ["NodeSick"],
    ),
    Case(
        "a condition reason that is not a token becomes TypeStatus",
        [(0, node().condition("DiskPressure2", "True", "bad reason!").obs())],
        "Sick",
        Taint("DiskPressure2True", "NoSchedule"),
        ["NodeSick"],
        policy=replace(POLICY, unhealthy_conditions=(ConditionRule("DiskPressure2", "True"),)),
    ),
    Case(
        "a condition not in the policy is ignored",
        [(0, node().condition("MemoryPressure", "True", "Low").obs())],
        "Healthy",
        None,
    ),
    Case(
        "Ready=False is always sick, even with no configured conditions",
        [(0, node().ready("False").obs())],
        "Sick",
        Taint("NodeNotReady", "NoSchedule"),
        ["NodeSick"],
        policy=replace(POLICY, unhealthy_conditions=()),
    ),
    Case(
        "Ready=Unknown is sick",
        [(0, node().ready("Unknown").obs())],
        "Sick",
        Taint("NodeNotReady", "NoSchedule"),
        ["NodeSick"],
    ),
    Case(
        "a fatal device fault taints NoExecute and excludes the device",
        [(0, node().fault(3, "XID79").obs())],
        "Sick",
        Taint("XID79", "NoExecute"),
        ["DeviceSick", "NodeSick"],
        frozenset({3}),
    ),
    Case(
        "a fatal condition reason taints NoExecute",
        [(0, node().gpu_false("XID48").obs())],
        "Sick",
        Taint("XID48", "NoExecute"),
        ["NodeSick"],
    ),
    Case(
        "the fatal signal wins the taint value over an earlier non-fatal one",
        [(0, node().gpu_false("NVMLInitFailed").fault(5, "XID79").obs())],
        "Sick",
        Taint("XID79", "NoExecute"),
        ["DeviceSick", "NodeSick"],
        frozenset({5}),
    ),
    Case(
        "a non-fatal device fault excludes only that device",
        [(0, node().fault(3, "EccUncorrectable").obs())],
        "Healthy",
        None,
        ["DeviceSick"],
        frozenset({3}),
    ),
    Case(
        "a sick node turning fatal re-announces with NoExecute",
        [(0, SICK), (10, node().gpu_false("XID79").obs())],
        "Sick",
        Taint("XID79", "NoExecute"),
        ["NodeSick"],
    ),
    Case(
        "cleared: Recovering keeps the taint",
        [(0, SICK), (10, HEALTHY)],
        "Recovering",
        Taint("NVMLInitFailed", "NoSchedule"),
        ["NodeRecovering"],
    ),
    Case(
        "cleared after a fatal fault: Recovering keeps only NoSchedule",
        [(0, node().gpu_false("XID79").obs()), (10, HEALTHY)],
        "Recovering",
        Taint("XID79", "NoSchedule"),
        ["NodeRecovering"],
    ),
    Case(
        "Recovering one second short of the stable window keeps the taint",
        [(0, SICK), (10, HEALTHY), (309, HEALTHY)],
        "Recovering",
        Taint("NVMLInitFailed", "NoSchedule"),
    ),
    Case(
        "stable window passed: Healthy and no taint",
        [(0, SICK), (10, HEALTHY), (310, HEALTHY)],
        "Healthy",
        None,
        ["NodeRecovered"],
    ),
    Case(
        "a zero stable window recovers in one step",
        [(0, SICK), (10, HEALTHY)],
        "Healthy",
        None,
        ["NodeRecovering", "NodeRecovered"],
        policy=replace(POLICY, recovery_stable_seconds=0),
    ),
    Case(
        "sick again while Recovering",
        [(0, SICK), (10, HEALTHY), (20, SICK)],
        "Sick",
        Taint("NVMLInitFailed", "NoSchedule"),
        ["NodeSick"],
    ),
    Case(
        "flapping exactly flapLimit times is still only Sick",
        [*flapping([0, 100]), (200, SICK)],
        "Sick",
        Taint("NVMLInitFailed", "NoSchedule"),
        ["NodeSick"],
    ),
    Case(
        "flapping past flapLimit within the window quarantines",
        [*flapping([0, 100, 200]), (300, SICK)],
        "Quarantined",
        Taint("Quarantined", "NoSchedule"),
        ["NodeQuarantined"],
    ),
    Case(
        "flaps spread wider than the window do not quarantine",
        [*flapping([0, 2000, 4000]), (6000, SICK)],
        "Sick",
        Taint("NVMLInitFailed", "NoSchedule"),
        ["NodeSick"],
    ),
    Case(
        "quarantined on a fatal fault evicts",
        [*flapping([0, 100, 200]), (300, node().gpu_false("XID79").obs())],
        "Quarantined",
        Taint("Quarantined", "NoExecute"),
        ["NodeQuarantined"],
    ),
    Case(
        "quarantine outlasts any stable window without the annotation",
        [*flapping(QUARANTINE_TIMES), (90_000, HEALTHY)],
        "Quarantined",
        Taint("Quarantined", "NoSchedule"),
    ),
    Case(
        "quarantine cleared by a newer quarantine-clear time",
        [*flapping(QUARANTINE_TIMES), (900, node().clear(format_time(T0 + 800)).obs())],
        "Healthy",
        None,
        ["QuarantineCleared"],
    ),
    Case(
        "quarantine-clear older than the quarantine is ignored",
        [*flapping(QUARANTINE_TIMES), (900, node().clear(format_time(T0 + 10)).obs())],
        "Quarantined",
        Taint("Quarantined", "NoSchedule"),
        ["QuarantineClearIgnored"],
    ),
    Case(
        "quarantine-clear that is not a time is reported",
        [*flapping(QUARANTINE_TIMES), (900, node().clear("yes please").obs())],
        "Quarantined",
        Taint("Quarantined", "NoSchedule"),
        ["QuarantineClearInvalid"],
    ),
    Case(
        "a quarantine-clear set before the quarantine cannot release it",
        [
            (-10, node().clear(format_time(T0 + 100_000)).obs()),
            *[
                (t, replace(o, quarantine_clear=format_time(T0 + 100_000)))
                for t, o in flapping(QUARANTINE_TIMES)
            ],
        ],
        "Quarantined",
        Taint("Quarantined", "NoSchedule"),
    ),
    Case(
        "quarantine cleared while still sick: Sick with the fault's taint",
        [
            *flapping(QUARANTINE_TIMES),
            (900, node().gpu_false("XID79").clear(format_time(T0 + 900)).obs()),
        ],
        "Sick",
        Taint("XID79", "NoExecute"),
        ["QuarantineCleared", "NodeSick"],
    ),
    Case(
        "a silent agent is a non-fatal signal even if listed as fatal",
        [(0, node().heartbeat(T0 - 500).obs())],
        "Sick",
        Taint(AGENT_SILENT, "NoSchedule"),
        ["NodeSick"],
        policy=replace(POLICY, fatal_reasons=frozenset({AGENT_SILENT})),
    ),
    Case(
        "a fresh heartbeat is healthy",
        [(0, node().heartbeat(T0 - 60).obs())],
        "Healthy",
        None,
    ),
    Case(
        "no agent at all (no heartbeat) is not a fault",
        [(0, node().obs())],
        "Healthy",
        None,
    ),
    Case(
        "device cleared: still excluded while Recovering",
        [(0, node().fault(2, "EccUncorrectable").obs()), (10, HEALTHY)],
        "Healthy",
        None,
        ["DeviceRecovering"],
        frozenset({2}),
    ),
    Case(
        "device back in service after the stable window",
        [(0, node().fault(2, "EccUncorrectable").obs()), (10, HEALTHY), (310, HEALTHY)],
        "Healthy",
        None,
        ["DeviceRecovered"],
    ),
    Case(
        "a flapping device is quarantined alone",
        [*flapping(QUARANTINE_TIMES, node().fault(6, "TemperatureHigh").obs()), (90_000, HEALTHY)],
        "Healthy",
        None,
        [],
        frozenset({6}),
    ),
    Case(
        "a device quarantine is released by the clear annotation",
        [
            *flapping(QUARANTINE_TIMES, node().fault(6, "TemperatureHigh").obs()),
            (900, node().clear(format_time(T0 + 900)).obs()),
        ],
        "Healthy",
        None,
        ["QuarantineCleared"],
    ),
]


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_step(case: Case) -> None:
    _, got = run(case.steps, case.policy)
    assert got.state == case.want_state
    assert got.taint == case.want_taint
    assert [e.reason for e in got.events] == case.want_events
    assert got.excluded_devices == case.want_excluded


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_step_is_idempotent(case: Case) -> None:
    before, got = run(case.steps, case.policy)
    when, obs = case.steps[-1]
    again = step(before, obs, case.policy, T0 + when)
    assert again == got  # same inputs, same outputs
    settled = step(got.record, obs, case.policy, T0 + when)
    assert settled.record == got.record
    assert settled.taint == got.taint
    assert settled.events == ()


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_record_survives_json(case: Case) -> None:
    _, got = run(case.steps, case.policy)
    text = got.record.to_json()
    assert HealthRecord.from_json(text) == got.record
    assert len(text) < 600


def test_quarantine_event_says_how_to_release() -> None:
    _, got = run([*flapping([0, 100, 200]), (300, SICK)])
    (event,) = got.events
    assert event.type == "Warning"
    assert QUARANTINE_CLEAR_ANNOTATION in event.message
    assert "flapLimit 3" in event.message


def test_flap_history_expires_after_the_window() -> None:
    _, got = run([*flapping([0, 100, 200]), (5000, HEALTHY)])
    assert got.record.flaps == ()


def test_garbage_record_starts_fresh() -> None:
    assert HealthRecord.from_json("{not json") == HealthRecord()
    assert HealthRecord.from_json('{"state": "Sick", "since": "x"}') == HealthRecord()
    assert HealthRecord.from_json(None) == HealthRecord()


def test_taint_value_is_a_valid_label_value() -> None:
    policy = replace(POLICY, unhealthy_conditions=(ConditionRule("GPUHealthy", "False"),))
    got = step(None, node().fault(1, "weird reason/with spaces!" + "x" * 80).obs(), policy, T0)
    assert got.taint is None  # not fatal: the device is excluded, the node untainted
    fatal = replace(policy, fatal_reasons=frozenset({"weird reason/with spaces!" + "x" * 80}))
    got = step(None, node().fault(1, "weird reason/with spaces!" + "x" * 80).obs(), fatal, T0)
    assert got.taint is not None
    assert len(got.taint.value) <= 63
    assert got.taint.value.startswith("weird-reason-with-spaces-x")


@dataclass
class GuardCase:
    name: str
    nodes: list[GuardInput]
    percent: float
    want_tripped: bool
    want_held: frozenset[str] = frozenset()


def fleet(size: int, wanting: int, tainted: int = 0) -> list[GuardInput]:
    return [
        GuardInput(f"n{i:02d}", tainted=i < tainted, wants_taint=i < wanting, reason="XID79")
        for i in range(size)
    ]


GUARD_CASES = [
    GuardCase("empty pool", [], 20, False),
    GuardCase("within the limit", fleet(10, 2), 20, False),
    GuardCase(
        "one above the limit holds the new taints",
        fleet(10, 3, tainted=1),
        20,
        True,
        frozenset({"n01", "n02"}),
    ),
    GuardCase("existing taints are never held", fleet(10, 5, tainted=5), 20, True),
    GuardCase("a single sick node in a small pool is tainted", fleet(2, 1), 20, False),
    GuardCase("100 percent never trips", fleet(4, 4), 100, False),
    GuardCase("recovered nodes do not count", [*fleet(10, 0, tainted=5)], 20, False),
]


@pytest.mark.parametrize("case", GUARD_CASES, ids=[c.name for c in GUARD_CASES])
def test_guard(case: GuardCase) -> None:
    got = guard_pool(case.nodes, case.percent)
    assert got.tripped is case.want_tripped
    assert got.held == case.want_held
    assert got.condition.type == "HealthGuardTripped"
    assert got.condition.status == ("True" if case.want_tripped else "False")


def test_guard_message_explains() -> None:
    got = guard_pool(fleet(10, 9, tainted=1), 20)
    msg = got.condition.message
    assert got.condition.reason == "TooManyUnhealthy"
    assert "9 of 10 nodes" in msg
    assert "XID79 x9" in msg
    assert "and 3 more" in msg  # 8 held, 5 shown


def test_guard_feeds_on_step_decisions() -> None:
    # A broken probe reports a fatal fault on every node at once: only the first is tainted.
    decisions = {f"n{i}": step(None, node().fault(0, "XID79").obs(), POLICY, T0) for i in range(10)}
    inputs = [
        GuardInput(
            name, tainted=name == "n0", wants_taint=d.taint is not None, reason=d.record.reason
        )
        for name, d in decisions.items()
    ]
    got = guard_pool(inputs, POLICY.max_unhealthy_percent)
    assert got.tripped
    assert got.held == frozenset(f"n{i}" for i in range(1, 10))


def raw_node(
    annotations: dict[str, str], conditions: list[dict[str, Any]], taints: list[dict[str, str]]
) -> dict[str, Any]:
    return {
        "metadata": {"name": "gpu-1", "annotations": annotations},
        "spec": {"taints": taints},
        "status": {"conditions": conditions},
    }


def test_observe_node_reads_the_raw_object() -> None:
    gpu = encode_device_health(
        {0: DeviceHealth(True), 3: DeviceHealth(False, "XID79", "fell off the bus")}
    )
    raw = raw_node(
        {GPU_HEALTH_ANNOTATION: gpu, QUARANTINE_CLEAR_ANNOTATION: "2027-01-01T00:00:00Z"},
        [
            {"type": "Ready", "status": "True", "reason": "KubeletReady"},
            {
                "type": "GPUHealthy",
                "status": "True",
                "reason": "XID79",
                "lastHeartbeatTime": "2027-01-01T00:00:30Z",
            },
        ],
        [],
    )
    got = observe_node(raw)
    assert got.device_faults == (DeviceFault(3, "XID79", "fell off the bus"),)
    assert got.quarantine_clear == "2027-01-01T00:00:00Z"
    assert got.agent_heartbeat == parse_time("2027-01-01T00:00:30Z")
    assert [c.type for c in got.conditions] == ["Ready", "GPUHealthy"]


def test_read_record_and_current_taint() -> None:
    record = HealthRecord(state="Sick", since=5, reason="XID79", fatal=True, flaps=(5,))
    raw = raw_node(
        {HEALTH_ANNOTATION: record.to_json()},
        [],
        [
            {"key": "other", "value": "x", "effect": "NoSchedule"},
            {"key": TAINT_KEY, "value": "XID79", "effect": "NoExecute"},
        ],
    )
    assert read_record(raw) == record
    assert current_taint(raw) == Taint("XID79", "NoExecute")
    assert current_taint(raw_node({}, [], [])) is None
    assert read_record({}) == HealthRecord()


def test_device_health_annotation_round_trip_and_garbage() -> None:
    devices = {1: DeviceHealth(False, "EccUncorrectable", "2 errors"), 0: DeviceHealth(True)}
    text = encode_device_health(devices)
    assert text.index('"0"') < text.index('"1"')
    assert decode_device_health(text) == devices
    assert decode_device_health("[1,2]") == {}
    assert decode_device_health("nope") == {}
    assert decode_device_health('{"x": {"healthy": false}, "2": 5}') == {}


@pytest.mark.parametrize(
    ("value", "want"),
    [
        ("2027-01-01T00:00:00Z", 1798761600.0),
        ("2027-01-01T01:00:00+01:00", 1798761600.0),
        ("2027-01-01T00:00:00.5Z", 1798761600.5),
        ("2027-01-01T00:00:00", None),  # no zone: refused
        ("tomorrow", None),
        ("", None),
        (None, None),
    ],
)
def test_parse_time(value: str | None, want: float | None) -> None:
    assert parse_time(value) == want


def test_policy_from_spec() -> None:
    got = HealthPolicy.from_spec(
        {
            "unhealthyConditions": [{"type": "GPUHealthy", "status": "False"}],
            "fatalReasons": ["XID79"],
            "recoveryStableSeconds": 60,
            "flapLimit": 2,
            "flapWindowSeconds": 600,
            "maxUnhealthyPercent": 10,
        }
    )
    assert got == HealthPolicy(
        unhealthy_conditions=(ConditionRule("GPUHealthy", "False"),),
        fatal_reasons=frozenset({"XID79"}),
        recovery_stable_seconds=60,
        flap_limit=2,
        flap_window_seconds=600,
        max_unhealthy_percent=10.0,
    )
    assert HealthPolicy.from_spec(None) == HealthPolicy()
    assert HealthPolicy.from_spec({"unhealthyConditions": []}).unhealthy_conditions == ()


def test_summarize_counts_states() -> None:
    records = [HealthRecord(), HealthRecord(state="Sick"), HealthRecord(state="Quarantined")]
    assert summarize(records) == {
        "total": 3,
        "healthy": 1,
        "sick": 1,
        "recovering": 0,
        "quarantined": 1,
        "onboarding": 0,
    }


OBSERVATIONS = [
    HEALTHY,
    SICK,
    node().gpu_false("XID79").obs(),
    node().fault(1, "EccUncorrectable").obs(),
    node().fault(2, "XID79").fault(1, "EccUncorrectable").obs(),
    node().ready("False").obs(),
    node().heartbeat(T0 - 10_000).obs(),
    node().clear(format_time(T0 + 50_000)).obs(),
    node().clear("garbage").obs(),
]


@settings(max_examples=150, deadline=None)
@given(
    st.lists(
        st.tuples(st.integers(0, 900), st.sampled_from(range(len(OBSERVATIONS)))),
        min_size=1,
        max_size=30,
    )
)
def test_any_history_is_idempotent_and_consistent(moves: list[tuple[int, int]]) -> None:
    record: HealthRecord | None = None
    now = T0
    for gap, which in moves:
        now += gap
        obs = OBSERVATIONS[which]
        got = step(record, obs, POLICY, now)
        again = step(got.record, obs, POLICY, now)
        assert again.record == got.record and again.events == ()
        assert HealthRecord.from_json(got.record.to_json()) == got.record
        # The taint follows the state: none only when Healthy.
        assert (got.taint is None) == (got.state == "Healthy")
        # Excluded devices are exactly the non-healthy device records.
        assert got.excluded_devices == {
            i for i, d in got.record.devices.items() if d.state != "Healthy"
        }
        record = got.record


def test_stable_window_is_never_shorter_than_the_policy_with_fractional_clocks() -> None:
    from wanka.core.health import (
        HealthPolicy,
        NodeCondition,
        NodeObservation,
        step,
    )

    policy = HealthPolicy.from_spec({"recoveryStableSeconds": 4})
    sick = NodeObservation(conditions=(NodeCondition("GPUHealthy", "False", "Ecc", ""),))
    well = NodeObservation(conditions=(NodeCondition("GPUHealthy", "True", "Ok", ""),))
    rec = step(None, sick, policy, 100.2).record
    rec = step(rec, well, policy, 110.7).record  # cleared at 110.7
    assert rec.state == "Recovering"
    # Never healthy before 4s after the clearing observation (110.7 + 4 = 114.7) ...
    for t in (111.0, 113.5, 114.6, 114.69):
        assert step(rec, well, policy, t).record.state == "Recovering", t
    # ... and at most a second later than that.
    assert step(rec, well, policy, 115.0).record.state == "Healthy"
