"""Fenced writes, and deadlines on every call.

The fences are exercised through the real write classes pointed at a port where nothing
listens, so a write that was sent shows up as a connection error and a fenced one as NotLeader.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Iterator

import pytest
from kubernetes import client
from urllib3.exceptions import NewConnectionError, ReadTimeoutError

from wanka.cluster.fence import NotLeader
from wanka.cluster.health import ApiNodePatcher
from wanka.cluster.jobio import JobIO
from wanka.cluster.kube import DeadlineApiClient
from wanka.cluster.writer import EventRecorder, StatusWriter

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
