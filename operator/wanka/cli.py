"""The `wanka` command: one entry point, each subcommand implemented in the layer it belongs to."""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

# subcommand -> module exposing `register(subparsers)`; each module sets `func` on its parser.
SUBCOMMANDS: dict[str, str] = {
    "run": "wanka.controllers.main",
    "dev": "wanka.cluster.dev",
    "status": "wanka.cluster.status_cli",
    "crds": "wanka.api.crdgen",
    "simulate": "wanka.sim.cli",
    "simulate-gangs": "wanka.sim.gangs",
    "agent": "wanka.agent.cli",
}


def build_parser(names: Sequence[str] | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="wanka", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in names or SUBCOMMANDS:
        importlib.import_module(SUBCOMMANDS[name]).register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    # Import only the subcommand asked for, so `wanka simulate` never loads the Kubernetes client.
    chosen = [argv[0]] if argv and argv[0] in SUBCOMMANDS else None
    if chosen:
        module = importlib.import_module(SUBCOMMANDS[chosen[0]])
        if getattr(module, "PASSTHROUGH", False):
            return int(module.main(argv[1:]) or 0)
    args = build_parser(chosen).parse_args(argv)
    result = args.func(args)
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())
