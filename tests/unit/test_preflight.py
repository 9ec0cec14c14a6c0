"""The gang preflight: the pure verdict, report and culprits as tables, the rendezvous protocol
over an in-memory store, and real three-process gloo runs of `python -m wanka.sdk.preflight`."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from wanka.core.preflight import (
    MASTER_BLAMED,
    MAX_MESSAGE_CHARS,
    MAX_REPORT_BYTES,
    NO_REPORT,
    PreflightReport,
    RankSample,
    Thresholds,
    bus_bandwidth_gbps,
    culprits,
    encode_report,
    judge,
    parse_report,
    peers_missing,
)
from wanka.sdk.preflight import PreflightConfig, Rendezvous, main, ring_phase

REPO = Path(__file__).resolve().parents[2]


def sample(rank: int, gflops: float = 100.0, link: float = 10.0, busbw: float = 5.0, **kw: Any) -> RankSample:
    return RankSample(rank, local_gflops=gflops, in_link_gbps=link, bus_bandwidth_gbps=busbw, **kw)


def ring(n: int, **by_rank: dict[str, Any]) -> dict[int, RankSample]:
    """n healthy samples; `by_rank={"r3": {...}}` changes rank 3's."""
    out = {r: sample(r) for r in range(n)}
    for key, changes in by_rank.items():
        r = int(key[1:])
        out[r] = sample(r, **changes)
    return out


# ---------------------------------------------------------------------------------------------
# judge
# ---------------------------------------------------------------------------------------------


@dataclass
class JudgeCase:
    name: str
    samples: dict[int, RankSample]
    world: int
    want_reason: str
    want_culprits: list[int] = field(default_factory=list)
    thresholds: Thresholds = field(default_factory=Thresholds)
    want_busbw: float | None = 5.0
    want_in_message: str = ""


JUDGE_CASES = [
    JudgeCase("all healthy", ring(4), 4, "Passed", want_in_message="4 ranks passed: bus bandwidth 5 GB/s"),
    JudgeCase(
        "a failed local check names its rank and skips the rest",
        ring(4, r2={"local_ok": False, "local_error": "no CUDA device is visible"}),
        4,
        "LocalCheckFailed",
        [2],
        want_busbw=None,
        want_in_message="rank 2: no CUDA device is visible",
    ),
    JudgeCase("a slow GPU", ring(4, r1={"gflops": 40.0}), 4, "SlowMembers", [1],
              want_in_message="local 40 GFLOP/s < 0.5x median 100"),
    JudgeCase("just above the slow factor is fine", ring(4, r1={"gflops": 51.0}), 4, "Passed"),
    JudgeCase("slow factor 0 turns the check off", ring(4, r1={"gflops": 1.0}), 4, "Passed",
              thresholds=Thresholds(slow_factor=0)),
    JudgeCase(
        "a slow NIC: the links into and out of rank 2 are both slow",
        # rank 2's in-link is its own figure; its out-link is rank 3's in-link
        ring(5, r2={"link": 2.0}, r3={"link": 2.0}),
        5,
        "SlowMembers",
        [2],
        want_in_message="links in 2/out 2 GB/s",
    ),
    JudgeCase("one slow link alone blames nobody", ring(5, r2={"link": 2.0}), 5, "Passed"),
    JudgeCase("two ranks cannot tell a link's ends apart", ring(2, r1={"link": 1.0}, r0={"link": 1.0}), 2,
              "Passed"),
    JudgeCase(
        "low bus bandwidth that no rank explains",
        ring(4, r0={"busbw": 3.0}),
        4,
        "LowBusBandwidth",
        thresholds=Thresholds(min_bus_bandwidth_gbps=4.0),
        want_busbw=3.0,
        want_in_message="below the 4 GB/s floor",
    ),
    JudgeCase(
        "a slow member explains low bus bandwidth",
        ring(4, r3={"gflops": 10.0, "busbw": 3.0}),
        4,
        "SlowMembers",
        [3],
        thresholds=Thresholds(min_bus_bandwidth_gbps=4.0),
        want_busbw=3.0,
    ),
    JudgeCase(
        "a collective error everywhere blames nobody",
        {r: sample(r, collective_error="RuntimeError: timed out") for r in range(3)},
        3,
        "CollectiveFailed",
        want_busbw=None,
    ),
    JudgeCase(
        "a rank that never reported its measurements is blamed",
        {r: sample(r, collective_error="Connection reset by peer") for r in range(3) if r != 1},
        3,
        "CollectiveFailed",
        [1],
        want_busbw=None,
        want_in_message="ranks 1 did not finish the collectives",
    ),
    JudgeCase("one rank: no bus bandwidth", {0: sample(0)}, 1, "Passed", want_busbw=None),
]


@pytest.mark.parametrize("case", JUDGE_CASES, ids=[c.name for c in JUDGE_CASES])
def test_judge(case: JudgeCase) -> None:
    verdict = judge(case.samples, case.world, case.thresholds)
    assert (verdict.ok, verdict.reason) == (case.want_reason == "Passed", case.want_reason)
    assert sorted(verdict.culprits) == case.want_culprits
    assert verdict.bus_bandwidth_gbps == case.want_busbw
    assert case.want_in_message in verdict.message


def test_every_rank_computes_the_same_verdict_whatever_order_it_reads_in() -> None:
    samples = ring(6, r4={"gflops": 10.0})
    backwards = dict(reversed(list(samples.items())))
    assert judge(samples, 6, Thresholds()) == judge(backwards, 6, Thresholds())


def test_peers_missing_names_each_missing_rank() -> None:
    verdict = peers_missing([7, 3, 4, 5], 8, 120)
    assert (verdict.ok, verdict.reason) == (False, "PeersMissing")
    assert verdict.culprits == {r: "did not reach the rendezvous within 120s" for r in (3, 4, 5, 7)}
    assert verdict.message.endswith("4 of 8 ranks did not reach the rendezvous within 120s: 3-5,7")


def test_bus_bandwidth_follows_nccl_tests() -> None:
    # 1 GB in 1 s over 4 ranks: 2(n-1)/n = 1.5
    assert bus_bandwidth_gbps(10**9, 1.0, 4) == pytest.approx(1.5)
    assert bus_bandwidth_gbps(10**9, 1.0, 1) == 0.0


@pytest.mark.parametrize("n", range(2, 40))
def test_ring_phases_time_every_link_alone(n: int) -> None:
    phases: dict[int, list[tuple[int, int]]] = {}
    for r in range(n):
        phases.setdefault(ring_phase(r, n), []).append((r, (r + 1) % n))
    assert sum(len(links) for links in phases.values()) == n
    for links in phases.values():
        ends = [end for link in links for end in link]
        assert len(ends) == len(set(ends)), "a rank is in two transfers of one phase"


# ---------------------------------------------------------------------------------------------
# The report and the operator's culprits
# ---------------------------------------------------------------------------------------------


GOOD = PreflightReport(2, 4, False, "PeersMissing", {3: "did not reach the rendezvous within 5s"}, None, "m")


def test_a_report_round_trips() -> None:
    for report in (GOOD, PreflightReport(0, 1, True, "Passed", {}, 12.5, "ok")):
        text = encode_report(report)
        assert '", "' not in text and '": ' not in text  # compact
        assert parse_report(text) == report
    assert parse_report("\n" + encode_report(GOOD) + "\n") == GOOD
    # a termination message that fell back to the log tail
    assert parse_report("starting\nINFO rank 2 ...\n" + encode_report(GOOD)) == GOOD


def as_doc(**changes: Any) -> str:
    doc = json.loads(encode_report(GOOD))
    doc.update(changes)
    return json.dumps(doc)


@pytest.mark.parametrize(
    "text",
    [
        "",
        "not json",
        "[]",
        json.dumps({"wankaBurnIn": 1}),
        as_doc(wankaPreflight=2),
        as_doc(wankaPreflight=True),
        as_doc(rank=True),
        as_doc(rank=4),
        as_doc(rank=-1),
        as_doc(worldSize="4"),
        as_doc(ok="false"),
        as_doc(reason=""),
        as_doc(culprits={"x": "why"}),
        as_doc(culprits={"3": 3}),
        as_doc(culprits=[3]),
        as_doc(busBandwidthGBps=-1.0),
        as_doc(busBandwidthGBps="fast"),
        as_doc(message=None),
        encode_report(GOOD).replace("null", "NaN"),
        encode_report(GOOD)[:-1],
        encode_report(GOOD) + " " * MAX_REPORT_BYTES,
    ],
)
def test_parse_report_rejects_what_is_not_a_report(text: str) -> None:
    assert parse_report(text) is None


def test_a_report_naming_thousands_of_ranks_fits_4096_bytes() -> None:
    many = PreflightReport(0, 5000, False, "PeersMissing", {r: "did not reach the rendezvous within 120s"
                                                             for r in range(1, 5000)}, None, "x" * 2000)
    text = encode_report(many)
    assert len(text.encode()) <= MAX_REPORT_BYTES
    parsed = parse_report(text)
    assert parsed is not None and not parsed.ok
    assert 100 < len(parsed.culprits) < 4999
    assert len(parsed.message) <= MAX_MESSAGE_CHARS
    assert parsed.message.endswith(f"(+{4999 - len(parsed.culprits)} more culprits not listed)")


def test_a_non_ascii_message_is_clipped_to_fit() -> None:
    text = encode_report(PreflightReport(0, 2, False, "CollectiveFailed", {}, None, "\U0001f600" * 600))
    assert len(text.encode()) <= MAX_REPORT_BYTES
    assert parse_report(text) is not None


def rep(rank: int, reason: str, named: Mapping[int, str] | None = None) -> PreflightReport:
    return PreflightReport(rank, 4, reason == "Passed", reason, dict(named or {}), None, "")


@dataclass
class CulpritCase:
    name: str
    reports: dict[int, PreflightReport | None]
    failed: list[int]
    want: dict[int, str]


MISSING = {3: "did not reach the rendezvous within 5s"}
CULPRIT_CASES = [
    CulpritCase("all passed", {r: rep(r, "Passed") for r in range(4)}, [], {}),
    CulpritCase(
        "the culprits any report names",
        {0: rep(0, "PeersMissing", MISSING), 1: rep(1, "PeersMissing", MISSING), 2: rep(2, "PeersMissing", MISSING),
         3: rep(3, "MasterUnreachable")},
        [0, 1, 2, 3],
        MISSING,
    ),
    CulpritCase(
        "a failed member with no report",
        {0: rep(0, "CollectiveFailed"), 1: None, 2: rep(2, "CollectiveFailed"), 3: rep(3, "CollectiveFailed")},
        [0, 1, 2, 3],
        {1: NO_REPORT},
    ),
    CulpritCase(
        "rank 0 silent while others could not reach it",
        {0: None, 1: rep(1, "MasterUnreachable"), 2: rep(2, "MasterUnreachable"), 3: None},
        [1, 2],
        {0: MASTER_BLAMED},
    ),
    CulpritCase(
        "rank 0 failed without a report: named as failed",
        {0: None, 1: rep(1, "MasterUnreachable")},
        [0, 1],
        {0: NO_REPORT},
    ),
    CulpritCase(
        "rank 0 reported: its rendezvous was up",
        {0: rep(0, "PeersMissing", {1: "x"}), 1: rep(1, "MasterUnreachable")},
        [0, 1],
        {1: "x"},
    ),
    CulpritCase(
        "nothing identifies anyone",
        {r: rep(r, "LowBusBandwidth") for r in range(4)},
        [0, 1, 2, 3],
        {},
    ),
    CulpritCase(
        "a member that has not failed and left no report is not blamed",
        {0: rep(0, "CollectiveFailed"), 1: None},
        [0],
        {},
    ),
]


@pytest.mark.parametrize("case", CULPRIT_CASES, ids=[c.name for c in CULPRIT_CASES])
def test_culprits(case: CulpritCase) -> None:
    assert culprits(case.reports, case.failed) == case.want


# ---------------------------------------------------------------------------------------------
# Settings and the rendezvous protocol, without torch
# ---------------------------------------------------------------------------------------------


def test_config_from_the_environment() -> None:
    c = PreflightConfig.from_env({"RANK": "2", "WORLD_SIZE": "4", "MASTER_ADDR": "job-0", "MASTER_PORT": "2345"})
    assert (c.rank, c.world_size, c.endpoint, c.backend, c.timeout) == (2, 4, "job-0:2345", "auto", 120.0)
    assert (c.slow_factor, c.min_bus_bandwidth_gbps, c.result_file) == (0.5, 0.0, "/dev/termination-log")
    assert (c.size_bytes("nccl"), c.size_bytes("gloo")) == (64 << 20, 4 << 20)
    c = PreflightConfig.from_env({"WANKA_PREFLIGHT_SIZE_MB": "0.5", "WANKA_PREFLIGHT_BACKEND": "GLOO"})
    assert (c.backend, c.size_bytes("nccl"), c.world_size) == ("gloo", 1 << 19, 1)


@pytest.mark.parametrize(
    ("env", "want"),
    [
        ({"RANK": "4", "WORLD_SIZE": "4"}, "0 <= RANK < WORLD_SIZE"),
        ({"WORLD_SIZE": "four"}, "WORLD_SIZE='four' is not an integer"),
        ({"WANKA_PREFLIGHT_BACKEND": "mpi"}, "use one of auto, nccl, gloo"),
        ({"WANKA_PREFLIGHT_SLOW_FACTOR": "-1"}, "must be a finite number >= 0"),
        ({"WANKA_PREFLIGHT_TIMEOUT_SECONDS": "0"}, "must be > 0"),
        ({"MASTER_PORT": "70000"}, "is not a TCP port"),
    ],
)
def test_config_refuses_a_bad_environment(env: dict[str, str], want: str) -> None:
    with pytest.raises(ValueError, match=want):
        PreflightConfig.from_env(env)


def test_a_bad_environment_is_a_report_not_a_traceback(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    result = tmp_path / "result"
    env = {"RANK": "1", "WORLD_SIZE": "x", "WANKA_PREFLIGHT_RESULT_FILE": str(result)}
    assert main(env) == 1
    report = parse_report(result.read_text())
    assert report is not None and (report.ok, report.reason, report.rank) == (False, "LocalCheckFailed", 1)
    assert "WORLD_SIZE='x'" in report.message
    assert parse_report(capsys.readouterr().out) == report


def test_no_torch_is_a_failed_local_check(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def no_torch() -> None:
        raise ModuleNotFoundError("No module named 'torch'")

    monkeypatch.setattr("wanka.sdk.preflight._torch", no_torch)
    result = tmp_path / "result"
    assert main({"RANK": "0", "WORLD_SIZE": "2", "WANKA_PREFLIGHT_RESULT_FILE": str(result)}) == 1
    report = parse_report(result.read_text())
    assert report is not None and (report.reason, list(report.culprits)) == ("LocalCheckFailed", [0])
    assert "No module named 'torch'" in report.message
    assert parse_report(capsys.readouterr().out) == report


def test_a_gang_of_one_checks_itself(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("torch")
    result = tmp_path / "result"
    assert main({"WANKA_PREFLIGHT_BACKEND": "gloo", "WANKA_PREFLIGHT_RESULT_FILE": str(result)}) == 0
    report = parse_report(result.read_text())
    assert report is not None and (report.ok, report.reason, report.bus_bandwidth_gbps) == (True, "Passed", None)
    assert "GFLOP/s" in report.message


class FakeStore:
    """TCPStore's methods the protocol uses, over a dict."""

    def __init__(self) -> None:
        self.data: dict[str, bytes] = {}

    def set(self, key: str, value: str) -> None:
        self.data[key] = value.encode()

    def get(self, key: str) -> bytes:
        return self.data[key]

    def add(self, key: str, amount: int) -> int:
        value = int(self.data.get(key, b"0")) + amount
        self.data[key] = str(value).encode()
        return value

    def check(self, keys: list[str]) -> bool:
        return all(k in self.data for k in keys)


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


def test_rank_0_names_the_ranks_that_never_arrived_and_the_others_adopt_its_verdict() -> None:
    store, clock = FakeStore(), FakeClock()
    config = PreflightConfig(rank=0, world_size=3, timeout=5)
    rank1 = Rendezvous(store, PreflightConfig(rank=1, world_size=3, timeout=5), clock=clock, sleep=clock.sleep)
    store.set("preflight/arrived/1", RankSample(1).to_json())  # rank 1 arrived; rank 2 never does
    verdict = Rendezvous(store, config, clock=clock, sleep=clock.sleep).arrive(RankSample(0))
    assert not isinstance(verdict, dict)
    assert (verdict.reason, verdict.culprits) == ("PeersMissing", {2: "did not reach the rendezvous within 5s"})
    assert 5 <= clock.now < 6
    adopted = rank1.arrive(RankSample(1))
    assert adopted == verdict


def test_everyone_arrived_gives_every_rank_every_local_sample() -> None:
    store, clock = FakeStore(), FakeClock()
    for r in (1, 2):
        store.set(f"preflight/arrived/{r}", RankSample(r, local_gflops=float(r)).to_json())
        store.add("preflight/arrivals", 1)
    word = Rendezvous(store, PreflightConfig(rank=0, world_size=3, timeout=5), clock=clock,
                      sleep=clock.sleep).arrive(RankSample(0))
    assert isinstance(word, dict) and sorted(word) == [0, 1, 2] and word[2].local_gflops == 2.0
    assert store.get("preflight/verdict") == b"go" and clock.now == 0


# ---------------------------------------------------------------------------------------------
# Real runs: three processes over gloo on this machine's CPU
# ---------------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def run_gang(tmp_path: Path, per_rank: Mapping[int, Mapping[str, str]], *, n: int = 3,
             timeout: float = 6) -> list[tuple[int, PreflightReport | None, str]]:
    """Start n ranks of `python -m wanka.sdk.preflight`; (exit code, stdout report, file) each."""
    port = free_port()
    procs = []
    for r in range(n):
        env = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join([str(REPO / "operator"), os.environ.get("PYTHONPATH", "")]),
            "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": str(port),
            "WORLD_SIZE": str(n),
            "RANK": str(r),
            "WANKA_PREFLIGHT_BACKEND": "gloo",
            "WANKA_PREFLIGHT_SIZE_MB": "1",
            "WANKA_PREFLIGHT_TIMEOUT_SECONDS": str(timeout),
            # A shared two-core test box times ranks noisily; the slow checks are the tables' job.
            "WANKA_PREFLIGHT_SLOW_FACTOR": "0",
            "WANKA_PREFLIGHT_RESULT_FILE": str(tmp_path / f"result-{r}"),
            **per_rank.get(r, {}),
        }
        procs.append(subprocess.Popen([sys.executable, "-m", "wanka.sdk.preflight"], env=env,
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    out = []
    for r, proc in enumerate(procs):
        stdout, stderr = proc.communicate(timeout=60)
        assert "Traceback" not in stderr, stderr
        lines = stdout.strip().splitlines()
        assert len(lines) == 1, stdout  # stdout carries the report alone
        out.append((proc.returncode, parse_report(lines[0]), (tmp_path / f"result-{r}").read_text()))
    return out


@pytest.fixture
def torch_gloo() -> None:
    torch = pytest.importorskip("torch")
    if not torch.distributed.is_available() or not torch.distributed.is_gloo_available():
        pytest.skip("torch has no gloo backend")


@pytest.mark.usefixtures("torch_gloo")
def test_a_healthy_gang_passes(tmp_path: Path) -> None:
    results = run_gang(tmp_path, {})
    for r, (code, report, text) in enumerate(results):
        assert report is not None and parse_report(text) == report
        assert (code, report.ok, report.reason, report.rank, report.world_size) == (0, True, "Passed", r, 3), report
        assert report.bus_bandwidth_gbps is not None and report.bus_bandwidth_gbps > 0
    assert len({(rep.message, rep.bus_bandwidth_gbps) for _, rep, _ in results if rep}) == 1


@pytest.mark.usefixtures("torch_gloo")
def test_a_rank_that_cannot_reach_the_master_fails_the_whole_gang(tmp_path: Path) -> None:
    results = run_gang(tmp_path, {2: {"MASTER_PORT": str(free_port())}}, timeout=5)
    assert [code for code, _, _ in results] == [1, 1, 1]
    reports = {r: rep for r, (_, rep, _) in enumerate(results)}
    for r in (0, 1):
        got = reports[r]
        assert got is not None and (got.reason, got.culprits) == (
            "PeersMissing", {2: "did not reach the rendezvous within 5s"})
    lost = reports[2]
    assert lost is not None and (lost.reason, lost.culprits) == ("MasterUnreachable", {})
    assert "cannot reach the rendezvous (rank 0) at 127.0.0.1:" in lost.message
    assert culprits(reports, [0, 1, 2]) == {2: "did not reach the rendezvous within 5s"}


@pytest.mark.usefixtures("torch_gloo")
def test_a_rank_whose_local_check_fails_is_named_by_every_rank(tmp_path: Path) -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("needs a machine without CUDA, so that nccl's local check fails")
    results = run_gang(tmp_path, {1: {"WANKA_PREFLIGHT_BACKEND": "nccl"}})
    assert [code for code, _, _ in results] == [1, 1, 1]
    for _, report, _ in results:
        assert report is not None and report.reason == "LocalCheckFailed"
        assert list(report.culprits) == [1] and "no CUDA device is visible" in report.culprits[1]


def test_the_sdk_and_the_core_import_no_torch() -> None:
    code = "import sys, wanka.sdk.preflight, wanka.core.preflight; print('torch' in sys.modules)"
    env = {**os.environ, "PYTHONPATH": str(REPO / "operator")}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60, check=True)
    assert out.stdout.strip() == "False"
