"""Helpers shared by the benchmark scripts: where results go and how a table is written."""

from __future__ import annotations

import os
import platform
import shlex
import sys
from pathlib import Path

RESULTS = Path(__file__).parent / "results"


def machine_line(threads: int = 2) -> str:
    from deepshrink.evaluate import cpu_flags

    return (f"Machine: {cpu_flags()}, {os.cpu_count()} cores visible, {threads} intra-op threads; "
            f"Python {platform.python_version()}")


def write_result(name: str, title: str, command: str, body: str) -> Path:
    """Write ``results/<name>.md`` atomically (a section of RESULTS.md)."""
    from deepshrink.core.fileio import write_text_atomic

    RESULTS.mkdir(exist_ok=True)
    text = f"## {title}\n\nReproduce: `{command}`\n\n{body.strip()}\n"
    path = RESULTS / f"{name}.md"
    write_text_atomic(path, text)
    print(text)
    return path


def md_table(header: list[str], rows: list[list[object]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(lines)


def this_command() -> str:
    return "python " + shlex.join([os.path.relpath(sys.argv[0])] + sys.argv[1:])  # quoted: '*glob*' pastes as given
