"""The publication window: its phase at a given time, and the transitions to record."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from difusor.models import WindowPhase, WindowSpec

#: Phases in the order the clock goes through them.
ORDER = (WindowPhase.PENDING, WindowPhase.OPEN, WindowPhase.CLOSED, WindowPhase.COMPLETE)
#: Transitions kept in status (a window moved back and forth by hand cannot grow it forever).
MAX_TRANSITIONS = 50
#: The Event reason recorded when each phase is entered.
EVENT_REASONS = {
    WindowPhase.PENDING: "WindowPending",
    WindowPhase.OPEN: "WindowOpened",
    WindowPhase.CLOSED: "WindowClosed",
    WindowPhase.COMPLETE: "KeepOnlineEnded",
}


@dataclass(frozen=True)
class WindowEvent:
    """An Event to record about a transition."""

    reason: str
    message: str


def boundary(window: WindowSpec, phase: WindowPhase) -> datetime:
    """The time at which the clock enters a phase (Pending has none: the window's start)."""
    return {
        WindowPhase.PENDING: window.start,
        WindowPhase.OPEN: window.start,
        WindowPhase.CLOSED: window.end,
        WindowPhase.COMPLETE: window.take_down_after(),
    }[phase]


def window_phase(window: WindowSpec | None, now: datetime) -> WindowPhase | None:
    """The phase at `now`; None without a window (cuts at any time)."""
    return None if window is None else window.phase_at(now)


def uploads_refused(window: WindowSpec | None, now: datetime) -> str | None:
    """None when uploads are taken at `now`; otherwise why they are refused."""
    phase = window_phase(window, now)
    if window is None or phase not in (WindowPhase.CLOSED, WindowPhase.COMPLETE):
        return None
    return (
        f"the publication window closed at {_rfc3339(window.end)}; no cut is taken after it "
        f"(the last cut stays served until {_rfc3339(window.take_down_after())})"
    )


def _rfc3339(value: datetime) -> str:
    return value.isoformat()


def _message(window: WindowSpec, phase: WindowPhase) -> str:
    start, end = _rfc3339(window.start), _rfc3339(window.end)
    down = _rfc3339(window.take_down_after())
    return {
        WindowPhase.PENDING: f"Serving the placeholder page until the window opens at {start}",
        WindowPhase.OPEN: f"Window opened at {start}: cuts are served until {end}",
        WindowPhase.CLOSED: (
            f"Window closed at {end}: the last cut stays served and uploads are refused; "
            f"the site may be taken down after {down}"
        ),
        WindowPhase.COMPLETE: f"Kept online until {down}: the site may be taken down",
    }[phase]


def window_status(
    window: WindowSpec | None, previous: Mapping[str, Any] | None, *, now: datetime
) -> tuple[dict[str, Any] | None, list[WindowEvent]]:
    """status.window at `now` given the previous one, and the Events of the transitions it adds.

    When the clock crossed several boundaries since the last look (an operator down over the
    start), each phase is recorded at its own boundary. A spec change that moves the window back
    records the phase it lands in at `now`.
    """
    phase = window_phase(window, now)
    if window is None or phase is None:
        return None, []
    previous = previous or {}
    transitions: list[dict[str, Any]] = list(previous.get("transitions") or [])
    last = previous.get("phase")
    observed = now.strftime("%Y-%m-%dT%H:%M:%SZ")
    entered: list[tuple[WindowPhase, str]] = []
    if last != phase:
        if last in ORDER and ORDER.index(WindowPhase(last)) < ORDER.index(phase):
            crossed = ORDER[ORDER.index(WindowPhase(last)) + 1 : ORDER.index(phase) + 1]
            entered = [(p, _rfc3339(boundary(window, p))) for p in crossed]
        elif last is None and phase is not WindowPhase.PENDING:
            # First look at a window already under way: its history starts with this phase.
            entered = [(phase, _rfc3339(boundary(window, phase)))]
        else:
            entered = [(phase, observed)]
    for entered_phase, at in entered:
        transitions.append({"phase": str(entered_phase), "at": at, "observedAt": observed})
    status = {
        "phase": str(phase),
        "start": _rfc3339(window.start),
        "end": _rfc3339(window.end),
        "takeDownAfter": _rfc3339(window.take_down_after()),
        "transitions": transitions[-MAX_TRANSITIONS:],
    }
    events = [WindowEvent(EVENT_REASONS[p], _message(window, p)) for p, _ in entered]
    return status, events
