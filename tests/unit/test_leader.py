"""Leader election on the replica's own clock, a loop that survives any error, and fenced writes.

The elector runs against a pure-Python fake of the three Lease calls (with resourceVersion
preconditions) and an injected monotonic clock; the fences are exercised through the real
write classes pointed at a port where nothing listens, so a write that was sent shows up
as a connection error and a fenced one as NotLeader.
"""

from __future__ import annotations

import copy
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from kubernetes import client
from urllib3.exceptions import NewConnectionError, ReadTimeoutError

from wanka.cluster.fence import NotLeader
from wanka.cluster.health import ApiNodePatcher
from wanka.cluster.jobio import JobIO
from wanka.cluster.kube import DeadlineApiClient
from wanka.cluster.leader import Lease, LeaseConflict, LeaseElector
from wanka.cluster.writer import EventRecorder, StatusWriter
from wanka.core.accounting import PoolSummary
from wanka.metrics import LEADER_ELECTION_ERRORS, PoolCollector

NS, NAME = "wanka-system", "wanka-operator"


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class LeaseServer:
    """The Lease objects, with the API's optimistic concurrency (a resourceVersion per write)."""

    def __init__(self) -> None:
        self.leases: dict[tuple[str, str], Lease] = {}
        self.version = 0

    def _stored(self, body: Lease) -> Lease:
        self.version += 1
        stored = copy.deepcopy(body)
        stored.setdefault("metadata", {})["resourceVersion"] = str(self.version)
        key = (stored["metadata"]["namespace"], stored["metadata"]["name"])
        self.leases[key] = stored
        return copy.deepcopy(stored)

    def holder(self) -> str | None:
        lease = self.leases.get((NS, NAME))
        return None if lease is None else lease["spec"].get("holderIdentity")


class Leases:
    """One replica's connection to the LeaseServer. `down` makes every call fail as a dead API
    server does; `before_replace` runs between this replica's read and its write (a race)."""

    def __init__(self, server: LeaseServer) -> None:
        self.server = server
        self.down: Exception | None = None
        self.before_replace: Callable[[], object] | None = None

    def _up(self) -> None:
        if self.down is not None:
            raise self.down

    def get(self, namespace: str, name: str) -> Lease | None:
        self._up()
        lease = self.server.leases.get((namespace, name))
        return copy.deepcopy(lease) if lease else None

    def create(self, namespace: str, body: Lease) -> Lease:
        self._up()
        if (namespace, body["metadata"]["name"]) in self.server.leases:
            raise LeaseConflict("AlreadyExists")
        return self.server._stored(body)

    def replace(self, namespace: str, name: str, body: Lease) -> Lease:
        self._up()
        if self.before_replace is not None:
            self.before_replace()
        current = self.server.leases.get((namespace, name))
        if current is None or current["metadata"]["resourceVersion"] != body["metadata"].get("resourceVersion"):
            raise LeaseConflict("Conflict")
        return self.server._stored(body)


@dataclass
class Replica:
    elector: LeaseElector
    conn: Leases


def replica(server: LeaseServer, identity: str, clock: Clock,
            wall: Callable[[], datetime] = lambda: datetime.now(UTC)) -> Replica:
    conn = Leases(server)
    return Replica(LeaseElector(conn, NS, NAME, identity=identity, lease_duration=15, renew_deadline=10,
                                retry_period=2, clock=clock, wall=wall), conn)


def run_for(seconds: float, clock: Clock, *electors: LeaseElector) -> None:
    """Tick every elector once per retry period for `seconds` of the fake clock."""
    end = clock.now + seconds
    while clock.now < end:
        for e in electors:
            e.tick()
        clock.advance(2)


def settled(seconds: float = 10, a_wall: Callable[[], datetime] = lambda: datetime.now(UTC),
            ) -> tuple[LeaseServer, Clock, Replica, Replica]:
    """Replicas a and b, a started first and leads, both ticking for `seconds`."""
    server, clock = LeaseServer(), Clock()
    a, b = replica(server, "a", clock, a_wall), replica(server, "b", clock)
    assert a.elector.tick() is True
    run_for(seconds, clock, a.elector, b.elector)
    return server, clock, a, b


def test_the_first_replica_creates_the_lease_and_the_second_stands_by() -> None:
    server, _, a, b = settled(60)
    assert a.elector.is_leader and not b.elector.is_leader
    assert server.holder() == "a" and a.elector.term == 1 and b.elector.term == 0
    assert server.leases[(NS, NAME)]["spec"]["leaseTransitions"] == 0


@pytest.mark.parametrize("skew", [timedelta(hours=-3), timedelta(hours=3)], ids=["slow", "fast"])
def test_expiry_ignores_the_holders_wall_clock(skew: timedelta) -> None:
    """A holder whose clock is hours off neither loses its live lease nor keeps a dead one."""
    server, clock, a, b = settled(40, a_wall=lambda: datetime.now(UTC) + skew)
    assert server.holder() == "a" and a.elector.is_leader and not b.elector.is_leader, "a live lease is kept"

    # a stops renewing: b takes over one lease duration after it last saw the record change.
    last_change = clock.now - 2  # a's last renewal, seen by b in that same round
    while not b.elector.tick():
        assert clock.now - last_change < 15 + 2, "b waited longer than the lease duration"
        clock.advance(2)
    assert clock.now - last_change >= 15, "b took over before the lease duration had passed"
    assert server.holder() == "b" and b.elector.term == 1
    assert server.leases[(NS, NAME)]["spec"]["leaseTransitions"] == 1


def test_a_candidate_that_starts_late_waits_a_full_duration_from_its_own_first_look() -> None:
    server, clock = LeaseServer(), Clock()
    replica(server, "a", clock).elector.tick()  # renewed once, then silent for a long time
    clock.advance(3600)
    b = replica(server, "b", clock).elector
    assert b.tick() is False, "an hour-old renewTime proves nothing to a replica that just started"
    clock.advance(14)
    assert b.tick() is False
    clock.advance(1)
    assert b.tick() is True


def test_a_leader_that_cannot_renew_steps_down_before_anyone_can_take_over() -> None:
    server, clock, a, b = settled()
    errors = LEADER_ELECTION_ERRORS._value.get()
    a.conn.down = ConnectionRefusedError(111, "Connection refused")
    renewed = clock.now - 2
    while not b.elector.tick():
        assert a.elector.tick() is (clock.now - renewed < 10), "a leads exactly until its renew deadline"
        clock.advance(1)
    assert not a.elector.is_leader, "two leaders at once"
    assert clock.now - renewed >= 15
    assert LEADER_ELECTION_ERRORS._value.get() > errors, "failed attempts are counted"

    # The API comes back: a's loop was never broken, it now sees b's live lease and stands by.
    a.conn.down = None
    run_for(30, clock, a.elector, b.elector)
    assert b.elector.is_leader and not a.elector.is_leader and server.holder() == "b"


@pytest.mark.parametrize("error", [ConnectionRefusedError(111, "refused"), TimeoutError("read timed out"),
                                   ValueError("garbage from a proxy"), KeyError("spec")])
def test_tick_survives_any_error_and_recovers(error: Exception) -> None:
    server, clock = LeaseServer(), Clock()
    a = replica(server, "a", clock)
    a.conn.down = error
    for _ in range(5):
        assert a.elector.tick() is False
        clock.advance(2)
    a.conn.down = None
    assert a.elector.tick() is True and server.holder() == "a"


def test_a_lost_race_is_not_leadership() -> None:
    server, clock, a, b = settled()
    clock.advance(16)  # a seems gone to b...
    b.conn.before_replace = a.elector.tick  # ...but renews between b's read and b's write
    assert b.elector.tick() is False, "a replace on a stale resourceVersion wins nothing"
    assert server.holder() == "a" and a.elector.is_leader and b.elector.term == 0


def test_release_lets_the_standby_take_over_at_once() -> None:
    server, _, a, b = settled()
    a.elector.release()
    assert not a.elector.is_leader and server.holder() is None
    assert b.elector.tick() is True


def test_renew_deadline_must_be_shorter_than_the_lease() -> None:
    with pytest.raises(ValueError):
        LeaseElector(Leases(LeaseServer()), NS, NAME, lease_duration=10, renew_deadline=10)


# --- fences on the write layer -------------------------------------------------------------

@pytest.fixture
def nowhere() -> client.ApiClient:
    """An ApiClient for a port where nothing listens: any request that is sent fails."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cfg = client.Configuration()
    cfg.host = f"http://127.0.0.1:{port}"
    cfg.retries = False
    return DeadlineApiClient(configuration=cfg)


POD = {"kind": "Pod", "metadata": {"name": "p", "namespace": "ns"}}
WRITES: dict[str, Callable[[client.ApiClient, Callable[[], bool]], None]] = {
    "job status": lambda api, f: JobIO(api, f).patch_status("ns", "j", "1", {"phase": "Running"}),
    "finalizers": lambda api, f: JobIO(api, f).set_finalizers("ns", "j", "1", []),
    "create pod": lambda api, f: JobIO(api, f).ensure(POD),
    "bind": lambda api, f: JobIO(api, f).bind("ns", "p", "n1") and None,
    "delete pod": lambda api, f: JobIO(api, f).delete_pod("ns", "p"),
    "configmap": lambda api, f: JobIO(api, f).put_configmap("ns", "c", {"k": "v"}),
    "job node patch": lambda api, f: JobIO(api, f).patch_node("n1", {}),
    "owned": lambda api, f: JobIO(api, f).delete_owned("ns", "j", {"Service": "j"}),
    "pool status": lambda api, f: StatusWriter(api, f).patch_status("gpupools", "", "p", {}) and None,
    "event": lambda api, f: EventRecorder(api, fence=f).record(POD, "Normal", "Test", "m"),
    "node taint": lambda api, f: ApiNodePatcher(api, f).patch_node("n1", {}),
}


@pytest.mark.parametrize("write", list(WRITES), ids=list(WRITES))
def test_a_fenced_write_is_never_sent(write: str, nowhere: client.ApiClient) -> None:
    with pytest.raises(NotLeader):
        WRITES[write](nowhere, lambda: False)


@pytest.mark.parametrize("write", [w for w in WRITES if w not in ("event", "bind")])
def test_an_open_fence_lets_the_write_through(write: str, nowhere: client.ApiClient) -> None:
    # Events and binds report a failure instead of raising; the rest reach the (absent) server.
    with pytest.raises(NewConnectionError):
        WRITES[write](nowhere, lambda: True)


# --- metrics -------------------------------------------------------------------------------

def scrape(leading: bool) -> dict[str, list[Any]]:
    summary = PoolSummary(gpus_total=16)
    collector = PoolCollector(lambda: {"p": summary}, leader=lambda: leading)
    return {m.name: m.samples for m in collector.collect()}


def test_only_the_leader_exports_pool_gauges() -> None:
    leader, standby = scrape(True), scrape(False)
    assert [s.value for s in leader["wanka_leader"]] == [1.0]
    assert [(s.labels, s.value) for s in leader["wanka_pool_gpus_capacity"]] == [({"pool": "p"}, 16)]
    assert [s.value for s in standby["wanka_leader"]] == [0.0]
    assert set(standby) == {"wanka_leader"}


# --- timeouts ------------------------------------------------------------------------------

@pytest.fixture
def silent_server() -> Iterator[int]:
    """A server that accepts connections and never answers: a hung API server."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        listener.settimeout(0.1)
        while not stop.is_set():
            try:
                held.append(listener.accept()[0])
            except OSError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield int(listener.getsockname()[1])
    stop.set()
    thread.join()
    for conn in held:
        conn.close()
    listener.close()


def test_a_hung_api_server_fails_a_call_that_names_no_timeout(silent_server: int) -> None:
    cfg = client.Configuration()
    cfg.host = f"http://127.0.0.1:{silent_server}"
    cfg.retries = False
    api = DeadlineApiClient(configuration=cfg)
    api.request_timeout = (1.0, 0.5)
    started = time.monotonic()
    with pytest.raises(ReadTimeoutError):
        client.CoreV1Api(api).read_node("n1")
    assert time.monotonic() - started < 5
