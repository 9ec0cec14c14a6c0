"""One lock file pins every dependency for the developer's venv, CI (make test) and the image."""

from __future__ import annotations

import re
import tomllib

from packaging.requirements import Requirement

from wanka.cluster.localcluster import REPO


def pins() -> dict[str, str]:
    lines = (REPO / "constraints.txt").read_text().splitlines()
    return dict(re.fullmatch(r"([a-z0-9._-]+)==(\S+)", line).groups() for line in lines  # type: ignore[union-attr]
                if line and not line.startswith("#"))


def test_every_dependency_of_every_extra_is_pinned_within_its_range() -> None:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    wanted = [Requirement(r) for r in project["dependencies"]]
    wanted += [Requirement(r) for extra in project["optional-dependencies"].values() for r in extra]
    locked = pins()
    for req in wanted:
        name = re.sub(r"[-_.]+", "-", req.name).lower()
        assert name in locked, f"{req.name} is not in constraints.txt: run `make lock`"
        assert req.specifier.contains(locked[name]), f"{req} excludes the pinned {locked[name]}: run `make lock`"


def test_the_linters_ci_runs_are_pinned_exactly() -> None:
    dev = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]["dev"]
    for tool in ("ruff", "mypy"):
        assert f"{tool}=={pins()[tool]}" in dev


def test_the_venv_and_the_image_install_with_the_lock_file() -> None:
    makefile, dockerfile = (REPO / "Makefile").read_text(), (REPO / "Dockerfile").read_text()
    assert "pip install --quiet -c constraints.txt -e '.[" in makefile
    assert re.search(r"^STAMP := .*constraints\.txt", makefile, re.M), "a new lock re-installs the venv"
    assert "COPY pyproject.toml README.md constraints.txt" in dockerfile
    assert 'pip install -c constraints.txt "$(ls /wheels/wanka-*.whl)[nvml]"' in dockerfile
    assert "!constraints.txt" in (REPO / ".dockerignore").read_text()
