"""The local control plane's secrets (admin token, kubeconfigs, keys) are readable by their owner only."""

from __future__ import annotations

import os
import stat
from pathlib import Path

from wanka.cluster.localcluster import write_private


def test_private_files_are_owner_only_whatever_the_umask(tmp_path: Path) -> None:
    path = tmp_path / "kubeconfig"
    path.write_text("old")
    path.chmod(0o644)  # an existing file loosened by hand is tightened again
    old = os.umask(0)
    try:
        write_private(path, "token: secret\n")
        write_private(tmp_path / "tokens.csv", "t,u,u\n")
    finally:
        os.umask(old)
    for p in (path, tmp_path / "tokens.csv"):
        assert stat.S_IMODE(p.stat().st_mode) == 0o600, p
    assert path.read_text() == "token: secret\n"
