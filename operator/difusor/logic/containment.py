"""Containment of an attack: the automatic deny list from the pods' attack reports, with expiry."""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any


def _stamp(when: datetime) -> str:
    return when.strftime("%Y-%m-%dT%H:%M:%SZ")


def _parse(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


@dataclass
class Verdict:
    """The deny list to write and what changed."""

    denied: list[dict[str, Any]]
    added: list[str] = field(default_factory=list)
    renewed: list[str] = field(default_factory=list)
    expired: list[str] = field(default_factory=list)
    reporting_pods: list[str] = field(default_factory=list)
    peak_requests: int = 0
    peak_rejected_share: float = 0.0

    @property
    def changed(self) -> bool:
        """The list differs from before (entries added, renewed or gone)."""
        return bool(self.added or self.renewed or self.expired)


def contain(
    current: Sequence[Mapping[str, Any]],
    reports: Mapping[str, Mapping[str, Any]],
    *,
    now: datetime,
    ttl: timedelta,
    max_entries: int,
    protected: Sequence[str],
    spec_deny: Sequence[str],
    renew_after: timedelta = timedelta(seconds=30),
) -> Verdict:
    """The automatic deny list after the pods' reports (pod name -> attack annotation).

    A range blamed by any pod is denied until now + ttl; a range still blamed is renewed (at most
    every `renew_after`, so the status is not rewritten on every pass); an entry past its expiry
    goes. Ranges that overlap `protected` (trusted proxies: denying one denies every reader
    behind it) or lie inside the spec's own denyList are never added. The newest `max_entries`
    stay.
    """
    shielded = [ipaddress.ip_network(c, strict=False) for c in protected]
    covered = [ipaddress.ip_network(c, strict=False) for c in spec_deny]
    entries = {str(e["cidr"]): dict(e) for e in current}
    verdict = Verdict(denied=[])
    blamed: dict[str, str] = {}
    for pod, report in sorted(reports.items()):
        ranges = [str(r) for r in report.get("ranges") or []]
        if not ranges:
            continue
        verdict.reporting_pods.append(pod)
        requests = int(report.get("requests") or 0)
        if requests > verdict.peak_requests:
            verdict.peak_requests = requests
            verdict.peak_rejected_share = float(report.get("rejectedShare") or 0.0)
        reasons = ",".join(report.get("reasons") or [])
        for cidr in ranges:
            try:
                network = ipaddress.ip_network(cidr, strict=False)
            except ValueError:
                continue
            if any(network.overlaps(other) for other in shielded):
                continue
            if any(
                network.version == other.version and network.subnet_of(other)  # type: ignore[arg-type]
                for other in covered
            ):
                continue
            blamed.setdefault(
                str(network),
                f"{reasons} on {pod}: {requests} requests/min, "
                f"{float(report.get('rejectedShare') or 0):.0%} rejected",
            )
    until = _stamp(now + ttl)
    for cidr, why in blamed.items():
        entry = entries.get(cidr)
        if entry is None:
            entries[cidr] = {"cidr": cidr, "since": _stamp(now), "expiresAt": until, "reason": why}
            verdict.added.append(cidr)
        elif _parse(entry["expiresAt"]) - now < ttl - renew_after:
            entry["expiresAt"] = until
            verdict.renewed.append(cidr)
    for cidr, entry in list(entries.items()):
        if cidr not in blamed and _parse(entry["expiresAt"]) <= now:
            del entries[cidr]
            verdict.expired.append(cidr)
    kept = sorted(entries.values(), key=lambda e: (e["since"], e["cidr"]))[-max_entries:]
    dropped = {e["cidr"] for e in entries.values()} - {e["cidr"] for e in kept}
    verdict.expired.extend(sorted(dropped))
    verdict.denied = kept
    return verdict
