"""The watch stream's reading of the wire: JSON lines split anywhere, bookmarks, 410 Gone."""

from __future__ import annotations

import json
from typing import Any

import pytest

from wanka.cluster.cache import FleetCache
from wanka.cluster.watch import Gone, Stream, events


def line(kind: str, obj: dict[str, Any]) -> bytes:
    return json.dumps({"type": kind, "object": obj}).encode() + b"\n"


def pod(name: str, version: str) -> dict[str, Any]:
    return {"metadata": {"name": name, "namespace": "ns", "resourceVersion": version}}


def test_events_are_read_whole_however_the_chunks_split_them() -> None:
    wire = line("ADDED", pod("a", "1")) + line("MODIFIED", pod("a", "2")) + line("DELETED", pod("a", "3"))
    for size in (1, 7, 64, len(wire)):
        chunks = [wire[i:i + size] for i in range(0, len(wire), size)]
        assert [e["type"] for e in events(chunks)] == ["ADDED", "MODIFIED", "DELETED"]


def test_a_stream_feeds_the_cache_and_remembers_where_to_resume() -> None:
    cache = FleetCache()
    stream = Stream(api=None, kind="pods", cache=cache)  # type: ignore[arg-type]
    for event in events([line("ADDED", pod("a", "5")), line("ADDED", pod("b", "6"))]):
        stream._take(event)
    assert {p["metadata"]["name"] for p in cache.store("pods").values()} == {"a", "b"}
    assert cache.store("pods").get("ns", "a")["kind"] == "Pod"  # the wire leaves kind out
    stream._take({"type": "BOOKMARK", "object": {"metadata": {"resourceVersion": "40"}}})
    assert stream.version == "40" and len(cache.store("pods")) == 2
    stream._take({"type": "DELETED", "object": pod("a", "41")})
    assert cache.store("pods").get("ns", "a") is None and stream.version == "41"


def test_an_expired_version_asks_for_a_new_list_and_other_errors_raise() -> None:
    stream = Stream(api=None, kind="nodes", cache=FleetCache())  # type: ignore[arg-type]
    with pytest.raises(Gone):
        stream._take({"type": "ERROR", "object": {"code": 410, "message": "too old resource version"}})
    with pytest.raises(RuntimeError, match="500"):
        stream._take({"type": "ERROR", "object": {"code": 500, "message": "boom"}})


class RecordingApi:
    """Answers every call with an empty list (or an empty watch), remembering the queries."""

    def __init__(self) -> None:
        self.queries: list[tuple[str, list[tuple[str, str]]]] = []

    def call_api(self, path: str, method: str, query_params: list[tuple[str, str]], **_: Any) -> Any:
        self.queries.append((path, list(query_params)))

        class Response:
            data = json.dumps({"items": [], "metadata": {"resourceVersion": "7"}}).encode()

            def stream(self, *a: Any, **k: Any) -> list[bytes]:
                return []

            def release_conn(self) -> None:
                pass

        return Response()


def test_batch_jobs_are_listed_and_watched_only_when_labelled_with_a_queue() -> None:
    from wanka.cluster.kube import list_all

    api = RecordingApi()
    list_all(api, "jobs")
    stream = Stream(api=api, kind="jobs", cache=FleetCache())
    stream._watch()
    list_all(api, "pods")
    (jobs_list, q1), (jobs_watch, q2), (pods_list, q3) = api.queries
    assert jobs_list == jobs_watch == "/apis/batch/v1/jobs" and pods_list == "/api/v1/pods"
    assert ("labelSelector", "wanka.io/queue") in q1 and ("labelSelector", "wanka.io/queue") in q2
    assert not any(k == "labelSelector" for k, _ in q3)
