"""The ``tdmctx`` command line.

Each area of the package adds its own sub-commands through a ``register(subparsers)``
function; this module only assembles them. Units typed on the command line (kV, formulas)
are converted to the package's units (eV, ...) in those sub-command handlers.
"""

from __future__ import annotations

import argparse
import importlib
import sys

__all__ = ["main", "build_parser"]

# Modules that contribute sub-commands, in the order they appear in --help.
_REGISTRARS = (
    "tdmctx.notebooks",
    "tdmctx.cli_data",
    "tdmctx.defects.cli",
    "tdmctx.defects.cli_classify",
    "tdmctx.ptycho.cli",
)


def build_parser() -> argparse.ArgumentParser:
    """Return the full argument parser."""
    from tdmctx import __version__

    parser = argparse.ArgumentParser(prog="tdmctx", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"tdmctx {__version__}")
    subparsers = parser.add_subparsers(dest="command", required=True)
    for module in _REGISTRARS:
        importlib.import_module(module).register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``tdmctx`` console script."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.handler(args) or 0)
    except (ValueError, FileNotFoundError, KeyError) as exc:
        # User errors: one clear line, no traceback.
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
