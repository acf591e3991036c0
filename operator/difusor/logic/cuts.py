"""Pure rules about cuts: ids and times from archive names, their order, staleness and retention."""

from __future__ import annotations

import re
import zoneinfo
from collections.abc import Iterable, Set
from dataclasses import dataclass
from datetime import datetime

from difusor.logic.archive import Reason, Rejected
from difusor.models import CUT_ID_PATTERN

#: Suffix of the work directories beside the versions; no cut id may end with it.
WORK_SUFFIX = ".partial"

_INSTITUTE_ID = re.compile(r"^(\d{4})(\d{2})(\d{2})_(\d{2})(\d{2})$")


@dataclass(frozen=True)
class CutRef:
    """A cut's id and, when the id is the institute's YYYYMMDD_HHMM, its time."""

    id: str
    time: datetime | None


def cut_time(cut_id: str, timezone: str) -> datetime | None:
    """The time of an id shaped YYYYMMDD_HHMM, in the institute's time zone; None otherwise."""
    match = _INSTITUTE_ID.match(cut_id)
    if not match:
        return None
    year, month, day, hour, minute = (int(g) for g in match.groups())
    try:
        return datetime(year, month, day, hour, minute, tzinfo=zoneinfo.ZoneInfo(timezone))
    except ValueError:
        return None


def parse_cut(archive_name: str, *, pattern: str, timezone: str) -> CutRef:
    """The cut named by an archive file name; Rejected (BadCutId) when the name has none."""
    match = re.search(pattern, archive_name)
    cut_id = match.group("id") if match else None
    if not cut_id or not re.match(CUT_ID_PATTERN, cut_id) or cut_id.endswith(WORK_SUFFIX):
        raise Rejected(Reason.BAD_CUT_ID, f"{archive_name!r} has no cut id matching {pattern!r}")
    if _INSTITUTE_ID.match(cut_id) and cut_time(cut_id, timezone) is None:
        raise Rejected(Reason.BAD_CUT_ID, f"{cut_id!r} is not a valid date and time")
    return CutRef(cut_id, cut_time(cut_id, timezone))


def is_stale(cut_id: str, *, active: str | None, pinned: str | None) -> bool:
    """Whether a cut is older than the active one and not the pinned cut (a rollback target).

    Ids compare as text: the institute's zero-padded YYYYMMDD_HHMM sorts in time order.
    """
    if active is None or cut_id == pinned:
        return False
    return cut_id < active


def versions_to_prune(versions: Iterable[str], *, keep: int, protected: Set[str]) -> list[str]:
    """The versions to remove so that `keep` remain, newest first, never a protected one."""
    present = set(versions)
    budget = keep - len(present & protected)
    doomed = []
    for cut_id in sorted(present - protected, reverse=True):
        if budget > 0:
            budget -= 1
        else:
            doomed.append(cut_id)
    return doomed
