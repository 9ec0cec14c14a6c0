"""The gang preflight's verdict and report format, pure so every rank and the operator agree.

Each member of a training gang runs `python -m wanka.sdk.preflight` before training. The ranks
share what they measured and each computes the same verdict with `judge`; each writes one
report (`encode_report`) to its termination message, which the operator reads back with
`parse_report` and turns into the members to blame with `culprits`. No torch, no Kubernetes.

Report (one compact JSON object, at most 4096 bytes, kubelet's termination-message limit)::

    {"wankaPreflight": 1, "rank": 0, "worldSize": 4, "ok": false, "reason": "PeersMissing",
     "culprits": {"3": "did not reach the rendezvous within 120s"},
     "busBandwidthGBps": null, "message": "..."}
"""

from __future__ import annotations

import json
import math
import statistics
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeGuard

REPORT_KEY = "wankaPreflight"
REPORT_VERSION = 1
MAX_REPORT_BYTES = 4096  # the kubelet's limit on a termination message
MAX_MESSAGE_CHARS = 512
MAX_WHY_CHARS = 120

PASSED = "Passed"
PEERS_MISSING = "PeersMissing"
MASTER_UNREACHABLE = "MasterUnreachable"
LOCAL_CHECK_FAILED = "LocalCheckFailed"
SLOW_MEMBERS = "SlowMembers"
LOW_BUS_BANDWIDTH = "LowBusBandwidth"
COLLECTIVE_FAILED = "CollectiveFailed"
REASONS: frozenset[str] = frozenset(
    {
        PASSED,
        PEERS_MISSING,
        MASTER_UNREACHABLE,
        LOCAL_CHECK_FAILED,
        SLOW_MEMBERS,
        LOW_BUS_BANDWIDTH,
        COLLECTIVE_FAILED,
    }
)

# What the operator says about a member that left no report at all.
NO_REPORT = "exited without a preflight report"
MASTER_BLAMED = "rank 0 hosts the rendezvous that other members could not reach"


# ---------------------------------------------------------------------------------------------
# The report
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PreflightReport:
    """One rank's report: the group verdict as this rank computed it."""

    rank: int
    world_size: int
    ok: bool
    reason: str
    culprits: dict[int, str] = field(default_factory=dict)  # rank -> why, short
    bus_bandwidth_gbps: float | None = None
    message: str = ""


def encode_report(report: PreflightReport) -> str:
    """The report as compact JSON within `MAX_REPORT_BYTES`, clipping the message to
    `MAX_MESSAGE_CHARS` and, where many ranks are named, shortening then dropping culprits
    (the message then says how many were left out)."""
    items = sorted(report.culprits.items())
    message = clip(report.message, MAX_MESSAGE_CHARS)
    for why_chars in (MAX_WHY_CHARS, 40, 12):
        text = _dump(report, message, [(r, clip(w, why_chars)) for r, w in items])
        if len(text) <= MAX_REPORT_BYTES:
            return text
    short = [(r, clip(w, 12)) for r, w in items]
    # The largest prefix of culprits that fits beside a message saying how many are missing.
    lo, hi = 0, len(short)
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if len(_dump(report, _with_note(message, len(short) - mid), short[:mid])) <= MAX_REPORT_BYTES:
            lo = mid
        else:
            hi = mid - 1
    text = _dump(report, _with_note(message, len(short) - lo), short[:lo])
    # Only a message of escaped non-ASCII text can still be too long; shorten it until it fits.
    while len(text) > MAX_REPORT_BYTES and message:
        message = clip(message, max(0, len(message) // 2))
        text = _dump(report, _with_note(message, len(short) - lo), short[:lo])
    return text


def _dump(report: PreflightReport, message: str, culprits: list[tuple[int, str]]) -> str:
    bw = report.bus_bandwidth_gbps
    doc = {
        REPORT_KEY: REPORT_VERSION,
        "rank": report.rank,
        "worldSize": report.world_size,
        "ok": report.ok,
        "reason": report.reason,
        "culprits": {str(r): w for r, w in culprits},
        "busBandwidthGBps": None if bw is None or not math.isfinite(bw) else round(bw, 3),
        "message": message,
    }
    # ensure_ascii keeps one character one byte, so lengths above are byte counts.
    return json.dumps(doc, separators=(",", ":"), ensure_ascii=True)


def _with_note(message: str, left_out: int) -> str:
    if not left_out:
        return message
    note = f" (+{left_out} more culprits not listed)"
    return clip(message, MAX_MESSAGE_CHARS - len(note)) + note


def clip(text: str, limit: int) -> str:
    """`text` within `limit` characters, marked "..." where it was cut (for termination messages)."""
    if len(text) <= limit:
        return text
    return text[: max(0, limit - 3)] + "..." if limit >= 3 else text[:limit]


def parse_report(text: str) -> PreflightReport | None:
    """A report from a termination message; None for anything that is not a valid report.

    Reads the whole text, or else its last line (a message that fell back to the log tail)."""
    if not isinstance(text, str) or len(text.encode("utf-8", "replace")) > MAX_REPORT_BYTES:
        return None
    text = text.strip()
    candidates = [text]
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if len(lines) > 1:
        candidates.append(lines[-1])
    for candidate in candidates:
        try:
            raw = json.loads(candidate)
        except ValueError:
            continue
        report = _from_doc(raw)
        if report is not None:
            return report
    return None


def _from_doc(raw: Any) -> PreflightReport | None:
    if not isinstance(raw, dict) or not _is_int(raw.get(REPORT_KEY)) or raw[REPORT_KEY] != 1:
        return None
    rank, world, ok = raw.get("rank"), raw.get("worldSize"), raw.get("ok")
    reason, message, bw = raw.get("reason"), raw.get("message"), raw.get("busBandwidthGBps", None)
    named = raw.get("culprits")
    if not (_is_int(rank) and _is_int(world) and 0 <= rank < world and isinstance(ok, bool)):
        return None
    if not (isinstance(reason, str) and reason and isinstance(message, str)):
        return None
    if bw is not None and not (
        isinstance(bw, int | float) and not isinstance(bw, bool) and math.isfinite(bw) and bw >= 0
    ):
        return None
    if not isinstance(named, dict):
        return None
    culprits: dict[int, str] = {}
    for key, why in named.items():
        if not (isinstance(key, str) and key.isdigit() and isinstance(why, str)):
            return None
        culprits[int(key)] = why
    return PreflightReport(
        rank=rank,
        world_size=world,
        ok=ok,
        reason=reason,
        culprits=culprits,
        bus_bandwidth_gbps=None if bw is None else float(bw),
        message=message,
    )


def _is_int(value: object) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool)


def culprits(reports: Mapping[int, PreflightReport | None], failed: Iterable[int]) -> dict[int, str]:
    """The members to blame for a failed preflight, from every member's report (None: the
    member left none) and the members whose preflight failed.

    The union of the culprits any report names; every failed member with no report; and rank 0
    when it left no report while another member could not reach its rendezvous. Empty when
    nothing identifies anyone (a slow fabric, a collective that failed everywhere)."""
    blamed: dict[int, str] = {}
    for _, report in sorted(reports.items()):
        if report is not None:
            for rank, why in sorted(report.culprits.items()):
                blamed.setdefault(rank, why)
    for rank in sorted(set(failed)):
        if reports.get(rank) is None:
            blamed.setdefault(rank, NO_REPORT)
    if reports.get(0) is None and any(
        r is not None and r.reason == MASTER_UNREACHABLE for r in reports.values()
    ):
        blamed.setdefault(0, MASTER_BLAMED)
    return dict(sorted(blamed.items()))


# ---------------------------------------------------------------------------------------------
# The verdict
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RankSample:
    """What one rank measured, shared with every other rank through the rendezvous store."""

    rank: int
    local_ok: bool = True
    local_error: str = ""
    local_gflops: float | None = None  # matmul throughput on this rank's device(s)
    bus_bandwidth_gbps: float | None = None  # this rank's timing of the all_reduce
    in_link_gbps: float | None = None  # ring link from rank-1 into this rank
    collective_error: str = ""

    def to_json(self) -> str:
        return json.dumps(
            {
                "rank": self.rank,
                "localOk": self.local_ok,
                "localError": self.local_error,
                "localGflops": self.local_gflops,
                "busBandwidthGBps": self.bus_bandwidth_gbps,
                "inLinkGBps": self.in_link_gbps,
                "collectiveError": self.collective_error,
            },
            separators=(",", ":"),
        )

    @classmethod
    def from_json(cls, text: str | bytes) -> RankSample:
        """Raises ValueError (or KeyError, TypeError) on anything malformed."""
        raw = json.loads(text)
        return cls(
            rank=int(raw["rank"]),
            local_ok=bool(raw["localOk"]),
            local_error=str(raw.get("localError") or ""),
            local_gflops=_opt_float(raw.get("localGflops")),
            bus_bandwidth_gbps=_opt_float(raw.get("busBandwidthGBps")),
            in_link_gbps=_opt_float(raw.get("inLinkGBps")),
            collective_error=str(raw.get("collectiveError") or ""),
        )


def _opt_float(value: Any) -> float | None:
    return None if value is None else float(value)


@dataclass(frozen=True, slots=True)
class Thresholds:
    """When a rank or the group counts as slow; 0 turns a check off."""

    slow_factor: float = 0.5  # a rank below this fraction of the median is slow
    min_bus_bandwidth_gbps: float = 0.0  # the group's all_reduce bus bandwidth floor


@dataclass(frozen=True, slots=True)
class Verdict:
    """The group's verdict; every rank computes the same one."""

    ok: bool
    reason: str
    culprits: dict[int, str] = field(default_factory=dict)
    bus_bandwidth_gbps: float | None = None
    message: str = ""

    def report(self, rank: int, world_size: int) -> PreflightReport:
        return PreflightReport(
            rank=rank,
            world_size=world_size,
            ok=self.ok,
            reason=self.reason,
            culprits=dict(self.culprits),
            bus_bandwidth_gbps=self.bus_bandwidth_gbps,
            message=self.message,
        )


def peers_missing(missing: Iterable[int], world_size: int, timeout: float) -> Verdict:
    """The verdict when some ranks never reached the rendezvous."""
    ranks = sorted(set(missing))
    why = f"did not reach the rendezvous within {timeout:g}s"
    return Verdict(
        ok=False,
        reason=PEERS_MISSING,
        culprits={r: why for r in ranks},
        message=f"{len(ranks)} of {world_size} ranks {why}: {_ranks(ranks)}",
    )


def judge(samples: Mapping[int, RankSample], world_size: int, thresholds: Thresholds) -> Verdict:
    """The group verdict from every rank's sample; a rank with no sample is one that did not
    finish the collectives (or, before them, did not report its local check)."""
    n = world_size
    missing = [r for r in range(n) if r not in samples]
    failed_local = {r: s.local_error or "local check failed" for r, s in sorted(samples.items())
                    if not s.local_ok}
    if failed_local:
        blamed = {r: clip(f"local check failed: {e}", MAX_WHY_CHARS) for r, e in failed_local.items()}
        detail = "; ".join(f"rank {r}: {e}" for r, e in failed_local.items())
        return Verdict(False, LOCAL_CHECK_FAILED, blamed,
                       message=f"{len(blamed)} of {n} ranks failed the local check: {detail}")

    errors = {r: s.collective_error for r, s in sorted(samples.items()) if s.collective_error}
    if missing or errors:
        # A rank that vanished is to blame; one that raised is as likely the victim of another.
        blamed = {r: "did not finish the collectives" for r in missing}
        parts = []
        if missing:
            parts.append(f"ranks {_ranks(missing)} did not finish the collectives")
        if errors:
            first = next(iter(errors.items()))
            parts.append(f"{len(errors)} ranks saw errors (rank {first[0]}: {first[1]})")
        return Verdict(False, COLLECTIVE_FAILED, blamed, message="; ".join(parts))

    factor = thresholds.slow_factor
    slow: dict[int, str] = {}
    gflops = {r: s.local_gflops for r, s in samples.items() if s.local_gflops is not None}
    if factor > 0 and gflops:
        median = statistics.median(gflops.values())
        for r, value in sorted(gflops.items()):
            if value < factor * median:
                slow[r] = f"local {value:.3g} GFLOP/s < {factor:g}x median {median:.3g}"
    links = {r: s.in_link_gbps for r, s in samples.items() if s.in_link_gbps is not None}
    # With two ranks one link's ends cannot be told apart; from three a slow member is the
    # one whose links into it and out of it are both slow.
    if factor > 0 and n >= 3 and links:
        median = statistics.median(links.values())
        for r in range(n):
            into, out = links.get(r), links.get((r + 1) % n)
            if into is not None and out is not None and into < factor * median and out < factor * median:
                why = f"links in {into:.3g}/out {out:.3g} GB/s < {factor:g}x median {median:.3g}"
                slow[r] = f"{slow[r]}; {why}" if r in slow else why

    busbw = _group_bus_bandwidth(samples, n)
    floor = thresholds.min_bus_bandwidth_gbps
    low = busbw is not None and floor > 0 and busbw < floor
    bw_text = "n/a" if busbw is None else f"{busbw:.3g} GB/s"
    if slow:
        detail = "; ".join(f"rank {r}: {w}" for r, w in sorted(slow.items()))
        below = f" (below the {floor:g} GB/s floor)" if low else ""
        return Verdict(False, SLOW_MEMBERS, dict(sorted(slow.items())), busbw,
                       f"{len(slow)} of {n} ranks are slow, bus bandwidth {bw_text}{below}: {detail}")
    if low:
        return Verdict(False, LOW_BUS_BANDWIDTH, {}, busbw,
                       f"all_reduce bus bandwidth {bw_text} is below the {floor:g} GB/s floor "
                       f"and no single rank explains it")
    summary = [f"bus bandwidth {bw_text}"]
    if links:
        summary.append(f"ring links {min(links.values()):.3g}-{max(links.values()):.3g} GB/s")
    if gflops:
        summary.append(f"local {min(gflops.values()):.3g}-{max(gflops.values()):.3g} GFLOP/s")
    return Verdict(True, PASSED, {}, busbw, f"{n} ranks passed: " + ", ".join(summary))


def _group_bus_bandwidth(samples: Mapping[int, RankSample], n: int) -> float | None:
    # The collective ends when its slowest member does, so the group's figure is the lowest.
    values = [s.bus_bandwidth_gbps for s in samples.values() if s.bus_bandwidth_gbps is not None]
    if n < 2 or not values:
        return None
    return min(values)


def bus_bandwidth_gbps(size_bytes: int, seconds: float, world_size: int) -> float:
    """nccl-tests' all_reduce bus bandwidth: size x 2(n-1)/n per second, in GB/s."""
    if seconds <= 0 or world_size < 2:
        return 0.0
    return size_bytes * 2 * (world_size - 1) / world_size / seconds / 1e9


def _ranks(ranks: Iterable[int]) -> str:
    """`0-3,7,9-10`: rank lists stay short in messages."""
    spans: list[list[int]] = []
    for r in sorted(set(ranks)):
        if spans and r == spans[-1][1] + 1:
            spans[-1][1] = r
        else:
            spans.append([r, r])
    return ",".join(str(a) if a == b else f"{a}-{b}" for a, b in spans)
