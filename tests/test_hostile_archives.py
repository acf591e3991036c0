"""Each hostile upload is quarantined with its reason while the active cut stays served."""

from __future__ import annotations

import hashlib
import io
import json
import stat
import tarfile
import zipfile
from datetime import UTC, datetime
from pathlib import Path

import pytest

from difusor.ingest.store import Quarantined, Store, Stored
from difusor.logic.archive import Reason
from difusor.models import IngestSpec

from .archives import StreamedStore, add_tar_entry, make_tar, make_zip, site_files

pytestmark = pytest.mark.unit

NOW = datetime(2024, 6, 3, 2, 0, tzinfo=UTC)
ACTIVE = "20240602_2040"
NEXT = "20240602_2100"


@pytest.fixture(params=["at the rename", "while arriving"])
def store(tmp_path: Path, request: pytest.FixtureRequest) -> Store:
    """A store serving cut 20240602_2040; archives extracted at the rename or as they arrive."""
    store = (StreamedStore if request.param == "while arriving" else Store)(tmp_path / "prep")
    store.recover()
    first = make_zip(store.incoming / f"{ACTIVE}_PREP.zip", site_files(cut=ACTIVE))
    assert isinstance(store.process(first, ingest=IngestSpec(), now=NOW), Stored)
    store.swap_current(ACTIVE)
    return store


def assert_quarantined(
    store: Store,
    archive: Path,
    reason: Reason,
    *,
    ingest: IngestSpec | None = None,
    checksum: str | None = None,
) -> None:
    """Processing the archive quarantines it with the reason and leaves the store as it was."""
    outcome = store.process(archive, ingest=ingest or IngestSpec(), checksum=checksum, now=NOW)
    assert isinstance(outcome, Quarantined), outcome
    assert outcome.reason is reason, outcome.message
    assert not archive.exists()
    assert (store.quarantine_dir / archive.name).is_file()
    record = json.loads((store.quarantine_dir / f"{archive.name}.reason.json").read_text())
    assert record["reason"] == str(reason)
    assert (
        record["sha256"]
        == hashlib.sha256((store.quarantine_dir / archive.name).read_bytes()).hexdigest()
    )
    assert record["message"]
    assert datetime.fromisoformat(record["time"]) == NOW
    assert store.active_cut() == ACTIVE
    assert (store.current / "json" / "main.json").is_file()
    assert store.cuts() == [ACTIVE]
    assert sorted(p.name for p in store.versions.iterdir()) == [ACTIVE]


def hostile_zip(path: Path, name: str, data: bytes = b"x", *, mode: int | None = None) -> Path:
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("index.html", b"<title>PREP</title>")
        info = zipfile.ZipInfo(name)
        if mode is not None:
            info.create_system = 3
            info.external_attr = mode << 16
        archive.writestr(info, data)
    return path


def entry(name: str, kind: bytes, *, mode: int = 0o644, linkname: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.mode = mode
    info.linkname = linkname
    return info


def test_zip_with_absolute_path_is_quarantined_and_active_cut_kept(store: Store) -> None:
    archive = hostile_zip(store.incoming / f"{NEXT}.zip", "/etc/cron.d/evil")
    assert_quarantined(store, archive, Reason.ABSOLUTE_PATH)


def test_zip_with_dotdot_entry_is_quarantined_and_active_cut_kept(store: Store) -> None:
    archive = hostile_zip(store.incoming / f"{NEXT}.zip", "../../etc/passwd")
    assert_quarantined(store, archive, Reason.PATH_TRAVERSAL)


def test_tar_entry_escaping_the_root_through_a_folder_is_quarantined(store: Store) -> None:
    info = entry("json/../../escape.json", tarfile.REGTYPE)
    info.size = 2
    archive = add_tar_entry(store.incoming / f"{NEXT}.tar.gz", info, b"{}")
    assert_quarantined(store, archive, Reason.PATH_TRAVERSAL)


def test_zip_entry_with_windows_separators_is_quarantined(store: Store) -> None:
    archive = hostile_zip(store.incoming / f"{NEXT}.zip", "json\\..\\..\\evil.json")
    assert_quarantined(store, archive, Reason.PATH_TRAVERSAL)


def test_tar_symlink_is_quarantined_and_active_cut_kept(store: Store) -> None:
    link = entry("json/main.json", tarfile.SYMTYPE, linkname="/etc/shadow")
    archive = add_tar_entry(store.incoming / f"{NEXT}.tar.gz", link)
    assert_quarantined(store, archive, Reason.SYMLINK)


def test_zip_symlink_entry_is_quarantined(store: Store) -> None:
    archive = hostile_zip(
        store.incoming / f"{NEXT}.zip", "json/main.json", b"/etc/shadow", mode=stat.S_IFLNK | 0o777
    )
    assert_quarantined(store, archive, Reason.SYMLINK)


def test_tar_hardlink_is_quarantined(store: Store) -> None:
    link = entry("json/main.json", tarfile.LNKTYPE, linkname="index.html")
    archive = add_tar_entry(store.incoming / f"{NEXT}.tar.gz", link)
    assert_quarantined(store, archive, Reason.HARDLINK)


def test_tar_character_device_is_quarantined(store: Store) -> None:
    device = entry("dev/mem", tarfile.CHRTYPE)
    device.devmajor, device.devminor = 1, 1
    archive = add_tar_entry(store.incoming / f"{NEXT}.tar.gz", device)
    assert_quarantined(store, archive, Reason.SPECIAL_FILE)


def test_tar_fifo_is_quarantined(store: Store) -> None:
    archive = add_tar_entry(
        store.incoming / f"{NEXT}.tar", entry("pipe", tarfile.FIFOTYPE), gz=False
    )
    assert_quarantined(store, archive, Reason.SPECIAL_FILE)


def test_tar_file_with_setuid_bit_is_quarantined(store: Store) -> None:
    info = entry("bin/tool", tarfile.REGTYPE, mode=0o4755)
    info.size = 3
    archive = add_tar_entry(store.incoming / f"{NEXT}.tar.gz", info, b"abc")
    assert_quarantined(store, archive, Reason.SETUID_BIT)


def test_zip_file_with_setgid_bit_is_quarantined(store: Store) -> None:
    archive = hostile_zip(
        store.incoming / f"{NEXT}.zip", "bin/tool", b"abc", mode=stat.S_IFREG | 0o2755
    )
    assert_quarantined(store, archive, Reason.SETUID_BIT)


def test_zip_with_duplicate_entries_is_quarantined(store: Store) -> None:
    path = store.incoming / f"{NEXT}.zip"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("json/main.json", b'{"a": 1}')
        with pytest.warns(UserWarning, match="Duplicate name"):
            archive.writestr("json/main.json", b'{"a": 2}')
    assert_quarantined(store, path, Reason.DUPLICATE_ENTRY)


def test_tar_naming_a_path_both_file_and_folder_is_quarantined(store: Store) -> None:
    info = entry("index.html/inner.json", tarfile.REGTYPE)
    info.size = 2
    archive = add_tar_entry(store.incoming / f"{NEXT}.tar.gz", info, b"{}")
    assert_quarantined(store, archive, Reason.DUPLICATE_ENTRY)


def test_zip_compression_bomb_is_quarantined(store: Store) -> None:
    path = store.incoming / f"{NEXT}.zip"
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("json/main.json", bytes(20 * 2**20))
    assert_quarantined(store, path, Reason.COMPRESSION_BOMB)


def test_tar_gz_compression_bomb_is_stopped_while_streaming(store: Store) -> None:
    archive = make_tar(store.incoming / f"{NEXT}.tar.gz", {"zeros.csv": bytes(20 * 2**20)})
    assert_quarantined(store, archive, Reason.COMPRESSION_BOMB)


def test_garbage_named_as_zip_is_quarantined_as_corrupt(store: Store) -> None:
    archive = store.incoming / f"{NEXT}.zip"
    archive.write_bytes(b"PK\x03\x04 this is not a zip at all" * 10)
    assert_quarantined(store, archive, Reason.CORRUPT_ARCHIVE)


def test_truncated_zip_is_quarantined_as_corrupt(store: Store) -> None:
    archive = make_zip(store.incoming / f"{NEXT}.zip", site_files(cut=NEXT))
    archive.write_bytes(archive.read_bytes()[:-200])
    assert_quarantined(store, archive, Reason.CORRUPT_ARCHIVE)


def test_zip_with_a_flipped_byte_fails_its_crc_and_is_quarantined(store: Store) -> None:
    path = store.incoming / f"{NEXT}.zip"
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED) as archive:
        archive.writestr("datos/actas.csv", b"A" * 5000)
    data = bytearray(path.read_bytes())
    data[data.index(b"A" * 100) + 50] = ord("B")
    path.write_bytes(bytes(data))
    assert_quarantined(store, path, Reason.CORRUPT_ARCHIVE)


def test_truncated_tar_gz_is_quarantined_as_corrupt(store: Store) -> None:
    archive = make_tar(store.incoming / f"{NEXT}.tar.gz", site_files(cut=NEXT, actas=2000))
    archive.write_bytes(archive.read_bytes()[: archive.stat().st_size // 2])
    assert_quarantined(store, archive, Reason.CORRUPT_ARCHIVE)


def test_tar_cut_at_a_member_boundary_is_quarantined_as_corrupt(store: Store) -> None:
    archive = make_tar(store.incoming / f"{NEXT}.tar", site_files(cut=NEXT), gz=False)
    with tarfile.open(archive) as whole:
        cut_at = whole.getmembers()[-1].offset
    archive.write_bytes(archive.read_bytes()[:cut_at])
    assert_quarantined(store, archive, Reason.CORRUPT_ARCHIVE)


def test_checksum_mismatch_is_quarantined(store: Store) -> None:
    archive = make_zip(store.incoming / f"{NEXT}.zip", site_files(cut=NEXT))
    assert_quarantined(store, archive, Reason.CHECKSUM_MISMATCH, checksum="0" * 64)


def test_archive_name_without_a_cut_id_is_quarantined(store: Store) -> None:
    archive = make_zip(store.incoming / "resultados_finales.zip", site_files())
    assert_quarantined(store, archive, Reason.BAD_CUT_ID)


def test_archive_named_with_an_impossible_date_is_quarantined(store: Store) -> None:
    archive = make_zip(store.incoming / "20241399_2500_PREP.zip", site_files())
    assert_quarantined(store, archive, Reason.BAD_CUT_ID)


def test_cut_older_than_the_active_one_is_quarantined(store: Store) -> None:
    archive = make_zip(store.incoming / "20240602_2020_PREP.zip", site_files(cut="20240602_2020"))
    assert_quarantined(store, archive, Reason.STALE_CUT)


def test_older_cut_is_accepted_when_it_is_the_pinned_cut(store: Store) -> None:
    older = "20240602_2020"
    archive = make_zip(store.incoming / f"{older}_PREP.zip", site_files(cut=older))
    outcome = store.process(archive, ingest=IngestSpec(), pinned=older, now=NOW)
    assert isinstance(outcome, Stored)
    assert store.cuts() == [older, ACTIVE]
    assert store.active_cut() == ACTIVE


def test_archive_with_more_files_than_the_cap_is_quarantined(store: Store) -> None:
    archive = make_zip(store.incoming / f"{NEXT}.zip", site_files(cut=NEXT))
    assert_quarantined(store, archive, Reason.TOO_MANY_FILES, ingest=IngestSpec(max_files=3))


def test_archive_larger_than_the_cap_is_quarantined(store: Store) -> None:
    archive = make_tar(store.incoming / f"{NEXT}.tar.gz", site_files(cut=NEXT))
    assert_quarantined(store, archive, Reason.TOO_LARGE, ingest=IngestSpec(max_bytes="4Ki"))


def test_archive_writing_into_the_reserved_prep_folder_is_quarantined(store: Store) -> None:
    archive = hostile_zip(store.incoming / f"{NEXT}.zip", ".prep/manifest.json", b"{}")
    assert_quarantined(store, archive, Reason.RESERVED_PATH)


def test_other_archive_for_a_stored_cut_id_is_quarantined_as_conflict(store: Store) -> None:
    archive = make_zip(store.incoming / f"{ACTIVE}_PREP.zip", site_files(cut=ACTIVE, seed=9))
    assert_quarantined(store, archive, Reason.CONFLICT)


def test_same_archive_uploaded_twice_is_stored_once(store: Store) -> None:
    again = make_zip(store.incoming / f"{ACTIVE}_PREP.zip", site_files(cut=ACTIVE))
    outcome = store.process(again, ingest=IngestSpec(), now=NOW)
    assert isinstance(outcome, Stored)
    assert outcome.duplicate
    assert not again.exists()
    assert store.cuts() == [ACTIVE]
    assert not any(store.quarantine_dir.iterdir())


def test_unsupported_format_is_quarantined(store: Store) -> None:
    archive = store.incoming / f"{NEXT}.rar"
    archive.write_bytes(b"Rar!\x1a\x07\x00")
    assert_quarantined(store, archive, Reason.UNSUPPORTED_FORMAT)


def test_bad_member_after_good_ones_leaves_nothing_half_extracted(store: Store) -> None:
    path = store.incoming / f"{NEXT}.tar.gz"
    with tarfile.open(path, "w:gz") as archive:
        for name, data in site_files(cut=NEXT).items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
        archive.addfile(entry("json/link.json", tarfile.SYMTYPE, linkname="/etc/passwd"))
    assert_quarantined(store, path, Reason.SYMLINK)
