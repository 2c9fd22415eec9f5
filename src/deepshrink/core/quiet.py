"""Keep third-party native code from writing on the user's terminal.

Some libraries print from C++ straight to the process's file descriptors 1 and 2 (torch's
TorchScript ONNX exporter dumps the whole IR graph on an export error), which Python-level
``contextlib.redirect_stdout`` cannot catch. :func:`native_output_silenced` points both
descriptors at a temporary file for the duration of a call and gives back what was written, so
the caller can show it behind ``--verbose`` or drop it.
"""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile
from collections.abc import Iterator


@contextlib.contextmanager
def native_output_silenced() -> Iterator[list[str]]:
    """Redirect file descriptors 1 and 2 to a temporary file inside the block.

    Yields a list that, after the block, holds the captured text (one string). Descriptors that
    cannot be duplicated (no real stdout, e.g. under some embedders) are left alone."""
    captured: list[str] = []
    try:
        saved = [os.dup(1), os.dup(2)]
    except OSError:
        yield captured
        return
    with tempfile.TemporaryFile(mode="w+b") as sink:
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):
                stream.flush()
        os.dup2(sink.fileno(), 1)
        os.dup2(sink.fileno(), 2)
        try:
            yield captured
        finally:
            for stream in (sys.stdout, sys.stderr):
                with contextlib.suppress(Exception):
                    stream.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            for fd in saved:
                os.close(fd)
            sink.seek(0)
            captured.append(sink.read().decode("utf-8", "replace"))


_VERBOSE = [False]
_NOTES: list[str] = []


def defer_note(text: str) -> None:
    """Keep ``text`` for the end of a command that succeeds (the CLI prints each once, as a ``note:`` line on
    stderr; a command that fails prints its one error line alone). The library does not print them."""
    if text not in _NOTES:
        _NOTES.append(text)


def take_notes() -> list[str]:
    """The notes kept by :func:`defer_note` since the last call, cleared."""
    out = list(_NOTES)
    _NOTES.clear()
    return out


def set_verbose(on: bool) -> None:
    """Turn on the detail behind ``--verbose`` (the CLI sets it; ``DEEPSHRINK_VERBOSE=1`` does too)."""
    _VERBOSE[0] = bool(on)


def verbose() -> bool:
    """Whether ``--verbose`` (or ``DEEPSHRINK_VERBOSE=1``) asked for the detail behind one-line errors."""
    return _VERBOSE[0] or os.environ.get("DEEPSHRINK_VERBOSE", "") not in ("", "0")


def detail(text: str, *, what: str = "") -> None:
    """Write ``text`` (third-party output captured, a traceback) on stderr when :func:`verbose`; else drop it."""
    if text and text.strip() and verbose():
        head = f"--- {what} ---\n" if what else ""
        sys.stderr.write(head + text.rstrip() + "\n")
        sys.stderr.flush()
