"""``python -m engine``: a command per module in ``engine/commands``.

Each command module defines ``add_parser(subparsers)`` and ``run(args) -> int``.

Every error is one line on stderr (``error: ...``) and exit code 2, whether argparse
refuses an argument or the command fails; an interrupt exits with 130. Set
``HYPENCODER_TRACEBACK=1`` to get the Python traceback of a failure instead.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

COMMANDS = ("demo", "build", "search", "info", "encode", "eval", "shard", "compact")
# Errors whose message speaks for itself; anything else is shown with its type name.
_USER_ERRORS = (ValueError, TypeError, OSError, RuntimeError, ImportError)


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors (no usage block): ``error: ... (see --help)``."""

    def error(self, message: str):
        self.exit(2, f"error: {self.prog.replace('python -m engine', '').strip() or 'engine'}: "
                     f"{message} (see {self.prog} --help)\n")


def _modules():
    for name in COMMANDS:
        try:
            yield importlib.import_module(f"engine.commands.{name}")
        except ModuleNotFoundError as e:
            if e.name != f"engine.commands.{name}":
                raise


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="python -m engine", description="Hypencoder retrieval engine")
    sub = p.add_subparsers(dest="command", required=True)
    for mod in _modules():
        mod.add_parser(sub)
    return p


def one_line(e: BaseException) -> str:
    """``e`` as one line: its message (prefixed by its type when that is not a user error
    or the message is empty), newlines folded."""
    msg = " ".join(str(e).split()) if str(e).strip() else ""
    if not msg or not isinstance(e, _USER_ERRORS):
        msg = f"{type(e).__name__}: {msg}" if msg else type(e).__name__
    return msg


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.run(args) or 0)
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
    except Exception as e:
        if os.environ.get("HYPENCODER_TRACEBACK") == "1":
            raise
        print(f"error: {one_line(e)}", file=sys.stderr)
        return 2
