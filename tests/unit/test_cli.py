"""The command line: every flag explained, --version, and errors in one line without a traceback."""

from __future__ import annotations

import argparse
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from wanka import __version__
from wanka.cli import SUBCOMMANDS, build_parser
from wanka.cluster import kubectl
from wanka.cluster.localcluster import REPO


def parsers(parser: argparse.ArgumentParser, path: str) -> Iterator[tuple[str, argparse.ArgumentParser]]:
    yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, child in action.choices.items():
                yield from parsers(child, f"{path} {name}")


def undocumented(root: argparse.ArgumentParser, prog: str) -> list[str]:
    return [f"{path} {'/'.join(a.option_strings) or a.dest}" for path, p in parsers(root, prog)
            for a in p._actions if not isinstance(a, argparse._SubParsersAction) and not (a.help or "").strip()]


def test_every_flag_of_every_command_has_help() -> None:
    assert undocumented(build_parser(), "wanka") == []
    assert undocumented(kubectl.build_parser(), "kubectl wanka") == []
    assert set(dict(parsers(build_parser(), "wanka"))) >= {f"wanka {name}" for name in SUBCOMMANDS}


def run(*argv: str, env: dict[str, str] | None = None, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, *argv], capture_output=True, text=True, timeout=120, cwd=cwd,
                          env={"PYTHONPATH": str(REPO / "operator"), "HOME": str(cwd or "/nonexistent"), **(env or {})})


UNREACHABLE = """apiVersion: v1
kind: Config
clusters: [{name: c, cluster: {server: "https://127.0.0.1:1"}}]
users: [{name: u, user: {token: t}}]
contexts: [{name: k, context: {cluster: c, user: u, namespace: team}}]
current-context: k
"""


@pytest.mark.parametrize(("argv", "want_rc", "want"), [
    pytest.param(["-m", "wanka.cli", "status"], 1, "wanka: error: no kubeconfig found", id="status-no-kubeconfig"),
    pytest.param(["-m", "wanka.cluster.kubectl", "jobs"], 1, "error: no kubeconfig found",
                 id="plugin-no-kubeconfig"),
    pytest.param(["-m", "wanka.cli", "status", "--kubeconfig", "{kc}"], 1,
                 "wanka: error: cannot reach the API server at https://127.0.0.1:1", id="status-unreachable"),
    pytest.param(["-m", "wanka.cluster.kubectl", "why", "j", "--kubeconfig", "{kc}"], 1,
                 "error: cannot reach the API server at https://127.0.0.1:1", id="plugin-unreachable"),
    pytest.param(["-m", "wanka.cli", "simulate", "--nodes", "missing.csv", "--pods", "missing.csv"], 2,
                 "wanka simulate: no such file: missing.csv", id="simulate-missing-csv"),
    pytest.param(["-m", "wanka.cli", "simulate-gangs", "--csv", "missing.csv", "--no-progress"], 2,
                 "wanka simulate-gangs: no such file: missing.csv", id="gangs-missing-csv"),
    pytest.param(["-m", "wanka.cli", "simulate", "--nodes", "x.csv"], 2,
                 "wanka simulate: error: the following arguments are required: --pods", id="usage"),
    pytest.param(["-m", "wanka.cluster.kubectl", "why"], 2,
                 "kubectl wanka why: error: the following arguments are required: job", id="plugin-usage"),
    pytest.param(["-m", "wanka.cluster.kubectl", "top", "-o", "xml"], 2,
                 "kubectl wanka top: error: argument -o/--output: invalid choice", id="plugin-bad-output"),
])
def test_errors_are_one_line_and_a_non_zero_exit(tmp_path: Path, argv: list[str], want_rc: int, want: str) -> None:
    (tmp_path / "kc").write_text(UNREACHABLE)
    out = run(*[a.replace("{kc}", str(tmp_path / "kc")) for a in argv], cwd=tmp_path)
    assert out.returncode == want_rc, out.stderr
    assert len(out.stderr.splitlines()) == 1 and out.stderr.startswith(want), out.stderr
    assert "Traceback" not in out.stderr + out.stdout


def test_version() -> None:
    assert run("-m", "wanka.cli", "--version").stdout.strip() == f"wanka {__version__}"
    assert run("-m", "wanka.cluster.kubectl", "--version").stdout.strip() == f"kubectl-wanka {__version__}"
