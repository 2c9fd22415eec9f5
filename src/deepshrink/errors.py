"""Typed errors. Everything a user can cause is a ``DeepshrinkError``; the CLI turns
it into one line on stderr and exit status 2 (``ParityError``: exit 3; a search whose budget no
candidate met, ``deepshrink.search.BudgetNotMetError``: exit 4)."""

from __future__ import annotations

import re
from typing import Any

_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


class DeepshrinkError(Exception):
    """Base class for every error deepshrink raises on purpose."""

    exit_code = 2


class InputError(DeepshrinkError, ValueError):
    """Bad user input: a missing/truncated file, a wrong shape, NaN weights, an unknown key."""


class UnknownOptionError(InputError, TypeError):
    """A keyword a verb does not take (a ``TypeError``, as Python's own for a plain function)."""


class UnsupportedError(DeepshrinkError):
    """A valid request deepshrink cannot serve (an op, a model type, a route)."""


class MissingExtraError(UnsupportedError):
    """An optional stack is not installed; the message says which ``pip install`` fixes it."""

    def __init__(self, package: str, extra: str, what: str) -> None:
        super().__init__(
            f"{what} needs the optional package '{package}': pip install 'deepshrink[{extra}]'"
        )


class ParityError(DeepshrinkError):
    """Two models that should agree do not; carries the parity report."""

    exit_code = 3

    def __init__(self, message: str, report: Any = None) -> None:
        super().__init__(message)
        self.report = report


class BudgetError(DeepshrinkError):
    """A search or auto mode could not meet the accuracy/size/latency budget."""


def first_line(exc: BaseException | str, limit: int = 200) -> str:
    """The first non-empty line of an exception's message, cut to ``limit`` characters.

    Third-party errors often carry pages of detail (graph dumps, C++ stack traces); deepshrink
    shows their first line inside its own one-line message. An empty message gives the
    exception's type name instead, so this never fails.
    """
    text = exc if isinstance(exc, str) else str(exc)
    text = _ANSI.sub("", text)  # terminal colour codes some libraries put in their messages (torch.load)
    for line in text.splitlines():
        if line.strip():
            line = line.strip()
            if len(line) <= limit:
                return line
            cut = line[:limit - 1]
            # at a word boundary when there is one in the last fifth, and marked as cut: a word broken off
            # mid-way ("your version o") reads as a typo
            space = cut.rfind(" ")
            return (cut[:space] if space >= limit * 4 // 5 else cut).rstrip(" ,;:(") + "…"
    return "" if isinstance(exc, str) else type(exc).__name__
