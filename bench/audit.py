"""What a reader downloads to audit a Michoacán-sized cut, against downloading the site once.

A realistic cut (tests/archives.py `realistic_site`: ~5,600 files, ~5 MB) goes through the real
ingest into a store; the real rendered nginx serves it twice: with the default per-client limits
(20 r/s, burst 40: what any reader gets) and unlimited. In each, the baseline is a reader fetching
every file once (gzip, 4 keep-alive connections, retrying 429s after Retry-After) and the audit is
`difusor audit URL --archive FILE`. Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tests.archives import make_zip, realistic_site  # noqa: E402
from tests.nginxproc import running_nginx  # noqa: E402

from difusor.audit import Client, Traffic, audit, fetch_all  # noqa: E402
from difusor.ingest.store import Store, Stored  # noqa: E402
from difusor.models import IngestSpec, PrepPublicationSpec  # noqa: E402

CUT = "20240602_2040"
UNLIMITED = {"requestsPerSecond": 100000, "burst": 1000000, "connections": 100000}


def _reader(url: str, paths: list[str], *, concurrency: int) -> dict[str, Any]:
    traffic = Traffic()
    client = Client(url, timeout=30, traffic=traffic)
    started = time.monotonic()
    served = fetch_all(client, paths, concurrency=concurrency)
    seconds = time.monotonic() - started
    assert all(s.status == 200 for s in served.values()), "the baseline reader got errors"
    return {
        "requests": traffic.requests,
        "wireBytes": traffic.wire_bytes,
        "contentBytes": traffic.content_bytes,
        "seconds": round(seconds, 3),
    }


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and print one JSON object."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="a tenth of the site")
    parser.add_argument("--concurrency", type=int, default=4)
    args = parser.parse_args(argv)
    scale = 0.1 if args.quick else 1.0
    with tempfile.TemporaryDirectory(prefix="difusor-bench-audit-") as tmp:
        base = Path(tmp)
        archive = make_zip(base / f"{CUT}_PREP_MICH.zip", realistic_site(cut=CUT, scale=scale))
        store = Store(base / "content")
        store.recover()
        upload = store.incoming / archive.name
        upload.write_bytes(archive.read_bytes())
        stored = store.process(upload, ingest=IngestSpec(), now=datetime.now(UTC))
        assert isinstance(stored, Stored), stored
        store.swap_current(CUT)
        paths = [e.path for e in store.manifest(CUT)]
        result: dict[str, Any] = {
            "files": stored.files,
            "siteBytes": stored.bytes,
            "archiveBytes": archive.stat().st_size,
            "concurrency": args.concurrency,
        }
        for name, limits in (("readerLimits", None), ("unlimited", UNLIMITED)):
            fields: dict[str, Any] = {
                "host": "prep.example.mx",
                "sftp": {"authorizedKeysSecret": "k"},
            }
            if limits:
                fields["rateLimit"] = limits
            spec = PrepPublicationSpec.model_validate(fields)
            with running_nginx(spec, workdir=base / name, content=store.root) as nginx:
                url = f"http://{nginx.host}:{nginx.port}"
                baseline = _reader(url, paths, concurrency=args.concurrency)
                # The bucket of the per-client limit refills before the audit starts.
                time.sleep(3)
                report = audit(url, archive=archive, concurrency=args.concurrency)
            assert report.ok, [d.line() for d in report.differences[:5]]
            figures = report.figures()
            result[name] = {
                "baseline": baseline,
                "audit": {
                    k: figures[k] for k in ("requests", "wireBytes", "contentBytes", "seconds")
                },
                "ratios": {
                    k: round(float(figures[k]) / max(float(baseline[k]), 1e-9), 3)
                    for k in ("requests", "wireBytes", "seconds")
                },
            }
    json.dump(result, sys.stdout)
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
