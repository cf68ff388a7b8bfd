"""ksi tasks' watches: a list, then watches resumed from the last resourceVersion, a fresh list after 410 Gone."""

from __future__ import annotations

import json
import threading
from typing import Any

from ksi.tasks import kube


class FakeResponse:
    """What Api.open returns for a watch: a stream of JSON lines, cut in awkward places."""

    def __init__(self, events: list[dict[str, Any]]) -> None:
        data = b"".join(json.dumps(e).encode() + b"\n" for e in events)
        self.chunks = [data[i:i + 7] for i in range(0, len(data), 7)]
        self.closed = False

    def stream(self, size: int, decode_content: bool = False) -> Any:
        yield from self.chunks

    def close(self) -> None:
        self.closed = True

    def release_conn(self) -> None:
        pass


class FakeApi:
    """Answers lists and watches from scripts, and records what was asked."""

    def __init__(self, lists: list[dict[str, Any]], watches: list[list[dict[str, Any]]], stop: threading.Event):
        self.lists, self.watches, self.stop = lists, watches, stop
        self.asked: list[tuple[str, dict[str, Any]]] = []

    def json(self, method: str, path: str, *, query: Any = ()) -> dict[str, Any]:
        self.asked.append(("list", dict(query)))
        return self.lists.pop(0)

    def open(self, method: str, path: str, *, query: Any = (), timeout: Any = None, accept: str = "") -> FakeResponse:
        self.asked.append(("watch", dict(query)))
        if not self.watches:
            self.stop.set()
            raise kube.ApiError(503, b'{"message": "going away"}')
        return FakeResponse(self.watches.pop(0))


def pod(name: str, version: str) -> dict[str, Any]:
    return {"metadata": {"name": name, "resourceVersion": version}}


def test_list_watch_resume_and_relist_after_410() -> None:
    stop = threading.Event()
    api = FakeApi(
        lists=[{"metadata": {"resourceVersion": "10"}, "items": [pod("a", "9")]},
               {"metadata": {"resourceVersion": "40"}, "items": [pod("b", "31")]}],
        watches=[[{"type": "ADDED", "object": pod("b", "11")}, {"type": "MODIFIED", "object": pod("b", "12")}],
                 [{"type": "DELETED", "object": pod("a", "13")},
                  {"type": "ERROR", "object": {"code": 410, "message": "too old resource version"}}],
                 [{"type": "BOOKMARK", "object": pod("", "45")}]],
        stop=stop)
    seen: list[tuple[str, Any]] = []
    follower = kube.Follower(api, "pods", "/api/v1/namespaces/default/pods", "ksi.io/experiment=e",  # type: ignore[arg-type]
                             lambda kind, event, obj: seen.append((event, obj)), stop)
    follower.run()  # in this thread: it returns once the fake API has nothing left and sets stop
    assert [(e, o["metadata"]["name"]) if e != "SYNC" else (e, [i["metadata"]["name"] for i in o])
            for e, o in seen] == [("SYNC", ["a"]), ("ADDED", "b"), ("MODIFIED", "b"), ("DELETED", "a"),
                                  ("SYNC", ["b"])]
    kinds = [(kind, query.get("resourceVersion"), query.get("watch")) for kind, query in api.asked]
    # the second watch resumes after the last event of the first; after 410 a list, and the watch from it
    assert kinds == [("list", None, None), ("watch", "10", True), ("watch", "12", True), ("list", None, None),
                     ("watch", "40", True), ("watch", "45", True)]
    assert all(query["labelSelector"] == "ksi.io/experiment=e" for _, query in api.asked)
