"""``tdmctx data``: where the input data are and whether they are intact."""

from __future__ import annotations

import argparse

from tdmctx import data

__all__ = ["register"]


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``tdmctx data verify|where`` to the command line."""
    parser = subparsers.add_parser("data", help="locate and verify the registered input data")
    sub = parser.add_subparsers(dest="data_command", required=True)
    verify = sub.add_parser("verify", help="check every registered file's sha256 sum")
    verify.add_argument("--root", default=None, help=f"data folder (default: ${data.DATA_ENV} or ../shared/data)")
    verify.set_defaults(handler=_cmd_verify)
    where = sub.add_parser("where", help="print the data folder and the cache folder")
    where.add_argument("--root", default=None)
    where.set_defaults(handler=_cmd_where)


def _cmd_verify(args: argparse.Namespace) -> int:
    status = data.verify(args.root)
    for name, state in status.items():
        print(f"{state:8s} {name}")
    bad = [n for n, s in status.items() if s != "ok"]
    return 1 if bad else 0


def _cmd_where(args: argparse.Namespace) -> int:
    print(f"data:  {data.data_root(args.root)}")
    print(f"cache: {data.cache_dir()}")
    return 0
