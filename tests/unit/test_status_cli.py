"""`wanka status` tables from plain objects."""

from __future__ import annotations

from datetime import UTC, datetime

from wanka.cluster.status_cli import QUEUE_HEADERS, pool_rows, queue_rows, table


def test_queue_rows_show_the_longest_wait() -> None:
    now = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
    queues = [{"metadata": {"name": "a"}, "spec": {"weight": 2},
               "status": {"running": 1, "pending": 2, "usage": [{"pool": "p", "gpus": 8.5}]}}]
    jobs = [
        {"metadata": {"creationTimestamp": "2026-01-01T11:50:00Z"}, "spec": {"queue": "a"},
         "status": {"phase": "Queued"}},
        {"metadata": {"creationTimestamp": "2026-01-01T09:00:00Z"}, "spec": {"queue": "a"},
         "status": {"phase": "Running"}},
        {"metadata": {"creationTimestamp": "2026-01-01T11:59:30Z"}, "spec": {"queue": "a"}},
    ]
    rows = queue_rows(queues, jobs, now)
    assert rows == [["a", 2, 1, 2, "10m", "p=8.5"]]
    text = table(QUEUE_HEADERS, rows)
    assert text.splitlines()[0].startswith("QUEUE") and "10m" in text


def test_pool_rows_read_status() -> None:
    pools = [{"metadata": {"name": "p"}, "spec": {"sharing": {"mode": "MPS"}},
              "status": {"gpus": {"total": 16, "allocated": 2.5, "free": 13.5, "stranded": 0.25},
                         "nodes": {"total": 2, "healthy": 2, "sick": 0, "quarantined": 0},
                         "conditions": [{"type": "Ready", "reason": "NodesSelected"}]}}]
    assert pool_rows(pools) == [["p", "MPS", 16, 2.5, 13.5, 0.25, 2, 2, 0, 0, "NodesSelected"]]
