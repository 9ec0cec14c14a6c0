"""JSON logs: records, warnings and uncaught exceptions (main thread or not) are one JSON object a line."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

from wanka.cluster.localcluster import REPO

SCRIPT = textwrap.dedent("""
    import logging, threading, warnings
    from wanka.controllers.logs import configure_logging
    configure_logging("json")
    logging.getLogger("wanka.test").info("quotes ' and \\" and\\nnewlines")
    try:
        {}["missing"]
    except KeyError:
        logging.getLogger("wanka.test").exception("handled")
    warnings.warn("deprecated knob")
    thread = threading.Thread(target=lambda: 1 / 0, name="worker")
    thread.start()
    thread.join()
    raise RuntimeError("fatal at startup")
""")


def test_every_line_parses_and_carries_its_traceback() -> None:
    proc = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=60,
                          env={"PYTHONPATH": str(REPO / "operator")})
    assert proc.returncode == 1
    records = [json.loads(line) for line in (proc.stdout + proc.stderr).splitlines()]
    got = [(r["logger"], r["severity"], r["message"].splitlines()[0]) for r in records]
    assert got == [
        ("wanka.test", "info", "quotes ' and \" and"),
        ("wanka.test", "error", "handled"),
        ("py.warnings", "warn", got[2][2]),
        ("wanka", "error", "thread worker stopped on an uncaught ZeroDivisionError"),
        ("wanka", "fatal", "the operator stopped on an uncaught RuntimeError"),
    ]
    assert "deprecated knob" in records[2]["message"]
    for record, error in zip(records[3:], ("ZeroDivisionError", "RuntimeError: fatal at startup"), strict=True):
        assert record["exc_info"].startswith("Traceback (most recent call last)") and error in record["exc_info"]
    assert "KeyError: 'missing'" in records[1]["exc_info"]
