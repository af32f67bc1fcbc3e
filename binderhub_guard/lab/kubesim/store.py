"""In-memory object store with resourceVersions, watch history and compaction.

This is the part of etcd + kube-apiserver that reflectors depend on: one global, monotonically
increasing resourceVersion; lists stamped with it; watches that resume from a resourceVersion by
replaying history, or fail with 410 Expired once that history has been compacted; and Events that
expire like kube-apiserver's ``--event-ttl`` (without expiry every hub's event cache looks like a
leak).  It also does kube-controller-manager's garbage collection of ``ownerReferences``:
KubeSpawner's stop deletes only the pod and leaves the per-pod Service and Secret to it.

Stored objects are never mutated in place: each write stores a fresh dict, so history entries can
share them with watchers safely.  Callers get deep copies.
"""

from __future__ import annotations

import asyncio
import copy
import random
import time
import uuid
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any

from .faults import Faults
from .selectors import Predicate

# plural -> (kind, namespaced)
RESOURCES: dict[str, tuple[str, bool]] = {
    "namespaces": ("Namespace", False),
    "pods": ("Pod", True),
    "services": ("Service", True),
    "persistentvolumeclaims": ("PersistentVolumeClaim", True),
    "secrets": ("Secret", True),
    "serviceaccounts": ("ServiceAccount", True),
    "events": ("Event", True),
    "configmaps": ("ConfigMap", True),
}

# (current object, written object) -> the object to store
Keep = Callable[[dict[str, Any], dict[str, Any]], dict[str, Any]]

# kube-apiserver's generateName alphabet: no vowels, no look-alike digits
_NAME_ALPHABET = "bcdfghjklmnpqrstvwxz2456789"


class StoreError(Exception):
    """Base for errors that map onto a Kubernetes Status; `resource` and `name` become its
    ``details``, as the API server gives them."""

    def __init__(self, message: str, resource: str | None = None, name: str | None = None) -> None:
        super().__init__(message)
        self.resource = resource
        self.name = name


class NotFound(StoreError):
    pass


class AlreadyExists(StoreError):
    pass


class Conflict(StoreError):
    pass


class Expired(StoreError):
    pass


def now_iso(after_seconds: float = 0) -> str:
    moment = datetime.now(timezone.utc) + timedelta(seconds=after_seconds)
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def _mark_deleted(meta: dict[str, Any], grace_seconds: float) -> None:
    """What a delete writes into metadata, as the API server does it: the time the object is
    due to go (now + grace) and the grace period (`Store.modify` counts the generation)."""
    meta["deletionTimestamp"] = now_iso(grace_seconds)
    meta["deletionGracePeriodSeconds"] = int(grace_seconds)


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch (also used for strategic merge: close enough here)."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


@dataclass(frozen=True)
class Change:
    """One entry of watch history."""

    resource_version: int
    resource: str
    type: str  # ADDED, MODIFIED or DELETED
    obj: dict[str, Any]
    previous: dict[str, Any] | None


class Watcher:
    """One open watch: a queue of (type, object) pairs; None means the stream must end."""

    def __init__(self, resource: str, namespace: str | None, matches: Predicate) -> None:
        self.resource = resource
        self.namespace = namespace
        self.matches = matches
        self.queue: asyncio.Queue[tuple[str, dict[str, Any]] | None] = asyncio.Queue()

    def _visible(self, obj: dict[str, Any] | None) -> bool:
        if obj is None:
            return False
        if self.namespace is not None and obj["metadata"].get("namespace") != self.namespace:
            return False
        return self.matches(obj)

    def translate(self, change: Change) -> tuple[str, dict[str, Any]] | None:
        """What this watcher sees of a change; objects entering or leaving the selection are
        ADDED or DELETED, as the API server reports them."""
        if change.resource != self.resource:
            return None
        now, before = self._visible(change.obj), self._visible(change.previous)
        if change.type == "MODIFIED":
            if now and before:
                return ("MODIFIED", change.obj)
            if now:
                return ("ADDED", change.obj)
            if before:
                return ("DELETED", change.obj)
            return None
        return (change.type, change.obj) if now else None

    def offer(self, change: Change) -> None:
        event = self.translate(change)
        if event is not None:
            self.queue.put_nowait(event)

    def close(self) -> None:
        self.queue.put_nowait(None)


def _owner_references(obj: dict[str, Any]) -> list[dict[str, Any]]:
    return obj["metadata"].get("ownerReferences") or []


def _without_owner(owner_uid: str) -> Callable[[dict[str, Any]], dict[str, Any]]:
    def drop(obj: dict[str, Any]) -> dict[str, Any]:
        kept = [ref for ref in _owner_references(obj) if ref.get("uid") != owner_uid]
        if kept:
            obj["metadata"]["ownerReferences"] = kept
        else:
            obj["metadata"].pop("ownerReferences", None)
        return obj

    return drop


class Store:
    """Objects by resource plural and (namespace, name); namespace is "" if cluster-scoped."""

    def __init__(
        self,
        faults: Faults,
        event_ttl_seconds: float = 3600.0,
        max_events: int = 10_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.faults = faults
        self.event_ttl_seconds = event_ttl_seconds
        self.max_events = max_events
        self._clock = clock
        self._objects: dict[str, dict[tuple[str, str], dict[str, Any]]] = {
            resource: {} for resource in RESOURCES
        }
        # events in creation order, with their creation time, for TTL expiry
        self._event_born: OrderedDict[tuple[str, str], float] = OrderedDict()
        self._history: deque[Change] = deque()
        self._resource_version = 0
        # watching from a resourceVersion older than this is 410 Expired
        self._compacted = 0
        self._watchers: set[Watcher] = set()
        self._rng = random.Random()
        self._garbage_collection_due = False

    @property
    def resource_version(self) -> int:
        return self._resource_version

    @property
    def compacted_resource_version(self) -> int:
        return self._compacted

    @property
    def watchers(self) -> set[Watcher]:
        return self._watchers

    def _key(self, resource: str, namespace: str | None, name: str) -> tuple[str, str]:
        return ("" if not RESOURCES[resource][1] else namespace or "", name)

    def _record(
        self, resource: str, type_: str, obj: dict[str, Any], previous: dict[str, Any] | None
    ) -> None:
        change = Change(self._resource_version, resource, type_, obj, previous)
        self._history.append(change)
        while len(self._history) > self.faults.history_limit:
            self._compacted = self._history.popleft().resource_version
        for watcher in self._watchers:
            watcher.offer(change)

    def _stamp(self, obj: dict[str, Any]) -> None:
        self._resource_version += 1
        obj["metadata"]["resourceVersion"] = str(self._resource_version)

    def create(self, resource: str, namespace: str | None, obj: dict[str, Any]) -> dict[str, Any]:
        kind, namespaced = RESOURCES[resource]
        obj = copy.deepcopy(obj)
        obj["kind"] = kind
        obj["apiVersion"] = "v1"
        meta = obj.setdefault("metadata", {})
        if not meta.get("name") and meta.get("generateName"):
            suffix = "".join(self._rng.choice(_NAME_ALPHABET) for _ in range(5))
            meta["name"] = meta["generateName"] + suffix
        if namespaced:
            meta["namespace"] = namespace
        else:
            meta.pop("namespace", None)
        key = self._key(resource, namespace, meta["name"])
        if key in self._objects[resource]:
            raise AlreadyExists(
                f'{resource} "{meta["name"]}" already exists', resource, meta["name"]
            )
        meta["uid"] = str(uuid.uuid4())
        meta["creationTimestamp"] = now_iso()
        meta.pop("deletionTimestamp", None)
        meta.pop("deletionGracePeriodSeconds", None)
        self._stamp(obj)
        self._objects[resource][key] = obj
        self._record(resource, "ADDED", obj, None)
        if resource == "events":
            self._event_born[key] = self._clock()
            while len(self._event_born) > self.max_events:
                self.delete("events", *next(iter(self._event_born)))
        if meta.get("ownerReferences"):
            # an owner may already be gone: the collector deletes such a dependent too
            self._collect_garbage_soon()
        return copy.deepcopy(obj)

    def get(self, resource: str, namespace: str | None, name: str) -> dict[str, Any]:
        obj = self._objects[resource].get(self._key(resource, namespace, name))
        if obj is None:
            raise NotFound(f'{resource} "{name}" not found', resource, name)
        return copy.deepcopy(obj)

    def exists(self, resource: str, namespace: str | None, name: str) -> bool:
        return self._key(resource, namespace, name) in self._objects[resource]

    def list(
        self, resource: str, namespace: str | None, matches: Predicate
    ) -> tuple[list[dict[str, Any]], str]:
        """Matching objects (all namespaces if namespace is None) and the list's version."""
        items = [
            copy.deepcopy(obj)
            for (ns, _), obj in self._objects[resource].items()
            if (namespace is None or ns == namespace) and matches(obj)
        ]
        return items, str(self._resource_version)

    def replace(
        self,
        resource: str,
        namespace: str | None,
        name: str,
        obj: dict[str, Any],
        keep: Keep | None = None,
    ) -> dict[str, Any]:
        """PUT semantics: a stale metadata.resourceVersion in the body is a 409 Conflict.
        `keep(current, obj)` says what is stored (what a subresource rule keeps of current)."""
        current = self._objects[resource].get(self._key(resource, namespace, name))
        if current is None:
            raise NotFound(f'{resource} "{name}" not found', resource, name)
        wanted = obj.get("metadata", {}).get("resourceVersion")
        if wanted and wanted != current["metadata"]["resourceVersion"]:
            raise Conflict(
                f'Operation cannot be fulfilled on {resource} "{name}": the object has been '
                "modified; please apply your changes to the latest version and try again",
                resource,
                name,
            )
        if keep is None:
            return self.modify(resource, namespace, name, lambda _: copy.deepcopy(obj))
        return self.modify(resource, namespace, name, lambda now: keep(now, copy.deepcopy(obj)))

    def modify(
        self,
        resource: str,
        namespace: str | None,
        name: str,
        change: Callable[[dict[str, Any]], dict[str, Any]],
    ) -> dict[str, Any]:
        """Store change(copy of current); identity and creation metadata are kept."""
        key = self._key(resource, namespace, name)
        current = self._objects[resource].get(key)
        if current is None:
            raise NotFound(f'{resource} "{name}" not found', resource, name)
        updated = change(copy.deepcopy(current))
        meta = updated.setdefault("metadata", {})
        if "generation" in current["metadata"]:
            # counted by the server alone: a delete adds one (mark_deleting)
            meta["generation"] = current["metadata"]["generation"] + int(
                bool(meta.get("deletionTimestamp"))
                and "deletionTimestamp" not in current["metadata"]
            )
        for kept in (
            "name",
            "namespace",
            "uid",
            "creationTimestamp",
            "deletionTimestamp",
            "deletionGracePeriodSeconds",
        ):
            if kept in current["metadata"]:
                meta[kept] = current["metadata"][kept]
        updated["kind"], updated["apiVersion"] = current["kind"], current["apiVersion"]
        self._stamp(updated)
        self._objects[resource][key] = updated
        self._record(resource, "MODIFIED", updated, current)
        return copy.deepcopy(updated)

    def mark_deleting(
        self, resource: str, namespace: str | None, name: str, grace_seconds: float
    ) -> dict[str, Any]:
        """Set metadata.deletionTimestamp (once), as a graceful delete does."""

        def mark(obj: dict[str, Any]) -> dict[str, Any]:
            _mark_deleted(obj["metadata"], grace_seconds)
            return obj

        current = self.get(resource, namespace, name)
        if "deletionTimestamp" in current["metadata"]:
            return current
        return self.modify(resource, namespace, name, mark)

    def delete(
        self, resource: str, namespace: str | None, name: str, *, marked: bool = False
    ) -> dict[str, Any]:
        """Remove an object; with `marked`, its last state carries the deletion metadata of a
        delete at grace 0 (unless a graceful delete set it before), as a pod's does."""
        key = self._key(resource, namespace, name)
        current = self._objects[resource].pop(key, None)
        if current is None:
            raise NotFound(f'{resource} "{name}" not found', resource, name)
        self._event_born.pop(key, None)
        final = copy.deepcopy(current)
        if marked and "deletionTimestamp" not in final["metadata"]:
            _mark_deleted(final["metadata"], 0)
            if "generation" in final["metadata"]:
                final["metadata"]["generation"] += 1
        self._stamp(final)
        self._record(resource, "DELETED", final, current)
        self._collect_garbage_soon()
        return copy.deepcopy(final)

    def orphan_dependents(self, owner_uid: str) -> None:
        """Drop references to owner_uid from its dependents, as propagationPolicy=Orphan does."""
        for resource, objects in self._objects.items():
            for (namespace, name), obj in list(objects.items()):
                if any(ref.get("uid") == owner_uid for ref in _owner_references(obj)):
                    self.modify(resource, namespace, name, _without_owner(owner_uid))

    def _collect_garbage_soon(self) -> None:
        # the real collector works from its own watches a moment after the delete, so the
        # owner's delete is answered (and its DELETED sent) before any dependent goes
        if self._garbage_collection_due:
            return
        self._garbage_collection_due = True
        try:
            asyncio.get_running_loop().call_soon(self.collect_garbage)
        except RuntimeError:
            self.collect_garbage()

    def collect_garbage(self) -> int:
        """Background cascading deletion, as kube-controller-manager's garbage collector does it:
        an object all of whose owners are gone is deleted; an object with an owner left loses
        only its references to the missing ones.  Returns how many objects were deleted."""
        self._garbage_collection_due = True  # the deletes below need no sweep of their own
        deleted = 0
        try:
            while orphans := self._sweep_owner_references():
                for resource, namespace, name in orphans:
                    self.delete(resource, namespace, name)
                deleted += len(orphans)
        finally:
            self._garbage_collection_due = False
        return deleted

    def _sweep_owner_references(self) -> list[tuple[str, str, str]]:
        dependents = [
            (resource, namespace, name, {ref.get("uid") for ref in _owner_references(obj)})
            for resource, objects in self._objects.items()
            for (namespace, name), obj in objects.items()
            if _owner_references(obj)
        ]
        if not dependents:
            return []
        alive = {
            obj["metadata"]["uid"] for objects in self._objects.values() for obj in objects.values()
        }
        orphans = []
        for resource, namespace, name, owners in dependents:
            missing = owners - alive
            if missing == owners:
                orphans.append((resource, namespace, name))
                continue
            for uid in missing:
                self.modify(resource, namespace, name, _without_owner(uid))
        return orphans

    def expire_events(self) -> int:
        """Delete events older than the TTL, with DELETED watch events; return how many."""
        horizon = self._clock() - self.event_ttl_seconds
        expired = []
        # creation order is age order, so stop at the first event still alive
        for key, born in self._event_born.items():
            if born > horizon:
                break
            expired.append(key)
        for namespace, name in expired:
            self.delete("events", namespace, name)
        return len(expired)

    def compact(self) -> None:
        """Forget all history: watches from any older resourceVersion now get 410."""
        self._history.clear()
        self._compacted = self._resource_version

    def watch(
        self,
        resource: str,
        namespace: str | None,
        matches: Predicate,
        since: int | None,
    ) -> Watcher:
        """Open a watch.  since None/0 starts with a synthetic ADDED per current object;
        otherwise history after `since` is replayed.  Raises Expired if compacted."""
        if since and since < self._compacted:
            raise Expired(f"too old resource version: {since} ({self._compacted})")
        watcher = Watcher(resource, namespace, matches)
        if since:
            for change in self._history:
                if change.resource_version > since:
                    watcher.offer(change)
        else:
            for (ns, _), obj in self._objects[resource].items():
                if (namespace is None or ns == namespace) and matches(obj):
                    watcher.queue.put_nowait(("ADDED", obj))
        self._watchers.add(watcher)
        return watcher

    def unwatch(self, watcher: Watcher) -> None:
        self._watchers.discard(watcher)

    def close_watchers(self) -> None:
        for watcher in self._watchers:
            watcher.close()
