"""The objects a promotion step reads, as the operator's watches last delivered them.

A step used to list its publication's PrepCuts and pods from the API server. By the end of a
night with a cut every five minutes that is 288 PrepCuts, each carrying every pod's report:
about a megabyte to send and parse per step, and a promotion takes two steps per pod. kopf
already watches both kinds for the handlers that start those steps, so a Mirror keeps what the
watch events bring, and the answers of the operator's own writes, which reach it before their
watch events do.

Two copies of one object are ordered by resourceVersion: since Kubernetes 1.35 (KEP-5504)
resource versions of one resource compare as integers, and the newer copy wins, whichever path
brought it. A group (one publication's objects) is listed in full the first time it is read and
again after REFRESH seconds: a watch that restarts after its history expired (410 Gone) lists
again without reporting what was deleted in between, and the re-list drops those.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

Obj = dict[str, Any]
#: Seconds after which a group is listed again (objects deleted while a watch was down go).
REFRESH = 30.0


def newer(candidate: str, held: str) -> bool:
    """Whether resourceVersion `candidate` is later than `held` (KEP-5504: decimal integers
    without leading zeros compare by length, then digit by digit). A version that is not such an
    integer (an API server before 1.35 that does not use etcd's revisions) counts as later: the
    copy delivered last wins, as with the plain watch."""
    if not (candidate.isdigit() and held.isdigit()):
        return True
    return (len(candidate), candidate) > (len(held), held)


def without_managed_fields(obj: Obj) -> Obj:
    """The object without metadata.managedFields (a third of a PrepCut, read by no step)."""
    meta = obj.get("metadata") or {}
    if "managedFields" not in meta:
        return obj
    return {**obj, "metadata": {k: v for k, v in meta.items() if k != "managedFields"}}


def _version(obj: Obj) -> str:
    return str((obj.get("metadata") or {}).get("resourceVersion") or "")


class Mirror:
    """Objects of one kind grouped by `group_of` (a publication's name) per namespace.

    `lister(namespace, group)` answers the API server's list (with its metadata.resourceVersion)
    of one group; `saw` takes every watch event and every write's answer. `slim` makes the copy
    kept of each (it must keep metadata.name and metadata.resourceVersion).
    """

    def __init__(
        self,
        lister: Callable[[str, str], Obj],
        group_of: Callable[[Obj], str | None],
        *,
        refresh: float = REFRESH,
        slim: Callable[[Obj], Obj] = without_managed_fields,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._lister = lister
        self._group_of = group_of
        self._refresh = refresh
        self._slim = slim
        self._clock = clock
        self._lock = threading.Lock()
        self._groups: dict[tuple[str, str], dict[str, Obj]] = {}
        # The resourceVersion each deleted object had: an older copy (a list that began before
        # the deletion) must not bring it back.
        self._gone: dict[tuple[str, str], dict[str, str]] = {}
        self._listed: dict[tuple[str, str], float] = {}

    def _key(self, obj: Obj) -> tuple[tuple[str, str], str] | None:
        meta = obj.get("metadata") or {}
        group = self._group_of(obj)
        if not group or not meta.get("name"):
            return None
        return (meta.get("namespace") or "", group), meta["name"]

    def saw(self, obj: Obj, *, deleted: bool = False) -> bool:
        """A watch event's object (`deleted` for DELETED), or the answer to a write; False when
        the mirror already had this version or a newer one (the watch event of a write whose
        answer came first: nothing the caller has not seen)."""
        key = self._key(obj)
        if key is None:
            return False
        with self._lock:
            return self._keep(*key, obj, deleted=deleted)

    def held(self, obj: Obj) -> Obj | None:
        """The copy kept of the object `obj` is a version of (its slim copy), if any."""
        key = self._key(obj)
        if key is None:
            return None
        with self._lock:
            return self._groups.get(key[0], {}).get(key[1])

    def _keep(self, group: tuple[str, str], name: str, obj: Obj, *, deleted: bool) -> bool:
        version = _version(obj)
        held = self._groups.get(group, {}).get(name)
        if held is not None and not newer(version, _version(held)):
            return False
        gone = self._gone.get(group, {}).get(name)
        if gone is not None and not newer(version, gone):
            return False
        if deleted:
            self._groups.get(group, {}).pop(name, None)
            self._gone.setdefault(group, {})[name] = version
            return True
        self._groups.setdefault(group, {})[name] = self._slim(obj)
        self._gone.get(group, {}).pop(name, None)
        return True

    def items(self, namespace: str, group: str) -> list[Obj]:
        """The group's objects; listed from the API server first when due. The objects are the
        mirror's own: callers must not change them."""
        key = (namespace, group)
        with self._lock:
            listed = self._listed.get(key)
        if listed is None or self._clock() - listed >= self._refresh:
            began = self._clock()
            answer = self._lister(namespace, group)
            with self._lock:
                self._merge(key, answer)
                self._listed[key] = began
        with self._lock:
            return list(self._groups.get(key, {}).values())

    def _merge(self, group: tuple[str, str], answer: Obj) -> None:
        at = str((answer.get("metadata") or {}).get("resourceVersion") or "")
        present = set()
        for item in answer.get("items") or []:
            name = (item.get("metadata") or {}).get("name")
            if name:
                present.add(name)
                self._keep(group, name, item, deleted=False)
        held = self._groups.get(group, {})
        for name in [n for n in held if n not in present]:
            # Absent from the list and not changed since it was taken: deleted meanwhile (with
            # versions that do not compare, the list is all there is).
            if not at.isdigit() or not newer(_version(held[name]), at):
                del held[name]
        gone = self._gone.get(group, {})
        for name in [n for n, v in gone.items() if not newer(v, at)]:
            del gone[name]

    def forget(self, namespace: str, group: str) -> None:
        """Drop a group (its publication was deleted)."""
        with self._lock:
            self._groups.pop((namespace, group), None)
            self._gone.pop((namespace, group), None)
            self._listed.pop((namespace, group), None)
