"""Rich progress bars that leave nothing behind where nobody watches them.

A transient ``rich.progress.Progress`` drawn into a pipe or a file draws nothing while it runs but
prints an empty line when it stops, so every bar of a command run as ``deepshrink ... > log`` left
a blank line at the top of its output. :func:`progress_bar` draws only on a terminal.
"""

from __future__ import annotations

from typing import Any


def progress_bar(*columns: Any, show: bool = True) -> Any:
    """A transient ``rich.progress.Progress`` with ``columns`` (rich's default columns when none), disabled
    unless ``show`` and rich's console (standard output) is a terminal. Use it as a context manager, or
    ``start()``/``stop()`` it; a disabled bar takes the same calls and draws nothing."""
    from rich import get_console
    from rich.progress import Progress

    return Progress(*columns, transient=True, disable=not show or not get_console().is_terminal)
