"""Helpers shared by the CLI tests: run a command in-process, and check a one-line refusal."""

from __future__ import annotations

from deepshrink.cli import run_app


def run_cli(capsys, *args):
    """Run ``deepshrink ARGS`` in this process: (exit status, stdout, stderr)."""
    rc = run_app([str(a) for a in args])
    out, err = capsys.readouterr()
    return rc, out, err


def one_line_error(err: str, needle: str) -> None:
    """``err`` is exactly one ``error:`` line containing ``needle``, with no traceback."""
    lines = [ln for ln in err.strip().splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:") and needle in lines[0], err
    assert "Traceback" not in err
