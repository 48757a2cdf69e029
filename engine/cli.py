"""``python -m engine``: a command per module in ``engine/commands``.

Each command module defines ``add_parser(subparsers)`` and ``run(args) -> int``.
"""

from __future__ import annotations

import argparse
import importlib
import sys

COMMANDS = ("demo", "build", "search", "info", "encode", "eval")


def _modules():
    for name in COMMANDS:
        try:
            yield importlib.import_module(f"engine.commands.{name}")
        except ModuleNotFoundError as e:
            if e.name != f"engine.commands.{name}":
                raise


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m engine", description="Hypencoder retrieval engine")
    sub = p.add_subparsers(dest="command", required=True)
    for mod in _modules():
        mod.add_parser(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.run(args) or 0)
    except (ValueError, TypeError, FileNotFoundError, RuntimeError) as e:
        print(f"error: {e}" if str(e) else f"error: {type(e).__name__}", file=sys.stderr)
        return 2
