"""A whole local environment for the demo and the benchmarks: control plane, CRDs, operator."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from wanka.cluster.kube import api_client
from wanka.cluster.localcluster import REPO, LocalCluster, free_port


def install_crds(api: client.ApiClient, crd_dir: Path = REPO / "crds", timeout: float = 30) -> None:
    """Create (or replace) every CRD in `crd_dir` and wait until each is Established."""
    ext = client.ApiextensionsV1Api(api)
    names = []
    for path in sorted(crd_dir.glob("*.yaml")):
        body = yaml.safe_load(path.read_text())
        names.append(body["metadata"]["name"])
        try:
            ext.create_custom_resource_definition(body)
        except ApiException as exc:
            if exc.status != 409:
                raise
            current = ext.read_custom_resource_definition(body["metadata"]["name"])
            body["metadata"]["resourceVersion"] = current.metadata.resource_version
            ext.replace_custom_resource_definition(body["metadata"]["name"], body)
    deadline = time.monotonic() + timeout
    for name in names:
        while True:
            crd = ext.read_custom_resource_definition(name)
            if any(c.type == "Established" and c.status == "True" for c in crd.status.conditions or []):
                break
            if time.monotonic() > deadline:
                raise TimeoutError(f"CRD {name} not Established after {timeout}s")
            time.sleep(0.1)


@dataclass
class Operator:
    proc: subprocess.Popen[bytes]
    log: Path
    metrics_port: int
    health_port: int

    def metrics(self) -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=5) as r:  # noqa: S310
            return str(r.read().decode())

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


def start_operator(kubeconfig: Path, log: Path, *args: str, detach: bool = False,
                   env: dict[str, str] | None = None, timeout: float = 30) -> Operator:
    """`wanka run` as a child process; returns once its liveness endpoint answers."""
    metrics, health = free_port(), free_port()
    full_env = {**os.environ, "PYTHONPATH": str(REPO / "operator"), "PYTHONUNBUFFERED": "1", **(env or {})}
    with open(log, "ab") as fh:
        proc = subprocess.Popen(
            [sys.executable, "-m", "wanka.cli", "run", "--kubeconfig", str(kubeconfig),
             "--metrics-port", str(metrics), "--metrics-addr", "127.0.0.1",
             "--health-port", str(health), "--health-addr", "127.0.0.1", *args],
            stdout=fh, stderr=subprocess.STDOUT, env=full_env, start_new_session=detach,
        )
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the operator exited with {proc.returncode}; see {log}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{health}/healthz", timeout=1) as r:  # noqa: S310
                if r.status == 200:
                    return Operator(proc, log, metrics, health)
        except OSError:
            time.sleep(0.2)
    proc.kill()
    raise RuntimeError(f"the operator did not become live within {timeout}s; see {log}")


def create(api: client.ApiClient, plural: str, body: dict[str, Any], namespace: str = "") -> None:
    """Create a Wanka object; an existing one is left as it is."""
    custom = client.CustomObjectsApi(api)
    try:
        if namespace:
            custom.create_namespaced_custom_object("wanka.io", "v1alpha1", namespace, plural, body)
        else:
            custom.create_cluster_custom_object("wanka.io", "v1alpha1", plural, body)
    except ApiException as exc:
        if exc.status != 409:
            raise


@dataclass
class DevEnv:
    cluster: LocalCluster
    api: client.ApiClient
    operator: Operator


@contextmanager
def devenv(state_dir: Path, keep: bool = False) -> Iterator[DevEnv]:
    """Control plane + CRDs + operator; everything stopped afterwards unless `keep`."""
    cluster = LocalCluster(state_dir / "cluster")
    kubeconfig = cluster.up()
    operator = None
    try:
        api = api_client(kubeconfig)
        install_crds(api)
        operator = start_operator(kubeconfig, state_dir / "operator.log", detach=keep)
        yield DevEnv(cluster, api, operator)
    finally:
        if not keep:
            if operator is not None:
                operator.stop()
            cluster.down()
