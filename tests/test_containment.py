"""Containment as a pure decision: the automatic deny list from the pods' reports, with expiry."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from difusor.agent.containment import render_deny
from difusor.logic.containment import contain

pytestmark = pytest.mark.unit

T0 = datetime(2026, 6, 2, 2, 0, tzinfo=UTC)
TTL = timedelta(seconds=60)
REPORT = {"reasons": ["rejected-share"], "requests": 9000, "rejectedShare": 0.97}


def run(
    current: list[dict[str, str]],
    reports: dict[str, dict[str, object]],
    now: datetime,
    **kw: object,
):  # type: ignore[no-untyped-def]
    args: dict[str, object] = {
        "now": now,
        "ttl": TTL,
        "max_entries": 10,
        "protected": [],
        "spec_deny": [],
        **kw,
    }
    return contain(current, reports, **args)  # type: ignore[arg-type]


def test_a_blamed_range_is_denied_until_the_ttl_and_then_released() -> None:
    first = run([], {"web-0": {**REPORT, "ranges": ["203.0.113.0/24"]}}, T0)
    assert first.added == ["203.0.113.0/24"]
    assert first.denied == [
        {
            "cidr": "203.0.113.0/24", "since": "2026-06-02T02:00:00Z",
            "expiresAt": "2026-06-02T02:01:00Z",
            "reason": "rejected-share on web-0: 9000 requests/min, 97% rejected",
        }
    ]  # fmt: skip
    assert first.reporting_pods == ["web-0"]
    quiet = run(first.denied, {}, T0 + timedelta(seconds=59))
    assert not quiet.changed
    assert quiet.denied == first.denied
    gone = run(first.denied, {}, T0 + TTL)
    assert gone.expired == ["203.0.113.0/24"]
    assert gone.denied == []


def test_a_range_still_attacking_is_renewed_but_not_on_every_pass() -> None:
    report = {"web-1": {**REPORT, "ranges": ["203.0.113.0/24"]}}
    first = run([], report, T0)
    soon = run(first.denied, report, T0 + timedelta(seconds=5))
    assert not soon.changed
    later = run(first.denied, report, T0 + timedelta(seconds=45))
    assert later.renewed == ["203.0.113.0/24"]
    assert later.denied[0]["expiresAt"] == "2026-06-02T02:01:45Z"
    assert later.denied[0]["since"] == "2026-06-02T02:00:00Z"


def test_trusted_proxies_and_the_specs_own_ranges_are_never_added() -> None:
    reports = {"web-0": {**REPORT, "ranges": ["10.1.2.0/24", "198.51.100.0/24", "192.0.2.0/24"]}}
    verdict = run([], reports, T0, protected=["10.0.0.0/8"], spec_deny=["198.51.100.0/22"])
    assert verdict.added == ["192.0.2.0/24"]


def test_only_the_newest_entries_are_kept() -> None:
    reports = {"web-0": {**REPORT, "ranges": [f"192.0.{i}.0/24" for i in range(3)]}}
    verdict = run([{"cidr": "198.51.100.0/24", "since": "2026-06-02T01:00:00Z",
                    "expiresAt": "2026-06-02T03:00:00Z", "reason": ""}],
                  reports, T0, max_entries=3)  # fmt: skip
    assert [e["cidr"] for e in verdict.denied] == [f"192.0.{i}.0/24" for i in range(3)]
    assert verdict.expired == ["198.51.100.0/24"]


def test_the_pods_deny_file_lists_each_range_once_normalised() -> None:
    text = render_deny(["203.0.113.7/24", "203.0.113.0/24", "2001:db8::1/48"])
    assert text.splitlines()[1:] == ["deny 203.0.113.0/24;", "deny 2001:db8::/48;"]
    assert render_deny([]).count("deny") == 0
