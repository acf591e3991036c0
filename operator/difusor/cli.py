"""The `difusor` command: operator, agent, render, crds and the operators' tools."""

from __future__ import annotations

import argparse
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
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the console script."""
    args = build_parser().parse_args(argv)
    handler: Handler = args.handler
    return handler(args)


if __name__ == "__main__":
    sys.exit(main())
