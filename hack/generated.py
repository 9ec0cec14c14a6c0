"""The command line of a generated file: write it, or with --check fail when it is stale."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path


def write_or_check(path: Path, render: Callable[[], str], description: str, argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--check", action="store_true", help=f"fail if {path.name} is stale instead of writing it")
    args = parser.parse_args(argv)
    text = render()
    if not args.check:
        path.write_text(text)
        return 0
    if path.exists() and path.read_text() == text:
        return 0
    print(f"{path} is stale: run `make docs`", file=sys.stderr)
    return 1
