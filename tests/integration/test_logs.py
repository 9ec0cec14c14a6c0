"""`wanka run --log-format json`: every line the operator writes is one JSON object."""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

import pytest

from tests.integration.conftest import Cluster, OperatorProcess, wait_for
from tests.integration.test_gpupool import gpus, make_pool
from wanka.cluster.dev import create_nodes

pytestmark = pytest.mark.integration


def json_lines(path: Path) -> list[dict[str, Any]]:
    records = []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        try:
            records.append(json.loads(line))
        except ValueError:
            raise AssertionError(f"{path.name} line {number} is not JSON: {line!r}") from None
    return records


def test_every_line_is_json_tracebacks_included(cluster: Cluster, tmp_path: Path) -> None:
    op = OperatorProcess(cluster, tmp_path, args=["--log-format", "json"])
    op.start()
    try:
        tag = uuid.uuid4().hex[:6]
        create_nodes(cluster.api, 1, 8, "H100-80GB", 1, prefix=f"l{tag}", labels={"wanka.io/pool": tag})
        pool = make_pool(cluster, tag)
        wait_for(lambda: gpus(cluster, pool).get("total") == 8, 15, what="the operator's pool status")
        # A second replica on the same metrics port dies at startup: its traceback must be JSON too.
        clash = OperatorProcess(cluster, tmp_path, args=["--log-format", "json"])
        clash.metrics_port = op.metrics_port
        with pytest.raises(AssertionError, match="operator exited"):
            clash.start()
    finally:
        op.stop()
        cluster.delete("gpupools", f"pool-{tag}")

    records = json_lines(op.log_path)
    assert records, "the operator wrote nothing"
    assert all({"message", "timestamp", "severity", "logger"} <= r.keys() for r in records)
    assert {"kopf", "wanka"} <= {r["logger"].split(".")[0] for r in records}

    died = json_lines(clash.log_path)
    assert died[-1]["severity"] == "fatal"
    assert "Traceback (most recent call last)" in died[-1]["exc_info"]
    assert "Address already in use" in died[-1]["exc_info"]
