"""A real local control plane on loopback: etcd, kube-apiserver, kube-controller-manager and kwok.

Processes run from binaries built by hack/build-binaries.sh, each in its own session, on free
ports, with all state (PKI, etcd data, logs, PIDs) in one directory so that parallel clusters
never collide and `down()` stops exactly what `up()` started.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

import yaml

REPO = Path(__file__).resolve().parents[3]
BUILD_SCRIPT = REPO / "hack" / "build-binaries.sh"
KWOK_CONFIG = REPO / "hack" / "kwok.yaml"
KWOK_NODE_ANNOTATION = ("kwok.x-k8s.io/node", "fake")


class ClusterStartError(RuntimeError):
    """A component did not come up; the message carries the tail of its log."""


def build_binaries(echo: TextIO | None = None, script: Path = BUILD_SCRIPT) -> Path:
    """Build (or reuse) the control-plane binaries; returns their directory. What the build says
    (steps, elapsed time) is copied line by line to `echo`, stderr by default, as it happens."""
    echo = echo or sys.stderr
    tail: deque[str] = deque(maxlen=40)
    proc = subprocess.Popen(["bash", str(script)], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env=dict(os.environ))
    assert proc.stdout is not None
    for line in proc.stdout:
        tail.append(line.rstrip("\n"))
        echo.write(line)
        echo.flush()
    if proc.wait() != 0:
        raise ClusterStartError(
            f"building the control-plane binaries failed ({script}):\n" + "\n".join(tail))
    return Path(tail[-1].strip())


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def write_private(path: Path, text: str) -> None:
    """Write a file only its owner can read (tokens, keys, kubeconfigs), whatever the umask."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.fchmod(fd, 0o600)  # an existing file keeps its mode through O_CREAT
    with os.fdopen(fd, "w") as fh:
        fh.write(text)


def _openssl(*args: str, cwd: Path) -> None:
    proc = subprocess.run(["openssl", *args], cwd=cwd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise ClusterStartError(f"openssl {' '.join(args)} failed: {proc.stderr.strip()}")


def make_pki(pki: Path) -> None:
    """A CA, the apiserver's serving certificate and the service-account signing key."""
    pki.mkdir(mode=0o700, parents=True, exist_ok=True)
    pki.chmod(0o700)
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out",
             "ca.crt", "-days", "3650", "-subj", "/CN=wanka-local-ca", cwd=pki)
    (pki / "san.ext").write_text(
        "subjectAltName=IP:127.0.0.1,IP:10.96.0.1,DNS:localhost,DNS:kubernetes,"
        "DNS:kubernetes.default,DNS:kubernetes.default.svc\n"
        "extendedKeyUsage=serverAuth\n"
    )
    _openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", "apiserver.key", "-out",
             "apiserver.csr", "-subj", "/CN=kube-apiserver", cwd=pki)
    _openssl("x509", "-req", "-in", "apiserver.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
             "-CAcreateserial", "-out", "apiserver.crt", "-days", "3650", "-extfile", "san.ext",
             cwd=pki)
    _openssl("genrsa", "-out", "sa.key", "2048", cwd=pki)
    _openssl("rsa", "-in", "sa.key", "-pubout", "-out", "sa.pub", cwd=pki)
    for key in pki.glob("*.key"):
        key.chmod(0o600)


def kubeconfig_dict(server: str, ca_file: Path, token: str, user: str = "admin") -> dict[str, object]:
    import base64

    ca = base64.b64encode(ca_file.read_bytes()).decode()
    return {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "wanka-local", "cluster": {"server": server,
                                                         "certificate-authority-data": ca}}],
        "users": [{"name": user, "user": {"token": token}}],
        "contexts": [{"name": "wanka-local", "context": {"cluster": "wanka-local", "user": user}}],
        "current-context": "wanka-local",
    }


@dataclass
class LocalCluster:
    """One local control plane whose whole state lives in `state_dir`."""

    state_dir: Path
    bin_dir: Path | None = None
    with_controller_manager: bool = True
    ports: dict[str, int] = field(default_factory=dict)
    # Each component's command line, to start it again exactly as it was (restart_apiserver).
    argv: dict[str, list[str]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        # Children run with the state dir as their cwd: every path handed to them is absolute.
        self.state_dir = Path(self.state_dir).resolve()

    @property
    def kubeconfig(self) -> Path:
        return self.state_dir / "kubeconfig"

    @property
    def logs(self) -> Path:
        return self.state_dir / "logs"

    @property
    def pid_file(self) -> Path:
        return self.state_dir / "pids.json"

    def pids(self) -> dict[str, int]:
        """The running control plane's processes by name (etcd, kube-apiserver, ...)."""
        return self._pids()

    def _pids(self) -> dict[str, int]:
        if not self.pid_file.exists():
            return {}
        data: dict[str, int] = json.loads(self.pid_file.read_text())
        return data

    def _start(self, name: str, argv: list[str]) -> subprocess.Popen[bytes]:
        self.logs.mkdir(parents=True, exist_ok=True)
        log = open(self.logs / f"{name}.log", "ab")  # noqa: SIM115 - the child owns it
        proc = subprocess.Popen(
            argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True, cwd=self.state_dir,
        )
        log.close()
        self.argv[name] = argv
        pids = self._pids()
        pids[name] = proc.pid
        self.pid_file.write_text(json.dumps(pids))
        return proc

    def log_tail(self, name: str, lines: int = 30) -> str:
        path = self.logs / f"{name}.log"
        if not path.exists():
            return f"(no log at {path})"
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])

    def _wait(self, name: str, proc: subprocess.Popen[bytes], ready: object, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise ClusterStartError(
                    f"{name} exited with code {proc.returncode}; last log lines:\n"
                    + self.log_tail(name)
                )
            if ready():  # type: ignore[operator]
                return
            time.sleep(0.2)
        raise ClusterStartError(
            f"{name} not ready after {timeout:.0f}s; last log lines:\n" + self.log_tail(name)
        )

    @staticmethod
    def _http_ok(url: str, token: str | None = None, ca: Path | None = None) -> bool:
        ctx: ssl.SSLContext | None = None
        if url.startswith("https"):
            ctx = ssl.create_default_context(cafile=str(ca)) if ca else ssl._create_unverified_context()
        req = urllib.request.Request(url)
        if token:
            req.add_header("Authorization", f"Bearer {token}")
        try:
            with urllib.request.urlopen(req, timeout=2, context=ctx) as resp:
                return bool(resp.status == 200)
        except (urllib.error.URLError, OSError, ssl.SSLError):
            return False

    def binaries(self) -> Path:
        """The control plane's binaries, built on first use (slow: minutes, with progress)."""
        if self.bin_dir is None:
            self.bin_dir = build_binaries()
        return self.bin_dir

    def up(self, timeout: float = 120) -> Path:
        """Start every component and return the admin kubeconfig path."""
        if self._pids():
            self.down()
        self.state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        bins = self.binaries()
        pki = self.state_dir / "pki"
        make_pki(pki)
        token = secrets.token_hex(16)
        write_private(pki / "tokens.csv", f'{token},wanka-admin,wanka-admin,"system:masters"\n')
        self.ports = {n: free_port() for n in ("etcd", "etcd-peer", "apiserver", "kcm", "kwok")}
        (self.state_dir / "ports.json").write_text(json.dumps(self.ports))
        try:
            self._up(bins, pki, token, timeout)
        except BaseException:
            self.down(keep_logs=True)
            raise
        return self.kubeconfig

    def _up(self, bins: Path, pki: Path, token: str, timeout: float) -> None:
        p = self.ports
        etcd_url = f"http://127.0.0.1:{p['etcd']}"
        etcd = self._start("etcd", [
            str(bins / "etcd"), "--data-dir", str(self.state_dir / "etcd"), "--name", "wanka",
            "--listen-client-urls", etcd_url, "--advertise-client-urls", etcd_url,
            "--listen-peer-urls", f"http://127.0.0.1:{p['etcd-peer']}",
            "--initial-advertise-peer-urls", f"http://127.0.0.1:{p['etcd-peer']}",
            "--initial-cluster", f"wanka=http://127.0.0.1:{p['etcd-peer']}",
            "--unsafe-no-fsync", "--log-level", "warn", "--quota-backend-bytes", str(2 << 30),
        ])
        self._wait("etcd", etcd, lambda: self._http_ok(f"{etcd_url}/health"), timeout)

        server = f"https://127.0.0.1:{p['apiserver']}"
        apiserver = self._start("kube-apiserver", [
            str(bins / "kube-apiserver"),
            f"--etcd-servers={etcd_url}",
            "--bind-address=127.0.0.1", f"--secure-port={p['apiserver']}",
            "--advertise-address=127.0.0.1", "--endpoint-reconciler-type=none",
            f"--tls-cert-file={pki / 'apiserver.crt'}",
            f"--tls-private-key-file={pki / 'apiserver.key'}",
            f"--client-ca-file={pki / 'ca.crt'}",
            f"--token-auth-file={pki / 'tokens.csv'}",
            "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
            f"--service-account-key-file={pki / 'sa.pub'}",
            f"--service-account-signing-key-file={pki / 'sa.key'}",
            "--service-cluster-ip-range=10.96.0.0/16",
            "--authorization-mode=RBAC",
            "--allow-privileged=true",
            "--profiling=false",
            "--event-ttl=1h",
            # MutatingAdmissionPolicy is beta and off by default in v1.34: the chart's plain-pod
            # slice policy (templates/podslices.yaml) needs both the gate and the served API.
            "--feature-gates=MutatingAdmissionPolicy=true",
            "--runtime-config=admissionregistration.k8s.io/v1beta1=true",
            *([] if self.with_controller_manager else ["--disable-admission-plugins=ServiceAccount"]),
        ])
        self._wait("kube-apiserver", apiserver, self._apiserver_ready, timeout)
        write_private(self.kubeconfig, yaml.safe_dump(kubeconfig_dict(server, pki / "ca.crt", token)))

        if self.with_controller_manager:
            kc = str(self.kubeconfig)
            kcm = self._start("kube-controller-manager", [
                str(bins / "kube-controller-manager"),
                f"--kubeconfig={kc}", f"--authentication-kubeconfig={kc}",
                f"--authorization-kubeconfig={kc}",
                "--bind-address=127.0.0.1", f"--secure-port={p['kcm']}",
                "--leader-elect=false",
                f"--service-account-private-key-file={pki / 'sa.key'}",
                f"--root-ca-file={pki / 'ca.crt'}",
                f"--cluster-signing-cert-file={pki / 'ca.crt'}",
                f"--cluster-signing-key-file={pki / 'ca.key'}",
                "--controllers=*,-bootstrapsigner,-tokencleaner,-nodeipam,-service-lb-controller,"
                "-cloud-node-lifecycle,-persistentvolume-binder,-attachdetach,-ephemeral-volume",
                "--concurrent-gc-syncs=5",
                # Sized for 1,250+ nodes: at the default client QPS (20) the node lifecycle
                # controller needs minutes to lift the not-ready taints of a fleet that joins at once.
                "--kube-api-qps=1000", "--kube-api-burst=2000",
                "--profiling=false",
            ])
            self._wait("kube-controller-manager", kcm,
                       lambda: self._http_ok(f"https://127.0.0.1:{p['kcm']}/healthz"), timeout)

        kwok = self._start("kwok", [
            str(bins / "kwok"), f"--kubeconfig={self.kubeconfig}",
            "--manage-all-nodes=false",
            f"--manage-nodes-with-annotation-selector={'='.join(KWOK_NODE_ANNOTATION)}",
            f"--config={KWOK_CONFIG}",
            f"--server-address=127.0.0.1:{p['kwok']}",
            "--cidr=10.244.0.0/16", "--node-ip=10.1.0.1",
        ])
        self._wait("kwok", kwok, lambda: self._http_ok(f"http://127.0.0.1:{p['kwok']}/healthz"),
                   timeout)

    def _apiserver_ready(self) -> bool:
        pki = self.state_dir / "pki"
        token = (pki / "tokens.csv").read_text().split(",", 1)[0]
        return self._http_ok(f"https://127.0.0.1:{self.ports['apiserver']}/readyz", token, pki / "ca.crt")

    def restart_apiserver(self, timeout: float = 120) -> None:
        """Stop the kube-apiserver and start it again on the same port with the same flags, as
        an upgrade or a crash does under running clients; returns once /readyz answers."""
        _stop([self._pids()["kube-apiserver"]])
        proc = self._start("kube-apiserver", self.argv["kube-apiserver"])
        self._wait("kube-apiserver", proc, self._apiserver_ready, timeout)

    def down(self, keep_logs: bool = False) -> None:
        """Stop every process this cluster started (by PID) and remove its state."""
        _stop(list(reversed(self._pids().values())))
        if self.pid_file.exists():
            self.pid_file.unlink()
        if keep_logs:
            return
        import shutil

        shutil.rmtree(self.state_dir, ignore_errors=True)


def _stop(pids: list[int], grace: float = 10) -> None:
    """SIGTERM each process group, then SIGKILL what is still there after `grace` seconds."""
    for pid in pids:
        try:
            os.killpg(pid, signal.SIGTERM)
        except (ProcessLookupError, PermissionError):
            pass
    deadline = time.monotonic() + grace
    for pid in pids:
        while time.monotonic() < deadline and _alive(pid):
            time.sleep(0.1)
        if _alive(pid):
            try:
                os.killpg(pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
    deadline = time.monotonic() + 5
    for pid in pids:  # reaped, so that its port is free for a successor
        while time.monotonic() < deadline and _alive(pid):
            time.sleep(0.05)


def _alive(pid: int) -> bool:
    try:
        waited, _ = os.waitpid(pid, os.WNOHANG)
        if waited == pid:
            return False
    except ChildProcessError:
        pass
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True
