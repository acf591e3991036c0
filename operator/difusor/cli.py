"""The `difusor` command: operator, agent, render, crds and the operators' tools."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import yaml

Handler = Callable[[argparse.Namespace], int]


def _cmd_crds(args: argparse.Namespace) -> int:
    from difusor.render.crds import all_crds

    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    for name, crd in all_crds().items():
        (out / name).write_text(dump_yaml(crd))
        print(f"wrote {out / name}")
    return 0


def _logging(verbose: bool) -> None:
    import logging

    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )


#: glibc's mallopt(3) parameter M_ARENA_MAX (malloc.h).
_M_ARENA_MAX = -8


def limit_malloc_arenas(arenas: int = 2) -> bool:
    """At most `arenas` glibc malloc arenas, unless MALLOC_ARENA_MAX says otherwise.

    glibc gives a thread that allocates while another holds an arena one of its own, up to 8 per
    core, and keeps what they grew: kopf's workers, the prober's threads and the watch streams
    left about 12 MB there after a burst of reconciles. Python allocates under its GIL, so two
    arenas cost no contention. Must run before the threads start; False where it does not apply
    (not glibc, or the variable is set).
    """
    import ctypes
    import os

    if "MALLOC_ARENA_MAX" in os.environ:
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    return bool(mallopt(_M_ARENA_MAX, arenas))


#: Bytes asyncio reads a TLS connection through at a time (its own default: 256 KiB).
SSL_READ_BUFFER = 64 << 10


def limit_ssl_read_buffers(size: int = SSL_READ_BUFFER) -> bool:
    """Read TLS connections through a buffer of `size` bytes instead of asyncio's 256 KiB.

    asyncio gives every TLS connection a read buffer of SSLProtocol.max_size, allocated and
    zeroed when the connection opens. kopf's client opens as many connections as it has
    requests in flight (its connector has no limit, and a fixed one could leave a request no
    connection, with a watch stream holding one per kind and namespace): about 47 at once in a
    burst of 50 new publications, 12 MB of the operator's peak. A TLS record carries at most
    16 KiB, so 64 KiB still takes four of them per read. False where asyncio has no such buffer.
    """
    from asyncio import sslproto

    if not isinstance(getattr(sslproto.SSLProtocol, "max_size", None), int):
        return False
    sslproto.SSLProtocol.max_size = size
    return True


def _cmd_operator(args: argparse.Namespace) -> int:
    limit_malloc_arenas()
    limit_ssl_read_buffers()
    import kopf

    import difusor.controller.handlers  # noqa: F401  (registers the handlers)
    from difusor.metrics import OperatorMetrics, serve

    _logging(args.verbose)
    metrics = OperatorMetrics()
    if args.metrics:
        address, _, port = args.metrics.rpartition(":")
        serve(metrics.registry, address=address or "0.0.0.0", port=int(port))
    kopf.run(
        standalone=True,
        clusterwide=not args.namespace,
        namespaces=args.namespace or (),
        liveness_endpoint=args.liveness or None,
        memo=kopf.Memo(metrics=metrics),
    )
    return 0


def _cmd_agent(args: argparse.Namespace) -> int:
    from difusor.agent.main import AgentConfig, run

    _logging(args.verbose)
    return run(AgentConfig.from_env())


def _cmd_sftp_server(args: argparse.Namespace) -> int:
    from difusor.agent.sftpserver import run

    return run()


def _cmd_render(args: argparse.Namespace) -> int:
    from datetime import UTC, datetime

    from difusor.render.preview import render_stream

    text = sys.stdin.read() if args.filename == "-" else Path(args.filename).read_text()
    try:
        out = render_stream(
            text,
            namespace=args.namespace,
            image=args.image,
            capabilities=args.capability,
            now=datetime.now(UTC),
        )
    except ValueError as exc:
        print(f"difusor render: {exc}", file=sys.stderr)
        return 1
    sys.stdout.write(out)
    return 0


def _cmd_cut_verify(args: argparse.Namespace) -> int:
    from difusor.ingest.cutverify import run

    return run(args)


def _cmd_audit(args: argparse.Namespace) -> int:
    from difusor.audit import AuditError, audit

    archive = Path(args.archive) if args.archive else None
    try:
        report = audit(args.url, archive=archive, concurrency=args.concurrency)
    except (AuditError, OSError) as exc:
        print(f"difusor audit: {exc}", file=sys.stderr)
        return 2
    manifest = report.manifest
    print(
        f"Audited {args.url}: cut {manifest.cut}, {len(manifest.entries)} files, archive "
        f"{manifest.archive} (SHA-256 {manifest.archive_sha256})"
    )
    for difference in report.differences:
        print(f"DIFFERENCE {difference.line()}")
    if report.skipped:
        print(f"not published by design (dotfiles): {len(report.skipped)} files")
    print(report.verdict)
    print(
        f"downloaded {report.requests} requests, {report.wire_bytes} bytes "
        f"({report.content_bytes} decoded) in {report.seconds:.2f} s"
    )
    if args.json:
        print(json.dumps(report.figures()))
    return 0 if report.ok else 1


def _publication_ref(value: str) -> tuple[str, str]:
    namespace, _, name = value.partition("/")
    if not namespace or not name:
        raise argparse.ArgumentTypeError(f"--publication {value!r}: expected NAMESPACE/NAME")
    return namespace, name


def _cmd_report(args: argparse.Namespace) -> int:
    import time
    import zoneinfo
    from datetime import UTC, datetime

    from difusor.kube import api_client
    from difusor.models import PrepPublicationSpec
    from difusor.report.data import gather
    from difusor.report.geo import GeoLookup
    from difusor.report.memoria import build, write

    namespace, name = args.publication
    try:
        geo = GeoLookup(Path(args.geoip)) if args.geoip else None
        evidence = gather(api_client(args.kubeconfig), namespace=namespace, name=name)
    except (ValueError, LookupError) as exc:
        print(f"difusor report: {exc}", file=sys.stderr)
        return 1
    spec = PrepPublicationSpec.model_validate(evidence.publication.get("spec") or {})
    tz = zoneinfo.ZoneInfo(spec.ingest.timezone)

    def when(value: str | None, flag: str, default: datetime) -> datetime:
        if value is None:
            return default
        try:
            parsed = datetime.fromisoformat(value)
        except ValueError:
            raise SystemExit(f"difusor report: {flag} {value!r} is not an ISO 8601 time") from None
        return parsed if parsed.tzinfo else parsed.replace(tzinfo=tz)

    now = datetime.now(UTC)
    first = min((s.hour for _, s in evidence.hours), default=int(now.timestamp()) // 3600 * 3600)
    start = when(args.since, "--from", datetime.fromtimestamp(first, UTC))
    end = when(args.until, "--to", now)
    if end <= start:
        print("difusor report: --to must be after --from", file=sys.stderr)
        return 1
    began = time.perf_counter()
    memoria = build(
        evidence,
        start=start,
        end=end,
        geo=geo,
        geo_source=geo.description() if geo else None,
        now=now,
    )
    html_path, pdf_path = write(memoria, Path(args.output), stem=f"memoria-tecnica-{name}")
    print(f"wrote {html_path} and {pdf_path} in {time.perf_counter() - began:.1f} s")
    return 0


def _cmd_diagram(args: argparse.Namespace) -> int:
    from difusor.report.diagram import draw, from_cluster, from_file

    try:
        if args.filename:
            text = sys.stdin.read() if args.filename == "-" else Path(args.filename).read_text()
            drawings = from_file(text, namespace=args.namespace)
        else:
            from difusor.kube import api_client

            namespace, name = args.publication
            dot = from_cluster(api_client(args.kubeconfig), namespace=namespace, name=name)
            drawings = [(name, dot)]
        for name, dot in drawings:
            svg, png = draw(dot, Path(args.output), stem=f"diagrama-{name}")
            print(f"wrote {svg} and {png}")
    except (ValueError, LookupError, FileNotFoundError) as exc:
        print(f"difusor diagram: {exc}", file=sys.stderr)
        return 1
    return 0


def dump_yaml(obj: object) -> str:
    """YAML as written to crds/ and printed by `render`: block style, keys in insertion order."""
    return yaml.safe_dump(obj, sort_keys=False, default_flow_style=False, width=100)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of every subcommand."""
    parser = argparse.ArgumentParser(prog="difusor", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    crds = sub.add_parser(
        "crds", help="write the CustomResourceDefinitions generated from the models"
    )
    crds.add_argument("-o", "--output", default="crds", help="directory (default: crds)")
    crds.set_defaults(handler=_cmd_crds)

    op = sub.add_parser("operator", help="run the operator (kopf, standalone: one replica)")
    op.add_argument(
        "-n", "--namespace", action="append", default=[],
        help="watch only this namespace (repeatable); all namespaces when absent",
    )  # fmt: skip
    op.add_argument("--liveness", default="http://0.0.0.0:8080/healthz", help="kopf liveness URL")
    op.add_argument(
        "--metrics", default="", metavar="ADDRESS:PORT",
        help="serve Prometheus metrics on /metrics there (0.0.0.0:9090); off when empty",
    )  # fmt: skip
    op.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    op.set_defaults(handler=_cmd_operator)

    agent = sub.add_parser("agent", help="run a web pod's agent (configured by its environment)")
    agent.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    agent.set_defaults(handler=_cmd_agent)

    sftp = sub.add_parser(
        "sftp-server", help="run the sftp container's sshd with the rendered config"
    )
    sftp.set_defaults(handler=_cmd_sftp_server)

    render = sub.add_parser(
        "render", help="print every child object the operator would apply, without a cluster"
    )
    render.add_argument(
        "-f", "--filename", required=True, help="PrepPublication YAML, or - for stdin"
    )
    render.add_argument("-n", "--namespace", default=None, help="namespace when the file has none")
    render.add_argument("--image", default=None, help="image of the agent and sftp containers")
    render.add_argument(
        "--capability", action="append", default=[],
        help="an optional API group version the cluster serves (traefik.io/v1alpha1, ...)",
    )  # fmt: skip
    render.set_defaults(handler=_cmd_render)

    aud = sub.add_parser(
        "audit",
        help="download a site as a reader would and prove it serves its manifest unaltered",
    )
    aud.add_argument("url", help="the site, e.g. https://prep.example.mx")
    aud.add_argument(
        "--archive", help="the institute's archive of the cut: prove the manifest matches it"
    )
    aud.add_argument("--concurrency", type=int, default=4, help="parallel connections (default: 4)")
    aud.add_argument("--json", action="store_true", help="also print the figures as JSON")
    aud.set_defaults(handler=_cmd_audit)
    report = sub.add_parser(
        "report", help="write the memoria técnica (HTML and PDF, in Spanish) of a publication"
    )
    report.add_argument(
        "--publication", required=True, type=_publication_ref, help="NAMESPACE/NAME"
    )
    report.add_argument(
        "--from", dest="since", help="start (ISO 8601; the publication's zone when no offset); "
        "default: the first recorded hour",
    )  # fmt: skip
    report.add_argument("--to", dest="until", help="end (ISO 8601); default: now")
    report.add_argument("--geoip", help="a MaxMind-format database (GeoLite2/GeoIP2 City .mmdb)")
    report.add_argument("-o", "--output", default=".", help="directory (default: .)")
    report.add_argument("--kubeconfig", default=None, help="kubeconfig (default: $KUBECONFIG)")
    report.set_defaults(handler=_cmd_report)

    diagram = sub.add_parser(
        "diagram", help="draw the service (Graphviz SVG and PNG) from the cluster or a file"
    )
    source = diagram.add_mutually_exclusive_group(required=True)
    source.add_argument("--publication", type=_publication_ref, help="NAMESPACE/NAME (live)")
    source.add_argument("-f", "--filename", help="PrepPublication YAML, or - for stdin")
    diagram.add_argument("-n", "--namespace", default=None, help="namespace when the file has none")
    diagram.add_argument("-o", "--output", default=".", help="directory (default: .)")
    diagram.add_argument("--kubeconfig", default=None, help="kubeconfig (default: $KUBECONFIG)")
    diagram.set_defaults(handler=_cmd_diagram)

    cut = sub.add_parser("cut", help="tools for cut packages").add_subparsers(
        dest="cut_command", required=True
    )
    cut_verify = cut.add_parser("verify", help="validate an archive as the ingest would")
    cut_verify.add_argument("archive", help="the archive as the institute would upload it")
    cut_verify.add_argument("--checksum", help="its sha256sum file (ARCHIVE.sha256)")
    cut_verify.add_argument("--after", help="the active cut: older cuts are StaleCut")
    cut_verify.add_argument("--pattern", help="ingest.cutIdPattern (default: YYYYMMDD_HHMM)")
    cut_verify.add_argument("--timezone", help="ingest.timezone (default: America/Mexico_City)")
    cut_verify.set_defaults(handler=_cmd_cut_verify)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the console script."""
    args = build_parser().parse_args(argv)
    handler: Handler = args.handler
    return handler(args)


if __name__ == "__main__":
    sys.exit(main())
