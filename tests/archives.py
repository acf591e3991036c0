"""Builders of PREP-like packages (good and hostile) for the ingest tests and the benchmark."""

from __future__ import annotations

import hashlib
import io
import json
import random
import tarfile
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from difusor.ingest.store import Quarantined, Store, Stored
from difusor.models import IngestSpec

HEADER = (
    "CLAVE_CASILLA,CLAVE_ACTA,ID_ESTADO,ESTADO,ID_DISTRITO_LOCAL,DISTRITO_LOCAL,SECCION,"
    "PAN,PRI,PRD,PVEM,PT,MC,MORENA,NO_REGISTRADOS,NULOS,TOTAL_VOTOS_CALCULADOS,"
    "LISTA_NOMINAL,OBSERVACIONES,CONTABILIZADA,SHA\n"
)


def site_files(*, cut: str = "20240602_2040", actas: int = 200, seed: int = 0) -> dict[str, bytes]:
    """A small PREP site: main.json with the cut time, per-district JSON and an actas CSV."""
    rng = random.Random(seed)
    rows = [
        f"16{i:04d}B0100,16{i:04d}B01A,16,MICHOACAN,{i % 24 + 1},DISTRITO {i % 24 + 1},"
        f"{i:04d},{','.join(str(rng.randint(0, 300)) for _ in range(9))},750,,1,"
        f"{hashlib.sha256(f'{seed}-{i}'.encode()).hexdigest()}\n"
        for i in range(actas)
    ]
    csv = f"02/06/2024 {cut[9:11]}:{cut[11:13]} (UTC-6)\n{HEADER}{''.join(rows)}".encode()
    files = {
        "index.html": b"<!doctype html><title>PREP Michoacan 2024</title>\n",
        "json/main.json": json.dumps(
            {"horaCorte": cut, "actasCapturadas": actas, "seed": seed}
        ).encode(),
        "datos/20240602_PREP_GUB_MICH.csv": csv,
    }
    for district in range(1, 6):
        files[f"json/distritos/{district:02d}.json"] = json.dumps(
            {"distrito": district, "votos": [rng.randint(0, 10**5) for _ in range(12)]}
        ).encode()
    return files


def make_zip(path: Path, files: Mapping[str, bytes], *, wrap: str | None = None) -> Path:
    """A deflated zip of these files, under one folder `wrap` when given.

    Entries carry a fixed time, so the same files make the same bytes whenever they are zipped.
    """
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for name, data in files.items():
            info = zipfile.ZipInfo(f"{wrap}/{name}" if wrap else name, (2024, 6, 2, 20, 40, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            archive.writestr(info, data)
    return path


def make_tar(
    path: Path, files: Mapping[str, bytes], *, gz: bool = True, wrap: str | None = None
) -> Path:
    """A tar (gzipped by default) of these files, under one folder `wrap` when given."""
    with tarfile.open(path, "w:gz" if gz else "w") as archive:
        if wrap:
            folder = tarfile.TarInfo(wrap)
            folder.type = tarfile.DIRTYPE
            folder.mode = 0o755
            archive.addfile(folder)
        for name, data in files.items():
            info = tarfile.TarInfo(f"{wrap}/{name}" if wrap else name)
            info.size = len(data)
            info.mode = 0o644
            info.mtime = 1717382400
            archive.addfile(info, io.BytesIO(data))
    return path


def add_tar_entry(path: Path, info: tarfile.TarInfo, data: bytes = b"", *, gz: bool = True) -> Path:
    """A tar holding one ordinary file and then `info` (a hostile entry)."""
    with tarfile.open(path, "w:gz" if gz else "w") as archive:
        good = tarfile.TarInfo("index.html")
        good.size = 5
        archive.addfile(good, io.BytesIO(b"hello"))
        archive.addfile(info, io.BytesIO(data) if data else None)
    return path


class StreamedStore(Store):
    """A store that extracts every archive as if it were still arriving (ingest/stream.py).

    `process` follows the file with a Prefetch first and hands what it prepared to the store,
    so the same assertions hold for both paths. `used` counts the cuts stored from the files
    the prefetch wrote (its new files' inodes are the version's), not extracted again.
    """

    used = 0

    def process(self, archive: Path, *, ingest: IngestSpec, **kwargs: Any) -> Stored | Quarantined:
        prefetch = self.prefetch(archive, ingest=ingest)
        prepared = prefetch.finish(archive) if prefetch is not None else None
        written = (
            {
                p.stat().st_ino
                for p in prepared.tree.rglob("*")
                if p.is_file() and p.stat().st_nlink == 1
            }
            if prepared is not None
            else set()
        )
        outcome = super().process(archive, ingest=ingest, prepared=prepared, **kwargs)
        if isinstance(outcome, Stored) and written and not outcome.duplicate:
            version = self.versions / outcome.cut
            self.used += written <= {p.stat().st_ino for p in version.rglob("*") if p.is_file()}
        return outcome
