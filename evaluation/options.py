"""Command-line options the harness's commands share, with the server's defaults: what is not given on
the command line is what `editserve serve` would use (EDITSERVE_* variables, .env, app/core/config.py)."""

from __future__ import annotations

import argparse
from pathlib import Path

from app.core.config import ServerSettings


def server_default(name: str):
    """The server's value of one setting (its default, or EDITSERVE_<NAME> where set)."""
    return getattr(ServerSettings(), name)


def add_cache_dir(ap: argparse.ArgumentParser, what: str = "converted models, adapters, the scope model") -> None:
    ap.add_argument("--cache-dir", type=Path, default=None, help=f"{what} (default: the server's EDITSERVE_CACHE_DIR)")


def add_model(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--model", default=None, help="the backbone (default: the server's EDITSERVE_MODEL)")
    ap.add_argument(
        "--quant",
        choices=("auto", "none", "int8", "int4"),
        default=None,
        help="its linear layers' weight-only quantisation (default: the server's EDITSERVE_QUANT)",
    )


def resolve(args: argparse.Namespace) -> argparse.Namespace:
    """Fill the shared options left out with the server's values."""
    for name in ("cache_dir", "model", "quant"):
        if hasattr(args, name) and getattr(args, name) is None:
            setattr(args, name, server_default(name))
    if getattr(args, "cache_dir", None) is not None:
        args.cache_dir = Path(args.cache_dir).expanduser()
    return args
