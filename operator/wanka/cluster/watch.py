"""Watch streams that keep the cache current: one thread per kind, LIST then WATCH, forever.

Each stream is plain JSON lines read straight off the connection into `FleetCache.observe`.
At 1,250 nodes and thousands of pods, a general operator framework's per-event machinery
(diff bases, per-object memories, handler invocation, a thread hop) cost more CPU than
everything the operator decides; here an event costs one `json.loads` and a dict insert.

A stream starts with a LIST in pages (`kube.list_all`, which also tells the collection's
resourceVersion) and watches from there with bookmarks. A dropped connection resumes from
the last version seen; a version the server no longer has (410 Gone) starts over with a
LIST. Errors back off up to `MAX_BACKOFF` seconds and never end the thread.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Iterable, Iterator
from typing import Any

from kubernetes import client
from kubernetes.client.exceptions import ApiException
from urllib3.exceptions import ReadTimeoutError

from wanka.cluster.cache import KINDS, FleetCache
from wanka.cluster.kube import SELECTORS, collection, list_all

log = logging.getLogger(__name__)
WATCH_SECONDS = 290  # the server ends each watch after this; the stream then resumes
# A stream silent this long (no event, no bookmark) is taken as dead and resumed: a connection
# that half-died with an API server would otherwise hold a kind's cache still for minutes.
SILENT_SECONDS = 75.0
MAX_BACKOFF = 5.0


class Gone(Exception):
    """The version to resume from is older than what the server keeps: LIST again."""


def events(lines: Iterable[bytes]) -> Iterator[dict[str, Any]]:
    """Watch events from a stream of newline-separated JSON (chunks may split lines)."""
    pending = b""
    for chunk in lines:
        pending += chunk
        while b"\n" in pending:
            line, pending = pending.split(b"\n", 1)
            if line.strip():
                yield json.loads(line)
    if pending.strip():
        yield json.loads(pending)


class Stream:
    """One kind kept current in the cache."""

    def __init__(self, api: client.ApiClient, kind: str, cache: FleetCache) -> None:
        self.api = api
        self.kind = kind
        self.cache = cache
        self.path, self.api_version, self.kind_name = collection(kind)
        self.version: str | None = None  # resume from here; None: LIST first
        self.synced = threading.Event()  # set once the first LIST is in the cache
        self.stopped = threading.Event()
        self._response: Any = None

    def run(self) -> None:
        backoff = 0.2
        while not self.stopped.is_set():
            try:
                if self.version is None:
                    items, self.version = list_all(self.api, self.kind, with_version=True)
                    self.cache.replace(self.kind, items)
                    self.synced.set()
                self._watch()
                backoff = 0.2
            except Gone:
                log.info("watch of %s: version %s is gone; listing again", self.kind, self.version)
                self.version = None
            except ReadTimeoutError:
                log.debug("watch of %s silent for %.0fs; resuming", self.kind, SILENT_SECONDS)
            except Exception as exc:  # the API server restarts, a connection drops: try again
                if self.stopped.is_set():
                    return
                log.warning("watch of %s failed (%s: %s); again in %.1fs", self.kind, type(exc).__name__,
                            str(exc)[:200], backoff)
                time.sleep(backoff)
                backoff = min(MAX_BACKOFF, backoff * 2)

    def _watch(self) -> None:
        query = [("watch", "true"), ("allowWatchBookmarks", "true"), ("timeoutSeconds", str(WATCH_SECONDS))]
        if self.version:
            query.append(("resourceVersion", self.version))
        if self.kind in SELECTORS:
            query.append(("labelSelector", SELECTORS[self.kind]))
        try:
            resp = self.api.call_api(
                self.path, "GET", query_params=query, header_params={"Accept": "application/json"},
                auth_settings=["BearerToken"], _preload_content=False, _return_http_data_only=True,
                _request_timeout=(5.0, SILENT_SECONDS))
        except ApiException as exc:
            if exc.status == 410:
                raise Gone from exc
            raise
        self._response = resp
        try:
            for event in events(resp.stream(64 * 1024, decode_content=True)):
                self._take(event)
        finally:
            self._response = None
            resp.release_conn()

    def _take(self, event: dict[str, Any]) -> None:
        kind = event.get("type")
        obj = event.get("object") or {}
        if kind == "ERROR":
            if obj.get("code") == 410:
                raise Gone
            raise RuntimeError(f"watch error: {obj.get('code')} {obj.get('message')}")
        version = (obj.get("metadata") or {}).get("resourceVersion")
        if kind in ("ADDED", "MODIFIED", "DELETED"):
            obj.setdefault("apiVersion", self.api_version)
            if self.kind_name:
                obj.setdefault("kind", self.kind_name)
            self.cache.observe(self.kind, kind, obj)
        if version:
            self.version = str(version)

    def stop(self) -> None:
        self.stopped.set()
        resp = self._response
        if resp is not None:
            try:
                resp.shutdown() if hasattr(resp, "shutdown") else resp.close()
            except Exception:  # it is going away in any case
                log.debug("closing the watch of %s", self.kind, exc_info=True)


class Watches:
    """Every kind the operator reads, each on its own daemon thread."""

    def __init__(self, api: client.ApiClient, cache: FleetCache, kinds: Iterable[str] = KINDS) -> None:
        self.streams = [Stream(api, kind, cache) for kind in kinds]

    def start(self) -> Watches:
        for stream in self.streams:
            threading.Thread(target=stream.run, name=f"watch-{stream.kind}", daemon=True).start()
        return self

    def synced(self) -> bool:
        """Whether every kind's first LIST is in the cache (nothing is decided before)."""
        return all(s.synced.is_set() for s in self.streams)

    def stop(self) -> None:
        for stream in self.streams:
            stream.stop()
