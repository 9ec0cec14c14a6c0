"""The `wanka` command: one entry point, each subcommand implemented in the layer it belongs to."""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Sequence

from wanka import __version__
from wanka.argparsing import Parser

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
    parser = Parser(prog="wanka", description=__doc__)
    parser.add_argument("--version", action="version", version=f"wanka {__version__}",
                        help="print Wanka's version and exit")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=Parser)
    for name in names or SUBCOMMANDS:
        importlib.import_module(SUBCOMMANDS[name]).register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    # Import only the subcommand asked for, so `wanka simulate` never loads the Kubernetes client.
    chosen = [argv[0]] if argv and argv[0] in SUBCOMMANDS else None
    try:
        if chosen:
            module = importlib.import_module(SUBCOMMANDS[chosen[0]])
            if getattr(module, "PASSTHROUGH", False):
                return int(module.main(argv[1:]) or 0)
        args = build_parser(chosen).parse_args(argv)
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        return 130
    except Exception as exc:
        # `wanka run` logs its own failures (as JSON when asked); WANKA_DEBUG=1 shows the traceback.
        if chosen == ["run"] or os.environ.get("WANKA_DEBUG"):
            raise
        print(f"wanka: error: {_describe(exc)}", file=sys.stderr)
        return 1


def _describe(exc: Exception) -> str:
    if "kubernetes" in sys.modules or "urllib3" in sys.modules:
        from wanka.cluster.errors import describe

        return describe(exc)
    if isinstance(exc, FileNotFoundError):
        return f"no such file: {exc.filename or exc}"
    return f"{type(exc).__name__}: {exc}"


if __name__ == "__main__":
    sys.exit(main())
