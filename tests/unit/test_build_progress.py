"""The control-plane build reports its progress while it runs, also when Python starts it."""

from __future__ import annotations

import io
from pathlib import Path

import pytest

from wanka.cluster.localcluster import ClusterStartError, build_binaries


class Echo(io.StringIO):
    """Creates `go_on` when the first line arrives: the fake build waits for it, so the test
    passes only if lines are passed on while the build is still running."""

    def __init__(self, go_on: Path) -> None:
        super().__init__()
        self.go_on = go_on

    def write(self, text: str) -> int:
        self.go_on.touch()
        return super().write(text)


def fake_build(tmp_path: Path, rc: int) -> Path:
    script = tmp_path / "build.sh"
    script.write_text(f"""
echo "[build] compiling" >&2
for i in $(seq 300); do [ -e {tmp_path}/go-on ] && break; sleep 0.1; done
[ -e {tmp_path}/go-on ] || {{ echo "nobody read the first line" >&2; exit 3; }}
echo "[build] done" >&2
echo {tmp_path}/bins
exit {rc}
""")
    return script


def test_lines_are_passed_on_as_the_build_runs(tmp_path: Path) -> None:
    echo = Echo(tmp_path / "go-on")
    assert build_binaries(echo, fake_build(tmp_path, 0)) == tmp_path / "bins"
    assert echo.getvalue().splitlines() == ["[build] compiling", "[build] done", str(tmp_path / "bins")]


def test_a_failed_build_raises_with_its_last_lines(tmp_path: Path) -> None:
    with pytest.raises(ClusterStartError, match=r"(?s)failed.*\[build\] compiling.*\[build\] done"):
        build_binaries(Echo(tmp_path / "go-on"), fake_build(tmp_path, 1))

