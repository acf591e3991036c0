"""`difusor cut verify`: the ingest's validation run on a local archive, as a JSON verdict."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from difusor.ingest.validate import verify
from difusor.logic.archive import Reason, Rejected, parse_checksum
from difusor.models import IngestSpec


def run(args: argparse.Namespace) -> int:
    """Prints {id, time, files, bytes, sha256} and returns 0, or {reason, message} and 1."""
    settings = {"cut_id_pattern": args.pattern, "timezone": args.timezone}
    ingest = IngestSpec.model_validate({k: v for k, v in settings.items() if v is not None})
    archive = Path(args.archive)
    try:
        checksum = None
        if args.checksum:
            checksum = parse_checksum(Path(args.checksum).read_text(), archive.name)
            if checksum is None:
                raise Rejected(
                    Reason.CHECKSUM_MISMATCH, f"{args.checksum} has no line for {archive.name}"
                )
        summary = verify(archive, ingest=ingest, checksum=checksum, active=args.after)
    except Rejected as rejected:
        print(json.dumps({"reason": str(rejected.reason), "message": rejected.message}))
        return 1
    except FileNotFoundError as exc:
        print(f"difusor cut verify: {exc}", file=sys.stderr)
        return 2
    verdict = {
        "id": summary.id,
        "time": summary.time.isoformat() if summary.time else None,
        "files": summary.files,
        "bytes": summary.bytes,
        "sha256": summary.sha256,
    }
    print(json.dumps(verdict))
    return 0
