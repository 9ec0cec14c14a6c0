"""Integration fixtures: one real control plane per session, the operator as a real process."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from wanka.cluster.devenv import install_crds, scrape_metrics, stop_process
from wanka.cluster.kube import api_client
from wanka.cluster.localcluster import REPO, ClusterStartError, LocalCluster, free_port

pytestmark = pytest.mark.integration

CRDS = REPO / "crds"


def wait_for(
    predicate: Callable[[], Any], timeout: float = 20, interval: float = 0.2, what: str = ""
) -> Any:
    """Poll until `predicate` returns something truthy; fail with `what` and the last value."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = predicate()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what or predicate}: last={last!r}")


def holds(predicate: Callable[[], Any], seconds: float, interval: float = 0.2, what: str = "") -> None:
    """Assert `predicate` stays truthy at every poll for `seconds` (for "nothing changes")."""
    deadline = time.monotonic() + seconds
    while True:
        value = predicate()
        assert value, f"{what or predicate} stopped holding: {value!r}"
        if time.monotonic() >= deadline:
            return
        time.sleep(interval)


class Cluster:
    """A handle on the session's control plane."""

    def __init__(self, local: LocalCluster) -> None:
        self.local = local
        self.kubeconfig = local.kubeconfig
        self.api = api_client(self.kubeconfig)
        self.core = client.CoreV1Api(self.api)
        self.custom = client.CustomObjectsApi(self.api)
        self.ext = client.ApiextensionsV1Api(self.api)

    def install_crds(self) -> None:
        install_crds(self.api, CRDS)

    # --- custom objects ------------------------------------------------------------------
    def create(self, plural: str, body: dict[str, Any], namespace: str = "") -> dict[str, Any]:
        if namespace:
            return dict(self.custom.create_namespaced_custom_object("wanka.io", "v1alpha1", namespace, plural, body))
        return dict(self.custom.create_cluster_custom_object("wanka.io", "v1alpha1", plural, body))

    def get(self, plural: str, name: str, namespace: str = "") -> dict[str, Any]:
        if namespace:
            return dict(self.custom.get_namespaced_custom_object("wanka.io", "v1alpha1", namespace, plural, name))
        return dict(self.custom.get_cluster_custom_object("wanka.io", "v1alpha1", plural, name))

    def delete(self, plural: str, name: str, namespace: str = "") -> None:
        try:
            if namespace:
                self.custom.delete_namespaced_custom_object("wanka.io", "v1alpha1", namespace, plural, name)
            else:
                self.custom.delete_cluster_custom_object("wanka.io", "v1alpha1", plural, name)
        except ApiException as exc:
            if exc.status != 404:
                raise

    def events_for(self, name: str, namespace: str = "default") -> list[Any]:
        evs = self.core.list_namespaced_event(namespace).items
        return [e for e in evs if e.involved_object.name == name]


@pytest.fixture(scope="session")
def cluster(pytestconfig: pytest.Config) -> Iterator[Cluster]:
    state = Path(tempfile.mkdtemp(prefix="wanka-it-"))
    local = LocalCluster(state)
    # The first run builds the control plane for many minutes: let its progress through.
    capture = pytestconfig.pluginmanager.getplugin("capturemanager")
    try:
        with capture.global_and_fixture_disabled() if capture else contextlib.nullcontext():
            local.binaries()
        local.up()
    except ClusterStartError as exc:
        # ERROR, never skip: the message carries the failing component's log tail.
        pytest.fail(f"the local control plane did not start: {exc}", pytrace=False)
    handle = Cluster(local)
    try:
        handle.install_crds()
        yield handle
    finally:
        local.down()


@pytest.fixture
def namespace(cluster: Cluster) -> Iterator[str]:
    name = f"t-{uuid.uuid4().hex[:8]}"
    cluster.core.create_namespace({"metadata": {"name": name}})
    # The ServiceAccount admission plugin refuses pods until the controller-manager made "default".
    wait_for(lambda: _has_sa(cluster, name), 30, what=f"default ServiceAccount in {name}")
    yield name
    cluster.core.delete_namespace(name)


def _has_sa(cluster: Cluster, ns: str) -> bool:
    try:
        cluster.core.read_namespaced_service_account("default", ns)
    except ApiException:
        return False
    return True


class OperatorProcess:
    """`wanka run` as a child process against the session cluster."""

    def __init__(
        self, cluster: Cluster, log_dir: Path, env: dict[str, str] | None = None,
        args: list[str] | None = None, kubeconfig: Path | None = None,
    ) -> None:
        self.cluster = cluster
        self.extra_env = env or {}
        self.extra_args = args or []
        self.kubeconfig = kubeconfig or cluster.kubeconfig
        self.log_path = log_dir / f"operator-{uuid.uuid4().hex[:6]}.log"
        self.metrics_port = free_port()
        self.health_port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        env = dict(os.environ, PYTHONPATH=str(REPO / "operator"), PYTHONUNBUFFERED="1",
                   **self.extra_env)
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "wanka.cli", "run", "--kubeconfig", str(self.kubeconfig),
                 "--metrics-port", str(self.metrics_port), "--metrics-addr", "127.0.0.1",
                 "--health-port", str(self.health_port), "--health-addr", "127.0.0.1",
                 *self.extra_args],
                stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True,
            )
        wait_for(self._healthy, 30, what="operator liveness endpoint")

    def _healthy(self) -> bool:
        import urllib.request

        if self.proc and self.proc.poll() is not None:
            raise AssertionError(f"operator exited {self.proc.returncode}:\n{self.log_tail()}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.health_port}/healthz", timeout=1) as r:
                return bool(r.status == 200)
        except OSError:
            return False

    def metrics(self) -> str:
        return scrape_metrics(self.metrics_port)

    def kill(self) -> None:
        """SIGKILL: an operator crash at whatever line it was on."""
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def stop(self) -> None:
        if self.proc:
            stop_process(self.proc)

    def log_tail(self, lines: int = 60) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def alive(self) -> bool:
        return bool(self.proc and self.proc.poll() is None)


@pytest.fixture(scope="module")
def operator(cluster: Cluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[OperatorProcess]:
    proc = OperatorProcess(cluster, tmp_path_factory.mktemp("operator"))
    proc.start()
    yield proc
    alive = proc.alive()
    proc.stop()
    assert alive, f"the operator died during the tests:\n{proc.log_tail()}"
