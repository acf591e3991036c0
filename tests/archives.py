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


#: Michoacán 2024: 24 local districts, 113 municipalities, about 2,700 sections and 13,000 actas.
MICHOACAN = {"distritos": 24, "municipios": 113, "secciones": 2700, "actas": 13000}
_PARTIES = ("PAN", "PRI", "PRD", "PVEM", "PT", "MC", "MORENA", "NO_REG", "NULOS")


def realistic_site(
    *, cut: str = "20240602_2040", seed: int = 0, scale: float = 1.0
) -> dict[str, bytes]:
    """A state PREP site the size of Michoacán's: the institute's page and assets, the JSON tree
    (main, per district, municipality and section, for two elections) and the actas CSVs.

    About 5,600 files and 5 MB at scale 1; `scale` shrinks every count for quick runs.
    """
    rng = random.Random(seed)
    counts = {k: max(1, int(v * scale)) for k, v in MICHOACAN.items()}

    def votes() -> dict[str, int]:
        return {p: rng.randint(0, 900) for p in _PARTIES}

    files: dict[str, bytes] = {
        "index.html": (
            "<!doctype html><html lang=es><meta charset=utf-8><title>PREP Michoacán 2024</title>"
            '<link rel=stylesheet href="/assets/app.css"><script src="/assets/app.js"></script>'
            f"<main id=app data-corte={cut}></main>\n"
        ).encode(),
        "assets/app.css": ("".join(f".c{i}{{margin:{i}px}}" for i in range(6000))).encode(),
        "assets/app.js": rng.randbytes(450_000).hex().encode(),
        "assets/fonts/roboto.woff2": rng.randbytes(64_000),
        **{f"assets/img/{p.lower()}.png": rng.randbytes(9_000) for p in _PARTIES},
        "json/main.json": json.dumps(
            {
                "horaCorte": cut,
                "actasEsperadas": counts["actas"],
                "actasCapturadas": int(counts["actas"] * 0.8),
                "participacion": 58.3,
            }
        ).encode(),
    }
    for election in ("dip", "ayu"):
        entities = counts["distritos"] if election == "dip" else counts["municipios"]
        for n in range(1, entities + 1):
            files[f"json/{election}/entidad/{n:03d}.json"] = json.dumps(
                {"id": n, "corte": cut, "votos": votes(), "casillas": [votes() for _ in range(8)]}
            ).encode()
        for section in range(1, counts["secciones"] + 1):
            files[f"json/{election}/seccion/{section:04d}.json"] = json.dumps(
                {"seccion": section, "votos": votes()}
            ).encode()
        rows = "".join(
            f"16{i:05d}B01,{i % entities + 1},{i % counts['secciones'] + 1},"
            f"{','.join(str(v) for v in votes().values())},750,"
            f"{hashlib.sha256(f'{seed}-{election}-{i}'.encode()).hexdigest()}\n"
            for i in range(counts["actas"])
        )
        files[f"datos/20240602_PREP_{election.upper()}_MICH.csv"] = (
            f"02/06/2024 {cut[9:11]}:{cut[11:13]} (UTC-6)\n{HEADER}{rows}"
        ).encode()
    return files
