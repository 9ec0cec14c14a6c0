"""Pure health state machine for GPU nodes and their devices, plus the pool-level taint guard.

Every function here is deterministic: the caller passes the previous record, what it observes
on the Node now, the pool's policy and the time. Nothing reads a clock or talks to Kubernetes,
so the operator, the simulator and the tests run exactly the same decisions.

States, per node and per device::

    Healthy --fault--> Sick --faults gone--> Recovering --stable window--> Healthy
                        ^                        |
                        +--------fault-----------+
    any sick transition beyond flapLimit within flapWindowSeconds --> Quarantined
    Quarantined --wanka.io/quarantine-clear newer than the quarantine--> Healthy (or Sick)

With onboarding (`GPUPool.spec.onboarding`), a node must pass a burn-in before it takes work::

    new node, quarantine cleared, back after a long NotReady, idle past revalidation
        --> Onboarding --burn-in passed--> Healthy
                       --failed more than `retries` times, or timed out--> Quarantined (PreflightFailed)
"""

from __future__ import annotations

import json
import math
import re
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any, Literal

from wanka.core.snapshot import HealthState

TAINT_KEY = "wanka.io/unhealthy"
ONBOARDING_TAINT_KEY = "wanka.io/onboarding"  # NoSchedule while a node's burn-in runs
REMEDIATION_ANNOTATION = "wanka.io/remediation"  # reset | reboot | replace, for people and tools
HEALTH_ANNOTATION = "wanka.io/health"  # the operator's HealthRecord, JSON
GPU_HEALTH_ANNOTATION = "wanka.io/gpu-health"  # the agent's per-device health, JSON
QUARANTINE_CLEAR_ANNOTATION = "wanka.io/quarantine-clear"  # an RFC 3339 time set by a person
GPU_CONDITION = "GPUHealthy"  # the node condition the agent writes
GUARD_CONDITION = "HealthGuardTripped"  # the pool condition the guard explains itself with

AGENT_SILENT = "AgentSilent"
NODE_NOT_READY = "NodeNotReady"
QUARANTINED = "Quarantined"
PREFLIGHT_FAILED = "PreflightFailed"

MAX_MESSAGE = 256  # keeps annotations and events small however chatty a probe is

Effect = Literal["NoSchedule", "NoExecute"]
EventType = Literal["Normal", "Warning"]

HEALTHY: HealthState = "Healthy"
SICK: HealthState = "Sick"
RECOVERING: HealthState = "Recovering"
QUARANTINE: HealthState = "Quarantined"
ONBOARDING: HealthState = "Onboarding"

Remediation = Literal["reset", "reboot", "replace"]
# How long a burn-in pod that never reports an end may take beyond its own deadline (a dead
# kubelet never fails it) before the operator counts the attempt as timed out.
BURN_IN_MARGIN_SECONDS = 60


# ---------------------------------------------------------------------------------------------
# Policy and observations (inputs)
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ConditionRule:
    """A node condition `type` whose `status` means the node is sick."""

    type: str
    status: str


@dataclass(frozen=True, slots=True)
class OnboardingPolicy:
    """A pool's `spec.onboarding`: nodes pass a burn-in before they take work."""

    timeout_seconds: int = 900
    retries: int = 1  # further attempts after a failed one before the node is quarantined
    revalidate_idle_after_seconds: int = 0  # 0: never re-check an idle node
    return_after_not_ready_seconds: int = 600  # NotReady at least this long: re-check on return

    @classmethod
    def from_spec(cls, spec: Mapping[str, Any] | None) -> OnboardingPolicy | None:
        """None when the pool has no `spec.onboarding` (onboarding is off)."""
        if spec is None:
            return None
        d = cls()
        return cls(
            timeout_seconds=int(spec.get("timeoutSeconds", d.timeout_seconds)),
            retries=int(spec.get("retries", d.retries)),
            revalidate_idle_after_seconds=int(
                spec.get("revalidateIdleAfterSeconds", d.revalidate_idle_after_seconds)
            ),
            return_after_not_ready_seconds=int(
                spec.get("returnAfterNotReadySeconds", d.return_after_not_ready_seconds)
            ),
        )


@dataclass(frozen=True, slots=True)
class HealthPolicy:
    """A pool's `spec.health`, in plain values; `from_spec` reads the camelCase mapping."""

    unhealthy_conditions: tuple[ConditionRule, ...] = (ConditionRule(GPU_CONDITION, "False"),)
    fatal_reasons: frozenset[str] = frozenset()
    recovery_stable_seconds: int = 300
    flap_limit: int = 3
    flap_window_seconds: int = 3600
    max_unhealthy_percent: float = 20.0
    # Not in the pool API yet: how old the agent's heartbeat may get before it counts as silent.
    agent_silent_seconds: int = 300
    onboarding: OnboardingPolicy | None = None  # the pool's spec.onboarding; None: off

    @classmethod
    def from_spec(
        cls, spec: Mapping[str, Any] | None, onboarding: Mapping[str, Any] | None = None
    ) -> HealthPolicy:
        """Build a policy from a pool's `spec.health` (camelCase keys, all optional) and its
        `spec.onboarding` (None: onboarding off)."""
        spec = spec or {}
        default = cls()
        rules = spec.get("unhealthyConditions")
        return cls(
            unhealthy_conditions=default.unhealthy_conditions
            if rules is None
            else tuple(ConditionRule(str(r["type"]), str(r["status"])) for r in rules),
            fatal_reasons=frozenset(str(r) for r in spec.get("fatalReasons") or ()),
            recovery_stable_seconds=int(
                spec.get("recoveryStableSeconds", default.recovery_stable_seconds)
            ),
            flap_limit=int(spec.get("flapLimit", default.flap_limit)),
            flap_window_seconds=int(spec.get("flapWindowSeconds", default.flap_window_seconds)),
            max_unhealthy_percent=float(
                spec.get("maxUnhealthyPercent", default.max_unhealthy_percent)
            ),
            agent_silent_seconds=int(spec.get("agentSilentSeconds", default.agent_silent_seconds)),
            onboarding=OnboardingPolicy.from_spec(onboarding),
        )


@dataclass(frozen=True, slots=True)
class NodeCondition:
    """One entry of a Node's `status.conditions`."""

    type: str
    status: str
    reason: str = ""
    message: str = ""


@dataclass(frozen=True, slots=True)
class DeviceFault:
    """A device the agent reports unhealthy, by its NVML index."""

    index: int
    reason: str
    message: str = ""


@dataclass(frozen=True, slots=True)
class BurnIn:
    """A node's burn-in pod as the cluster shows it."""

    number: int  # the record's `burn_ins` count when the pod was asked for: its name's suffix
    phase: str = "Pending"  # Pending, Running, Succeeded, Failed
    created: float = 0.0
    message: str = ""  # the container's termination message (or reason) when it ended
    exit_code: int | None = None


@dataclass(frozen=True, slots=True)
class NodeObservation:
    """What the operator sees on a Node now; `observe_node` builds it from the raw object."""

    conditions: tuple[NodeCondition, ...] = ()
    device_faults: tuple[DeviceFault, ...] = ()
    quarantine_clear: str | None = None  # the raw wanka.io/quarantine-clear value
    # Epoch seconds of the GPUHealthy condition's lastHeartbeatTime; None: no agent on the node,
    # which is not a fault (pools may run without the agent, e.g. kwok nodes).
    agent_heartbeat: float | None = None
    # GPU work is bound or reserved on the node (any scheduler's pods, Wanka's reservations).
    busy: bool = False
    burn_in: BurnIn | None = None  # the node's newest burn-in pod, if any


# ---------------------------------------------------------------------------------------------
# The record (state carried between steps, stored in the wanka.io/health annotation)
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class DeviceRecord:
    """Health state of one device."""

    state: HealthState = HEALTHY
    since: int = 0
    reason: str = ""
    flaps: tuple[int, ...] = ()  # times of sick transitions still inside the flap window


@dataclass(frozen=True, slots=True)
class HealthRecord:
    """Health state of one node and of its devices; round-trips through `to_json`."""

    state: HealthState = HEALTHY
    since: int = 0
    reason: str = ""  # the primary fault; kept while Recovering/Quarantined to explain the taint
    fatal: bool = False
    flaps: tuple[int, ...] = ()
    clear_seen: str = ""  # the last quarantine-clear value acted on, so each is used once
    # Only devices with something to remember (not Healthy, or with flap history).
    devices: Mapping[int, DeviceRecord] = field(default_factory=dict)
    # Onboarding: why a burn-in is due ("" none), attempts in this round, burn-in pods ever
    # asked for (names them), when the current attempt began, when the node last passed.
    onboard: str = ""
    tries: int = 0
    burn_ins: int = 0
    checked: int = 0
    validated: int = 0
    # Reliability: sick transitions of the node since `watched` (when the record began), from
    # which the pool's interruption rate (and checkpoint advice) is computed.
    faults: int = 0
    watched: int = 0

    def to_json(self) -> str:
        """A small, stable JSON string (defaults omitted) for the wanka.io/health annotation."""
        out: dict[str, Any] = {"state": self.state, "since": self.since}
        if self.reason:
            out["reason"] = self.reason
        if self.fatal:
            out["fatal"] = True
        if self.flaps:
            out["flaps"] = list(self.flaps)
        if self.clear_seen:
            out["clearSeen"] = self.clear_seen
        if self.devices:
            out["devices"] = {
                str(i): _device_record_json(d) for i, d in sorted(self.devices.items())
            }
        for key, value in (("onboard", self.onboard), ("tries", self.tries),
                           ("burnIns", self.burn_ins), ("checked", self.checked),
                           ("validated", self.validated), ("faults", self.faults),
                           ("watched", self.watched)):
            if value:
                out[key] = value
        return json.dumps(out, separators=(",", ":"), sort_keys=True)

    @classmethod
    def from_json(cls, text: str | None) -> HealthRecord:
        """Parse `to_json` output; anything unreadable yields a fresh Healthy record."""
        if not text:
            return cls()
        try:
            raw = json.loads(text)
            devices = {
                int(i): DeviceRecord(
                    state=_state(d.get("state")),
                    since=int(d.get("since", 0)),
                    reason=str(d.get("reason", "")),
                    flaps=tuple(int(t) for t in d.get("flaps", ())),
                )
                for i, d in (raw.get("devices") or {}).items()
            }
            return cls(
                state=_state(raw.get("state")),
                since=int(raw.get("since", 0)),
                reason=str(raw.get("reason", "")),
                fatal=bool(raw.get("fatal", False)),
                flaps=tuple(int(t) for t in raw.get("flaps", ())),
                clear_seen=str(raw.get("clearSeen", "")),
                devices=devices,
                onboard=str(raw.get("onboard", "")),
                tries=int(raw.get("tries", 0)),
                burn_ins=int(raw.get("burnIns", 0)),
                checked=int(raw.get("checked", 0)),
                validated=int(raw.get("validated", 0)),
                faults=int(raw.get("faults", 0)),
                watched=int(raw.get("watched", 0)),
            )
        except (ValueError, TypeError, AttributeError, KeyError):
            # A hand-edited or truncated annotation must not wedge the operator.
            return cls()


def _device_record_json(d: DeviceRecord) -> dict[str, Any]:
    out: dict[str, Any] = {"state": d.state, "since": d.since}
    if d.reason:
        out["reason"] = d.reason
    if d.flaps:
        out["flaps"] = list(d.flaps)
    return out


def _state(value: object) -> HealthState:
    if value == SICK:
        return SICK
    if value == RECOVERING:
        return RECOVERING
    if value == QUARANTINE:
        return QUARANTINE
    if value == ONBOARDING:
        return ONBOARDING
    return HEALTHY


# ---------------------------------------------------------------------------------------------
# Outputs
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Taint:
    """The taint the node should carry; the key is always `wanka.io/unhealthy`."""

    value: str
    effect: Effect
    key: str = TAINT_KEY


@dataclass(frozen=True, slots=True)
class HealthEvent:
    """A Kubernetes Event to post on the Node."""

    type: EventType
    reason: str
    message: str


@dataclass(frozen=True, slots=True)
class HealthDecision:
    """What one step decided: the record to store, the taint wanted, events, excluded devices."""

    record: HealthRecord
    taint: Taint | None
    events: tuple[HealthEvent, ...]
    excluded_devices: frozenset[int]
    # Onboarding: carry the `wanka.io/onboarding` NoSchedule taint; the burn-in pod (by number)
    # that should exist now (0: none to create).
    onboarding: bool = False
    burn_in: int = 0
    remediation: Remediation | None = None  # the action recommended for the node, if any

    @property
    def state(self) -> HealthState:
        return self.record.state


# ---------------------------------------------------------------------------------------------
# The step
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Signal:
    reason: str
    message: str
    fatal: bool


def step(
    previous: HealthRecord | None,
    observation: NodeObservation,
    policy: HealthPolicy,
    now: float,
) -> HealthDecision:
    """Advance a node's health record by one observation.

    `previous` is None for a node the operator has never recorded (a new node).
    Idempotent: feeding the returned record back with the same observation and time returns
    the same record and no events, because events are emitted only on transitions.
    """
    first_sight = previous is None
    prev = previous or HealthRecord()
    t = math.floor(now)
    events: list[HealthEvent] = []
    onb = policy.onboarding

    clear_time, clear_seen = _read_clear(prev, observation.quarantine_clear, events)

    # Devices first: a fatal device fault also makes the node sick.
    faults = {f.index: f for f in sorted(observation.device_faults, key=lambda f: f.index)}
    devices: dict[int, DeviceRecord] = {}
    for index in sorted(set(prev.devices) | set(faults)):
        devices_prev = prev.devices.get(index, DeviceRecord())
        fault = faults.get(index)
        rec = _advance_device(index, devices_prev, fault, clear_time, policy, now, events)
        if rec.state != HEALTHY or rec.flaps:
            devices[index] = rec

    signals = _node_signals(observation, policy, now)
    primary = _primary(signals)
    fatal = any(s.fatal for s in signals)

    state, since, flaps = prev.state, prev.since, _prune(prev.flaps, t, policy)
    reason = prev.reason
    onboard = prev.onboard if onb is not None else ""
    node_faults = prev.faults
    if state == ONBOARDING and onb is None:
        state, since, reason = HEALTHY, t, ""  # the pool turned onboarding off
        events.append(_event("Normal", "OnboardingOff", "the pool no longer onboards nodes"))
    if clear_time is not None and state == QUARANTINE and prev.since <= clear_time:
        flaps = ()
        if onb is not None:
            onboard = "Returned"  # a person vouched for it; the burn-in checks it again
        if primary is None:
            state, since, reason = HEALTHY, t, ""
            events.append(_event("Normal", "QuarantineCleared", "node released from quarantine"
                                 + ("; burn-in before it takes work" if onboard else "")))
        else:
            state, since = SICK, t
            events.append(
                _event(
                    "Normal",
                    "QuarantineCleared",
                    f"node released from quarantine but still sick: {primary.reason}",
                )
            )
            events.append(_sick_event(primary, signals, fatal))
            reason = primary.reason
    elif primary is not None:
        if state in (HEALTHY, RECOVERING, ONBOARDING):
            flaps = (*flaps, t)
            node_faults += 1
            if len(flaps) > policy.flap_limit:
                state, since = QUARANTINE, t
                events.append(
                    _event(
                        "Warning",
                        "NodeQuarantined",
                        f"{len(flaps)} sick transitions within {policy.flap_window_seconds}s "
                        f"(flapLimit {policy.flap_limit}), last {primary.reason}; "
                        f"{_clear_hint()}",
                    )
                )
            else:
                state, since = SICK, t
                events.append(_sick_event(primary, signals, fatal))
        elif state == SICK and (primary.reason != prev.reason or fatal != prev.fatal):
            events.append(_sick_event(primary, signals, fatal))
        reason = primary.reason
    else:
        fatal = False
        if state == SICK:
            if onb is not None and prev.reason == NODE_NOT_READY and (
                now - prev.since >= onb.return_after_not_ready_seconds
            ):
                onboard = onboard or "Returned"
            if onboard or (onb is not None and not prev.validated and not observation.busy):
                # The burn-in is a stronger check than waiting out the stable window.
                state, since, reason = HEALTHY, t, ""
                events.append(_event("Normal", "NodeRecovering",
                                     f"{prev.reason} cleared; burn-in before it takes work"))
            else:
                # Records keep whole seconds: start the window at the next one and compare
                # with the real clock, so the window is never shorter than the policy says.
                state, since = RECOVERING, math.ceil(now)
                events.append(
                    _event(
                        "Normal",
                        "NodeRecovering",
                        f"{prev.reason} cleared; keeping the taint until healthy for "
                        f"{policy.recovery_stable_seconds}s",
                    )
                )
        if state == RECOVERING and now - since >= policy.recovery_stable_seconds:
            state, since = HEALTHY, t
            events.append(
                _event(
                    "Normal",
                    "NodeRecovered",
                    f"healthy for {policy.recovery_stable_seconds}s since {reason}; taint removed",
                )
            )
            reason = ""

    record = HealthRecord(
        state=state,
        since=since,
        reason=reason,
        fatal=fatal and state in (SICK, QUARANTINE),
        flaps=flaps,
        clear_seen=clear_seen,
        devices=devices,
        onboard=onboard,
        tries=prev.tries if state == ONBOARDING else 0,
        burn_ins=prev.burn_ins,
        checked=prev.checked if state == ONBOARDING else 0,
        validated=prev.validated,
        faults=node_faults,
        watched=prev.watched or t,
    )
    burn_in = 0
    if onb is not None and state in (HEALTHY, ONBOARDING):
        record, burn_in = _onboard(record, observation, onb, first_sight, t, now, events)
    excluded = frozenset(i for i, d in devices.items() if d.state != HEALTHY)
    return HealthDecision(
        record=record,
        taint=_taint(record),
        events=tuple(events),
        excluded_devices=excluded,
        onboarding=record.state == ONBOARDING,
        burn_in=burn_in,
        remediation=remediation(record),
    )


_ONBOARD_WHY = {
    "NewNode": "new node",
    "NotValidated": "never validated",
    "Returned": "returned to service",
    "Revalidate": "idle past its revalidation interval",
}


def _onboard(
    rec: HealthRecord,
    obs: NodeObservation,
    onb: OnboardingPolicy,
    first_sight: bool,
    t: int,
    now: float,
    events: list[HealthEvent],
) -> tuple[HealthRecord, int]:
    """Onboarding of a fault-free node: start it, run its burn-in attempts, judge them.

    Returns the record and the burn-in pod (by number) that should exist now (0: none).
    """
    if rec.state == HEALTHY and not rec.onboard:
        if not rec.validated:
            if obs.busy:
                # It already runs GPU work (onboarding was turned on for a pool in service):
                # burning it in would mean draining it, so it counts as validated in service
                # and is checked when it is next idle past the revalidation interval.
                return replace(rec, validated=t), 0
            rec = replace(rec, onboard="NewNode" if first_sight else "NotValidated")
        elif (onb.revalidate_idle_after_seconds and not obs.busy
              and t - rec.validated >= onb.revalidate_idle_after_seconds):
            rec = replace(rec, onboard="Revalidate")
        else:
            return rec, 0
    if rec.state == HEALTHY:
        rec = replace(rec, state=ONBOARDING, since=t, reason=rec.onboard, tries=0, checked=0)
        events.append(_event("Normal", "Onboarding",
                             f"{_ONBOARD_WHY.get(rec.onboard, rec.onboard)}: tainted "
                             f"{ONBOARDING_TAINT_KEY}:NoSchedule until a burn-in passes"))
    if rec.tries == 0:
        if obs.busy:
            return rec, 0  # its GPUs are in use: the burn-in waits for them (nothing new lands)
        rec = replace(rec, tries=1, burn_ins=rec.burn_ins + 1, checked=t)
        return rec, rec.burn_ins
    result = obs.burn_in if obs.burn_in is not None and obs.burn_in.number == rec.burn_ins else None
    failure = ""
    if result is not None and result.phase == "Succeeded":
        events.append(_event("Normal", "BurnInPassed",
                             f"burn-in {rec.burn_ins} passed; the node takes work"))
        return replace(rec, state=HEALTHY, since=t, reason="", onboard="", tries=0, checked=0,
                       validated=t), 0
    if result is not None and result.phase == "Failed":
        failure = result.message.strip() or (
            f"exit code {result.exit_code}" if result.exit_code is not None else "failed")
    else:
        started = result.created if result is not None and result.created else float(rec.checked)
        if now - started > onb.timeout_seconds + (0 if result is not None else BURN_IN_MARGIN_SECONDS):
            failure = f"did not finish within {onb.timeout_seconds}s"
    if not failure:
        return rec, rec.burn_ins
    attempts = onb.retries + 1
    if rec.tries < attempts:
        events.append(_event("Warning", "BurnInFailed",
                             f"burn-in attempt {rec.tries} of {attempts} failed: {failure}; retrying"))
        rec = replace(rec, tries=rec.tries + 1, burn_ins=rec.burn_ins + 1, checked=t)
        return rec, rec.burn_ins
    events.append(_event("Warning", PREFLIGHT_FAILED,
                         f"burn-in failed {attempts} time(s), last: {failure}; quarantined; "
                         f"{_clear_hint()}"))
    return replace(rec, state=QUARANTINE, since=t, reason=PREFLIGHT_FAILED, onboard="", tries=0,
                   checked=0, faults=rec.faults + 1), 0


# Recommended actions per fault reason (NVIDIA's XID catalog and DCGM guidance, condensed):
# a GPU reset clears most ECC and NVLink faults; a GPU that fell off the bus or was lost needs
# the node rebooted; a failed row remap or repeated faults mean the hardware must be replaced.
REMEDIATION_BY_REASON: Mapping[str, Remediation] = {
    "XID48": "reset", "XID61": "reset", "XID62": "reset", "XID63": "reset", "XID74": "reset",
    "XID92": "reset", "XID94": "reset", "XID95": "reset",
    "XID64": "replace",
    "XID79": "reboot", "XID119": "reboot", "XID120": "reboot", "GPULost": "reboot",
    "DeviceMissing": "reboot", "NVMLInitFailed": "reboot", NODE_NOT_READY: "reboot",
    PREFLIGHT_FAILED: "replace",
}
_SEVERITY: Mapping[str, int] = {"reset": 1, "reboot": 2, "replace": 3}


def remediation(record: HealthRecord) -> Remediation | None:
    """The action recommended for a node, the strongest that applies: a quarantined node is a
    repeat offender (it flapped, or failed its burn-in): replace; a node sick with a fatal fault:
    by its reason (reboot when unknown); a quarantined device: reset."""
    actions: list[Remediation] = []
    if record.state == QUARANTINE:
        actions.append("replace")
    elif record.state == SICK and record.fatal:
        actions.append(REMEDIATION_BY_REASON.get(record.reason, "reboot"))
    if any(d.state == QUARANTINE for d in record.devices.values()):
        actions.append("reset")
    if not actions:
        return None
    return sorted(actions, key=lambda a: _SEVERITY[a])[-1]


def _advance_device(
    index: int,
    prev: DeviceRecord,
    fault: DeviceFault | None,
    clear_time: int | None,
    policy: HealthPolicy,
    now: float,
    events: list[HealthEvent],
) -> DeviceRecord:
    """The node's state machine applied to one device (no taint: the device is excluded)."""
    t = math.floor(now)
    flaps = _prune(prev.flaps, t, policy)
    label = f"device {index}"
    if clear_time is not None and prev.state == QUARANTINE and prev.since <= clear_time:
        events.append(_event("Normal", "QuarantineCleared", f"{label} released from quarantine"))
        if fault is None:
            return DeviceRecord()
        events.append(_event("Warning", "DeviceSick", f"{label}: {_fault_text(fault)}"))
        return DeviceRecord(SICK, t, fault.reason, ())
    if prev.state == QUARANTINE:
        return replace(prev, flaps=flaps)
    if fault is not None:
        if prev.state == SICK:
            if fault.reason != prev.reason:
                events.append(_event("Warning", "DeviceSick", f"{label}: {_fault_text(fault)}"))
            return DeviceRecord(SICK, prev.since, fault.reason, flaps)
        flaps = (*flaps, t)
        if len(flaps) > policy.flap_limit:
            events.append(
                _event(
                    "Warning",
                    "DeviceQuarantined",
                    f"{label}: {len(flaps)} sick transitions within "
                    f"{policy.flap_window_seconds}s (flapLimit {policy.flap_limit}), last "
                    f"{fault.reason}; {_clear_hint()}",
                )
            )
            return DeviceRecord(QUARANTINE, t, fault.reason, flaps)
        events.append(_event("Warning", "DeviceSick", f"{label}: {_fault_text(fault)}"))
        return DeviceRecord(SICK, t, fault.reason, flaps)
    state, since = prev.state, prev.since
    if state == SICK:
        state, since = RECOVERING, math.ceil(now)
        events.append(
            _event(
                "Normal",
                "DeviceRecovering",
                f"{label}: {prev.reason} cleared; excluded until healthy for "
                f"{policy.recovery_stable_seconds}s",
            )
        )
    if state == RECOVERING and now - since >= policy.recovery_stable_seconds:
        events.append(_event("Normal", "DeviceRecovered", f"{label}: back in service"))
        return DeviceRecord(HEALTHY, t, "", flaps)
    return DeviceRecord(state, since, prev.reason, flaps)


def _read_clear(
    prev: HealthRecord, value: str | None, events: list[HealthEvent]
) -> tuple[int | None, str]:
    """Return (usable clear time or None, clear value to remember)."""
    value = (value or "").strip()
    if not value or value == prev.clear_seen:
        return None, prev.clear_seen
    quarantined = [prev.since] if prev.state == QUARANTINE else []
    quarantined += [d.since for d in prev.devices.values() if d.state == QUARANTINE]
    if not quarantined:
        # Remembered so that a value set in advance cannot release a future quarantine.
        return None, value
    when = parse_time(value)
    if when is None:
        events.append(
            _event(
                "Warning",
                "QuarantineClearInvalid",
                f"{QUARANTINE_CLEAR_ANNOTATION}={value!r} is not an RFC 3339 time; {_clear_hint()}",
            )
        )
        return None, value
    clear_time = math.floor(when)
    if clear_time < min(quarantined):
        events.append(
            _event(
                "Warning",
                "QuarantineClearIgnored",
                f"{QUARANTINE_CLEAR_ANNOTATION}={value} is older than the quarantine at "
                f"{format_time(min(quarantined))}; {_clear_hint()}",
            )
        )
    return clear_time, value


def _node_signals(obs: NodeObservation, policy: HealthPolicy, now: float) -> list[_Signal]:
    """Everything that makes the node (not just one device) sick, in priority order."""
    signals: list[_Signal] = []
    for c in obs.conditions:
        if c.type == "Ready" and c.status != "True":
            detail = ": ".join(x for x in (c.reason, c.message) if x)
            signals.append(
                _Signal(
                    NODE_NOT_READY,
                    f"Ready={c.status}" + (f" ({detail})" if detail else ""),
                    NODE_NOT_READY in policy.fatal_reasons,
                )
            )
    for rule in policy.unhealthy_conditions:
        for c in obs.conditions:
            if (c.type, c.status) == (rule.type, rule.status):
                reason = c.reason if _is_token(c.reason) else f"{c.type}{c.status}"
                text = f"{c.type}={c.status}" + (f": {c.message}" if c.message else "")
                signals.append(_Signal(reason, text, reason in policy.fatal_reasons))
    for f in sorted(obs.device_faults, key=lambda f: f.index):
        if f.reason in policy.fatal_reasons:
            signals.append(_Signal(f.reason, f"device {f.index}: {_fault_text(f)}", True))
    if obs.agent_heartbeat is not None and now - obs.agent_heartbeat > policy.agent_silent_seconds:
        # Never fatal: a dead agent says nothing about the GPUs, only that we cannot see them.
        age = int(now - obs.agent_heartbeat)
        signals.append(
            _Signal(
                AGENT_SILENT,
                f"no {GPU_CONDITION} heartbeat for {age}s (limit {policy.agent_silent_seconds}s)",
                False,
            )
        )
    return signals


def _primary(signals: Sequence[_Signal]) -> _Signal | None:
    for s in signals:
        if s.fatal:
            return s
    return signals[0] if signals else None


def _taint(record: HealthRecord) -> Taint | None:
    if record.state == SICK:
        return Taint(_taint_value(record.reason), "NoExecute" if record.fatal else "NoSchedule")
    if record.state == RECOVERING:
        # The fault is gone, so nothing is evicted; only new work waits out the stable window.
        return Taint(_taint_value(record.reason), "NoSchedule")
    if record.state == QUARANTINE:
        return Taint(QUARANTINED, "NoExecute" if record.fatal else "NoSchedule")
    return None


def _prune(flaps: tuple[int, ...], t: int, policy: HealthPolicy) -> tuple[int, ...]:
    return tuple(x for x in flaps if x > t - policy.flap_window_seconds)


def _sick_event(primary: _Signal, signals: Sequence[_Signal], fatal: bool) -> HealthEvent:
    effect = "NoExecute" if fatal else "NoSchedule"
    others = [s.reason for s in signals if s is not primary]
    tail = f"; also {', '.join(others)}" if others else ""
    return _event("Warning", "NodeSick", f"{primary.reason} ({effect}): {primary.message}{tail}")


def _event(type_: EventType, reason: str, message: str) -> HealthEvent:
    return HealthEvent(type_, reason, _clip(message))


def _fault_text(f: DeviceFault) -> str:
    return f"{f.reason}: {f.message}" if f.message else f.reason


def _clear_hint() -> str:
    return (
        f"to release, set {QUARANTINE_CLEAR_ANNOTATION} to the current time "
        "(e.g. $(date -u +%Y-%m-%dT%H:%M:%SZ))"
    )


def _clip(text: str) -> str:
    return text if len(text) <= MAX_MESSAGE else text[: MAX_MESSAGE - 3] + "..."


_TOKEN = re.compile(r"^[A-Za-z][A-Za-z0-9_.-]{0,62}$")
_LABEL_BAD = re.compile(r"[^A-Za-z0-9_.-]+")


def _is_token(text: str) -> bool:
    return bool(_TOKEN.match(text))


def _taint_value(reason: str) -> str:
    """A taint value must be a valid label value: 63 characters of [A-Za-z0-9_.-]."""
    value = _LABEL_BAD.sub("-", reason)[:63].strip("-_.")
    return value or "Unhealthy"


# ---------------------------------------------------------------------------------------------
# Pool guard
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class GuardInput:
    """One node of a pool, as the guard needs it."""

    name: str
    tainted: bool  # carries the wanka.io/unhealthy taint now
    wants_taint: bool  # the step's decision has a taint
    reason: str = ""


@dataclass(frozen=True, slots=True)
class PoolCondition:
    """A condition for the pool's status (the caller adds lastTransitionTime and generation)."""

    type: str
    status: Literal["True", "False"]
    reason: str
    message: str


@dataclass(frozen=True, slots=True)
class GuardVerdict:
    """Whether the guard tripped, which nodes' NEW taints it holds back, and why."""

    tripped: bool
    held: frozenset[str]
    condition: PoolCondition


def guard_pool(nodes: Sequence[GuardInput], max_unhealthy_percent: float) -> GuardVerdict:
    """Stop tainting new nodes when more of the pool would be tainted than the policy allows.

    A broken probe or driver rollout looks like the whole fleet failing at once; tainting it
    all would stop every job. Existing taints stay (and may still be removed or changed); only
    nodes not yet tainted are held. At least one node may always be tainted, so a small pool
    still protects its jobs from a single sick node.
    """
    total = len(nodes)
    wanting = [n for n in nodes if n.wants_taint]
    budget = max(1, math.floor(total * max_unhealthy_percent / 100))
    pct = 100.0 * len(wanting) / total if total else 0.0
    if len(wanting) <= budget:
        return GuardVerdict(
            tripped=False,
            held=frozenset(),
            condition=PoolCondition(
                GUARD_CONDITION,
                "False",
                "WithinLimit",
                f"{len(wanting)} of {total} nodes unhealthy ({pct:.0f}%); "
                f"limit {max_unhealthy_percent:g}% ({budget} nodes)",
            ),
        )
    held = sorted(n.name for n in wanting if not n.tainted)
    reasons = Counter(n.reason or "Unknown" for n in wanting).most_common(3)
    shown = ", ".join(held[:5]) + (f" and {len(held) - 5} more" if len(held) > 5 else "")
    message = (
        f"{len(wanting)} of {total} nodes would be tainted ({pct:.0f}%), above "
        f"maxUnhealthyPercent {max_unhealthy_percent:g} ({budget} nodes); top reasons: "
        + ", ".join(f"{r} x{c}" for r, c in reasons)
        + "; existing taints stay"
        + (f"; not tainting {shown}" if held else "")
        + ". Check the probe before raising the limit."
    )
    return GuardVerdict(
        tripped=True,
        held=frozenset(held),
        condition=PoolCondition(GUARD_CONDITION, "True", "TooManyUnhealthy", _clip(message)),
    )


# ---------------------------------------------------------------------------------------------
# Reading and writing the Node-side formats
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class DeviceHealth:
    """One entry of the wanka.io/gpu-health annotation."""

    healthy: bool
    reason: str = ""
    message: str = ""


def encode_device_health(devices: Mapping[int, DeviceHealth]) -> str:
    """Serialise per-device health as `{"<index>": {"healthy": ..., ...}}`, sorted by index."""
    out: dict[str, dict[str, Any]] = {}
    for index in sorted(devices):
        d = devices[index]
        entry: dict[str, Any] = {"healthy": d.healthy}
        if d.reason:
            entry["reason"] = d.reason
        if d.message:
            entry["message"] = _clip(d.message)
        out[str(index)] = entry
    return json.dumps(out, separators=(",", ":"), sort_keys=True)


def decode_device_health(text: str | None) -> dict[int, DeviceHealth]:
    """Parse the wanka.io/gpu-health annotation; malformed entries are skipped."""
    if not text:
        return {}
    try:
        raw = json.loads(text)
    except ValueError:
        return {}
    if not isinstance(raw, dict):
        return {}
    out: dict[int, DeviceHealth] = {}
    for key, entry in raw.items():
        if not isinstance(entry, dict):
            continue
        try:
            index = int(key)
        except ValueError:
            continue
        out[index] = DeviceHealth(
            healthy=entry.get("healthy") is not False,
            reason=str(entry.get("reason", "")),
            message=str(entry.get("message", "")),
        )
    return out


def device_faults(devices: Mapping[int, DeviceHealth]) -> tuple[DeviceFault, ...]:
    """The unhealthy entries of a decoded wanka.io/gpu-health annotation."""
    return tuple(
        DeviceFault(i, d.reason or "Unhealthy", d.message)
        for i, d in sorted(devices.items())
        if not d.healthy
    )


def observe_node(node: Mapping[str, Any]) -> NodeObservation:
    """Build an observation from a raw Node object (API JSON, as kopf delivers it)."""
    metadata = node.get("metadata") or {}
    annotations = metadata.get("annotations") or {}
    conditions: list[NodeCondition] = []
    heartbeat: float | None = None
    for c in (node.get("status") or {}).get("conditions") or ():
        conditions.append(
            NodeCondition(
                type=str(c.get("type", "")),
                status=str(c.get("status", "")),
                reason=str(c.get("reason") or ""),
                message=str(c.get("message") or ""),
            )
        )
        if c.get("type") == GPU_CONDITION:
            heartbeat = parse_time(c.get("lastHeartbeatTime"))
    return NodeObservation(
        conditions=tuple(conditions),
        device_faults=device_faults(decode_device_health(annotations.get(GPU_HEALTH_ANNOTATION))),
        quarantine_clear=annotations.get(QUARANTINE_CLEAR_ANNOTATION),
        agent_heartbeat=heartbeat,
    )


def read_record(node: Mapping[str, Any]) -> HealthRecord:
    """The HealthRecord stored on a raw Node object (fresh if none)."""
    annotations = (node.get("metadata") or {}).get("annotations") or {}
    return HealthRecord.from_json(annotations.get(HEALTH_ANNOTATION))


def current_taint(node: Mapping[str, Any]) -> Taint | None:
    """Our taint on a raw Node object, if present."""
    for t in (node.get("spec") or {}).get("taints") or ():
        if t.get("key") == TAINT_KEY:
            effect: Effect = "NoExecute" if t.get("effect") == "NoExecute" else "NoSchedule"
            return Taint(str(t.get("value") or ""), effect)
    return None


def parse_time(value: object) -> float | None:
    """Epoch seconds from an RFC 3339 string or an aware datetime; None if not one."""
    if isinstance(value, datetime):
        return value.timestamp() if value.tzinfo is not None else None
    if not isinstance(value, str) or not value.strip():
        return None
    try:
        parsed = datetime.fromisoformat(value.strip().replace("z", "Z"))
    except ValueError:
        return None
    if parsed.tzinfo is None:
        return None  # a time without a zone is ambiguous; refuse rather than guess
    return parsed.timestamp()


def format_time(epoch: float) -> str:
    """RFC 3339 in UTC with second precision, as Kubernetes writes times."""
    return datetime.fromtimestamp(math.floor(epoch), tz=UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def summarize(records: Iterable[HealthRecord]) -> dict[str, int]:
    """Counts per state, for the pool's `status.nodes`."""
    counts = Counter(r.state for r in records)
    return {
        "total": sum(counts.values()),
        "healthy": counts[HEALTHY],
        "sick": counts[SICK],
        "recovering": counts[RECOVERING],
        "quarantined": counts[QUARANTINE],
        "onboarding": counts[ONBOARDING],
    }
