"""The audit's verdict: what a site served against its published manifest, and that against the archive."""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass

from difusor.logic.archive import ManifestEntry, manifest_entries


@dataclass(frozen=True)
class Published:
    """The manifest a site publishes for its active cut."""

    cut: str
    archive: str | None
    archive_sha256: str | None
    mode: str
    entries: tuple[ManifestEntry, ...]


@dataclass(frozen=True)
class Served:
    """What one GET of a file of the manifest answered."""

    status: int
    size: int
    sha256: str
    cut: str | None
    """Its X-Prep-Cut header."""


@dataclass(frozen=True)
class Difference:
    """One way in which the site, its manifest or the archive disagree."""

    path: str
    what: str

    def line(self) -> str:
        """How the audit prints it."""
        return f"{self.path}: {self.what}"


def published(document: Mapping[str, object]) -> Published:
    """The published manifest; ValueError when it is malformed or its digest does not verify."""
    cut = document.get("cut")
    if not isinstance(cut, str) or not cut:
        raise ValueError("the manifest names no cut")
    entries = manifest_entries(document)
    archive, sha256 = document.get("archive"), document.get("archiveSha256")
    return Published(
        cut=cut,
        archive=archive if isinstance(archive, str) else None,
        archive_sha256=sha256 if isinstance(sha256, str) else None,
        mode=str(document.get("mode") or "snapshot"),
        entries=tuple(entries),
    )


def compare_served(
    manifest: Published, served: Mapping[str, Served], *, skipped: Collection[str] = ()
) -> list[Difference]:
    """Every file of the manifest as the site served it: status, cut, size and SHA-256."""
    found = []
    for entry in manifest.entries:
        if entry.path in skipped:
            continue
        got = served.get(entry.path)
        if got is None:
            found.append(Difference(entry.path, "not fetched"))
        elif got.status != 200:
            found.append(Difference(entry.path, f"answered HTTP {got.status}"))
        elif got.cut != manifest.cut:
            found.append(Difference(entry.path, f"served from cut {got.cut}, not {manifest.cut}"))
        elif (got.size, got.sha256) != (entry.size, entry.sha256):
            found.append(
                Difference(
                    entry.path,
                    f"served {got.size} bytes with SHA-256 {got.sha256}; the manifest says "
                    f"{entry.size} bytes with SHA-256 {entry.sha256}",
                )
            )
    return found


def compare_archive(
    manifest: Published,
    *,
    archive_name: str,
    archive_sha256: str,
    files: Mapping[str, ManifestEntry],
) -> list[Difference]:
    """The manifest against the institute's archive: its SHA-256, then file by file.

    In an overlay cut the manifest also holds files carried from earlier cuts, so only the
    archive's own files must be there unchanged.
    """
    found = []
    if manifest.archive_sha256 != archive_sha256:
        found.append(
            Difference(
                archive_name,
                f"SHA-256 {archive_sha256}; the site publishes {manifest.archive_sha256} "
                f"({manifest.archive})",
            )
        )
    listed = {e.path: e for e in manifest.entries}
    for path, entry in sorted(files.items()):
        mine = listed.get(path)
        if mine is None:
            found.append(Difference(path, "in the archive but not in the site's manifest"))
        elif (mine.size, mine.sha256) != (entry.size, entry.sha256):
            found.append(
                Difference(
                    path,
                    f"the archive has {entry.size} bytes with SHA-256 {entry.sha256}; the "
                    f"manifest says {mine.size} bytes with SHA-256 {mine.sha256}",
                )
            )
    if manifest.mode != "overlay":
        found += [
            Difference(path, "in the site's manifest but not in the archive")
            for path in sorted(set(listed) - set(files))
        ]
    return found


def verdict(
    manifest: Published, differences: Collection[Difference], *, archive: bool, skipped: int
) -> str:
    """The one-line verdict."""
    checked = len(manifest.entries) - skipped
    if differences:
        return (
            f"ALTERED: {len(differences)} difference(s) in cut {manifest.cut} "
            f"({checked} files checked)"
        )
    proof = "; the manifest matches the institute's archive" if archive else ""
    return f"UNALTERED: cut {manifest.cut}, {checked} files served exactly as published{proof}"
