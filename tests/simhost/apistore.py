"""The simulated cluster's etcd: objects with resource versions, and the event history that watches read.

Every change goes through :meth:`Store.put` or :meth:`Store.remove` under the store's lock; both give the
object a new resourceVersion, append a watch event and wake every waiter (watches, controllers, kubelets).
Stored objects are never changed in place: a change stores a new copy, so an event's object stays as it was.
Standard library only (the node-container process runs with ``python -S``).
"""

from __future__ import annotations

import collections
import copy
import json
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from tests.simhost.apimodel import (
    ApiError,
    Obj,
    Resource,
    Term,
    fields_match,
    matches,
    not_found,
    rfc3339,
)

COMPACT = (",", ":")  # JSON as the API server writes it
EVENT_WINDOW = 50_000  # watch events kept; a watch from an older resourceVersion gets 410 Gone, as from etcd


@dataclass(frozen=True)
class Event:
    """One watch event: ADDED, MODIFIED or DELETED, with the object as it was then."""

    revision: int
    type: str
    qualified: str
    namespace: str
    obj: Obj


Key = tuple[str, str, str]  # (qualified resource, namespace or "", name)


class Store:
    """Objects by (resource, namespace, name), a global revision counter and the recent events."""

    def __init__(self) -> None:
        self.lock = threading.RLock()
        self.changed = threading.Condition(self.lock)
        self.objects: dict[Key, Obj] = {}
        self.revision = 0
        self.events: collections.deque[Event] = collections.deque(maxlen=EVENT_WINDOW)
        self.closed = False

    @staticmethod
    def key(res: Resource, namespace: str | None, name: str) -> Key:
        """Return the store key of an object."""
        return (res.qualified, namespace or "", name)

    def get(self, res: Resource, namespace: str | None, name: str) -> Obj | None:
        """Return the stored object (do not change it: :meth:`update` makes a changed copy)."""
        return self.objects.get(self.key(res, namespace, name))

    def require(self, res: Resource, namespace: str | None, name: str) -> Obj:
        """Return the stored object or raise the API's 404."""
        found = self.get(res, namespace, name)
        if found is None:
            raise not_found(res, name)
        return found

    def select(self, res: Resource, namespace: str | None = None, labels: list[Term] | None = None,
               fields: list[Term] | None = None) -> list[Obj]:
        """Return the stored objects of ``res`` in ``namespace`` (all if None) matching both selectors."""
        found = []
        for (qualified, ns, _), obj in self.objects.items():
            if qualified != res.qualified or (namespace is not None and ns != namespace):
                continue
            if labels and not matches(obj["metadata"].get("labels") or {}, labels):
                continue
            if fields and not fields_match(obj, fields):
                continue
            found.append(obj)
        return found

    def put(self, res: Resource, obj: Obj, event: str) -> Obj:
        """Store ``obj`` (ADDED or MODIFIED) with the next resourceVersion and wake every waiter."""
        with self.lock:
            self.revision += 1
            meta = obj["metadata"]
            meta["resourceVersion"] = str(self.revision)
            if event == "ADDED":
                meta.setdefault("uid", str(uuid.uuid4()))
                meta.setdefault("creationTimestamp", rfc3339())
            self.objects[self.key(res, meta.get("namespace"), meta["name"])] = obj
            self.events.append(Event(self.revision, event, res.qualified, meta.get("namespace") or "", obj))
            self.changed.notify_all()
            return obj

    def update(self, res: Resource, namespace: str | None, name: str, change: Callable[[Obj], None]) -> Obj | None:
        """Apply ``change`` to a copy of the object and store it if it differs; return it (None if gone)."""
        with self.lock:
            current = self.get(res, namespace, name)
            if current is None:
                return None
            changed = copy.deepcopy(current)
            change(changed)
            changed["metadata"]["resourceVersion"] = current["metadata"]["resourceVersion"]
            if changed == current:
                return current
            return self.put(res, changed, "MODIFIED")

    def remove(self, res: Resource, namespace: str | None, name: str) -> Obj:
        """Delete the object (DELETED event with its last state, at a new resourceVersion)."""
        with self.lock:
            key = self.key(res, namespace, name)
            if key not in self.objects:
                raise not_found(res, name)
            last = copy.deepcopy(self.objects.pop(key))
            self.revision += 1
            last["metadata"]["resourceVersion"] = str(self.revision)
            self.events.append(Event(self.revision, "DELETED", res.qualified, namespace or "", last))
            self.changed.notify_all()
            return last

    def wait(self, timeout: float) -> None:
        """Wait (holding the lock) until something changes or ``timeout`` seconds pass."""
        self.changed.wait(timeout)

    def close(self) -> None:
        """Wake every waiter for good: the node is going away."""
        with self.lock:
            self.closed = True
            self.changed.notify_all()

    def watch(self, res: Resource, namespace: str | None, labels: list[Term], fields: list[Term],
              since: str, deadline: float) -> Iterator[bytes]:
        """Yield watch event lines (JSON) for ``res`` until ``deadline`` (monotonic) or the store closes.

        ``since`` is the resourceVersion to start after; "" or "0" first lists what exists as ADDED events,
        as the real API server does. A resourceVersion older than the kept history gives one ERROR event
        (410 Expired), after which the watch ends: clients then list again.
        """
        def wanted(event: Event) -> bool:
            return event.qualified == res.qualified and (namespace is None or event.namespace == namespace) \
                and (not labels or matches(event.obj["metadata"].get("labels") or {}, labels)) \
                and (not fields or fields_match(event.obj, fields))

        with self.lock:
            if since in ("", "0"):
                start = self.revision
                initial = [json.dumps({"type": "ADDED", "object": obj}, separators=COMPACT).encode() + b"\n"
                           for obj in self.select(res, namespace, labels, fields)]
            else:
                try:
                    start = int(since)
                except ValueError:
                    raise ApiError(400, "BadRequest", f'invalid resource version "{since}"') from None
                oldest = self.events[0].revision if self.events else self.revision + 1
                if start < oldest - 1 and start < self.revision:
                    expired = ApiError(410, "Expired", f"too old resource version: {start} ({oldest - 1})").status()
                    initial = [json.dumps({"type": "ERROR", "object": expired}).encode() + b"\n"]
                    start = -1
                else:
                    initial = []
        return self._follow(initial, start, wanted, deadline)

    def _follow(self, initial: list[bytes], start: int, wanted: Callable[[Event], bool],
                deadline: float) -> Iterator[bytes]:
        """Yield the initial lines, then every wanted event after revision ``start`` until the deadline."""
        yield from initial
        if start < 0:
            return
        while True:
            with self.lock:
                if not self.closed and (not self.events or self.events[-1].revision <= start):
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        return
                    self.changed.wait(min(remaining, 5.0))
                if self.closed:
                    return
                batch: list[Event] = []
                for event in reversed(self.events):
                    if event.revision <= start:
                        break
                    batch.append(event)
                batch.reverse()
                if batch:
                    start = batch[-1].revision
            if not batch:
                yield b""  # nothing new: a chance for the caller to notice a client that went away
            for event in batch:
                if wanted(event):
                    yield json.dumps({"type": event.type, "object": event.obj}, separators=COMPACT).encode() + b"\n"
