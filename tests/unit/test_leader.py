"""A hung API server fails a call instead of blocking the pass that made it."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator

import pytest
from kubernetes import client
from urllib3.exceptions import ReadTimeoutError

from wanka.cluster.kube import DeadlineApiClient

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
