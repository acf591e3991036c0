"""Geolocation of the readers' networks from a MaxMind-format database (GeoIP2/GeoLite2 City)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import maxminddb

from difusor.logic.stats import network_address

#: What a network that the database does not place is counted as.
UNKNOWN = "??"


class GeoLookup:
    """(country ISO code, Mexican state ISO code or None) of a network, from an .mmdb file."""

    def __init__(self, path: Path) -> None:
        try:
            self.reader = maxminddb.open_database(str(path))
        except (OSError, ValueError, maxminddb.InvalidDatabaseError) as exc:
            raise ValueError(f"--geoip {path}: not a MaxMind DB file: {exc}") from None
        self.path = path

    def __call__(self, network: int) -> tuple[str, str | None]:
        address = network_address(network)
        found: Any = self.reader.get(address) if address else None
        if not isinstance(found, dict):
            return UNKNOWN, None
        country = (found.get("country") or found.get("registered_country") or {}).get("iso_code")
        if not country:
            return UNKNOWN, None
        state = None
        if country == "MX":
            subdivisions = found.get("subdivisions") or []
            state = subdivisions[0].get("iso_code") if subdivisions else None
        return str(country), state

    def description(self) -> str:
        """The database's type and build date, for the report."""
        meta = self.reader.metadata()
        from datetime import UTC, datetime

        built = datetime.fromtimestamp(meta.build_epoch, UTC).strftime("%Y-%m-%d")
        return f"{meta.database_type} ({built})"
