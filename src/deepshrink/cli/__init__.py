"""The command line. Parses arguments and calls the Python API; no logic of its own.

Each command group lives in its own module (``convert_cmd``, ``quantize_cmd``,
``prune_cmd``...) and registers itself on ``app``. A ``DeepshrinkError`` becomes one
line on stderr and its exit status (2; parity failure 3).
"""

from __future__ import annotations

import sys

# command modules register themselves on import
from . import common_cmds  # noqa: F401,E402
from ._app import app, run_app  # noqa: E402


def _optional(module: str) -> None:
    import importlib

    try:
        importlib.import_module(f"deepshrink.cli.{module}")
    except ModuleNotFoundError as exc:  # a command group not built yet
        if exc.name != f"deepshrink.cli.{module}":
            raise


for _m in ("quantize_cmd", "prune_cmd", "compress_cmd", "pack_cmd", "distill_cmd", "optimize_cmd",
           "search_cmd"):
    _optional(_m)


def main(argv: list[str] | None = None) -> None:
    sys.exit(run_app(argv))


__all__ = ["app", "main"]
