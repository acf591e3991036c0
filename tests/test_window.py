"""The publication window: its phases by the clock, the transitions kept, refused uploads."""

from __future__ import annotations

import random
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from difusor.ingest.scan import Intake
from difusor.ingest.store import Quarantined, Store
from difusor.logic.archive import Reason
from difusor.logic.window import uploads_refused, window_phase, window_status
from difusor.models import IngestSpec, PrepPublicationSpec, WindowPhase, WindowSpec
from difusor.render.nginx import epoch_below

from .archives import make_zip, site_files

pytestmark = pytest.mark.unit

START = datetime(2024, 6, 2, 20, 0, tzinfo=UTC) + timedelta(hours=6)  # 20:00 in Mexico City
END = START + timedelta(hours=24)


def window_dict(**overrides: Any) -> dict[str, Any]:
    fields: dict[str, Any] = {
        "start": "2024-06-02T20:00:00-06:00",
        "end": "2024-06-03T20:00:00-06:00",
        "placeholderConfigMap": "prep-placeholder",
    }
    fields.update(overrides)
    return {k: v for k, v in fields.items() if v is not None}


def window(**overrides: Any) -> WindowSpec:
    return WindowSpec.model_validate(window_dict(**overrides))


def test_the_phase_follows_the_clock_through_start_end_and_keep_online() -> None:
    w = window(keepOnline="36h")
    assert w.phase_at(START - timedelta(seconds=1)) is WindowPhase.PENDING
    assert w.phase_at(START) is WindowPhase.OPEN
    assert w.phase_at(END - timedelta(seconds=1)) is WindowPhase.OPEN
    assert w.phase_at(END) is WindowPhase.CLOSED
    assert w.take_down_after() == END + timedelta(hours=36)
    assert w.phase_at(END + timedelta(hours=36) - timedelta(seconds=1)) is WindowPhase.CLOSED
    assert w.phase_at(END + timedelta(hours=36)) is WindowPhase.COMPLETE
    assert window_phase(None, START) is None


def test_keep_online_defaults_to_a_day() -> None:
    assert window().keep_online == "24h"
    assert window().take_down_after() == END + timedelta(hours=24)


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        ({"end": "2024-06-02T19:00:00-06:00"}, "window.end must be after window.start"),
        ({"end": "2024-06-02T20:00:00-06:00"}, "window.end must be after window.start"),
        ({"keepOnline": "23h59m"}, "under 24h"),
        ({"keepOnline": "1d"}, "keepOnline"),
        ({"start": "2024-06-02T20:00:00"}, "needs a UTC offset"),
        ({"placeholderConfigMap": None}, "placeholderConfigMap"),
    ],
)
def test_a_bad_window_is_refused_naming_the_field(overrides: dict[str, Any], expected: str) -> None:
    with pytest.raises(ValidationError) as info:
        PrepPublicationSpec.model_validate(
            {
                "host": "a.mx",
                "sftp": {"authorizedKeysSecret": "k"},
                "window": window_dict(**overrides),
            }
        )
    assert expected in str(info.value)


def test_each_transition_is_kept_with_the_boundary_it_crossed_and_an_event() -> None:
    w = window()
    status, events = window_status(w, None, now=START - timedelta(hours=1))
    assert status is not None
    assert status["phase"] == "Pending"
    assert [e.reason for e in events] == ["WindowPending"]
    same, none = window_status(w, status, now=START - timedelta(minutes=1))
    assert same == status
    assert none == []
    opened, events = window_status(w, status, now=START + timedelta(seconds=7))
    assert opened is not None
    assert [e.reason for e in events] == ["WindowOpened"]
    assert opened["transitions"][-1] == {
        "phase": "Open",
        "at": "2024-06-02T20:00:00-06:00",
        "observedAt": "2024-06-03T02:00:07Z",
    }
    assert opened["takeDownAfter"] == "2024-06-04T20:00:00-06:00"


def test_boundaries_crossed_while_nobody_looked_are_each_recorded() -> None:
    w = window()
    pending, _ = window_status(w, None, now=START - timedelta(hours=1))
    late, events = window_status(w, pending, now=END + timedelta(hours=1))
    assert late is not None
    assert [t["phase"] for t in late["transitions"]] == ["Pending", "Open", "Closed"]
    assert [t["at"] for t in late["transitions"][1:]] == [
        "2024-06-02T20:00:00-06:00",
        "2024-06-03T20:00:00-06:00",
    ]
    assert [e.reason for e in events] == ["WindowOpened", "WindowClosed"]
    assert "may be taken down after 2024-06-04T20:00:00-06:00" in events[1].message


def test_a_window_moved_later_by_hand_records_the_phase_it_lands_in_now() -> None:
    opened, _ = window_status(window(), None, now=START + timedelta(minutes=5))
    assert opened is not None
    assert [t["phase"] for t in opened["transitions"]] == ["Open"]
    moved = window(start="2024-06-02T21:00:00-06:00")
    back, events = window_status(moved, opened, now=START + timedelta(minutes=6))
    assert back is not None
    assert back["phase"] == "Pending"
    assert back["transitions"][-1]["at"] == "2024-06-03T02:06:00Z"
    assert [e.reason for e in events] == ["WindowPending"]


def test_removing_the_window_clears_its_status() -> None:
    assert window_status(None, {"phase": "Open"}, now=START) == (None, [])


def test_uploads_are_refused_only_after_the_end() -> None:
    w = window()
    assert uploads_refused(w, START - timedelta(days=3)) is None
    assert uploads_refused(w, END - timedelta(seconds=1)) is None
    reason = uploads_refused(w, END)
    assert reason is not None
    assert "closed at 2024-06-03T20:00:00-06:00" in reason
    assert uploads_refused(None, END) is None


def test_an_upload_after_the_end_is_quarantined_with_the_reason(tmp_path: Path) -> None:
    store = Store(tmp_path)
    store.recover()
    archive = make_zip(store.incoming / "20240603_2020_PREP_MICH.zip", site_files(cut="x"))
    reason = uploads_refused(window(), END + timedelta(minutes=20))
    [outcome] = Intake(store).run(
        ingest=IngestSpec(), pinned=None, now=END + timedelta(minutes=20), refused=reason
    )
    assert isinstance(outcome, Quarantined)
    assert outcome.reason is Reason.WINDOW_CLOSED
    assert "window closed" in outcome.message
    assert (store.quarantine_dir / archive.name).exists()
    assert store.cuts() == []


def test_the_clock_expression_matches_exactly_the_seconds_before_the_start() -> None:
    rng = random.Random(16)
    limits = [1717380000, 1000000000, 1999999999, 1700000001, 1234567890, 10, 7]
    for limit in limits:
        pattern = re.compile(f"^{epoch_below(limit)}$")
        width = len(str(limit))
        probes = {limit - 1, limit, limit + 1, 10 ** (width - 1), 10**width - 1}
        probes |= {rng.randrange(10 ** (width - 1), 10**width) for _ in range(2000)}
        for value in probes:
            if value > 0 and len(str(value)) <= width:
                assert bool(pattern.match(str(value))) == (value < limit), (limit, value)
