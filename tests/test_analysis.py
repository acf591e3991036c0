"""The memoria's cut timeline reads the records the operator writes on each PrepCut."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from difusor.logic.analysis import cut_rows

pytestmark = pytest.mark.unit


def test_a_cuts_purge_time_is_the_acknowledgement_the_promotion_recorded() -> None:
    cut = {
        "spec": {"id": "20240602_2040", "time": "2024-06-02T20:40:00-06:00"},
        "status": {
            "phase": "Promoted",
            "receivedAt": "2024-06-03T02:41:00+00:00",
            "verifiedAt": "2024-06-03T02:41:01+00:00",
            "servingAt": "2024-06-03T02:41:03+00:00",
            "purge": {"outcome": "Succeeded", "completedAt": "2024-06-03T02:41:04+00:00"},
        },
    }

    (row,) = cut_rows(
        [cut],
        start=datetime(2024, 6, 3, tzinfo=UTC),
        end=datetime(2024, 6, 4, tzinfo=UTC),
    )

    assert row.live == datetime(2024, 6, 3, 2, 41, 3, tzinfo=UTC)
    assert row.purged == datetime(2024, 6, 3, 2, 41, 4, tzinfo=UTC)
