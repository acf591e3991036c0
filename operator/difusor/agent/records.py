"""PrepCut records and Events that the agent writes about uploads it received."""

from __future__ import annotations

import dataclasses
import json
import logging
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from kubernetes import client as k8s

from difusor.ingest.store import Quarantined, Store, Stored, write_json
from difusor.kube import custom_path, patch_status, publication_event, read, request
from difusor.logic.archive import Reason
from difusor.models import API_VERSION, cut_object_name
from difusor.render.labels import PUBLICATION_LABEL, common_labels, owner_reference

log = logging.getLogger(__name__)

Obj = dict[str, Any]
PLURAL = "prepcuts"


#: Uploads stored or rejected whose record the API server has not taken yet, with the time each
#: was received, on the content volume beside versions/: an agent restarted while the API server
#: is still away records them once it is back (the upload has left incoming/; without its PrepCut
#: a stored cut would never be promoted, and a rejected one would be missing from the night's
#: account).
UNRECORDED_FILE = ".unrecorded.json"

Unrecorded = list[tuple[Stored | Quarantined, str]]


def _entry(outcome: Stored | Quarantined, received_at: str) -> Obj:
    if isinstance(outcome, Stored):
        return {"stored": dataclasses.asdict(outcome), "receivedAt": received_at}
    rejected = {**dataclasses.asdict(outcome), "reason": str(outcome.reason)}
    return {"rejected": {**rejected, "path": str(outcome.path)}, "receivedAt": received_at}


def _outcome(entry: Obj) -> Stored | Quarantined:
    if "stored" in entry:
        return Stored(**entry["stored"])
    rejected = entry["rejected"]
    return Quarantined(
        **{**rejected, "reason": Reason(rejected["reason"]), "path": Path(rejected["path"])}
    )


def load_unrecorded(store: Store) -> Unrecorded:
    """The uploads left unrecorded by an earlier run; a stored cut no longer in versions/ (removed
    since) needs no record. An unreadable file is logged and counts as none."""
    path = store.root / UNRECORDED_FILE
    try:
        document = json.loads(path.read_text())
        entries = [(_outcome(e), str(e["receivedAt"])) for e in document["uploads"]]
    except FileNotFoundError:
        return []
    except (OSError, ValueError, KeyError, TypeError) as exc:
        log.warning("Ignoring %s, which cannot be read: %s", path, exc)
        return []
    return [
        (outcome, at)
        for outcome, at in entries
        if not isinstance(outcome, Stored) or (store.versions / outcome.cut).is_dir()
    ]


def save_unrecorded(store: Store, entries: Unrecorded) -> None:
    """Keep the list whole on the volume; an empty list removes the file."""
    path = store.root / UNRECORDED_FILE
    if not entries:
        path.unlink(missing_ok=True)
        return
    write_json(path, {"uploads": [_entry(outcome, at) for outcome, at in entries]})


class Conflict(Exception):
    """A different archive was already recorded under this cut id."""


def _unfinished(record: Obj | None, quarantined: Quarantined) -> bool:
    """A PrepCut of this very archive created by an earlier try whose status write failed."""
    if record is None or (record.get("status") or {}).get("phase"):
        return False
    return bool((record.get("spec") or {}).get("archiveSha256") == quarantined.sha256)


def _now() -> str:
    """Now, to the millisecond: validation and promotion steps take well under a second."""
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class Records:
    """Creates PrepCuts owned by the publication and Events on it."""

    def __init__(self, api: k8s.ApiClient, *, namespace: str, pod: str) -> None:
        self.api = api
        self.namespace = namespace
        self.pod = pod

    def _cut(self, publication: Obj, name: str, spec: Obj) -> Obj:
        meta = publication["metadata"]
        return {
            "apiVersion": API_VERSION,
            "kind": "PrepCut",
            "metadata": {
                "name": name,
                "namespace": self.namespace,
                "labels": {
                    **common_labels(meta["name"], component="cut"),
                    PUBLICATION_LABEL: meta["name"],
                },
                "ownerReferences": [owner_reference(meta["name"], meta["uid"], controller=False)],
            },
            "spec": spec,
        }

    def _create(self, body: Obj) -> Obj | None:
        """Create; None when one with that name exists already."""
        try:
            created = request(self.api, "POST", custom_path(self.namespace, PLURAL), body=body)
        except k8s.ApiException as exc:
            if exc.status == 409:
                return None
            raise
        return created

    def _status(self, name: str, status: Obj) -> None:
        patch_status(self.api, self.namespace, PLURAL, name, status)

    def get(self, publication: str, cut_id: str) -> Obj | None:
        """The PrepCut of a cut, or None."""
        return read(
            self.api, custom_path(self.namespace, PLURAL, cut_object_name(publication, cut_id))
        )

    def stored(self, publication: Obj, stored: Stored, *, received_at: str) -> None:
        """Record a verified cut; the same archive twice is a no-op, another one a Conflict."""
        pub_name = publication["metadata"]["name"]
        name = cut_object_name(pub_name, stored.cut)
        spec: Obj = {
            "publication": pub_name,
            "id": stored.cut,
            "archive": stored.archive,
            "archiveSha256": stored.archive_sha256,
            "manifestDigest": stored.manifest_digest,
            "files": stored.files,
            "bytes": stored.bytes,
            "receivedBy": self.pod,
        }
        if stored.time:
            spec["time"] = stored.time
        created = self._create(self._cut(publication, name, spec))
        if created is None:
            existing = self.get(pub_name, stored.cut) or {}
            digest = (existing.get("spec") or {}).get("manifestDigest")
            if digest != stored.manifest_digest:
                raise Conflict(
                    f"cut {stored.cut} was already received as {existing.get('spec', {}).get('archive')} "
                    f"with other content ({digest}); {stored.archive} is refused"
                )
            if (existing.get("status") or {}).get("phase"):
                return
            # Created on an earlier pass whose status write did not reach the API server.
        self._status(name, {"phase": "Verified", "receivedAt": received_at, "verifiedAt": _now()})
        log.info("Recorded cut %s of %s as Verified (%d files)", stored.cut, pub_name, stored.files)

    def rejected(
        self,
        publication: Obj,
        quarantined: Quarantined,
        *,
        cut_id: str | None,
        received_at: str,
    ) -> None:
        """Record a rejected upload as a PrepCut in phase Rejected and a Warning Event. A retry
        after a try the API server took only part of finishes that record, not another one."""
        pub_name = publication["metadata"]["name"]
        ident = cut_id or f"rejected-{quarantined.sha256[:12]}"
        if cut_id:
            held = self.get(pub_name, cut_id)
            if held is not None and not _unfinished(held, quarantined):
                # Another archive (or this one, recorded before) holds this cut id: keep its
                # record, name this one apart.
                ident = f"{cut_id}-rejected-{quarantined.sha256[:8]}"
        name = cut_object_name(pub_name, ident)
        spec = {
            "publication": pub_name,
            "id": ident,
            "archive": quarantined.archive,
            "archiveSha256": quarantined.sha256,
            "receivedBy": self.pod,
        }
        created = self._create(self._cut(publication, name, spec))
        if created is not None or _unfinished(self.get(pub_name, ident), quarantined):
            self._status(
                name,
                {
                    "phase": "Rejected",
                    "reason": str(quarantined.reason),
                    "message": quarantined.message,
                    "receivedAt": received_at,
                },
            )
        self.event(
            publication,
            reason=f"Rejected{quarantined.reason}",
            message=f"{quarantined.archive} rejected on {self.pod}: {quarantined.message}",
            warning=True,
        )

    def event(self, publication: Obj, *, reason: str, message: str, warning: bool = False) -> None:
        """An Event on the publication from this pod's agent."""
        publication_event(
            self.api,
            metadata=publication["metadata"],
            reason=reason,
            message=message,
            warning=warning,
            component=f"difusor-agent/{self.pod}",
        )
